"""From API objects to forwarding targets. Pure: dicts in, frozen values or errors out.

The objects are the JSON shapes of `v1.Service` and `v1.Node` as the API server sends
them; parsing keeps only what discovery needs, and is where the cluster's answers are
checked, once: whatever the JSON, parsing returns values or raises `BadObject`. A
collection is parsed object by object: an unusable one is left out and reported
(`Parsed.rejected`), never the reason the others are dropped too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyforward.config.addresses import Address
from pyforward.discovery.errors import (
    BadObject,
    NoNodePort,
    NoReadyNode,
    PortNotFound,
    ServiceNotFound,
)
from pyforward.discovery.nodeaddress import check_node_address
from pyforward.discovery.options import UDP_SUFFIX, ServiceRef

T = TypeVar("T")

# What Kubernetes accepts: RFC 1123 labels for namespaces and Services, subdomains for Nodes.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
# Targets per route: this host's node and failover nodes. Connects share one budget
# (connect_timeout), so more would never be reached; fewer keep lines and state small.
MAX_TARGETS = 8


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" for an unnamed port (allowed when the Service has only one)
    port: int
    node_port: int | None
    protocol: str

    def describe(self) -> str:
        return f"{self.name or '(unnamed)'} ({self.port}/{self.protocol})"


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str
    ports: tuple[ServicePort, ...]
    load_balancer_ingress: tuple[str, ...]  # addresses a load balancer (e.g. ServiceLB) gave it

    @property
    def ref(self) -> ServiceRef:
        return ServiceRef(self.namespace, self.name)


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[tuple[str, str], ...]  # (type, address), as listed by the node
    ready: bool
    ready_detail: str  # why not Ready, from the condition's reason and message

    @property
    def internal_ip(self) -> str | None:
        for kind, address in self.addresses:
            if kind == "InternalIP":
                return address
        return None

    def is_named(self, names: Iterable[str]) -> bool:
        return self.name in names or any(
            kind == "Hostname" and address in names for kind, address in self.addresses
        )


@dataclass(frozen=True)
class Rejected:
    """An object from the API that cannot be used, and why."""

    name: str  # NAMESPACE/NAME or NAME, as far as it could be read
    reason: str  # the whole sentence, naming the object


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A collection as the model takes it: the usable objects, and why the others are not."""

    objects: tuple[T, ...]
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True)
class HostIdentity:
    """What identifies this host: its names, and a test for its own addresses."""

    names: frozenset[str]
    is_local_address: Callable[[str], bool]


@dataclass(frozen=True)
class Candidate:
    node: str
    address: str
    why: str  # why it ranks where it does


@dataclass(frozen=True)
class NodeChoice:
    candidates: tuple[Candidate, ...]  # best first; one target per Ready node
    skipped: tuple[tuple[str, str], ...]  # (node, why it is not a candidate)
    rejected: tuple[Rejected, ...] = ()  # Node objects that could not be used at all

    @property
    def reason(self) -> str:
        first = self.candidates[0]
        return f"node {first.node} ({first.address}): {first.why}"


@dataclass(frozen=True)
class RouteTarget:
    """Where one route's connections go: the Service port and one address per node."""

    port_ref: str
    port: ServicePort
    targets: tuple[Address, ...]


