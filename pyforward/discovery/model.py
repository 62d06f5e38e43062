"""From API objects to forwarding targets. Pure: dicts in, frozen values or errors out.

The objects are the JSON shapes of `v1.Service` and `v1.Node` as the API server sends
them; parsing keeps only what discovery needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyforward.addresses import Address
from pyforward.discovery.errors import (
    BadObject,
    NoNodePort,
    NoReadyNode,
    PortNotFound,
    ServiceNotFound,
)
from pyforward.discovery.options import ServiceRef

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


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _name(obj: Mapping[str, Any], kind: str) -> str:
    name = _get(obj, "metadata", "name")
    if not isinstance(name, str) or not name:
        raise BadObject(f"the API returned a {kind} without metadata.name")
    return name


def resource_version(obj: Mapping[str, Any]) -> str | None:
    """The object's (or list's) metadata.resourceVersion."""
    value = _get(obj, "metadata", "resourceVersion")
    return value if isinstance(value, str) and value else None


def parse_service(obj: Mapping[str, Any]) -> Service:
    """A `v1.Service` as JSON -> Service."""
    name = _name(obj, "Service")
    ports: list[ServicePort] = []
    for item in _get(obj, "spec", "ports") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("port"), int):
            raise BadObject(f"Service {name}: a port without a numeric 'port'")
        node_port = item.get("nodePort")
        ports.append(
            ServicePort(
                name=str(item.get("name") or ""),
                port=item["port"],
                node_port=node_port if isinstance(node_port, int) and node_port > 0 else None,
                protocol=str(item.get("protocol") or "TCP"),
            )
        )
    ingress = tuple(
        str(entry.get("ip") or entry.get("hostname"))
        for entry in _get(obj, "status", "loadBalancer", "ingress") or []
        if isinstance(entry, Mapping) and (entry.get("ip") or entry.get("hostname"))
    )
    return Service(
        namespace=str(_get(obj, "metadata", "namespace") or ""),
        name=name,
        type=str(_get(obj, "spec", "type") or "ClusterIP"),
        ports=tuple(ports),
        load_balancer_ingress=ingress,
    )


def parse_node(obj: Mapping[str, Any]) -> Node:
    """A `v1.Node` as JSON -> Node."""
    name = _name(obj, "Node")
    addresses = tuple(
        (str(entry.get("type")), str(entry.get("address")))
        for entry in _get(obj, "status", "addresses") or []
        if isinstance(entry, Mapping) and entry.get("address")
    )
    ready, detail = False, "no Ready condition reported"
    for condition in _get(obj, "status", "conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            reason = str(condition.get("reason") or "")
            message = str(condition.get("message") or "")
            detail = "" if ready else ": ".join(part for part in (reason, message) if part)
            detail = detail or ("" if ready else f"Ready={condition.get('status')}")
    if _get(obj, "spec", "unschedulable") is True and ready:
        # Cordoned nodes still route NodePort traffic; say so but keep them.
        detail = "cordoned"
    return Node(name=name, addresses=addresses, ready=ready, ready_detail=detail)


def find_service(services: Iterable[Service], ref: ServiceRef) -> Service:
    """The Service named `ref` among the namespace's Services, or ServiceNotFound."""
    candidates = list(services)
    for service in candidates:
        if service.name == ref.name and service.namespace in ("", ref.namespace):
            return service
    reachable = sorted(s.name for s in candidates if s.type in ("NodePort", "LoadBalancer"))
    there = (
        f"NodePort/LoadBalancer Services in {ref.namespace}: {', '.join(reachable)}"
        if reachable
        else f"namespace {ref.namespace} has no NodePort or LoadBalancer Service"
    )
    raise ServiceNotFound(f"Service {ref} not found; {there}")


def pick_port(service: Service, port_ref: str) -> ServicePort:
    """The Service port named or numbered `port_ref`; it must have a nodePort."""
    by_number = port_ref.isdigit()
    for port in service.ports:
        if (by_number and port.port == int(port_ref)) or (not by_number and port.name == port_ref):
            break
    else:
        listed = ", ".join(p.describe() for p in service.ports) or "none"
        raise PortNotFound(
            f"Service {service.ref} has no port {'numbered' if by_number else 'named'} "
            f"{port_ref!r}; its ports: {listed}"
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


def choose_nodes(nodes: Sequence[Node], host: HostIdentity) -> NodeChoice:
    """Ready nodes with an InternalIP, this host's node first, then the rest by name."""
    ranked: list[tuple[int, str, Candidate]] = []
    skipped: list[tuple[str, str]] = []
    for node in nodes:
        place = rank_node(node, host)
        if isinstance(place, str):
            skipped.append((node.name, place))
            continue
        ranked.append((place[0], node.name, place[1]))
    if not ranked:
        if not nodes:
            raise NoReadyNode("no Ready node: the cluster lists no nodes")
        raise NoReadyNode(f"no Ready node with an InternalIP: {skipped_text(skipped, len(nodes))}")
    ranked.sort(key=lambda item: (item[0], item[1]))
    candidates = [candidate for _, _, candidate in ranked]
    if ranked[0][0] == 2:
        first = candidates[0]
        candidates[0] = Candidate(first.node, first.address, "no node is this host; first by name")
    return NodeChoice(tuple(candidates), tuple(skipped))


def skipped_text(skipped: Sequence[tuple[str, str]], total: int) -> str:
    """'a not Ready (...); b has no InternalIP', naming at most MAX_TARGETS nodes of `total`."""
    text = "; ".join(f"{name} {why}" for name, why in skipped[:MAX_TARGETS])
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


def resolve(
    services: Iterable[Service],
    nodes: Sequence[Node],
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
    services: Iterable[Service],
    choose: Callable[[], NodeChoice],
    ref: ServiceRef,
    port_refs: Sequence[str],
    *,
    node_ip: str | None,
    nodes: Sequence[Node] = (),
) -> Resolution:
    """`resolve` with the nodes already chosen (`choose` raises NoReadyNode)."""
    service = find_service(services, ref)
    for port_ref in port_refs:
        pick_port(service, port_ref)  # port errors before node errors: the likelier mistake
    choice = None if node_ip is not None else choose()
    routes = tuple(route_target(service, p, choice, node_ip) for p in port_refs)
    return Resolution(service, tuple(nodes), choice, routes)
