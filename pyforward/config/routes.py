"""The routes of a configuration: from flags, environment or the file's `[[route]]` tables,
each with its values converted and checked, into `Route`s. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyforward.config.access import AccessList
from pyforward.config.addresses import UnixAddress, parse_listen_endpoint, parse_target_endpoint
from pyforward.config.model import Route, Transport
from pyforward.config.policy import Policy
from pyforward.config.schema import (
    OPTIONS,
    RouteField,
    convert_file_value,
    convert_value,
    env_name,
    flag_name,
)
from pyforward.config.sni import split_route_names
from pyforward.config.unix import check_unix_route
from pyforward.errors import ConfigError


def build_routes(
    layers: Sequence[tuple[str, Mapping[str, Any]]],
    file_data: Mapping[str, Any],
    file_source: str,
    overrides_and_defaults: Mapping[str, Any],
    *,
    discover: bool = False,
    given_in: Mapping[str, str] | None = None,
) -> list[Route]:
    """The routes of the first layer that names any, else of the file. `given_in`: where
    each of `overrides_and_defaults` was given (its flag, variable or `FILE: key`), for the
    routes to keep (`Route.given_in`)."""
    given_in = given_in or {}
    # Per-route keys given as a flag or in the environment override every route.
    overriding = {key for key in overrides_and_defaults if any(key in layer for _, layer in layers)}
    for source, layer in layers:
        specs = _route_specs(layer, source, discover=discover)
        if specs:
            return [
                build_route(
                    spec[:2], spec[2], overrides_and_defaults, set(), source, given_in=given_in
                )
                for spec in specs
            ]
    specs = _route_specs(file_data, file_source, route_strings=False, discover=discover)
    file_defaults = {
        key: convert_file_value(key, file_data[key], f"{file_source}: {key}")
        if key in file_data and key not in overriding
        else overrides_and_defaults[key]
        for key in overrides_and_defaults
    }
    routes = [
        build_route(spec[:2], {}, file_defaults, overriding, file_source, given_in=given_in)
        for spec in specs
    ]
    for index, table in enumerate(file_data.get("route") or [], 1):
        where = f"{file_source}: route {index}"
        if "listen" not in table or ("target" not in table and not discover):
            raise ConfigError(f"{where}: needs both 'listen' and 'target'")
        listen = convert_file_value("listen", table["listen"], f"{where}: listen")
        targets = (
            convert_file_value("target", table["target"], f"{where}: target")
            if "target" in table
            else []
        )
        extra = {k: v for k, v in table.items() if k not in ("listen", "target")}
        routes.append(
            build_route(
                (listen, targets), extra, file_defaults, overriding, where, given_in=given_in
            )
        )
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
    convert = convert_value if route_strings else convert_file_value
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
    routes = (
        convert_value("route", layer.get("route") or [], name("route")) if route_strings else []
    )
    for item in routes:
        names, rest = split_route_names(item)
        listen_text, _, target_text = rest.partition("=")
        specs.append((listen_text, target_text.split(","), {"sni": names} if names else {}))
    return specs


def build_route(
    spec: tuple[str, list[str]],
    table: Mapping[str, Any],
    defaults: Mapping[str, Any],
    overriding: set[str],
    where: str,
    *,
    given_in: Mapping[str, str] | None = None,
) -> Route:
    listen_text, target_texts = spec
    values = dict(defaults)
    origins = dict(given_in or {})
    own = []  # keys of a file's [[route]] table, kept where they were given
    for key, raw in table.items():
        if key not in overriding:
            values[key] = convert_file_value(key, raw, f"{where}: {key}")
            own.append(key)
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
    if where not in ("flags", "env", "--preset"):
        origins.update({key: f"{where} (listen {listen}): {key}" for key in own})
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
        given_in=tuple(origins.items()),
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
