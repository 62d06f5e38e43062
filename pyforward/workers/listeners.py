"""The listening sockets of a forwarder with workers: bound once, in the main process (or
taken from systemd), and sent to the workers, by route.

A TCP route's sockets are every worker's: each accepts from the same ones. A UDP route binds
one socket per worker and address with SO_REUSEPORT, and worker `i` is sent its own socket
`i` alone: the kernel hashes each client's address and port onto one socket of the group,
so a client's datagrams all reach one worker, where its flow (and the flow's connected
socket to the target) lives. This process keeps every socket open, so the group never
changes size: a worker that dies leaves its socket here (datagrams sent to it wait in its
receive buffer, up to the buffer's size) and gets the same one back when it restarts, and
the other workers' clients hash as before. A UDP socket systemd passes is one socket: it
is worker 0's alone (flows split across workers would reach the target from as many
ports), and the route's flows are served by that one worker."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field, replace

from pyforward.config.addresses import Address, format_peer
from pyforward.config.model import Route, Settings, Transport
from pyforward.engine.by_name import followers, name_groups
from pyforward.engine.listeners import bind_addresses, close_all, open_listener, system_backlog
from pyforward.engine.targets import RouteId, route_ids
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward")


@dataclass
class RouteSockets:
    """One route's listening sockets in the main process."""

    shared: list[socket.socket] = field(default_factory=list)  # every worker's (TCP)
    # UDP: by_worker[i] are worker i's alone, one per address; a worker past the end of
    # the list serves none of the route (a socket systemd passed: worker 0's).
    by_worker: list[list[socket.socket]] = field(default_factory=list)
    udp: bool = False

    def of_worker(self, index: int) -> list[socket.socket]:
        if not self.udp:
            return self.shared
        return self.by_worker[index] if index < len(self.by_worker) else []

    @property
    def every(self) -> list[socket.socket]:
        return self.shared + [sock for socks in self.by_worker for sock in socks]

    @property
    def labels(self) -> list[str]:
        """One per address the route listens on, as the workers' logs and metrics name it."""
        if not self.udp:
            return [format_peer(sock.getsockname()) for sock in self.shared]
        first = self.by_worker[0] if self.by_worker else []
        return ["udp:" + format_peer(sock.getsockname()) for sock in first]

    @property
    def workers(self) -> int:
        """How many workers serve the route's flows (UDP); 0: every one (TCP)."""
        return len(self.by_worker) if self.udp else 0


Listeners = dict[RouteId, RouteSockets]


def close_routes(listeners: Listeners) -> None:
    close_all([sock for route in listeners.values() for sock in route.every])


def bind_routes(
    settings: Settings, passed: dict[int, list[socket.socket]], count: int
) -> Listeners:
    """Every route's listening sockets, for `count` workers: systemd's for its index in
    `passed`, or bound here. A port in use is the StartupError the engine gives, before any
    worker starts."""
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
            udp = route.protocol is Transport.UDP
            if socks is not None:
                bound[rid] = (
                    RouteSockets(by_worker=[socks], udp=True) if udp else RouteSockets(socks)
                )
                if udp and count > 1:
                    _log_one_worker(socks)
            elif udp:
                bound[rid] = RouteSockets(by_worker=_bind_udp(route, count), udp=True)
            else:
                bound[rid] = RouteSockets(_bind_tcp(route, backlog))
            for label in bound[rid].labels:
                log.info(logfmt({"event": "listen", "address": label}))
    except BaseException:
        close_routes(bound)
        raise
    return bound


def _bind_tcp(route: Route, backlog: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    listen = route.listen
    # Settings refuse workers with a unix: listener (a socket file has one owner).
    assert isinstance(listen, Address), "workers listen on IP addresses"
    try:
        for family, sockaddr in bind_addresses(listen):
            socks.append(open_listener(listen, family, sockaddr, backlog))
    except BaseException:
        close_all(socks)
        raise
    return socks


def _bind_udp(route: Route, count: int) -> list[list[socket.socket]]:
    """by_worker for a UDP route: per address, a group of `count` SO_REUSEPORT sockets."""
    from pyforward.datagram.listener import open_datagram_socket  # noqa: PLC0415 (UDP only)

    listen = route.listen
    assert isinstance(listen, Address), "a UDP route listens on an IP address"
    by_worker: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for family, sockaddr in bind_addresses(listen):
            if listen.port:
                # Bound once without SO_REUSEPORT and closed: a port another process holds
                # fails here, even when that process set SO_REUSEPORT itself (its group
                # would otherwise take ours in, and the datagrams would be split with it).
                open_datagram_socket(listen, family, sockaddr).close()
            first = open_datagram_socket(listen, family, sockaddr, reuse_port=True)
            by_worker[0].append(first)
            # Port 0: the port the kernel chose for the first, for the whole group.
            where = (sockaddr[0], first.getsockname()[1], *sockaddr[2:])
            for socks in by_worker[1:]:
                socks.append(open_datagram_socket(listen, family, where, reuse_port=True))
    except BaseException:
        close_all([sock for socks in by_worker for sock in socks])
        raise
    return by_worker


def _log_one_worker(socks: list[socket.socket]) -> None:
    for sock in socks:
        log.warning(
            logfmt(
                {
                    "event": "udp-one-worker",
                    "address": "udp:" + format_peer(sock.getsockname()),
                    "msg": "a UDP socket systemd passed is served by worker 0 alone "
                    "(a client's flow stays in one process)",
                }
            )
        )


def bind_added(settings: Settings, added: set[RouteId], count: int) -> Listeners:
    """The sockets of the routes of `settings` named in `added` (a reload's new ones)."""
    ids = route_ids(settings.routes)
    sharing = {ids[index] for index in followers(name_groups(settings.routes, ids))}
    wanted = [rid for rid in ids if rid in added and rid not in sharing]
    routes = tuple(route for rid, route in zip(ids, settings.routes, strict=True) if rid in wanted)
    bound = bind_routes(replace(settings, routes=routes), {}, count)
    # bind_routes names routes by their place among `routes`; give them their own ids back.
    return dict(zip(wanted, bound.values(), strict=True))


def sockets_for(
    listeners: Listeners, settings: Settings, index: int, only: set[RouteId] | None = None
) -> tuple[dict[int, int], list[socket.socket]]:
    """What worker `index` is sent for `settings`: how many sockets each route index has
    (0: a UDP route this worker does not serve), and the sockets in route order (`only`: of
    these routes alone)."""
    counts: dict[int, int] = {}
    socks: list[socket.socket] = []
    for position, rid in enumerate(route_ids(settings.routes)):
        if (only is not None and rid not in only) or rid not in listeners:
            continue  # not asked for, or a route that shares another's socket
        own = listeners[rid].of_worker(index)
        counts[position] = len(own)
        socks += own
    return counts, socks


def udp_workers(listeners: Listeners) -> dict[RouteId, int]:
    """How many workers serve each UDP route's flows (their caps are divided by it)."""
    return {rid: route.workers for rid, route in listeners.items() if route.udp}
