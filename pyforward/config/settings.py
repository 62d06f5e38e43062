"""Settings: one schema for flags, environment variables and the TOML config file.

Naming rule: a config key is the flag's name with `_` for `-`; its environment variable
is `PYFORWARD_` plus the key in capitals. Precedence: flag > environment > config file >
default. In the file, keys inside a `[[route]]` table override the file's top level for
that route; a flag or environment variable overrides both. Routes themselves come whole
from the first layer that defines any (`--listen`/`--target`/`--route`, then
`PYFORWARD_LISTEN`/`PYFORWARD_TARGET`/`PYFORWARD_ROUTE`, then the file).

The schema (`OPTIONS`) is the one place a setting is defined: its converter, default,
flag (the CLI's options are made from it, cli/options.py) and, for a per-route one, where
its value goes in the `Route` (most into the connection `Policy` the route carries). A
feature outside the core registers its keys and its part of the building (`register`,
`Feature`): Kubernetes discovery does so from pyforward/discovery/options.py, so nothing
here imports discovery.

Everything here is pure: values in, a frozen `Settings` or a `ConfigError` out.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pyforward.config.access import AccessList, parse_network
from pyforward.config.addresses import (
    Address,
    Endpoint,
    UnixAddress,
    parse_listen,
    parse_listen_endpoint,
    parse_target_endpoint,
)
from pyforward.config.overlap import overlapping_listens
from pyforward.config.policy import Policy, ProxyProtocol
from pyforward.config.sni import host_names, shared_listens, split_route_names
from pyforward.config.unix import check_unix_route, file_mode, owner
from pyforward.errors import ConfigError
from pyforward.obs.closelog import LogConnections
from pyforward.obs.dump import DumpMode

if TYPE_CHECKING:  # a type only: the core loads nothing of discovery
    from pyforward.discovery.options import DiscoverySettings, ServiceRef

ENV_PREFIX = "PYFORWARD_"
# The kernel caps a backlog at net.core.somaxconn anyway; anything larger is a typo.
MAX_BACKLOG = 65535


class RelayMode(StrEnum):
    AUTO = "auto"
    SPLICE = "splice"
    COPY = "copy"


class LoopName(StrEnum):
    AUTO = "auto"
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Transport(StrEnum):
    """What a route forwards: TCP connections, or UDP datagrams (flows, datagram/)."""

    TCP = "tcp"
    UDP = "udp"


# A UDP flow idle this long is closed: longer than QUIC's usual idle timeout (30 s in
# quic-go, Chromium and aioquic's 60 s), so the protocol ends a connection before the
# forwarder forgets it; Linux conntrack keeps a replied UDP flow 120 s as well. DNS needs
# no shorter value: at the flow cap, one-exchange flows are evicted first (datagram/flows.py).
UDP_IDLE_TIMEOUT = 120.0
UDP_MAX_FLOWS = 4096  # per route; each flow holds one socket to the target


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Route:
    """One listener, where its connections go, and what each connection needs to know."""

    listen: Endpoint
    targets: tuple[Endpoint, ...]
    policy: Policy
    access: AccessList = field(default_factory=AccessList)
    # Discovered routes: no static targets; the Service and its port (name or number) to
    # follow (discovery fills in the top-level Service for a route that names none).
    service_port: str | None = None
    service: ServiceRef | None = None
    # The cluster a discovered route follows its Service in: its kubeconfig and node address
    # (discovery fills in the top-level ones; None: found as the README says).
    kubeconfig: str | None = None
    node_ip: str | None = None
    protocol: Transport = Transport.TCP
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    udp_max_flows: int = UDP_MAX_FLOWS
    # The TLS server names whose connections this route takes; () on a shared address: its
    # default (config/sni.py).
    sni: tuple[str, ...] = ()
    reuseport: bool = False  # SO_REUSEPORT on its TCP listeners
    # A unix: listener's socket file: its mode and owner (None: as bind() leaves them).
    unix_mode: int | None = None
    unix_user: str | None = None
    unix_group: str | None = None

    @property
    def connect_timeout(self) -> float:
        return self.policy.connect_timeout

    @property
    def idle_timeout(self) -> float | None:
        return self.policy.idle_timeout

    @property
    def keepalive(self) -> bool:
        return self.policy.keepalive

    @property
    def first_byte_timeout(self) -> float | None:
        return self.policy.first_byte_timeout

    @property
    def log_connections(self) -> LogConnections:
        return self.policy.log_connections


@dataclass(frozen=True)
class Settings:
    routes: tuple[Route, ...]
    relay: RelayMode
    loop: LoopName
    log_level: LogLevel
    backlog: int | None
    max_connections: int | None
    shutdown_timeout: float
    max_connections_per_source: int | None = None
    discovery: DiscoverySettings | None = None  # set by the discovery feature when on
    metrics: Address | None = None  # where /metrics is served; None: nowhere
    workers: int | None = 1  # processes serving the listeners; None: one per usable CPU


# --- value converters: each takes a raw value (str from the environment, or a TOML value)
# and returns the typed value or raises ValueError with a message for the user.


def _seconds(value: object) -> float:
    """A finite number of seconds, of either sign (the callers say which they take)."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("s")
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
    else:
        raise ValueError("expected a number of seconds")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a number of seconds, got {_shown(value)}")
    return seconds


