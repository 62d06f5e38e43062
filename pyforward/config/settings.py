"""Settings: one schema for flags, environment variables and the TOML config file.

Naming rule: a config key is the flag's name with `_` for `-`; its environment variable
is `PYFORWARD_` plus the key in capitals. Precedence: flag > environment > config file >
default. In the file, keys inside a `[[route]]` table override the file's top level for
that route; a flag or environment variable overrides both. Routes themselves come whole
from the first layer that defines any (`--listen`/`--target`/`--route`, then
`PYFORWARD_LISTEN`/`PYFORWARD_TARGET`/`PYFORWARD_ROUTE`, then the file).

Everything here is pure: values in, a frozen `Settings` or a `ConfigError` out.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pyforward.config.access import AccessList, parse_network
from pyforward.config.addresses import Address, parse_listen, parse_target
from pyforward.config.overlap import overlapping_listens
from pyforward.discovery.options import (
    DEFAULT_BOOT_TIMEOUT,
    DEFAULT_SERVICE,
    DEFAULT_SERVICE_PORT,
    PRESETS,
    DiscoverySettings,
    PresetName,
    default_state_dir,
    parse_node_ip,
    parse_port_ref,
    parse_service_ref,
)
from pyforward.errors import ConfigError
from pyforward.obs.closelog import LogConnections

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


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Route:
    """One listener and where its connections go."""

    listen: Address
    targets: tuple[Address, ...]
    connect_timeout: float
    idle_timeout: float | None
    keepalive: bool
    access: AccessList = field(default_factory=AccessList)
    first_byte_timeout: float | None = None
    # Discovered routes: no static targets; the Service port (name or number) to follow.
    service_port: str | None = None
    log_connections: LogConnections = LogConnections.ALL


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
    discovery: DiscoverySettings | None = None
    metrics: Address | None = None  # where /metrics is served; None: nowhere


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
        listen_text, sep, target_text = item.partition("=")
        if not sep:
            raise ValueError(
                f"invalid route {item!r}: expected LISTEN=TARGET, e.g. 443=10.0.0.5:32653"
            )
        _checked(parse_listen, listen_text)
        for text in target_text.split(","):
            _checked(parse_target, text)
    return routes


def _checked(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _listen_text(value: object) -> str:
    """A listen address, checked; kept as written (a config file is written from it)."""
    text = _string(value)
    _checked(parse_listen, text)
    return text


def _metrics_text(value: object) -> str:
    """The metrics listener's address: a host is required, so it is reachable only where
    the user says (a bare port would be every interface)."""
    text = _listen_text(value)
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
        _checked(parse_target, text)
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


@dataclass(frozen=True)
class Option:
    convert: Callable[[object], Any]
    default: object
    per_route: bool = False


# The schema. Later features add their keys here; the README's reference mirrors it.
OPTIONS: dict[str, Option] = {
    "listen": Option(_listen_text, None),
    "target": Option(_target_list, None),
    "route": Option(_route_list, None),
    "relay": Option(_choice(RelayMode), RelayMode.AUTO),
    "loop": Option(_choice(LoopName), LoopName.AUTO),
    "log_level": Option(_choice(LogLevel), LogLevel.INFO),
    "quiet": Option(_boolean, False),
    "log_connections": Option(_choice(LogConnections), LogConnections.ALL, per_route=True),
    "backlog": Option(_positive_int, None),
    "max_connections": Option(_positive_int, None),
    "shutdown_timeout": Option(_duration, 20.0),
    "connect_timeout": Option(_positive_duration, 10.0, per_route=True),
    "idle_timeout": Option(_duration, 0.0, per_route=True),
    "keepalive": Option(_boolean, False, per_route=True),
    "first_byte_timeout": Option(_duration, 0.0, per_route=True),
    "allow": Option(_network_list, [], per_route=True),
    "deny": Option(_network_list, [], per_route=True),
    "max_connections_per_source": Option(_positive_int, None),
    "metrics": Option(_metrics_text, None),
    # Kubernetes discovery (pyforward/discovery/).
    "discover": Option(_boolean, False),
    "kubeconfig": Option(_string, None),
    "service": Option(parse_service_ref, None),
    "service_port": Option(parse_port_ref, None, per_route=True),
    "preset": Option(_choice(PresetName), None),
    "node_ip": Option(parse_node_ip, None),
    "state_dir": Option(_string, None),
    "discover_timeout": Option(_duration, DEFAULT_BOOT_TIMEOUT),
}
ROUTE_KEYS = {"listen", "target"} | {key for key, opt in OPTIONS.items() if opt.per_route}
FILE_ONLY_KEYS = {"config"}
# Keys that mean something only with `discover`: without it they would be silently ignored.
DISCOVERY_KEYS = (
    "kubeconfig",
    "service",
    "service_port",
    "preset",
    "node_ip",
    "state_dir",
    "discover_timeout",
)
# A file's values have TOML types; only the environment spells numbers and booleans as text.
_TYPED_IN_FILES: dict[Callable[[object], Any], str] = {
    _duration: "a number of seconds",
    _positive_duration: "a number of seconds",
    _positive_int: "a whole number",
    _boolean: "true or false",
}


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
        for index, table in enumerate(routes, 1):
            for key in table:
                if key not in ROUTE_KEYS:
                    raise ConfigError(
                        f"{source}: route {index}: unknown key {key!r}{_suggest(key, ROUTE_KEYS)}"
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
    discover: bool = pick("discover")
    if not discover:
        _refuse_discovery_keys(source_of, file_data, file_source)
    routes = _build_routes(layers, file_data, file_source, route_defaults, discover=discover)
    discovery = None
    if discover:
        routes, discovery = _discovered_routes(routes, pick, route_defaults, env)
    if not routes:
        raise ConfigError(
            "no route to forward: give --listen PORT --target HOST:PORT, --route, or --config FILE"
        )
    listens = [route.listen for route in routes if route.listen.port != 0]
    duplicates = {str(a) for a in listens if listens.count(a) > 1}
    if duplicates:
        raise ConfigError(f"listen address given twice: {', '.join(sorted(duplicates))}")
    overlap = overlapping_listens(listens)
    if overlap is not None:
        raise ConfigError(overlap)

    level = _log_level(pick, source_of)
    backlog: int = pick("backlog")
    backlog_from = source_of("backlog")
    if backlog_from is not None and not 1 <= backlog <= MAX_BACKLOG:
        raise ConfigError(f"{backlog_from[1]}: must be 1-{MAX_BACKLOG}, got {backlog}")
    max_connections: int | None = pick("max_connections") or None
    return Settings(
        max_connections_per_source=pick("max_connections_per_source") or None,
        routes=tuple(routes),
        relay=pick("relay"),
        loop=pick("loop"),
        log_level=level,
        backlog=backlog,
        max_connections=max_connections,
        shutdown_timeout=pick("shutdown_timeout"),
        discovery=discovery,
        metrics=_metrics_address(pick("metrics")),
    )


def _metrics_address(text: str | None) -> Address | None:
    return None if text is None else parse_listen(text)


SourceOf = Callable[[str], "tuple[int, str] | None"]


def _refuse_discovery_keys(
    source_of: SourceOf, file_data: Mapping[str, Any], file_source: str
) -> None:
    """A discovery setting without `discover` would be ignored: say so instead."""
    for key in DISCOVERY_KEYS:
        found = source_of(key)
        if found is not None:
            raise ConfigError(
                f"{found[1]}: {key} is for Kubernetes discovery, which is off; "
                f"add {flag_name('discover')} (discover = true in a file) or drop it"
            )
    for index, table in enumerate(file_data.get("route") or [], 1):
        if isinstance(table, Mapping) and "service_port" in table:
            raise ConfigError(
                f"{file_source}: route {index}: service_port is for Kubernetes discovery, "
                "which is off; add discover = true or drop it"
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
            return [_route(spec, {}, overrides_and_defaults, set(), source) for spec in specs]
    specs = _route_specs(file_data, file_source, route_strings=False, discover=discover)
    file_defaults = {
        key: _convert_file(key, file_data[key], f"{file_source}: {key}")
        if key in file_data and key not in overriding
        else overrides_and_defaults[key]
        for key in overrides_and_defaults
    }
    routes = [_route(spec, {}, file_defaults, overriding, file_source) for spec in specs]
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
) -> list[tuple[str, list[str]]]:
    """(listen, targets) of the routes a layer names; every value already checked."""
    name = _namer(source)
    convert = _convert if route_strings else _convert_file
    specs: list[tuple[str, list[str]]] = []
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
        specs.append((listen_text, target_texts))
    routes = _convert("route", layer.get("route") or [], name("route")) if route_strings else []
    for item in routes:
        listen_text, _, target_text = item.partition("=")
        specs.append((listen_text, target_text.split(",")))
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
    return Route(
        listen=parse_listen(listen_text),
        targets=tuple(parse_target(text) for text in target_texts),
        connect_timeout=values["connect_timeout"],
        idle_timeout=values["idle_timeout"] or None,
        keepalive=values["keepalive"],
        access=AccessList.parse(values["allow"], values["deny"]),
        first_byte_timeout=values["first_byte_timeout"] or None,
        service_port=values["service_port"],
        log_connections=values["log_connections"],
    )


def _discovered_routes(
    routes: list[Route],
    pick: Callable[[str], Any],
    route_defaults: Mapping[str, Any],
    env: Mapping[str, str],
) -> tuple[list[Route], DiscoverySettings]:
    """Routes without a target follow the Service; with no route at all, the preset's ports."""
    preset = PRESETS[pick("preset")] if pick("preset") is not None else None
    service = pick("service") or (preset.service if preset else DEFAULT_SERVICE)
    main_port = preset.ports[0][1] if preset else DEFAULT_SERVICE_PORT
    if not routes:
        ports = (
            preset.ports
            if preset and route_defaults["service_port"] is None
            else ((443, route_defaults["service_port"] or main_port),)
        )
        routes = [
            _route((str(port), []), {"service_port": name}, route_defaults, set(), "--preset")
            for port, name in ports
        ]
    elif all(route.targets for route in routes):
        raise ConfigError("--discover: every route already has a target; nothing to discover")
    routes = [
        route if route.targets or route.service_port else replace(route, service_port=main_port)
        for route in routes
    ]
    discovery = DiscoverySettings(
        service=service,
        kubeconfig=pick("kubeconfig"),
        node_ip=pick("node_ip"),
        state_dir=pick("state_dir") or default_state_dir(env),
        boot_timeout=pick("discover_timeout"),
    )
    return routes, discovery
