"""The schema: every setting once (`OPTIONS`), with its converter, default, flag and, for a
per-route one, where its value goes in the `Route`; features outside the core add theirs
(`register`). Pure."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pyforward.config.access import AccessList
from pyforward.config.model import (
    UDP_IDLE_TIMEOUT,
    UDP_MAX_FLOWS,
    LogLevel,
    LoopName,
    RelayMode,
    Route,
    Transport,
)
from pyforward.config.policy import ProxyProtocol
from pyforward.config.sni import host_names
from pyforward.config.unix import file_mode, owner
from pyforward.config.values import (
    boolean,
    choice,
    duration,
    listen_text,
    metrics_text,
    network_list,
    port_or_none,
    positive_duration,
    positive_int,
    retries,
    route_list,
    target_list,
    trusted_networks,
    whole_positive,
    workers_value,
)
from pyforward.errors import ConfigError
from pyforward.obs.closelog import LogConnections
from pyforward.obs.dump import DumpMode

ENV_PREFIX = "PYFORWARD_"


@dataclass(frozen=True)
class Flag:
    """How an option is given on the command line (`run` and the commands taking its options).

    The flag is the key with `-` for `_` (`flag_name`); `kind` is what the CLI parses its
    text into before the option's converter checks it, as for every other layer.
    """

    kind: Any
    help: str
    short: str | None = None
    negatable: bool = False  # a boolean with its --no- form

    def decls(self, key: str) -> tuple[str, ...]:
        """The names the CLI takes, as typer (click) declares them."""
        name = flag_name(key)
        first = f"{name}/--no-{name[2:]}" if self.negatable else name
        return (first, self.short) if self.short else (first,)


class RouteField(StrEnum):
    """Where a per-route option's value goes in its `Route`."""

    POLICY = "policy"  # the connection policy: `Policy` has a field of the option's name
    ACCESS = "access"  # allow/deny, read together into the route's AccessList
    ROUTE = "route"  # a field of the Route itself, of the option's name


@dataclass(frozen=True)
class Option:
    """One setting: its converter and default, and how it is given in each layer.

    Its name (the key in `OPTIONS`) is its config-file key; its variable is `env_name`,
    its flag `flag_name` (with `flag`, how the CLI parses it; None: not a flag).
    """

    convert: Callable[[object], Any]
    default: object
    per_route: bool = False
    flag: Flag | None = None
    # The default as help and the docs show it, when not the value itself ("0 (off)").
    shown: str | None = None
    route_field: RouteField | None = None  # per-route options only
    # A timeout that 0 turns off is None in the Route ("no timeout").
    zero_is_off: bool = False

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        value = self.default
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, StrEnum):
            return f"`{value.value}`"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


