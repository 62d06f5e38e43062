"""The discovered routes as discovery follows them: grouped by the cluster and the Service
each follows, what makes one the same route across a reload, and how they are named in
status text. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pyforward.config.addresses import Address
from pyforward.config.model import Route, Settings
from pyforward.discovery.errors import KubeconfigError
from pyforward.discovery.options import ServiceRef, route_service
from pyforward.errors import PyforwardError


@dataclass(frozen=True)
class Cluster:
    """Where a discovered route's Service is looked up: one API client and its watches.
    None: the kubeconfig found as docs/kubernetes.md says; the Ready nodes."""

    kubeconfig: str | None
    node_ip: str | None
    # Where the kubeconfig was given, for its errors (`Route.origin`); not what it is.
    kubeconfig_given_in: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """A short name for it in file names: the same for the same kubeconfig and node_ip."""
        text = f"{self.kubeconfig or ''}\0{self.node_ip or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """How status text and log lines name it: the kubeconfig path (and the node address
        given, when one is)."""
        text = self.kubeconfig or "the default kubeconfig"
        return f"{text} (node_ip {self.node_ip})" if self.node_ip else text


DEFAULT_CLUSTER = "default"  # the name of the top-level cluster in metrics and status


def cluster_name(cluster: Cluster, top: Cluster) -> str:
    """How metrics (the `cluster` label) and status name a cluster: `default` for the
    top-level one (`top`: the kubeconfig and node_ip routes follow unless they name their
    own), else the route's kubeconfig as written; `(node_ip ADDR)` after it when the
    route's node address is its own. Distinct clusters get distinct names."""
    name = DEFAULT_CLUSTER if cluster.kubeconfig == top.kubeconfig else str(cluster.kubeconfig)
    return f"{name} (node_ip {cluster.node_ip})" if cluster.node_ip != top.node_ip else name


def route_cluster(route: Route) -> Cluster:
    return Cluster(route.kubeconfig, route.node_ip, route.origin("kubeconfig"))


def by_cluster(routes: Sequence[Route]) -> dict[Cluster, list[int]]:
    """The discovered routes' indexes by the cluster each follows, in route order."""
    groups: dict[Cluster, list[int]] = {}
    for index, route in enumerate(routes):
        if not route.targets:
            groups.setdefault(route_cluster(route), []).append(index)
    return groups


def cluster_settings(settings: Settings) -> list[tuple[Cluster, Settings]]:
    """`settings` split by cluster: each with that cluster's discovered routes only and
    its kubeconfig and node_ip as the discovery settings (what `discover` and `check` ask
    each cluster about)."""
    assert settings.discovery is not None
    split = []
    for cluster, indexes in by_cluster(settings.routes).items():
        config = replace(
            settings.discovery,
            kubeconfig=cluster.kubeconfig,
            node_ip=cluster.node_ip,
            kubeconfig_given_in=cluster.kubeconfig_given_in,
        )
        routes = tuple(settings.routes[i] for i in indexes)
        split.append((cluster, replace(settings, routes=routes, discovery=config)))
    return split


def one_cluster_settings(settings: Settings) -> Settings:
    """`settings` (whose discovered routes follow one cluster) with that cluster's kubeconfig
    and node_ip as the discovery settings: its routes may name their own. Every route is
    kept (`discover` warns of a LoadBalancer on any port listened on)."""
    parts = cluster_settings(settings)
    assert len(parts) <= 1, "routes in several clusters: see cluster_settings"
    return replace(settings, discovery=parts[0][1].discovery) if parts else settings


def cluster_names(settings: Settings) -> dict[int, str]:
    """Each discovered route's cluster by name (`cluster_name`), by route index, when the
    routes follow more than one cluster; {} when they follow one (nothing to tell apart)."""
    if settings.discovery is None:
        return {}
    groups = by_cluster(settings.routes)
    if len(groups) <= 1:
        return {}
    top = Cluster(settings.discovery.kubeconfig, settings.discovery.node_ip)
    return {i: cluster_name(cluster, top) for cluster, indexes in groups.items() for i in indexes}


def naming_cluster(problem: PyforwardError, cluster: Cluster) -> PyforwardError:
    """`problem` with the cluster it came from named first (same class, same exit code);
    a kubeconfig's own error names it, and where it was given, already."""
    if isinstance(problem, KubeconfigError):
        return problem
    try:
        return type(problem)(f"cluster {cluster.label}: {problem}")
    except TypeError:  # an error class built from more than its message
        return problem


def by_service(routes: Sequence[Route], indexes: Sequence[int]) -> dict[ServiceRef, list[int]]:
    """The discovered routes (`indexes` into `routes`) by the Service they follow, Services
    and routes in the order the routes come."""
    groups: dict[ServiceRef, list[int]] = {}
    for index in indexes:
        groups.setdefault(route_service(routes[index]), []).append(index)
    return groups


def route_identity(route: Route) -> tuple[str, str, str, str, str]:
    """What makes a discovered route the same one across a reload: listen, Service, port,
    and the cluster (kubeconfig, node_ip). Routes alike in all (told apart by sni only)
    have the same targets."""
    return (
        str(route.listen),
        str(route.service),
        str(route.service_port),
        str(route.kubeconfig),
        str(route.node_ip),
    )


def route_label(route: Route) -> str:
    """The listen address, and the server names when the route has some (shared address)."""
    return f"{route.listen} (sni {','.join(route.sni)})" if route.sni else str(route.listen)


def targets_text(targets: Sequence[Address]) -> str:
    return ",".join(str(t) for t in targets) or "-"


def following_text(
    routes: Sequence[Route],
    groups: Mapping[ServiceRef, Sequence[int]],
    current: Mapping[int, Sequence[Address]],
    problems: Sequence[str] = (),
) -> str:
    """`following SERVICE: ROUTE -> TARGETS; ...; SERVICE: ...`, each Service with its
    routes; what was left out (nodes the cluster sent unusable) first."""
    parts = [
        f"{ref}: "
        + "; ".join(f"{route_label(routes[i])} -> {targets_text(current[i])}" for i in indexes)
        for ref, indexes in groups.items()
    ]
    text = f"following {'; '.join(parts)}"
    # The reason first: the service status shows the degraded text up to its first "; ".
    return f"left out: {'; '.join(problems)}; {text}" if problems else text