def _duration(value: object) -> float:
    """Seconds, 0 or more (0 turns a timeout off)."""
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError(f"expected a non-negative number of seconds, got {_shown(value)}")
    return seconds


def _positive_duration(value: object) -> float:
    """Seconds, more than 0: a timeout that cannot be off. -1 and 0 get the same answer."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError(f"expected more than 0 seconds, got {_shown(value)}")
    return seconds


def _shown(value: object) -> str:
    """A value as the user wrote it: numbers plain, text quoted."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"expected a whole number, got {value!r}")
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError("expected a whole number")
    if value < 0:
        raise ValueError(f"expected a non-negative whole number, got {value}")
    return value


def _whole_positive(value: object) -> int:
    number = _positive_int(value)
    if number == 0:
        raise ValueError("expected a whole number of 1 or more, got 0")
    return number


def _workers(value: object) -> int | None:
    """A number of worker processes (1 or more), or `auto` (None): one per usable CPU."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        count = _positive_int(value)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {_shown(value)}") from None
    if count < 1:
        raise ValueError(f"expected at least 1 process (or auto), got {count}")
    return count


def _port_or_none(value: object) -> int:
    """A port number 1-65535, or 0: any."""
    port = _positive_int(value)
    if port > 65535:
        raise ValueError(f"a port is 1-65535 (0: any), got {port}")
    return port


def _retries(value: object) -> int | None:
    """A count of retries, or `forever` (None)."""
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError(f"expected a whole number or forever, got {_shown(value)}") from None


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(enum: type[StrEnum]) -> Callable[[object], StrEnum]:
    def convert(value: object) -> StrEnum:
        if isinstance(value, str):
            try:
                return enum(value.strip().lower())
            except ValueError:
                pass
        choices = ", ".join(member.value for member in enum)
        raise ValueError(f"expected one of {choices}, got {value!r}")

    return convert


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _string_list(value: object) -> list[str]:
    """A list of strings; in the environment, separated by commas or whitespace."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("expected a string or a list of strings")


def _route_list(value: object) -> list[str]:
    """Routes; in the environment separated by whitespace (a route's targets take commas)."""
    routes = value.split() if isinstance(value, str) else _string_list(value)
    for item in routes:
        names, rest = split_route_names(item)
        listen_text, sep, target_text = rest.partition("=")
        if not sep:
            raise ValueError(
                f"invalid route {item!r}: expected LISTEN=TARGET or NAME[,NAME]@LISTEN=TARGET, "
                "e.g. 443=10.0.0.5:32653 or jenkins.example.com@443=10.0.0.5:32653"
            )
        if names:
            host_names(names)
        _checked(parse_listen_endpoint, listen_text)
        for text in target_text.split(","):
            _checked(parse_target_endpoint, text)
    return routes


