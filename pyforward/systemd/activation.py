"""Socket activation (sd_listen_fds(3)): listening sockets handed over by systemd.

With a `.socket` unit, systemd owns the listening sockets: it binds them (port 443 needs no
capability then), keeps them open across restarts of the service, and passes them to each
new process as fds 3, 4, ... with $LISTEN_FDS, $LISTEN_PID and $LISTEN_FDNAMES. Connections
that arrive while the service restarts wait in the socket's backlog instead of being
refused. `systemd-socket-activate` does the same by hand.

Matching sockets to routes is pure (`assign`); taking the fds from the environment and
asking each for its address is the thin I/O layer around it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from pyforward.config.addresses import UnixAddress, format_peer
from pyforward.config.model import Route, Transport
from pyforward.engine.listeners import bind_addresses, is_listener_for
from pyforward.errors import StartupError
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward.systemd.activation")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first passed fd
_ENV_KEYS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class PassedFds:
    """The fds systemd passed to this process, with their names (`unknown` when unnamed)."""

    fds: tuple[int, ...]
    names: tuple[str, ...]


def passed_fds(env: Mapping[str, str], pid: int) -> PassedFds | None:
    """Read $LISTEN_FDS and kin; None when nothing was passed to this very process."""
    count_text, pid_text = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    if not count_text or not pid_text:
        return None
    if not pid_text.isdigit() or int(pid_text) != pid:
        return None  # meant for another process (a parent that did not unset them)
    if not count_text.isdigit():
        raise StartupError(f"LISTEN_FDS={count_text!r} from systemd is not a number")
    count = int(count_text)
    if count == 0:
        return None
    names = [name for name in env.get("LISTEN_FDNAMES", "").split(":") if name]
    names += ["unknown"] * (count - len(names))
    fds = tuple(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    return PassedFds(fds, tuple(names[:count]))


@dataclass(frozen=True)
class BoundSocket:
    """What matching needs to know about one passed socket."""

    fd: int
    name: str
    host: str  # numeric, as getsockname() gives it
    port: int
    datagram: bool = False  # a UDP socket (ListenDatagram=), for a UDP route

    @property
    def label(self) -> str:
        if self.host.startswith(("/", "@")):
            return f"unix:{self.host}"
        return format_peer((self.host, self.port))


@dataclass(frozen=True)
class RouteAddresses:
    """The numeric addresses a route listens on; `hosts` None means every interface."""

    hosts: frozenset[str] | None
    port: int
    datagram: bool = False


def _matches(route: RouteAddresses, sock: BoundSocket) -> bool:
    if route.datagram != sock.datagram:
        return False
    return is_listener_for(route.port, route.hosts, sock.host, sock.port)


def assign(routes: Sequence[RouteAddresses], sockets: Sequence[BoundSocket]) -> list[list[int]]:
    """For each route, the fds of the passed sockets it serves.

    With one route, every passed socket serves it, whatever its address (the socket unit
    decides where to listen). With several, each socket goes to the route whose listen
    address it is bound to; a socket no route claims is an error, since connections to it
    would hang unanswered. A route left without a socket is bound by pyforward itself.
    """
    if len(routes) == 1:
        return [[sock.fd for sock in sockets]]
    assigned: list[list[int]] = [[] for _ in routes]
    for sock in sockets:
        owners = [index for index, route in enumerate(routes) if _matches(route, sock)]
        if not owners:
            raise StartupError(
                f"socket {sock.label} passed by systemd (fd {sock.fd}, name {sock.name!r}) "
                "matches no route's listen address; make the .socket unit's ListenStream= "
                "(ListenDatagram= for a UDP route) and the routes' listen addresses agree"
            )
        assigned[owners[0]].append(sock.fd)
    return assigned


def route_addresses(route: Route) -> RouteAddresses:
    """The numeric addresses of a route's listen address (a name is looked up); a UNIX
    socket's is its path or abstract name, with port 0."""
    if isinstance(route.listen, UnixAddress):
        return RouteAddresses(frozenset({route.listen.name}), 0)
    datagram = route.protocol is Transport.UDP
    if route.listen.host is None:
        return RouteAddresses(None, route.listen.port, datagram)
    hosts = frozenset(str(sockaddr[0]) for _, sockaddr in bind_addresses(route.listen))
    return RouteAddresses(hosts, route.listen.port, datagram)


def _adopt(fd: int, name: str) -> tuple[socket.socket, BoundSocket]:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"fd {fd} passed by systemd is not a socket ({exc.strerror})") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    datagram = sock.type == socket.SOCK_DGRAM
    if (
        sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
        or not (listening or datagram)
        or (datagram and sock.family == socket.AF_UNIX)
    ):
        sock.detach()
        raise StartupError(
            f"fd {fd} ({name}) passed by systemd is not a listening TCP or UNIX stream socket "
            "nor a UDP one; the .socket unit needs ListenStream= (ListenDatagram= for UDP) "
            "and Accept=no"
        )
    sock.set_inheritable(False)
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        return sock, BoundSocket(fd, name, unix_name(sock.getsockname()), 0)
    host, port = sock.getsockname()[:2]
    return sock, BoundSocket(fd, name, str(host), int(port), datagram)


def unix_name(sockname: str | bytes) -> str:
    """A UNIX socket's name as a listen address writes it: a path, or `@` and an abstract
    name (which getsockname gives as bytes with a leading NUL)."""
    if isinstance(sockname, bytes):
        return "@" + sockname[1:].decode(errors="replace")
    return sockname


def take_passed_sockets(
    routes: Sequence[Route], env: MutableMapping[str, str] | None = None
) -> dict[int, list[socket.socket]]:
    """The passed listening sockets, by index of the route each serves ({} when none).

    The LISTEN_* variables are removed afterwards, as sd_listen_fds(1) does, so nothing
    this process starts could mistake the sockets for its own.
    """
    env = os.environ if env is None else env
    passed = passed_fds(env, os.getpid())
    for key in _ENV_KEYS:
        env.pop(key, None)
    if passed is None:
        return {}
    adopted: dict[int, socket.socket] = {}
    bound: list[BoundSocket] = []
    try:
        for fd, name in zip(passed.fds, passed.names, strict=True):
            sock, info = _adopt(fd, name)
            adopted[fd] = sock
            bound.append(info)
        plan = assign([route_addresses(route) for route in routes], bound)
    except BaseException:
        for sock in adopted.values():
            sock.close()
        raise
    by_route: dict[int, list[socket.socket]] = {}
    for index, fds in enumerate(plan):
        if fds:
            by_route[index] = [adopted[fd] for fd in fds]
        else:
            log.warning(
                logfmt(
                    {
                        "event": "not-socket-activated",
                        "listen": str(routes[index].listen),
                        "msg": "no socket from systemd for this route; binding it here",
                    }
                )
            )
    for info in bound:
        log.info(logfmt({"event": "socket-activated", "address": info.label, "name": info.name}))
    return by_route