# The schema: every setting, in the order `run --help` lists them. A feature outside the
# core (Kubernetes discovery) adds its keys with `register`. The configuration
# reference (docs/configuration.md) mirrors it, and a test holds the two (and the CLI) together.
OPTIONS: dict[str, Option] = {
    "listen": Option(
        listen_text,
        None,
        flag=Flag(
            list[str],
            "[HOST:]PORT (bare PORT: every interface) or unix:PATH to listen on; "
            "once (several: --route).",
            short="-l",
        ),
    ),
    "target": Option(
        target_list,
        None,
        flag=Flag(
            list[str], "HOST:PORT or unix:PATH to forward to; repeat for failover.", short="-t"
        ),
    ),
    "route": Option(
        route_list,
        None,
        flag=Flag(list[str], "[HOST:]PORT=HOST:PORT[,HOST:PORT]; repeatable.", short="-r"),
    ),
    "relay": Option(
        choice(RelayMode),
        RelayMode.AUTO,
        flag=Flag(RelayMode, "Relay path: auto (splice where it works), splice, copy."),
    ),
    "loop": Option(
        choice(LoopName),
        LoopName.AUTO,
        flag=Flag(LoopName, "Event loop: auto, uvloop, asyncio."),
    ),
    "connect_timeout": Option(
        positive_duration,
        10.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds to wait for the target to accept [10]."),
    ),
    "connect_retries": Option(
        retries,
        0,
        per_route=True,
        route_field=RouteField.POLICY,
        shown="0 (none)",
        flag=Flag(str, "When every target failed, dial again this many times, or forever [0]."),
    ),
    "connect_retry_interval": Option(
        positive_duration,
        1.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds between those dials [1]."),
    ),
    "source_port": Option(
        port_or_none,
        0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (any)",
        flag=Flag(int, "Connect to TCP targets from this local port [0 = any]."),
    ),
    "idle_timeout": Option(
        duration,
        0.0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (off)",
        flag=Flag(float, "Close after this many idle seconds; 0 = never [0]."),
    ),
    "keepalive": Option(
        boolean,
        False,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(bool, "TCP keepalive on both legs.", negatable=True),
    ),
    "max_connections": Option(
        positive_int,
        None,
        shown="0 (none)",
        flag=Flag(int, "Connection cap; at the cap, stop accepting [0 = none]."),
    ),
    "backlog": Option(
        positive_int,
        None,
        shown="system maximum",
        flag=Flag(int, "Listen backlog [the system maximum]."),
    ),
    "shutdown_timeout": Option(
        duration,
        20.0,
        flag=Flag(float, "Seconds connections get to finish on SIGTERM [20]."),
    ),
    "workers": Option(
        workers_value,
        1,
        flag=Flag(str, "Processes serving the listeners: N, or auto (one per usable CPU) [1]."),
    ),
    "allow": Option(
        network_list,
        [],
        per_route=True,
        route_field=RouteField.ACCESS,
        shown="(everyone)",
        flag=Flag(list[str], "Only clients in this network (CIDR) may connect; repeatable."),
    ),
    "deny": Option(
        network_list,
        [],
        per_route=True,
        route_field=RouteField.ACCESS,
        shown="(no one)",
        flag=Flag(list[str], "Clients in this network (CIDR) are refused; repeatable."),
    ),
    "max_connections_per_source": Option(
        positive_int,
        None,
        shown="0 (none)",
        flag=Flag(int, "Connections one client address may hold [0 = no cap]."),
    ),
    "first_byte_timeout": Option(
        duration,
        0.0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (off)",
        flag=Flag(float, "Close a client that sends nothing for this long; 0 = never [0]."),
    ),
    "proxy_protocol": Option(
        choice(ProxyProtocol),
        ProxyProtocol.OFF,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(
            ProxyProtocol,
            "Send the target a PROXY protocol header (v1 text, v2 binary) with the "
            "client's address before its bytes [off].",
        ),
    ),
    "accept_proxy_protocol": Option(
        boolean,
        False,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(
            bool,
            "Clients from --proxy-protocol-from start with a PROXY header (v1 or v2) "
            "naming the real client.",
        ),
    ),
    "proxy_protocol_from": Option(
        trusted_networks,
        AccessList(),
        per_route=True,
        route_field=RouteField.POLICY,
        shown="(no one)",
        flag=Flag(list[str], "Peers (CIDR) whose PROXY header is believed; repeatable."),
    ),
    "sni": Option(
        host_names,
        (),
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="(none: the address's default)",
        flag=Flag(
            list[str],
            "TLS server names (or *.domain) this route takes on a shared listen address; "
            "per route: NAME@LISTEN=TARGET in --route.",
        ),
    ),
    "sni_timeout": Option(
        positive_duration,
        5.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds a client of an sni address gets to send its TLS hello [5]."),
    ),
    "reuseport": Option(
        boolean,
        False,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(bool, "SO_REUSEPORT: other processes may listen on the same port too."),
    ),
    "unix_mode": Option(
        file_mode,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="(0777 less the umask)",
        flag=Flag(str, "Mode of a unix: listener's socket file, in octal (0660)."),
    ),
    "unix_user": Option(
        owner,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="(pyforward's user)",
        flag=Flag(str, "Owner of a unix: listener's socket file (a name or uid)."),
    ),
    "unix_group": Option(
        owner,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="(pyforward's group)",
        flag=Flag(str, "Group of a unix: listener's socket file (a name or gid)."),
    ),
    "log_level": Option(
        choice(LogLevel),
        LogLevel.INFO,
        flag=Flag(LogLevel, "debug, info, warning, error."),
    ),
    "quiet": Option(
        boolean,
        False,
        flag=Flag(bool, "Log warnings and errors only.", short="-q"),
    ),
    "log_connections": Option(
        choice(LogConnections),
        LogConnections.ALL,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(
            LogConnections,
            "Close lines for all connections, for errors only (not eof), or none; "
            "the rest are counted in an event=closed-summary line every 10 s [all].",
        ),
    ),
    "protocol": Option(
        choice(Transport),
        Transport.TCP,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(Transport, "tcp, or udp: forward datagrams, a flow per client address [tcp]."),
    ),
    "udp_idle_timeout": Option(
        positive_duration,
        UDP_IDLE_TIMEOUT,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(float, "UDP: close a flow idle for this many seconds [120]."),
    ),
    "udp_max_flows": Option(
        whole_positive,
        UDP_MAX_FLOWS,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(int, "UDP: flows a route may hold; past it new clients are dropped [4096]."),
    ),
    "dump": Option(
        choice(DumpMode),
        DumpMode.OFF,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(
            DumpMode,
            "Write the bytes to stderr as socat -v (text), -x (hex) or -v -x (text-hex); "
            "relays by copy [off].",
        ),
    ),
    "metrics": Option(
        metrics_text,
        None,
        shown="(off)",
        flag=Flag(str, "Serve Prometheus metrics on HOST:PORT at /metrics [off]."),
    ),
}
FILE_ONLY_KEYS = {"config"}
# A file's values have TOML types; only the environment spells numbers and booleans as text.
_TYPED_IN_FILES: dict[Callable[[object], Any], str] = {
    duration: "a number of seconds",
    positive_duration: "a number of seconds",
    positive_int: "a whole number",
    whole_positive: "a whole number",
    boolean: "true or false",
}


