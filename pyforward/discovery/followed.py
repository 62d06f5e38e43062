"""The discovered routes as discovery follows them: grouped by the Service each follows,
what makes one the same route across a reload, and how they are named in status text.
Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyforward.config.addresses import Address
from pyforward.config.model import Route
from pyforward.discovery.options import ServiceRef, route_service


def by_service(routes: Sequence[Route], indexes: Sequence[int]) -> dict[ServiceRef, list[int]]:
    """The discovered routes (`indexes` into `routes`) by the Service they follow, Services
    and routes in the order the routes come."""
    groups: dict[ServiceRef, list[int]] = {}
    for index in indexes:
        groups.setdefault(route_service(routes[index]), []).append(index)
    return groups


def route_identity(route: Route) -> tuple[str, str, str]:
    """What makes a discovered route the same one across a reload: listen, Service, port.
    Routes alike in all three (told apart by sni only) have the same targets."""
    return str(route.listen), str(route.service), str(route.service_port)


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
