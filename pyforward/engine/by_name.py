"""Listen addresses whose routes are chosen by TLS server name: which routes share a
socket, and the `NameRoutes` each such listener holds.

The socket is opened for the first route of the address (whose id is the address itself,
see `RouteId`), so it keeps its identity across reloads however the other routes there
change; the other routes open nothing. An address with no `sni` route is none of this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pyforward.config.addresses import Address
from pyforward.config.model import Route, Transport
from pyforward.engine.targets import RouteId
from pyforward.obs.ratelimit import Every
from pyforward.relay.dial import ResolvedTarget
from pyforward.relay.sni import Chosen, NamedRoute, NameRoutes


def name_groups(routes: Sequence[Route], ids: Sequence[RouteId]) -> dict[RouteId, list[int]]:
    """For each address routed by name, the id of the route that opens its socket and the
    indices of all its routes (that one first)."""
    groups: dict[str, list[int]] = {}
    for index, route in enumerate(routes):
        listen = route.listen
        if isinstance(listen, Address) and listen.port != 0 and route.protocol is Transport.TCP:
            groups.setdefault(str(route.listen), []).append(index)
    return {
        ids[indices[0]]: indices
        for indices in groups.values()
        if any(routes[index].sni for index in indices)
    }


def followers(groups: Mapping[RouteId, list[int]]) -> set[int]:
    """Routes that share the socket of another one (they open none)."""
    return {index for indices in groups.values() for index in indices[1:]}


def build_names(
    indices: Sequence[int],
    routes: Sequence[Route],
    ids: Sequence[RouteId],
    *,
    targets: Callable[[RouteId], list[ResolvedTarget]],
    failover_log: Callable[[RouteId], Every],
    chosen: Chosen,
) -> NameRoutes:
    """The `NameRoutes` of one address's routes."""
    return NameRoutes(
        [
            NamedRoute(
                ids[index],
                routes[index].sni,
                routes[index].policy,
                routes[index].access,
                targets(ids[index]),
                failover_log(ids[index]),
            )
            for index in indices
        ],
        chosen,
    )
