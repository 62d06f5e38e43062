"""On to pyforward's settings: the flags a socat command amounts to, and the summary of
what it carries over and what it drops. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from pyforward.config.addresses import host_port
from pyforward.config.model import Transport
from pyforward.obs.dump import DumpMode
from pyforward.socat import udp
from pyforward.socat.format import listen_keyword, listen_text, seconds_text, target_text
from pyforward.socat.model import (
    DEBUG_VERBOSITY,
    ConnectAddress,
    Listen,
    ListenAddress,
    SocatCommand,
)
from pyforward.socat.unix import UnixListenAddress, keyword_of_listen
from pyforward.socat.values import ALWAYS_ON


def to_flags(command: SocatCommand) -> dict[str, object]:
    """The settings flags (keys of pyforward's config schema) this command amounts to."""
    listen, connect = command.listen, command.connect
    flags: dict[str, object] = {"listen": listen_text(listen), "target": [target_text(connect)]}
    if isinstance(listen, ListenAddress) and listen.transport is Transport.UDP:
        flags["protocol"] = Transport.UDP.value
        if command.idle_timeout:  # -T 0 (socat: none) keeps the default: a flow must end
            flags["udp_idle_timeout"] = command.idle_timeout
    elif command.idle_timeout is not None:
        flags["idle_timeout"] = command.idle_timeout
    if connect.connect_timeout is not None:
        flags["connect_timeout"] = connect.connect_timeout
    if listen.backlog is not None:
        flags["backlog"] = listen.backlog
    if listen.max_children:
        flags["max_connections"] = listen.max_children
    if isinstance(listen, UnixListenAddress):
        if listen.mode is not None:
            flags["unix_mode"] = f"{listen.mode:04o}"
        if listen.user is not None:
            flags["unix_user"] = listen.user
        if listen.group is not None:
            flags["unix_group"] = listen.group
    else:
        if listen.allow is not None:
            flags["allow"] = [listen.allow]
        if listen.reuseport:
            flags["reuseport"] = True
    if _keepalive(command):
        flags["keepalive"] = True
    if command.verbosity >= DEBUG_VERBOSITY:
        flags["log_level"] = "debug"
    if command.dump is not DumpMode.OFF:
        flags["dump"] = command.dump.value
    if isinstance(connect, ConnectAddress) and connect.sourceport is not None:
        flags["source_port"] = connect.sourceport
    retry = connect.retry
    if retry is not None:
        flags["connect_retries"] = "forever" if retry.times is None else str(retry.times)
        if retry.interval is not None:
            flags["connect_retry_interval"] = retry.interval
    return flags


def _keepalive(command: SocatCommand) -> bool:
    listen, connect = command.listen, command.connect
    return (isinstance(listen, ListenAddress) and listen.keepalive) or (
        isinstance(connect, ConnectAddress) and connect.keepalive
    )


@dataclass(frozen=True)
class Summary:
    """What a socat command line carries into pyforward, and what it leaves behind."""

    carried: tuple[str, ...]
    dropped: tuple[str, ...]


def summarize(command: SocatCommand, *, as_service: bool = False) -> Summary:
    """Say, one line per item, what is carried over and what is dropped, and why.

    `as_service`: the command becomes a pyforward service (settings only), which serves
    every connection; run as `pyforward-socat`, a command without `fork` serves one.
    """
    listen, connect = command.listen, command.connect
    flags = to_flags(command)
    carried = [_listen_summary(listen), f"target {target_text(connect)}"]
    dropped: list[str] = []
    if isinstance(listen, ListenAddress) and listen.transport is Transport.UDP:
        assert isinstance(connect, ConnectAddress), "a UDP listen forwards to a UDP target"
        carried[1] = f"target {host_port(connect.host, connect.port)} (UDP)"
        carried += udp.udp_summary(listen, command.idle_timeout, as_service=as_service)
        if not listen.fork and as_service:
            dropped.append(
                "no fork: socat served one peer per start; the pyforward service serves every peer"
            )
    elif listen.fork:
        carried.append("fork: every connection is served, all in one process")
    elif as_service:
        dropped.append(
            "no fork: socat served one connection per start; the pyforward service serves "
            "every connection"
        )
    else:
        carried.append("no fork: one connection is served, then pyforward exits")
    if isinstance(listen, ListenAddress):
        if listen.reuseaddr and listen.transport is Transport.TCP:
            carried.append(f"reuseaddr: {ALWAYS_ON['reuseaddr']}")
        if listen.reuseport:
            carried.append("reuseport: SO_REUSEPORT on the listener (reuseport)")
        if listen.allow is not None:
            carried.append(f"range={listen.allow}: only clients in it are served (allow)")
        if listen.ipv6_v6only is not None:
            carried.append(f"ipv6-v6only={int(listen.ipv6_v6only)}: listen {listen_text(listen)}")
    else:
        carried += _unix_listen_summary(listen)
    if (isinstance(listen, ListenAddress) and listen.nodelay) or (
        isinstance(connect, ConnectAddress) and connect.nodelay
    ):
        carried.append(f"nodelay: {ALWAYS_ON['nodelay']}")
    if listen.su is not None:
        if as_service:
            dropped.append(f"su={listen.su}: the service runs as its own unprivileged user")
        else:
            carried.append(f"su={listen.su}: pyforward becomes {listen.su} once it listens")
    udp_listen = isinstance(listen, ListenAddress) and listen.transport is Transport.UDP
    if command.idle_timeout and udp_listen:
        carried.append(f"flow idle timeout {seconds_text(command.idle_timeout)}s (-T)")
    elif command.idle_timeout:
        carried.append(f"idle timeout {seconds_text(command.idle_timeout)}s (-T)")
    elif command.idle_timeout is not None:
        carried.append("no idle timeout (-T 0)")
    if "connect_timeout" in flags:
        carried.append(f"connect timeout {seconds_text(connect.connect_timeout or 0.0)}s")
    if "backlog" in flags:
        carried.append(f"backlog {listen.backlog}")
    if "max_connections" in flags:
        carried.append(f"max connections {listen.max_children} (max-children)")
    if "keepalive" in flags:
        carried.append("keepalive on both legs")
    if isinstance(connect, ConnectAddress) and connect.sourceport is not None:
        carried.append(
            f"sourceport={connect.sourceport}: connects from that port (source_port); one "
            "connection to the target at a time, as with socat"
        )
    if connect.retry is not None:
        times = "forever" if connect.retry.times is None else f"retry={connect.retry.times}"
        interval = seconds_text(connect.retry.interval or 1.0)
        carried.append(
            f"{times}: a refused dial is tried again every {interval}s, the client waiting "
            "(connect_retries, connect_retry_interval)"
        )
    if command.dump is not DumpMode.OFF:
        shown = " ".join(["-v"] * command.dump_text + ["-x"] * command.dump_hex)
        carried.append(f"{shown}: the bytes are written to stderr as socat does (relay by copy)")
    if command.verbosity >= DEBUG_VERBOSITY:
        carried.append("log level debug (-dddd)")
    elif command.verbosity:
        dropped.append(
            f"-{'d' * command.verbosity}: pyforward logs at info by default "
            "(start, listen, one line per connection)"
        )
    if command.buffer_size is not None:
        dropped.append(f"-b {command.buffer_size}: the relay sizes its own buffers")
    if command.close_delay is not None:
        dropped.append(
            f"-t {seconds_text(command.close_delay)}: pyforward keeps each direction open "
            "until it ends (half-close), with no close delay"
        )
    return Summary(tuple(carried), tuple(dropped))


def _listen_summary(listen: Listen) -> str:
    if isinstance(listen, UnixListenAddress):
        return f"listen unix:{listen.name} (from {keyword_of_listen(listen)})"
    return f"listen {_listen_display(listen)} (from {listen_keyword(listen)}:{listen.port}" + (
        f",bind={listen.bind})" if listen.bind else ")"
    )


def _unix_listen_summary(listen: UnixListenAddress) -> list[str]:
    lines = []
    if listen.mode is not None:
        lines.append(f"mode {listen.mode:04o} of the socket file (unix_mode)")
    if listen.user is not None:
        lines.append(f"owner {listen.user} of the socket file (unix_user)")
    if listen.group is not None:
        lines.append(f"group {listen.group} of the socket file (unix_group)")
    if listen.unlink_early:
        lines.append(
            "unlink-early: a stale socket file is replaced; unlike socat, one a server "
            "listens on is refused, and a file that is no socket is never removed"
        )
    if listen.unlink_close is not None:
        lines.append(
            "unlink-close: the socket file is removed on exit (always, as socat's default)"
        )
    return lines


def _listen_display(listen: ListenAddress) -> str:
    text = listen_text(listen)
    return f"*:{text}" if text.isdigit() else text
