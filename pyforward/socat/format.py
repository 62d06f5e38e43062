"""Back to a command line: the canonical socat arguments of a parsed command, and its
addresses in pyforward's own form. Pure."""

from __future__ import annotations

import re
from decimal import Decimal

from pyforward.config.addresses import host_port
from pyforward.config.model import Transport
from pyforward.socat import udp
from pyforward.socat.model import (
    Connect,
    ConnectAddress,
    Family,
    Listen,
    ListenAddress,
    SocatCommand,
)
from pyforward.socat.unix import (
    UnixConnectAddress,
    UnixListenAddress,
    keyword_of_connect,
    keyword_of_listen,
    socat_param,
)


def seconds_text(seconds: float) -> str:
    # Positional notation of the shortest repr: socat reads no exponents.
    text = format(Decimal(repr(seconds)), "f")
    return text.removesuffix(".0") if "." in text else text


_ESCAPE = re.compile(r"""([\\:,!"'()\[\]{}=])""")


def _escape(text: str) -> str:
    return _ESCAPE.sub(r"\\\1", text)


def listen_keyword(listen: ListenAddress) -> str:
    if listen.transport is Transport.UDP:
        return udp.listen_keyword(listen)
    return f"TCP{listen.family.value}-LISTEN"


def _connect_keyword(connect: ConnectAddress) -> str:
    prefix = "UDP" if connect.transport is Transport.UDP else "TCP"
    return f"{prefix}{connect.family.value}"


def format_socat_args(command: SocatCommand) -> list[str]:
    """The canonical socat arguments for a command: parsing them gives it back."""
    argv: list[str] = []
    if command.verbosity:
        argv.append("-" + "d" * command.verbosity)
    if command.idle_timeout is not None:
        argv += ["-T", seconds_text(command.idle_timeout)]
    if command.close_delay is not None:
        argv += ["-t", seconds_text(command.close_delay)]
    if command.buffer_size is not None:
        argv += ["-b", str(command.buffer_size)]
    argv += ["-v"] * command.dump_text + ["-x"] * command.dump_hex
    argv.append(",".join(_listen_words(command.listen)))
    argv.append(",".join(_connect_words(command.connect)))
    return argv


def _listen_words(listen: Listen) -> list[str]:
    if isinstance(listen, UnixListenAddress):
        words = [f"{keyword_of_listen(listen)}:{_escape(socat_param(listen.name))}"]
        if listen.fork:
            words.append("fork")
    else:
        words = [f"{listen_keyword(listen)}:{listen.port}"]
        if listen.fork:
            words.append("fork")
        if listen.reuseaddr:
            words.append("reuseaddr")
        if listen.bind is not None:
            bind = f"[{listen.bind}]" if ":" in listen.bind else _escape(listen.bind)
            words.append(f"bind={bind}")
    if listen.backlog is not None:
        words.append(f"backlog={listen.backlog}")
    if listen.max_children is not None:
        words.append(f"max-children={listen.max_children}")
    if isinstance(listen, UnixListenAddress):
        if listen.mode is not None:
            words.append(f"mode={listen.mode:04o}")
        words += [
            f"{key}={_escape(v)}"
            for key, v in (("user", listen.user), ("group", listen.group))
            if v
        ]
        if listen.unlink_early:
            words.append("unlink-early")
        if listen.unlink_close is not None:
            words.append(f"unlink-close={int(listen.unlink_close)}")
    else:
        if listen.keepalive:
            words.append("keepalive")
        if listen.nodelay:
            words.append("nodelay")
        if listen.allow is not None:
            network = f"[{listen.allow.replace('/', ']/')}" if ":" in listen.allow else listen.allow
            words.append(f"range={network}")
        if listen.ipv6_v6only is not None:
            words.append(f"ipv6-v6only={int(listen.ipv6_v6only)}")
        if listen.reuseport:
            words.append("reuseport")
    if listen.su is not None:
        words.append(f"su={_escape(listen.su)}")
    return words


def _connect_words(connect: Connect) -> list[str]:
    if isinstance(connect, UnixConnectAddress):
        words = [f"{keyword_of_connect(connect)}:{_escape(socat_param(connect.name))}"]
    else:
        host = f"[{connect.host}]" if ":" in connect.host else _escape(connect.host)
        words = [f"{_connect_keyword(connect)}:{host}:{connect.port}"]
    if connect.connect_timeout is not None:
        words.append(f"connect-timeout={seconds_text(connect.connect_timeout)}")
    if isinstance(connect, ConnectAddress):
        if connect.keepalive:
            words.append("keepalive")
        if connect.nodelay:
            words.append("nodelay")
        if connect.sourceport is not None:
            words.append(f"sourceport={connect.sourceport}")
    retry = connect.retry
    if retry is not None:
        words.append("forever" if retry.times is None else f"retry={retry.times}")
        if retry.interval is not None:
            words.append(f"interval={seconds_text(retry.interval)}")
    return words


def listen_text(listen: Listen) -> str:
    """The listen address in pyforward's form: `PORT`, `0.0.0.0:PORT`, `HOST:PORT` or
    `unix:PATH`."""
    if isinstance(listen, UnixListenAddress):
        return f"unix:{listen.name}"
    if listen.bind is not None:
        if listen.ipv6_v6only is False and listen.bind == "::":
            return str(listen.port)  # every interface, IPv4-mapped clients too
        return host_port(listen.bind, listen.port)
    if listen.family is Family.IPV4:
        return f"0.0.0.0:{listen.port}"
    if listen.ipv6_v6only:
        return f"[::]:{listen.port}"  # a named IPv6 address is bound IPv6-only
    # TCP6-LISTEN without ipv6only accepts IPv4-mapped clients on Linux, like
    # pyforward's every-interface listener; socat's TCP-LISTEN is IPv4 only, a subset.
    return str(listen.port)


def target_text(connect: Connect) -> str:
    if isinstance(connect, UnixConnectAddress):
        return f"unix:{connect.name}"
    return host_port(connect.host, connect.port)
