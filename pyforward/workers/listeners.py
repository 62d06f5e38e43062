"""The listening sockets of a forwarder with workers: bound once, in the main process (or
taken from systemd), and sent to every worker, by route."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace

from pyforward.config.addresses import Address, format_peer
from pyforward.config.model import Settings
from pyforward.engine.by_name import followers, name_groups
from pyforward.engine.listeners import bind_addresses, close_all, open_listener, system_backlog
from pyforward.engine.targets import RouteId, route_ids
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward")

Listeners = dict[RouteId, list[socket.socket]]


def bind_routes(settings: Settings, passed: dict[int, list[socket.socket]]) -> Listeners:
    """Every route's listening sockets: systemd's for its index in `passed`, or bound here.
    A port in use is the StartupError the engine gives, before any worker starts."""
    bound: Listeners = {}
    backlog = settings.backlog or system_backlog()
    ids = route_ids(settings.routes)
    # Routes after the first on an address routed by server name use the first one's socket.
    sharing = followers(name_groups(settings.routes, ids))
    try:
        for index, (rid, route) in enumerate(zip(ids, settings.routes, strict=True)):
            if index in sharing:
                continue
            socks = passed.pop(index, None)
            if socks is None:
                socks = bound[rid] = []
                listen = route.listen
                # Settings refuse workers with a unix: listener (a socket file has one owner).
                assert isinstance(listen, Address), "workers listen on IP addresses"
                for family, sockaddr in bind_addresses(listen):
                    socks.append(open_listener(listen, family, sockaddr, backlog))
            bound[rid] = socks
            for sock in socks:
                log.info(logfmt({"event": "listen", "address": format_peer(sock.getsockname())}))
    except BaseException:
        close_all([sock for socks in bound.values() for sock in socks])
        raise
    return bound


def bind_added(settings: Settings, added: set[RouteId]) -> Listeners:
    """The sockets of the routes of `settings` named in `added` (a reload's new ones)."""
    ids = route_ids(settings.routes)
    sharing = {ids[index] for index in followers(name_groups(settings.routes, ids))}
    wanted = [rid for rid in ids if rid in added and rid not in sharing]
    routes = tuple(route for rid, route in zip(ids, settings.routes, strict=True) if rid in wanted)
    bound = bind_routes(replace(settings, routes=routes), {})
    # bind_routes names routes by their place among `routes`; give them their own ids back.
    return dict(zip(wanted, bound.values(), strict=True))


def sockets_for(
    listeners: Listeners, settings: Settings, only: set[RouteId] | None = None
) -> tuple[dict[int, int], list[socket.socket]]:
    """What a worker is sent for `settings`: how many sockets each route index has, and the
    sockets in route order (`only`: of these routes alone)."""
    counts: dict[int, int] = {}
    socks: list[socket.socket] = []
    for index, rid in enumerate(route_ids(settings.routes)):
        if (only is not None and rid not in only) or rid not in listeners:
            continue  # not asked for, or a route that shares another's socket
        counts[index] = len(listeners[rid])
        socks += listeners[rid]
    return counts, socks
