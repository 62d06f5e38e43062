"""Discovery options: Service references, port references, presets, and the discovery
keys of the settings schema (registered on import). Pure.

A preset names a gateway's Service and the host ports it is usually exposed on, so
`--preset istio --discover` forwards 443 and 80 with one flag.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pyforward.config import values
from pyforward.config.model import Route, Transport
from pyforward.config.schema import Flag, Option, RouteField, register
from pyforward.discovery.nodeaddress import check_node_address
from pyforward.errors import ConfigError

# RFC 1123 labels: what Kubernetes accepts for namespaces and Service names.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# IANA service names, what Kubernetes accepts for a port's name.
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")

DEFAULT_STATE_DIR = "/var/lib/pyforward"
DEFAULT_BOOT_TIMEOUT = 60.0


class PresetName(StrEnum):
    ISTIO = "istio"
    TRAEFIK = "traefik"


@dataclass(frozen=True, order=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Preset:
    name: PresetName
    service: ServiceRef
    # (host port to listen on, the Service port it forwards to), first is the main one.
    ports: tuple[tuple[int, str], ...]


PRESETS: Mapping[PresetName, Preset] = {
    PresetName.ISTIO: Preset(
        PresetName.ISTIO,
        ServiceRef("istio-system", "istio-ingressgateway"),
        ((443, "https"), (80, "http2")),
    ),
    PresetName.TRAEFIK: Preset(
        PresetName.TRAEFIK,
        ServiceRef("kube-system", "traefik"),
        ((443, "websecure"), (80, "web")),
    ),
}
DEFAULT_SERVICE = PRESETS[PresetName.ISTIO].service
DEFAULT_SERVICE_PORT = "https"


@dataclass(frozen=True)
class DiscoverySettings:
    """What discovery looks for and where it keeps its state."""

    # The top-level Service: routes that name none follow it; the state file is named
    # after it. Each discovered route carries its own (`Route.service`).
    service: ServiceRef
    kubeconfig: str | None
    node_ip: str | None
    state_dir: str
    boot_timeout: float
    # Where `kubeconfig` was given (`--kubeconfig`, `FILE: route 2 (listen ...): kubeconfig`),
    # for its errors: who wrote it is no part of what is discovered.
    kubeconfig_given_in: str | None = field(default=None, compare=False)


def parse_service_ref(value: object) -> ServiceRef:
    """`NAMESPACE/NAME` -> ServiceRef; raises ValueError with a message for the user."""
    if not isinstance(value, str):
        raise ValueError("expected NAMESPACE/NAME")
    namespace, sep, name = value.strip().partition("/")
    if not sep:
        raise ValueError(
            f"expected NAMESPACE/NAME, e.g. istio-system/istio-ingressgateway, got {value!r}"
        )
    for what, part in (("namespace", namespace), ("Service name", name)):
        if not _DNS_LABEL.fullmatch(part):
            raise ValueError(
                f"{what} {part!r} in {value!r} is not a valid Kubernetes name "
                "(lowercase letters, digits and '-', at most 63)"
            )
    return ServiceRef(namespace, name)


def route_service(route: Route) -> ServiceRef:
    """The Service a discovered route follows (`Discovery.complete` names one for each)."""
    assert route.service is not None, "a discovered route names its Service"
    return route.service


def parse_port_ref(value: object) -> str:
    """A Service port by name (`https`) or number (`443`), kept as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("expected a port name or number")
    text = value.strip()
    if text.isascii() and text.isdigit():
        if not 1 <= int(text) <= 65535:
            raise ValueError(f"port number must be 1-65535, got {text}")
        return str(int(text))
    if not _PORT_NAME.fullmatch(text):
        raise ValueError(f"expected a port name (like https) or number, got {value!r}")
    return text


def parse_node_ip(value: object) -> str:
    """An IP address literal that can be a target (`check_node_address`), normalised."""
    if not isinstance(value, str):
        raise ValueError("expected an IP address")
    text = value.strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None
    try:
        return check_node_address(text)
    except ValueError as exc:
        raise ValueError(f"{text} {exc}") from None


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """systemd's $STATE_DIRECTORY (first entry) when set, else /var/lib/pyforward."""
    env = os.environ if env is None else env
    given = env.get("STATE_DIRECTORY", "")
    return given.split(":", 1)[0] or DEFAULT_STATE_DIR


