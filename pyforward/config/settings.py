"""Settings built from flags, environment variables and the TOML config file, by one schema.

Naming rule: a config key is the flag's name with `_` for `-`; its environment variable
is `PYFORWARD_` plus the key in capitals. Precedence: flag > environment > config file >
default. In the file, keys inside a `[[route]]` table override the file's top level for
that route; a flag or environment variable overrides both. Routes themselves come whole
from the first layer that defines any (`--listen`/`--target`/`--route`, then
`PYFORWARD_LISTEN`/`PYFORWARD_TARGET`/`PYFORWARD_ROUTE`, then the file).

The schema (`OPTIONS`, schema.py) is the one place a setting is defined: its converter, default,
flag (the CLI's options are made from it, cli/options.py) and, for a per-route one, where
its value goes in the `Route` (most into the connection `Policy` the route carries). A
feature outside the core registers its keys and its part of the building (`register`,
`Feature`): Kubernetes discovery does so from pyforward/discovery/options.py, so nothing
here imports discovery.

Here: the file's text checked, the layers merged, `build_settings`; the routes are built
in routes.py, the converters are values.py's, the result's types model.py's. Everything is
pure: values in, a frozen `Settings` or a `ConfigError` out.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from pyforward.config.addresses import (
    Address,
    Endpoint,
    UnixAddress,
    parse_listen,
)
from pyforward.config.model import MAX_BACKLOG, LogLevel, RelayMode, Route, Settings, Transport
from pyforward.config.overlap import overlapping_listens
from pyforward.config.routes import build_route, build_routes
from pyforward.config.schema import (
    FEATURES,
    OPTIONS,
    Feature,
    convert_file_value,
    convert_value,
    env_name,
    flag_name,
    route_keys,
    suggest,
)
from pyforward.config.sni import shared_listens
from pyforward.errors import ConfigError
from pyforward.obs.dump import DumpMode


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """Parse a TOML config file's text; unknown keys and bad tables are errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for key in data:
        if key not in OPTIONS:
            raise ConfigError(f"{source}: unknown key {key!r}{suggest(key, OPTIONS)}")
    routes = data.get("route")
    if routes is not None:
        if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
            raise ConfigError(f"{source}: 'route' must be [[route]] tables")
        known = route_keys()
        for index, table in enumerate(routes, 1):
            for key in table:
                if key not in known:
                    raise ConfigError(
                        f"{source}: route {index}: unknown key {key!r}{suggest(key, known)}"
                    )
    return data


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
            env_layer[key] = convert_value(key, env[name], name)
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
            return convert_value(key, layers[0][1][key], name)
        if rank == 1:
            return env_layer[key]
        return convert_file_value(key, file_data[key], name)

    route_defaults = {key: pick(key) for key in OPTIONS if OPTIONS[key].per_route}
    # Where each was given, for the routes to name it in errors found later.
    given_in = {key: found[1] for key in route_defaults if (found := source_of(key)) is not None}
    feature = _feature_on(pick)
    _refuse_keys_of_features_off(feature, source_of, file_data, file_source)
    if feature is not None:
        _refuse_feature_keys_of_static_routes(feature, file_data, file_source)
    discover = feature is not None
    routes = build_routes(
        layers, file_data, file_source, route_defaults, discover=discover, given_in=given_in
    )
    extension = None
    if feature is not None:

        def make_route(listen_text: str, service_port: str) -> Route:
            table = {"service_port": service_port}
            return build_route(
                (listen_text, []), table, route_defaults, set(), "--preset", given_in=given_in
            )

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
    if workers != 1 and any(isinstance(route.listen, UnixAddress) for route in routes):
        place = source_of("workers")
        raise ConfigError(
            f"{place[1] if place else 'workers'}: workers = {workers or 'auto'} with a unix: "
            "listener: a socket file has one owner, so it is served by one process; give it "
            "a pyforward of its own with workers = 1"
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
    return next((feature for feature in FEATURES if pick(feature.switch)), None)


def _refuse_keys_of_features_off(
    on: Feature | None, source_of: SourceOf, file_data: Mapping[str, Any], file_source: str
) -> None:
    """A feature's setting without its switch would be ignored: say so instead."""
    for feature in FEATURES:
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


def _refuse_feature_keys_of_static_routes(
    feature: Feature, file_data: Mapping[str, Any], file_source: str
) -> None:
    """A route with a target of its own is not the feature's (discovery fills in routes
    without one): a key of the feature in its table would be ignored, so say so."""
    for index, table in enumerate(file_data.get("route") or [], 1):
        if not isinstance(table, Mapping) or "target" not in table:
            continue
        given = [key for key in feature.keys if key in table and OPTIONS[key].per_route]
        if given:
            raise ConfigError(
                f"{file_source}: route {index}: {given[0]} is for a route whose target "
                f"{feature.title} finds, and this one has a target; drop one of them"
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
