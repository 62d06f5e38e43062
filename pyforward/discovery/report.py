"""`pyforward discover`: ask the cluster once and say what would be forwarded where."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyforward.config.addresses import Address
from pyforward.config.settings import Settings
from pyforward.discovery.api import ClusterApi, Resource
from pyforward.discovery.errors import ApiRefused, DiscoveryError
from pyforward.discovery.hostinfo import this_host
from pyforward.discovery.kubeconfig import find_kubeconfig
from pyforward.discovery.model import (
    HostIdentity,
    Node,
    Parsed,
    Rejected,
    Resolution,
    Service,
    load_balancer_conflicts,
    parse_nodes,
    parse_services,
    resolve,
)


@dataclass(frozen=True)
class Report:
    kubeconfig: str
    api: str
    service: str
    routes: tuple[tuple[str, str], ...]  # (listen, service port reference)
    node_ip: str | None
    services: tuple[Service, ...]  # the Service's namespace
    nodes: tuple[Node, ...]
    rejected_nodes: tuple[Rejected, ...]  # Node objects that cannot be used, and why
    resolution: Resolution | None
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
    source = find_kubeconfig(config.kubeconfig, env)
    api = ClusterApi(source)
    try:
        namespace = Resource("services", config.service.namespace)
        services = parse_services(api.list(namespace).items)
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
    routes = tuple(
        (str(route.listen), str(route.service_port))
        for route in settings.routes
        if not route.targets
    )
    resolution, error = None, None
    try:
        resolution = resolve(
            services,
            nodes,
            config.service,
            [port for _, port in routes],
            host=host or this_host(env),
            node_ip=config.node_ip,
        )
    except DiscoveryError as exc:
        error = exc
    return Report(
        kubeconfig=str(source),
        api=api.host,
        service=str(config.service),
        routes=routes,
        node_ip=config.node_ip,
        services=services.objects,
        nodes=nodes.objects,
        rejected_nodes=nodes.rejected,
        resolution=resolution,
        warnings=tuple(warnings),
        error=error,
    )


def _service(report: Report) -> Service | None:
    name = report.service.partition("/")[2]
    return next((s for s in report.services if s.name == name), None)


def as_json(report: Report) -> str:
    """The report for scripts."""
    resolution = report.resolution
    service = _service(report)
    data: dict[str, Any] = {
        "kubeconfig": report.kubeconfig,
        "api": report.api,
        "service": None
        if service is None
        else {
            "namespace": service.namespace,
            "name": service.name,
            "type": service.type,
            "ports": [
                {"name": p.name, "port": p.port, "nodePort": p.node_port, "protocol": p.protocol}
                for p in service.ports
            ],
        },
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
    if resolution is not None:
        if resolution.choice is not None:
            first = resolution.choice.candidates[0]
            data["picked"] = {"node": first.node, "address": first.address, "why": first.why}
            data["candidates"] = [
                {"node": c.node, "address": c.address, "why": c.why}
                for c in resolution.choice.candidates
            ]
        data["routes"] = [
            {
                "listen": listen,
                "service_port": rt.port_ref,
                "port": rt.port.port,
                "node_port": rt.port.node_port,
                "targets": [str(t) for t in rt.targets],
            }
            for (listen, _), rt in zip(report.routes, resolution.routes, strict=True)
        ]
    return json.dumps(data, indent=2)


def as_text(report: Report) -> str:
    """The report for people."""
    lines = [f"kubeconfig: {report.kubeconfig}", f"API server: {report.api}"]
    resolution = report.resolution
    service = _service(report)
    if service is None:
        lines.append(f"Service {report.service}: not found")
    else:
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
    if resolution is not None:
        if resolution.choice is not None:
            lines.append(f"picked: {resolution.choice.reason}")
            for candidate in resolution.choice.candidates[1:]:
                lines.append(f"  then: node {candidate.node} ({candidate.address}): failover")
        for (listen, _), rt in zip(report.routes, resolution.routes, strict=True):
            targets = ", ".join(str(t) for t in rt.targets)
            lines.append(
                f"forward: {listen} -> {targets} "
                f"(port {rt.port.describe()}, nodePort {rt.port.node_port})"
            )
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    return "\n".join(lines)
