"""`pyforward discover`: ask the cluster once and say what would be forwarded where."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyforward.config.addresses import Address
from pyforward.config.model import Settings
from pyforward.discovery.api import ClusterApi, Resource
from pyforward.discovery.errors import ApiRefused, DiscoveryError
from pyforward.discovery.followed import cluster_settings, naming_cluster, one_cluster_settings
from pyforward.discovery.hostinfo import this_host
from pyforward.discovery.kubeconfig import find_kubeconfig
from pyforward.discovery.model import (
    HostIdentity,
    Node,
    NodeChoice,
    Parsed,
    Rejected,
    RouteTarget,
    Service,
    load_balancer_conflicts,
    parse_nodes,
    parse_services,
    resolve,
)
from pyforward.discovery.options import ServiceRef, route_service
from pyforward.errors import PyforwardError


@dataclass(frozen=True)
class ReportRoute:
    """A discovered route: where it listens and which Service port it follows."""

    listen: str
    sni: tuple[str, ...]
    service: ServiceRef
    service_port: str

    @property
    def label(self) -> str:
        return f"{self.listen} (sni {','.join(self.sni)})" if self.sni else self.listen


@dataclass(frozen=True)
class Report:
    kubeconfig: str
    api: str
    routes: tuple[ReportRoute, ...]
    node_ip: str | None
    followed: tuple[ServiceRef, ...]  # the Services the routes follow, in route order
    services: tuple[Service, ...]  # every Service of their namespaces
    nodes: tuple[Node, ...]
    rejected_nodes: tuple[Rejected, ...]  # Node objects that cannot be used, and why
    choice: NodeChoice | None  # None with --node-ip, or when nothing resolved
    targets: tuple[RouteTarget, ...] | None  # per route, when every Service gave targets
    warnings: tuple[str, ...]
    error: DiscoveryError | None


def inspect(
    settings: Settings, env: Mapping[str, str] | None = None, host: HostIdentity | None = None
) -> Report:
    """List what discovery needs and resolve it once. API failures raise; a cluster
    that gives no usable target is reported (`error`), with everything found so far."""
    config = settings.discovery
    assert config is not None
    env = os.environ if env is None else env
    source = find_kubeconfig(config.kubeconfig, env, config.kubeconfig_given_in)
    routes = tuple(
        ReportRoute(str(route.listen), route.sni, route_service(route), str(route.service_port))
        for route in settings.routes
        if not route.targets
    )
    followed = tuple(dict.fromkeys(route.service for route in routes))
    api = ClusterApi(source)
    try:
        by_namespace = {
            namespace: parse_services(api.list(Resource("services", namespace)).items)
            for namespace in dict.fromkeys(ref.namespace for ref in followed)
        }
        nodes: Parsed[Node] = Parsed(())
        if config.node_ip is None:
            nodes = parse_nodes(api.list(Resource("nodes")).items)
        warnings: list[str] = []
        listen_ports = [r.listen.port for r in settings.routes if isinstance(r.listen, Address)]
        try:
            everywhere = parse_services(api.list_all_services().items).objects
            warnings = load_balancer_conflicts(everywhere, listen_ports)
        except ApiRefused:
            warnings.append(
                "cannot check for LoadBalancer Services on the same ports: "
                "listing Services in all namespaces is forbidden"
            )
    finally:
        api.release()
    found: dict[ReportRoute, RouteTarget] = {}
    choice, error = None, None
    for ref in followed:
        mine = [route for route in routes if route.service == ref]
        try:
            resolution = resolve(
                by_namespace[ref.namespace],
                nodes,
                ref,
                [route.service_port for route in mine],
                host=host or this_host(env),
                node_ip=config.node_ip,
            )
        except DiscoveryError as exc:
            error = error or exc
            continue
        choice = resolution.choice
        found.update(zip(mine, resolution.routes, strict=True))
    return Report(
        kubeconfig=str(source),
        api=api.host,
        routes=routes,
        node_ip=config.node_ip,
        followed=followed,
        services=tuple(s for parsed in by_namespace.values() for s in parsed.objects),
        nodes=nodes.objects,
        rejected_nodes=nodes.rejected,
        choice=choice,
        targets=None if error else tuple(found[route] for route in routes),
        warnings=tuple(warnings),
        error=error,
    )


def _service(report: Report, ref: ServiceRef) -> Service | None:
    return next(
        (s for s in report.services if s.name == ref.name and s.namespace == ref.namespace), None
    )


def _service_json(service: Service | None) -> dict[str, Any] | None:
    if service is None:
        return None
    return {
        "namespace": service.namespace,
        "name": service.name,
        "type": service.type,
        "ports": [
            {"name": p.name, "port": p.port, "nodePort": p.node_port, "protocol": p.protocol}
            for p in service.ports
        ],
    }


def as_json(report: Report) -> str:
    """The report for scripts."""
    services = [_service_json(_service(report, ref)) for ref in report.followed]
    data: dict[str, Any] = {
        "kubeconfig": report.kubeconfig,
        "api": report.api,
        "service": services[0] if services else None,  # the first route's
        "services": {str(ref): s for ref, s in zip(report.followed, services, strict=True)},
        "nodes": [
            {
                "name": node.name,
                "ready": node.ready,
                "detail": node.ready_detail,
                "addresses": [{"type": t, "address": a} for t, a in node.addresses],
            }
            for node in report.nodes
        ],
        "rejected_nodes": [
            {"name": rejected.name, "reason": rejected.reason} for rejected in report.rejected_nodes
        ],
        "node_ip": report.node_ip,
        "picked": None,
        "routes": [],
        "warnings": list(report.warnings),
        "error": str(report.error) if report.error else None,
    }
    if report.targets is not None:
        if report.choice is not None:
            first = report.choice.candidates[0]
            data["picked"] = {"node": first.node, "address": first.address, "why": first.why}
            data["candidates"] = [
                {"node": c.node, "address": c.address, "why": c.why}
                for c in report.choice.candidates
            ]
        data["routes"] = [
            {
                "listen": route.listen,
                "sni": list(route.sni),
                "service": str(route.service),
                "service_port": rt.port_ref,
                "port": rt.port.port,
                "node_port": rt.port.node_port,
                "targets": [str(t) for t in rt.targets],
            }
            for route, rt in zip(report.routes, report.targets, strict=True)
        ]
    return json.dumps(data, indent=2)


def as_text(report: Report) -> str:
    """The report for people."""
    lines = [f"kubeconfig: {report.kubeconfig}", f"API server: {report.api}"]
    for ref in report.followed:
        service = _service(report, ref)
        if service is None:
            lines.append(f"Service {ref}: not found")
            continue
        lines.append(f"Service {service.ref} (type {service.type})")
        for port in service.ports:
            node_port = port.node_port if port.node_port is not None else "none"
            lines.append(f"  port {port.describe()}  nodePort {node_port}")
    if report.node_ip is not None:
        lines.append(f"nodes: not looked up, --node-ip {report.node_ip} given")
    else:
        lines.append(f"nodes ({len(report.nodes) + len(report.rejected_nodes)}):")
        for node in report.nodes:
            ready = "Ready" if node.ready else f"NotReady ({node.ready_detail})"
            addresses = ", ".join(f"{t} {a}" for t, a in node.addresses) or "no addresses"
            extra = f" ({node.ready_detail})" if node.ready and node.ready_detail else ""
            lines.append(f"  {node.name}: {ready}{extra}; {addresses}")
        for rejected in report.rejected_nodes:
            lines.append(f"  left out: {rejected.reason}")
    if report.targets is not None:
        if report.choice is not None:
            lines.append(f"picked: {report.choice.reason}")
            for candidate in report.choice.candidates[1:]:
                lines.append(f"  then: node {candidate.node} ({candidate.address}): failover")
        for route, rt in zip(report.routes, report.targets, strict=True):
            targets = ", ".join(str(t) for t in rt.targets)
            lines.append(
                f"forward: {route.label} -> {targets} (Service {route.service} "
                f"port {rt.port.describe()}, nodePort {rt.port.node_port})"
            )
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    return "\n".join(lines)


def inspect_clusters(
    settings: Settings, env: Mapping[str, str] | None = None, host: HostIdentity | None = None
) -> list[Report]:
    """`inspect` for each cluster the discovered routes follow (most configurations: one);
    with several, a failure names its cluster."""
    parts = cluster_settings(settings)
    if len(parts) <= 1:
        return [inspect(one_cluster_settings(settings), env, host)]
    reports = []
    for cluster, part in parts:
        try:
            reports.append(inspect(part, env, host))
        except PyforwardError as exc:
            raise naming_cluster(exc, cluster) from None
    return reports


def clusters_json(reports: list[Report]) -> str:
    """One cluster's report as `as_json`; several as `{"clusters": [...]}`."""
    if len(reports) == 1:
        return as_json(reports[0])
    return json.dumps({"clusters": [json.loads(as_json(each)) for each in reports]}, indent=2)


def clusters_text(reports: list[Report]) -> str:
    """Each cluster's report (each starts with its kubeconfig), a blank line between."""
    return "\n\n".join(as_text(each) for each in reports)