def _checked(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _listen_text(value: object) -> str:
    """A listen address, checked; kept as written (a config file is written from it)."""
    text = _string(value)
    _checked(parse_listen_endpoint, text)
    return text


def _metrics_text(value: object) -> str:
    """The metrics listener's address: a host is required, so it is reachable only where
    the user says (a bare port would be every interface)."""
    text = _string(value)
    _checked(parse_listen, text)
    if parse_listen(text).host is None:
        raise ValueError(
            f"{text!r} is every interface; give HOST:PORT, e.g. 127.0.0.1:{text.strip()}"
        )
    return text


def _target_list(value: object) -> list[str]:
    """One target or several, checked; an empty list forwards nowhere."""
    targets = _string_list(value)
    if not targets:
        raise ValueError("no target given (an empty list); give at least one HOST:PORT")
    for text in targets:
        _checked(parse_target_endpoint, text)
    return targets


def _network_list(value: object) -> list[str]:
    """Addresses or CIDR networks, checked."""
    networks = _string_list(value)
    for text in networks:
        try:
            parse_network(text)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return networks


def _trusted_networks(value: object) -> AccessList:
    """The peers whose PROXY header is believed: addresses or CIDR networks, checked."""
    return AccessList(allow=tuple(parse_network(text) for text in _network_list(value)))


# The converters a feature's options may use as well (registered from outside config).
boolean, string, duration, choice = _boolean, _string, _duration, _choice


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
    # The default as help and the README show it, when not the value itself ("0 (off)").
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
# core (Kubernetes discovery) adds its keys with `register`. The README's configuration
# reference mirrors it, and a test holds the two (and the CLI) together.
OPTIONS: dict[str, Option] = {
    "listen": Option(
        _listen_text,
        None,
        flag=Flag(
            list[str],
            "[HOST:]PORT (bare PORT: every interface) or unix:PATH to listen on; "
            "once (several: --route).",
            short="-l",
        ),
    ),
    "target": Option(
        _target_list,
        None,
        flag=Flag(
            list[str], "HOST:PORT or unix:PATH to forward to; repeat for failover.", short="-t"
        ),
    ),
    "route": Option(
        _route_list,
        None,
        flag=Flag(list[str], "[HOST:]PORT=HOST:PORT[,HOST:PORT]; repeatable.", short="-r"),
    ),
    "relay": Option(
        _choice(RelayMode),
        RelayMode.AUTO,
        flag=Flag(RelayMode, "Relay path: auto (splice where it works), splice, copy."),
    ),
    "loop": Option(
        _choice(LoopName),
        LoopName.AUTO,
        flag=Flag(LoopName, "Event loop: auto, uvloop, asyncio."),
    ),
    "connect_timeout": Option(
        _positive_duration,
        10.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds to wait for the target to accept [10]."),
    ),
    "connect_retries": Option(
        _retries,
        0,
        per_route=True,
        route_field=RouteField.POLICY,
        shown="0 (none)",
        flag=Flag(str, "When every target failed, dial again this many times, or forever [0]."),
    ),
    "connect_retry_interval": Option(
        _positive_duration,
        1.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds between those dials [1]."),
    ),
    "source_port": Option(
        _port_or_none,
        0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (any)",
        flag=Flag(int, "Connect to TCP targets from this local port [0 = any]."),
    ),
    "idle_timeout": Option(
        _duration,
        0.0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (off)",
        flag=Flag(float, "Close after this many idle seconds; 0 = never [0]."),
    ),
    "keepalive": Option(
        _boolean,
        False,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(bool, "TCP keepalive on both legs.", negatable=True),
    ),
    "max_connections": Option(
        _positive_int,
        None,
        shown="0 (none)",
        flag=Flag(int, "Connection cap; at the cap, stop accepting [0 = none]."),
    ),
    "backlog": Option(
        _positive_int,
        None,
        shown="system maximum",
        flag=Flag(int, "Listen backlog [the system maximum]."),
    ),
    "shutdown_timeout": Option(
        _duration,
        20.0,
        flag=Flag(float, "Seconds connections get to finish on SIGTERM [20]."),
    ),
    "workers": Option(
        _workers,
        1,
        flag=Flag(str, "Processes serving the listeners: N, or auto (one per usable CPU) [1]."),
    ),
    "allow": Option(
        _network_list,
        [],
        per_route=True,
        route_field=RouteField.ACCESS,
        shown="(everyone)",
        flag=Flag(list[str], "Only clients in this network (CIDR) may connect; repeatable."),
    ),
    "deny": Option(
        _network_list,
        [],
        per_route=True,
        route_field=RouteField.ACCESS,
        shown="(no one)",
        flag=Flag(list[str], "Clients in this network (CIDR) are refused; repeatable."),
    ),
    "max_connections_per_source": Option(
        _positive_int,
        None,
        shown="0 (none)",
        flag=Flag(int, "Connections one client address may hold [0 = no cap]."),
    ),
    "first_byte_timeout": Option(
        _duration,
        0.0,
        per_route=True,
        route_field=RouteField.POLICY,
        zero_is_off=True,
        shown="0 (off)",
        flag=Flag(float, "Close a client that sends nothing for this long; 0 = never [0]."),
    ),
    "proxy_protocol": Option(
        _choice(ProxyProtocol),
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
        _boolean,
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
        _trusted_networks,
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
        _positive_duration,
        5.0,
        per_route=True,
        route_field=RouteField.POLICY,
        flag=Flag(float, "Seconds a client of an sni address gets to send its TLS hello [5]."),
    ),
    "reuseport": Option(
        _boolean,
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
        _choice(LogLevel),
        LogLevel.INFO,
        flag=Flag(LogLevel, "debug, info, warning, error."),
    ),
    "quiet": Option(
        _boolean,
        False,
        flag=Flag(bool, "Log warnings and errors only.", short="-q"),
    ),
    "log_connections": Option(
        _choice(LogConnections),
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
        _choice(Transport),
        Transport.TCP,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(Transport, "tcp, or udp: forward datagrams, a flow per client address [tcp]."),
    ),
    "udp_idle_timeout": Option(
        _positive_duration,
        UDP_IDLE_TIMEOUT,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(float, "UDP: close a flow idle for this many seconds [120]."),
    ),
    "udp_max_flows": Option(
        _whole_positive,
        UDP_MAX_FLOWS,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(int, "UDP: flows a route may hold; past it new clients are dropped [4096]."),
    ),
    "dump": Option(
        _choice(DumpMode),
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
        _metrics_text,
        None,
        shown="(off)",
        flag=Flag(str, "Serve Prometheus metrics on HOST:PORT at /metrics [off]."),
    ),
}
FILE_ONLY_KEYS = {"config"}
# A file's values have TOML types; only the environment spells numbers and booleans as text.
_TYPED_IN_FILES: dict[Callable[[object], Any], str] = {
    _duration: "a number of seconds",
    _positive_duration: "a number of seconds",
    _positive_int: "a whole number",
    _whole_positive: "a whole number",
    _boolean: "true or false",
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


_FEATURES: list[Feature] = []


def register(options: Mapping[str, Option], feature: Feature) -> None:
    """Add a feature's keys to the schema (once; importing its module twice is harmless)."""
    if any(known.switch == feature.switch for known in _FEATURES):
        return
    for key in options:
        if key in OPTIONS:
            raise ValueError(f"option {key!r} is in the schema already")
    OPTIONS.update(options)
    _FEATURES.append(feature)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """Parse a TOML config file's text; unknown keys and bad tables are errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for key in data:
        if key not in OPTIONS:
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(key, OPTIONS)}")
    routes = data.get("route")
    if routes is not None:
        if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
            raise ConfigError(f"{source}: 'route' must be [[route]] tables")
        known = route_keys()
        for index, table in enumerate(routes, 1):
            for key in table:
                if key not in known:
                    raise ConfigError(
                        f"{source}: route {index}: unknown key {key!r}{_suggest(key, known)}"
                    )
    return data


def _suggest(key: str, known: Mapping[str, object] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(key: str, value: object, source: str) -> Any:
    try:
        return OPTIONS[key].convert(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def file_value_of_env(key: str, text: str) -> object:
    """A variable's text as a config file holds it: numbers and booleans typed, not quoted."""
    convert = OPTIONS[key].convert
    return convert(text) if convert in _TYPED_IN_FILES else text


def _convert_file(key: str, value: object, source: str) -> Any:
    """A config file's value: its TOML type must be the key's (`"5"` is not 5 seconds)."""
    kind = _TYPED_IN_FILES.get(OPTIONS[key].convert)
    if kind is not None and isinstance(value, str):
        raise ConfigError(
            f"{source}: expected {kind}, got the string {value!r} "
            "(TOML writes numbers and true/false without quotes)"
        )
    return _convert(key, value, source)


def build_settings(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_data: Mapping[str, Any] | None = None,
    file_source: str = "config file",
) -> Settings:
    """Merge the three layers into validated Settings.

    `flags` holds only the flags the user gave, already typed by the CLI (lists for
    repeatable flags). `env` is the whole process environment; only PYFORWARD_* keys
    named in the schema are read. Every error names where its value came from: the flag,
    the variable, or `FILE: key`.
    """
    file_data = dict(file_data or {})
    layers: list[tuple[str, dict[str, Any]]] = []
    layers.append(("flags", {k: v for k, v in flags.items() if v not in (None, [], ())}))
    env_layer: dict[str, Any] = {}
    for key in OPTIONS:
        name = env_name(key)
        if name in env:
            env_layer[key] = _convert(key, env[name], name)
    layers.append(("env", env_layer))

    def source_of(key: str) -> tuple[int, str] | None:
        """Which layer gives `key` (0 flags, 1 environment, 2 file) and its name there."""
        if key in layers[0][1]:
            return 0, flag_name(key)
        if key in env_layer:
            return 1, env_name(key)
        if key in file_data:
            return 2, f"{file_source}: {key}"
        return None

    def pick(key: str) -> Any:
        found = source_of(key)
        if found is None:
            return OPTIONS[key].default
        rank, name = found
        if rank == 0:
            return _convert(key, layers[0][1][key], name)
        if rank == 1:
            return env_layer[key]
        return _convert_file(key, file_data[key], name)

    route_defaults = {key: pick(key) for key in OPTIONS if OPTIONS[key].per_route}
    feature = _feature_on(pick)
    _refuse_keys_of_features_off(feature, source_of, file_data, file_source)
    discover = feature is not None
    routes = _build_routes(layers, file_data, file_source, route_defaults, discover=discover)
    extension = None
    if feature is not None:

        def make_route(listen_text: str, service_port: str) -> Route:
            table = {"service_port": service_port}
            return _route((listen_text, []), table, route_defaults, set(), "--preset")

        routes, extension = feature.complete(routes, pick, make_route, env)
    if not routes:
        raise ConfigError(
            "no route to forward: give --listen PORT --target HOST:PORT, --route, or --config FILE"
        )
    for protocol in Transport:  # a TCP and a UDP socket on one port do not collide
        of_protocol = [r for r in routes if r.protocol is protocol]
        # TCP routes may share an address, told apart by TLS server name (config/sni.py).
        by_ip = [r for r in of_protocol if isinstance(r.listen, Address)]
        shared = shared_listens(by_ip) if protocol is Transport.TCP else set()
        listens: list[Endpoint] = [
            r.listen for r in of_protocol if isinstance(r.listen, UnixAddress) or r.listen.port
        ]
        duplicates = {str(a) for a in listens if listens.count(a) > 1 and a not in shared}
        if duplicates:
            raise ConfigError(f"listen address given twice: {', '.join(sorted(duplicates))}")
        overlap = overlapping_listens([a for a in dict.fromkeys(listens) if isinstance(a, Address)])
        if overlap is not None:
            raise ConfigError(overlap)

    level = _log_level(pick, source_of)
    backlog: int = pick("backlog")
    backlog_from = source_of("backlog")
    if backlog_from is not None and not 1 <= backlog <= MAX_BACKLOG:
        raise ConfigError(f"{backlog_from[1]}: must be 1-{MAX_BACKLOG}, got {backlog}")
    max_connections: int | None = pick("max_connections") or None
    workers: int | None = pick("workers")
    single = [
        kind
        for kind, present in (
            ("a UDP route", any(route.protocol is Transport.UDP for route in routes)),
            ("a unix: listener", any(isinstance(route.listen, UnixAddress) for route in routes)),
        )
        if present
    ]
    if workers != 1 and single:
        place = source_of("workers")
        raise ConfigError(
            f"{place[1] if place else 'workers'}: workers = {workers or 'auto'} with "
            f"{single[0]}: those are served by one process (a UDP flow lives in the process "
            "that owns its socket; a unix: socket file has one owner); give them a pyforward "
            "of their own with workers = 1"
        )
    relay: RelayMode = pick("relay")
    if any(route.policy.dump is not DumpMode.OFF for route in routes):
        if relay is RelayMode.SPLICE:
            raise ConfigError(
                f"{_source_name(source_of, 'relay')}: splice moves bytes in the kernel, where "
                "dump cannot show them; leave relay at auto (dump relays by copy)"
            )
        relay = RelayMode.COPY
    return Settings(
        max_connections_per_source=pick("max_connections_per_source") or None,
        routes=tuple(routes),
        relay=relay,
        loop=pick("loop"),
        log_level=level,
        backlog=backlog,
        max_connections=max_connections,
        shutdown_timeout=pick("shutdown_timeout"),
        discovery=extension,
        metrics=None if pick("metrics") is None else parse_listen(pick("metrics")),
        workers=workers,
    )


SourceOf = Callable[[str], "tuple[int, str] | None"]


def _source_name(source_of: SourceOf, key: str) -> str:
    found = source_of(key)
    return found[1] if found is not None else key


def _feature_on(pick: Callable[[str], Any]) -> Feature | None:
    """The registered feature switched on, if any."""
    return next((feature for feature in _FEATURES if pick(feature.switch)), None)


def _refuse_keys_of_features_off(
    on: Feature | None, source_of: SourceOf, file_data: Mapping[str, Any], file_source: str
) -> None:
    """A feature's setting without its switch would be ignored: say so instead."""
    for feature in _FEATURES:
        if feature is on:
            continue
        switch = feature.switch
        for key in feature.keys:
            found = source_of(key)
            if found is not None:
                raise ConfigError(
                    f"{found[1]}: {key} is for {feature.title}, which is off; "
                    f"add {flag_name(switch)} ({switch} = true in a file) or drop it"
                )
        for index, table in enumerate(file_data.get("route") or [], 1):
            given = [k for k in feature.keys if isinstance(table, Mapping) and k in table]
            if given:
                raise ConfigError(
                    f"{file_source}: route {index}: {given[0]} is for {feature.title}, "
                    f"which is off; add {switch} = true or drop it"
                )


def _log_level(pick: Callable[[str], Any], source_of: SourceOf) -> LogLevel:
    """`log_level`, or warning for `quiet`; the two given in one place contradict."""
    level: LogLevel = pick("log_level")
    if not pick("quiet"):
        return level
    quiet_from, level_from = source_of("quiet"), source_of("log_level")
    if level_from is None or quiet_from is None:
        return LogLevel.WARNING
    if level_from[0] == quiet_from[0] and level != LogLevel.WARNING:
        raise ConfigError(
            f"{quiet_from[1]} and {level_from[1]} {level.value} contradict each other "
            "(quiet means log level warning); give one of them"
        )
    # Given in different layers, the nearer one wins, as for every other setting.
    return level if level_from[0] < quiet_from[0] else LogLevel.WARNING


def _build_routes(
    layers: Sequence[tuple[str, Mapping[str, Any]]],
    file_data: Mapping[str, Any],
    file_source: str,
    overrides_and_defaults: Mapping[str, Any],
    *,
    discover: bool = False,
) -> list[Route]:
    # Per-route keys given as a flag or in the environment override every route.
    overriding = {key for key in overrides_and_defaults if any(key in layer for _, layer in layers)}
    for source, layer in layers:
        specs = _route_specs(layer, source, discover=discover)
        if specs:
            return [
                _route(spec[:2], spec[2], overrides_and_defaults, set(), source) for spec in specs
            ]
    specs = _route_specs(file_data, file_source, route_strings=False, discover=discover)
    file_defaults = {
        key: _convert_file(key, file_data[key], f"{file_source}: {key}")
        if key in file_data and key not in overriding
        else overrides_and_defaults[key]
        for key in overrides_and_defaults
    }
    routes = [_route(spec[:2], {}, file_defaults, overriding, file_source) for spec in specs]
    for index, table in enumerate(file_data.get("route") or [], 1):
        where = f"{file_source}: route {index}"
        if "listen" not in table or ("target" not in table and not discover):
            raise ConfigError(f"{where}: needs both 'listen' and 'target'")
        listen = _convert_file("listen", table["listen"], f"{where}: listen")
        targets = (
            _convert_file("target", table["target"], f"{where}: target")
            if "target" in table
            else []
        )
        extra = {k: v for k, v in table.items() if k not in ("listen", "target")}
        routes.append(_route((listen, targets), extra, file_defaults, overriding, where))
    return routes


def _namer(source: str) -> Callable[[str], str]:
    """How a key is named in a layer: its flag, its variable, or `FILE: key`."""
    if source == "flags":
        return flag_name
    if source == "env":
        return env_name
    return lambda key: f"{source}: {key}"


def _route_specs(
    layer: Mapping[str, Any],
    source: str,
    *,
    route_strings: bool = True,
    discover: bool = False,
) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(listen, targets, the route's own keys) of the routes a layer names; every value
    already checked."""
    name = _namer(source)
    convert = _convert if route_strings else _convert_file
    specs: list[tuple[str, list[str], dict[str, Any]]] = []
    listen, targets = layer.get("listen"), layer.get("target")
    if listen is not None or targets is not None:
        if listen is None:
            raise ConfigError(
                f"{name('target')}: a target needs a listen address ({name('listen')})"
            )
        listen_text = convert("listen", listen, name("listen"))
        if targets is None and not discover:
            raise ConfigError(
                f"{name('listen')}: listen address {listen_text} needs a target "
                f"({name('target')}, or --discover)"
            )
        target_texts = convert("target", targets, name("target")) if targets is not None else []
        specs.append((listen_text, target_texts, {}))
    routes = _convert("route", layer.get("route") or [], name("route")) if route_strings else []
    for item in routes:
        names, rest = split_route_names(item)
        listen_text, _, target_text = rest.partition("=")
        specs.append((listen_text, target_text.split(","), {"sni": names} if names else {}))
    return specs


def _route(
    spec: tuple[str, list[str]],
    table: Mapping[str, Any],
    defaults: Mapping[str, Any],
    overriding: set[str],
    where: str,
) -> Route:
    listen_text, target_texts = spec
    values = dict(defaults)
    for key, raw in table.items():
        if key not in overriding:
            values[key] = _convert_file(key, raw, f"{where}: {key}")
    if values["accept_proxy_protocol"] and not values["proxy_protocol_from"]:
        # Named by the route only where the route is a file's: a flag or variable of either
        # key applies to every route.
        place = "" if where in ("flags", "env", "--preset") else f"{where}: "
        raise ConfigError(
            f"{place}accept_proxy_protocol (route {listen_text}) needs proxy_protocol_from "
            "(--proxy-protocol-from CIDR): the load balancers whose PROXY header to believe; "
            "a header from anyone else is never honoured"
        )
    listen = parse_listen_endpoint(listen_text)
    check_unix_route(listen, values, where)
    if values["protocol"] is Transport.UDP:
        if isinstance(listen, UnixAddress):
            raise ConfigError(
                f'{where}: {listen} with protocol = "udp": UDP routes listen on an IP '
                "address and port; unix: sockets here are stream sockets"
            )
        _refuse_tcp_only(values, listen_text, where)
    return Route(
        listen=listen,
        targets=tuple(parse_target_endpoint(text) for text in target_texts),
        policy=Policy(**_route_values(RouteField.POLICY, values)),
        access=AccessList.parse(values["allow"], values["deny"]),
        **_route_values(RouteField.ROUTE, values),
    )


# Per-route keys that mean something on a TCP stream only.
_TCP_ONLY = ("proxy_protocol", "accept_proxy_protocol", "first_byte_timeout", "keepalive", "sni")


def _refuse_tcp_only(values: Mapping[str, Any], listen_text: str, where: str) -> None:
    for key in _TCP_ONLY:
        if values[key] != OPTIONS[key].default:
            place = "" if where in ("flags", "env", "--preset") else f"{where}: "
            raise ConfigError(
                f"{place}{key} (route {listen_text}) is for TCP routes; a UDP route "
                '(protocol = "udp") relays datagrams, with no stream to put it on'
            )


def _route_values(where: RouteField, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the per-route options that go `where`, by key (0 off: None)."""
    return {
        key: (values[key] or None) if option.zero_is_off else values[key]
        for key, option in OPTIONS.items()
        if option.route_field is where
    }