# The discovery keys of the settings schema; each means something only with `discover`.
OPTIONS: Mapping[str, Option] = {
    "discover": Option(
        values.boolean,
        False,
        flag=Flag(bool, "Find the target from the cluster and follow it."),
    ),
    "kubeconfig": Option(
        values.string,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="(the order above)",  # docs/kubernetes.md lists where discovery looks
        flag=Flag(
            str,
            "Kubeconfig file, for every discovered route "
            "[$KUBECONFIG, ~/.kube/config, k3s's, in-cluster].",
        ),
    ),
    "service": Option(
        parse_service_ref,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="`istio-system/istio-ingressgateway`",
        flag=Flag(
            str,
            "NAMESPACE/NAME of the gateway Service, for every discovered route "
            "[istio-system/istio-ingressgateway].",
        ),
    ),
    "service_port": Option(
        parse_port_ref,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        shown="`https` (or the preset's)",
        flag=Flag(str, "The Service's port, by name or number [https]."),
    ),
    "preset": Option(
        values.choice(PresetName),
        None,
        flag=Flag(
            PresetName, "istio (443->https, 80->http2) or traefik (443->websecure, 80->web)."
        ),
    ),
    "node_ip": Option(
        parse_node_ip,
        None,
        per_route=True,
        route_field=RouteField.ROUTE,
        flag=Flag(str, "Forward to this node address instead of the Ready nodes."),
    ),
    "state_dir": Option(
        values.string,
        None,
        shown="`$STATE_DIRECTORY` or `/var/lib/pyforward`",
        flag=Flag(str, "Where the last target is kept [$STATE_DIRECTORY or /var/lib/pyforward]."),
    ),
    "discover_timeout": Option(
        values.duration,
        DEFAULT_BOOT_TIMEOUT,
        flag=Flag(float, "At start, seconds to wait for the API when nothing is saved [60]."),
    ),
}


UDP_SUFFIX = "/udp"  # a UDP route's port reference: the Service port of protocol UDP


class Discovery:
    """Discovery as the settings see it: routes without a target follow the Service."""

    switch = "discover"
    title = "Kubernetes discovery"
    keys = tuple(key for key in OPTIONS if key != "discover")

    def complete(
        self,
        routes: list[Route],
        pick: Callable[[str], Any],
        make_route: Callable[[str, str], Route],
        env: Mapping[str, str],
    ) -> tuple[list[Route], DiscoverySettings]:
        """Routes without a target follow the Service; with no route at all, the preset's
        ports."""
        preset = PRESETS[pick("preset")] if pick("preset") is not None else None
        service = pick("service") or (preset.service if preset else DEFAULT_SERVICE)
        main_port = preset.ports[0][1] if preset else DEFAULT_SERVICE_PORT
        service_port = pick("service_port")
        if not routes:
            ports = (
                preset.ports
                if preset and service_port is None
                else ((443, service_port or main_port),)
            )
            routes = [make_route(str(port), name) for port, name in ports]
        elif all(route.targets for route in routes):
            raise ConfigError("--discover: every route already has a target; nothing to discover")
        routes = [
            route if route.targets or route.service_port else replace(route, service_port=main_port)
            for route in routes
        ]
        # Each discovered route follows its own Service, else the top-level one; a static
        # route follows none.
        # The same for its cluster: a route's own kubeconfig and node_ip, else the top-level.
        routes = [
            replace(route, service=None, kubeconfig=None, node_ip=None)
            if route.targets
            else replace(route, service=route.service or service)
            for route in routes
        ]
        # A UDP route follows the Service's UDP port of that name or number (model.pick_port).
        routes = [
            replace(route, service_port=f"{route.service_port}{UDP_SUFFIX}")
            if route.protocol is Transport.UDP
            and route.service_port
            and not route.service_port.endswith(UDP_SUFFIX)
            else route
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


register(OPTIONS, Discovery())
