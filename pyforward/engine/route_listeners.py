"""A route's listening sockets (`Listener`, what the accept loop reads of each), and its
targets as addresses to connect to: IP literals as they are, host names looked up."""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyforward.config.access import AccessList
from pyforward.config.addresses import Endpoint, UnixAddress, format_peer
from pyforward.config.model import Route
from pyforward.config.policy import Policy
from pyforward.engine.listeners import WILDCARDS, bind_addresses, close_all, open_listener
from pyforward.engine.targets import RouteId
from pyforward.engine.unix_listener import UnixFile, UnixOwnership, open_unix_listener
from pyforward.errors import StartupError
from pyforward.obs.ratelimit import Every
from pyforward.relay.connection import ResolvedTarget
from pyforward.relay.sni import NameRoutes
from pyforward.relay.sockets import listen_without_delay


@dataclass
class Listener:
    sock: socket.socket
    label: str
    route_id: RouteId
    route: Route
    targets: list[ResolvedTarget]
    policy: Policy
    access: AccessList
    # The routes sharing this address, chosen by TLS server name (engine/by_name.py).
    names: NameRoutes | None = None
    unix_file: UnixFile | None = None  # the socket file it made, removed when it closes
    # Read on every accept, so worked out once: the socket's family (an int, not the enum
    # `sock.family` builds each time), and whether the route has an allow/deny list.
    family: int = field(init=False)
    screened: bool = field(init=False)
    # The address every client of this socket connects to, when it is one (not a wildcard
    # bind, where it depends on the interface): a PROXY header's destination, no syscall.
    local: tuple[object, ...] | None = field(init=False)
    # The route's failover lines, one per interval for all its connections (set by the
    # forwarder, shared by the route's listeners).
    failover_log: Every = field(init=False)
    # Whether the sockets it accepts come without a Nagle delay, as Linux gives them from a
    # listener without one (None: not known until the first client; UNIX: nothing to set).
    client_nodelay: bool | None = field(init=False)
    # Whether another client waits, asked without accepting (see `Forwarder._accept`).
    waiting: Callable[[int], list[tuple[int, int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.family = int(self.sock.family)
        listen_without_delay(self.sock)
        self.client_nodelay = True if self.family == socket.AF_UNIX else None
        probe = select.poll()
        probe.register(self.sock.fileno(), select.POLLIN)
        self.waiting = probe.poll
        self.screened = bool(self.access)
        name = self.sock.getsockname()
        wildcard = not isinstance(name, tuple) or name[0] in WILDCARDS
        self.local = None if wildcard else name

    def apply(self, route: Route, targets: list[ResolvedTarget]) -> None:
        """Serve `route` (the same route id, reloaded) from now on."""
        self.route, self.targets = route, targets
        self.policy, self.access = route.policy, route.access
        self.screened = bool(route.access)

    def every_target(self) -> list[ResolvedTarget]:
        """The targets of every route this listener serves."""
        return self.targets if self.names is None else self.names.every_target()


def close_listeners(listeners: Sequence[Listener]) -> None:
    """Close listening sockets, and remove the socket files they made."""
    close_all([listener.sock for listener in listeners])
    for listener in listeners:
        if listener.unix_file is not None:
            listener.unix_file.remove()


def unix_target(address: UnixAddress) -> ResolvedTarget:
    return ResolvedTarget(socket.AF_UNIX, address.sockaddr, str(address))


def literal_target(address: Endpoint) -> ResolvedTarget | None:
    """The target of an IP-literal address, without a name lookup; None for a host name."""
    if isinstance(address, UnixAddress):
        return unix_target(address)
    assert address.host is not None
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None
    if ip.version == 6:
        return ResolvedTarget(socket.AF_INET6, (str(ip), address.port, 0, 0), str(address))
    return ResolvedTarget(socket.AF_INET, (str(ip), address.port), str(address))


async def resolve_target(loop: asyncio.AbstractEventLoop, address: Endpoint) -> ResolvedTarget:
    if isinstance(address, UnixAddress):
        return unix_target(address)
    assert address.host is not None
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(
            f"target {address}: host {address.host!r} does not resolve ({exc.strerror})"
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return ResolvedTarget(family, tuple(sockaddr), str(address))


def open_route(
    rid: RouteId,
    route: Route,
    targets: list[ResolvedTarget],
    passed: list[socket.socket] | None,
    backlog: int,
) -> list[Listener]:
    """The route's listeners: on the sockets `passed` for it (systemd's, or a worker's from
    the main process), else bound here with `backlog`."""
    if passed:
        return [
            Listener(
                s, format_peer(s.getsockname()), rid, route, targets, route.policy, route.access
            )
            for s in passed
        ]
    if isinstance(route.listen, UnixAddress):
        ownership = UnixOwnership(route.unix_mode, route.unix_user, route.unix_group)
        sock, made = open_unix_listener(route.listen, ownership, backlog)
        return [
            Listener(
                sock,
                str(route.listen),
                rid,
                route,
                targets,
                route.policy,
                route.access,
                unix_file=made,
            )
        ]
    opened: list[Listener] = []
    try:
        for family, sockaddr in bind_addresses(route.listen):
            sock = open_listener(route.listen, family, sockaddr, backlog, reuseport=route.reuseport)
            label = format_peer(sock.getsockname())
            opened.append(Listener(sock, label, rid, route, targets, route.policy, route.access))
    except BaseException:
        close_listeners(opened)
        raise
    return opened