def route_keys() -> set[str]:
    """The keys a `[[route]]` table may hold."""
    return {"listen", "target"} | {key for key, option in OPTIONS.items() if option.per_route}


class Feature(Protocol):
    """A part of pyforward outside the core with settings of its own (Kubernetes
    discovery): its keys are in `OPTIONS`, registered with it; it says which routes it
    completes and what settings of its own it builds from the picked values."""

    switch: str  # the boolean key turning it on ("discover")
    title: str  # what it is called in messages ("Kubernetes discovery")
    keys: tuple[str, ...]  # keys meaning something only when it is on

    def complete(
        self,
        routes: list[Route],
        pick: Callable[[str], Any],
        make_route: Callable[[str, str], Route],
        env: Mapping[str, str],
    ) -> tuple[list[Route], Any]: ...


FEATURES: list[Feature] = []


def register(options: Mapping[str, Option], feature: Feature) -> None:
    """Add a feature's keys to the schema (once; importing its module twice is harmless)."""
    if any(known.switch == feature.switch for known in FEATURES):
        return
    for key in options:
        if key in OPTIONS:
            raise ValueError(f"option {key!r} is in the schema already")
    OPTIONS.update(options)
    FEATURES.append(feature)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def suggest(key: str, known: Mapping[str, object] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def convert_value(key: str, value: object, source: str) -> Any:
    try:
        return OPTIONS[key].convert(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def file_value_of_env(key: str, text: str) -> object:
    """A variable's text as a config file holds it: numbers and booleans typed, not quoted."""
    convert = OPTIONS[key].convert
    return convert(text) if convert in _TYPED_IN_FILES else text


def convert_file_value(key: str, value: object, source: str) -> Any:
    """A config file's value: its TOML type must be the key's (`"5"` is not 5 seconds)."""
    kind = _TYPED_IN_FILES.get(OPTIONS[key].convert)
    if kind is not None and isinstance(value, str):
        raise ConfigError(
            f"{source}: expected {kind}, got the string {value!r} "
            "(TOML writes numbers and true/false without quotes)"
        )
    return convert_value(key, value, source)