def _get(obj: object, *path: str) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _shown(value: object) -> str:
    """A value from the wire as a message may quote it: JSON, escaped, short."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value, default=repr)  # default: never reached for JSON input
    except ValueError:  # an integer too long to print; json.loads refuses those anyway
        return "a number too long to show"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _text(value: object, what: str, default: str = "") -> str:
    """An optional text field: absent (None) gives `default`; anything but text is bad,
    and so is a control character (it would forge lines in logs and in discover's report)."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadObject(f"{what} is {_shown(value)}, not text")
    if not value.isprintable():  # control, format and line-separator characters
        raise BadObject(f"{what} {_shown(value)} holds a control character")
    return value


def _prose(value: object, what: str) -> str:
    """A free-text field (a condition's reason or message): control characters become
    spaces, since a kubelet's message may well span lines."""
    if isinstance(value, str):
        value = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return _text(value, what)


def _entries(value: object, what: str) -> list[Mapping[str, Any]]:
    """An optional list of objects: absent (None) is an empty list; anything else is bad."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise BadObject(f"{what} is {_shown(value)}, not a list of objects")
    return value


def _port_number(value: object, what: str) -> int:
    # bool is an int to Python: `true` must not become port 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise BadObject(f"{what} is {_shown(value)}, not a port number (an integer 1-65535)")
    return value


def _name(obj: object, kind: str, pattern: re.Pattern[str]) -> str:
    name = _get(obj, "metadata", "name")
    if not isinstance(name, str) or not name:
        raise BadObject(f"the API returned a {kind} without metadata.name")
    if not pattern.fullmatch(name):
        raise BadObject(f"the API returned a {kind} named {_shown(name)}: not a Kubernetes name")
    return name


def resource_version(obj: Mapping[str, Any]) -> str | None:
    """The object's (or list's) metadata.resourceVersion."""
    value = _get(obj, "metadata", "resourceVersion")
    return value if isinstance(value, str) and value else None


def parse_service(obj: object) -> Service:
    """A `v1.Service` as JSON -> Service; BadObject names what is wrong with it."""
    name = _name(obj, "Service", _DNS_LABEL)
    namespace = _text(_get(obj, "metadata", "namespace"), f"Service {name}: metadata.namespace")
    if namespace and not _DNS_LABEL.fullmatch(namespace):
        raise BadObject(f"Service {name}: namespace {_shown(namespace)} is not a Kubernetes name")
    where = f"Service {namespace}/{name}" if namespace else f"Service {name}"
    ports: list[ServicePort] = []
    for item in _entries(_get(obj, "spec", "ports"), f"{where}: spec.ports"):
        port_name = _text(item.get("name"), f"{where}: a port's name")
        what = f"{where}: port {port_name or '(unnamed)'}"
        port = _port_number(item.get("port"), f"{what}: port")
        # No nodePort (or 0, not allocated): a ClusterIP Service's port; pick_port says so.
        node_port = item.get("nodePort")
        ports.append(
            ServicePort(
                name=port_name,
                port=port,
                node_port=None
                if node_port is None or (node_port == 0 and not isinstance(node_port, bool))
                else _port_number(node_port, f"{what}: nodePort"),
                protocol=_text(item.get("protocol"), f"{what}: protocol", "TCP"),
            )
        )
    ingress = []
    for entry in _entries(
        _get(obj, "status", "loadBalancer", "ingress"), f"{where}: status.loadBalancer.ingress"
    ):
        address = entry.get("ip") or entry.get("hostname")
        if address:
            ingress.append(_text(address, f"{where}: a load balancer address"))
    return Service(
        namespace=namespace,
        name=name,
        type=_text(_get(obj, "spec", "type"), f"{where}: spec.type", "ClusterIP"),
        ports=tuple(ports),
        load_balancer_ingress=tuple(ingress),
    )


def parse_node(obj: object) -> Node:
    """A `v1.Node` as JSON -> Node; BadObject names what is wrong with it.

    Its InternalIP must pass `check_node_address`: it is what connections go to."""
    name = _name(obj, "Node", _DNS_SUBDOMAIN)
    where = f"node {name}"
    addresses = []
    for entry in _entries(_get(obj, "status", "addresses"), f"{where}: status.addresses"):
        kind = _text(entry.get("type"), f"{where}: an address's type")
        address = _text(entry.get("address"), f"{where}: {kind or 'an'} address")
        if kind == "InternalIP":
            try:
                address = check_node_address(address)
            except ValueError as exc:
                raise BadObject(f"{where}: InternalIP {_shown(address)} {exc}") from None
        if address:
            addresses.append((kind, address))
    ready, detail = False, "no Ready condition reported"
    for condition in _entries(_get(obj, "status", "conditions"), f"{where}: status.conditions"):
        if condition.get("type") == "Ready":
            what = f"{where}: the Ready condition's"
            status = _text(condition.get("status"), f"{what} status")
            reason = _prose(condition.get("reason"), f"{what} reason")
            message = _prose(condition.get("message"), f"{what} message")
            ready = status == "True"
            detail = "" if ready else ": ".join(part for part in (reason, message) if part)
            detail = detail or ("" if ready else f"Ready={status}")
    if _get(obj, "spec", "unschedulable") is True and ready:
        # Cordoned nodes still route NodePort traffic; say so but keep them.
        detail = "cordoned"
    return Node(name=name, addresses=tuple(addresses), ready=ready, ready_detail=detail)


def _parse_all(
    items: Iterable[object], parse: Callable[[object], T], key: Callable[[object], str]
) -> Parsed[T]:
    objects: list[T] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            objects.append(parse(item))
        except BadObject as exc:
            rejected.append(Rejected(key(item), str(exc)))
    return Parsed(tuple(objects), tuple(rejected))


def _raw_key(obj: object) -> str:
    namespace, name = _get(obj, "metadata", "namespace"), _get(obj, "metadata", "name")
    name = name if isinstance(name, str) else ""
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def parse_services(items: Iterable[object]) -> Parsed[Service]:
    """A collection of `v1.Service`s: the usable ones, and why the others are not."""
    return _parse_all(items, parse_service, _raw_key)


def parse_nodes(items: Iterable[object]) -> Parsed[Node]:
    """A collection of `v1.Node`s: the usable ones, and why the others are not."""
    return _parse_all(items, parse_node, _raw_key)


def find_service(services: Parsed[Service], ref: ServiceRef) -> Service:
    """The Service named `ref` among the namespace's Services, or ServiceNotFound (or
    BadObject, when the API sent it in a shape that cannot be used)."""
    candidates = list(services.objects)
    for service in candidates:
        if service.name == ref.name and service.namespace in ("", ref.namespace):
            return service
    for rejected in services.rejected:
        if rejected.name in (str(ref), ref.name):
            raise BadObject(rejected.reason)
    reachable = sorted(s.name for s in candidates if s.type in ("NodePort", "LoadBalancer"))
    there = (
        f"NodePort/LoadBalancer Services in {ref.namespace}: {', '.join(reachable)}"
        if reachable
        else f"namespace {ref.namespace} has no NodePort or LoadBalancer Service"
    )
    raise ServiceNotFound(f"Service {ref} not found; {there}")


def pick_port(service: Service, port_ref: str) -> ServicePort:
    """The Service port named or numbered `port_ref`; it must have a nodePort.

    `NAME/udp` or `NUMBER/udp` (a UDP route's reference) wants the port of protocol UDP;
    a bare reference one of TCP. A Service may list 443 twice, TCP for HTTPS and UDP for
    HTTP/3: the number alone would be ambiguous."""
    protocol = "UDP" if port_ref.endswith(UDP_SUFFIX) else "TCP"
    port_ref = port_ref.removesuffix(UDP_SUFFIX)
    by_number = port_ref.isdigit()
    for port in service.ports:
        if by_number and port.port == int(port_ref) and port.protocol == protocol:
            break
        if not by_number and port.name == port_ref:  # names are unique: checked below
            break
    else:
        listed = ", ".join(p.describe() for p in service.ports) or "none"
        raise PortNotFound(
            f"Service {service.ref} has no port {'numbered' if by_number else 'named'} "
            f"{port_ref!r}; its ports: {listed}"
        )
    if port.protocol != protocol:
        raise PortNotFound(
            f"Service {service.ref}: port {port.describe()} is {port.protocol}, and a "
            f"{protocol} route forwards {protocol}; give the route protocol = "
            f'"{port.protocol.lower()}" or name a {protocol} port'
        )
    if port.node_port is None:
        raise NoNodePort(
            f"Service {service.ref} is of type {service.type}: port {port.describe()} has no "
            "nodePort, so nothing outside the cluster can reach it; make the Service type "
            "NodePort or LoadBalancer, or name a Service that is one with --service"
        )
    return port


def rank_node(node: Node, host: HostIdentity) -> tuple[int, Candidate] | str:
    """Where `node` ranks as a target (0: this host by name, 1: this host by address,
    2: another node; lower first), or why it is not one."""
    address = node.internal_ip
    if not node.ready:
        return f"not Ready ({node.ready_detail})"
    if address is None:
        return "has no InternalIP"
    if node.is_named(host.names):
        rank, why = 0, "this host (its node name matches this host's name)"
    elif host.is_local_address(address):
        rank, why = 1, f"this host ({address} is one of this host's addresses)"
    else:
        rank, why = 2, "another Ready node"
    return rank, Candidate(node.name, address, why)


def choose_nodes(nodes: Parsed[Node], host: HostIdentity) -> NodeChoice:
    """Ready nodes with an InternalIP, this host's node first, then the rest by name."""
    ranked: list[tuple[int, str, Candidate]] = []
    skipped: list[tuple[str, str]] = []
    for node in nodes.objects:
        place = rank_node(node, host)
        if isinstance(place, str):
            skipped.append((node.name, place))
            continue
        ranked.append((place[0], node.name, place[1]))
    if not ranked:
        if not nodes.objects and not nodes.rejected:
            raise NoReadyNode("no Ready node: the cluster lists no nodes")
        detail = [f"{name} {why}" for name, why in skipped] + [r.reason for r in nodes.rejected]
        raise NoReadyNode(f"no Ready node with an InternalIP: {some_of(detail, len(detail))}")
    ranked.sort(key=lambda item: (item[0], item[1]))
    candidates = [candidate for _, _, candidate in ranked]
    if ranked[0][0] == 2:
        first = candidates[0]
        candidates[0] = Candidate(first.node, first.address, "no node is this host; first by name")
    return NodeChoice(tuple(candidates), tuple(skipped), nodes.rejected)


def some_of(parts: Sequence[str], total: int) -> str:
    """'a; b; ...', naming at most MAX_TARGETS of `total` things, then how many more."""
    text = "; ".join(parts[:MAX_TARGETS])
    return f"{text}; and {total - MAX_TARGETS:,} more" if total > MAX_TARGETS else text


def route_target(
    service: Service, port_ref: str, choice: NodeChoice | None, node_ip: str | None
) -> RouteTarget:
    """One route's targets: `--node-ip` alone when given, else one per chosen node."""
    port = pick_port(service, port_ref)
    assert port.node_port is not None
    if node_ip is not None:
        addresses = [node_ip]
    else:
        assert choice is not None
        addresses = [candidate.address for candidate in choice.candidates[:MAX_TARGETS]]
    return RouteTarget(port_ref, port, tuple(Address(a, port.node_port) for a in addresses))


def load_balancer_conflicts(services: Iterable[Service], listen_ports: Iterable[int]) -> list[str]:
    """Warnings for LoadBalancer Services exposing a port pyforward listens on.

    k3s's ServiceLB claims such ports on every node through iptables: pyforward binds
    fine, yet outside clients reach the load balancer instead.
    """
    ports = set(listen_ports)
    warnings = []
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        if service.type != "LoadBalancer":
            continue
        for port in service.ports:
            if port.port in ports and port.protocol == "TCP":
                held = (
                    f", load balancer address {', '.join(service.load_balancer_ingress)}"
                    if service.load_balancer_ingress
                    else ""
                )
                warnings.append(
                    f"LoadBalancer Service {service.ref} exposes port {port.port}{held}: "
                    f"a cluster load balancer such as k3s's ServiceLB may take port "
                    f"{port.port} from pyforward (k3s: --disable servicelb, or change the "
                    "Service's port)"
                )
    return warnings


@dataclass(frozen=True)
class Resolution:
    """What the cluster's objects say the routes should forward to."""

    service: Service
    nodes: tuple[Node, ...]
    choice: NodeChoice | None  # None when --node-ip replaces node selection
    routes: tuple[RouteTarget, ...]  # in the order of the port references asked for

    @property
    def problems(self) -> tuple[str, ...]:
        """What the cluster sent that could not be used, though the routes have targets."""
        return tuple(r.reason for r in self.choice.rejected) if self.choice else ()


def resolve(
    services: Parsed[Service],
    nodes: Parsed[Node],
    ref: ServiceRef,
    port_refs: Sequence[str],
    *,
    host: HostIdentity,
    node_ip: str | None,
) -> Resolution:
    """Find the Service, its ports' nodePorts, and the nodes to send connections to."""
    return resolve_chosen(
        services, lambda: choose_nodes(nodes, host), ref, port_refs, node_ip=node_ip, nodes=nodes
    )


def resolve_chosen(
    services: Parsed[Service],
    choose: Callable[[], NodeChoice],
    ref: ServiceRef,
    port_refs: Sequence[str],
    *,
    node_ip: str | None,
    nodes: Parsed[Node] | None = None,
) -> Resolution:
    """`resolve` with the nodes already chosen (`choose` raises NoReadyNode)."""
    service = find_service(services, ref)
    for port_ref in port_refs:
        pick_port(service, port_ref)  # port errors before node errors: the likelier mistake
    choice = None if node_ip is not None else choose()
    routes = tuple(route_target(service, p, choice, node_ip) for p in port_refs)
    return Resolution(service, nodes.objects if nodes else (), choice, routes)
