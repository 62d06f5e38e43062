"""Opening listening sockets, with errors that say what to do about them."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Collection
from pathlib import Path

from pyforward.config.addresses import Address
from pyforward.errors import StartupError

# How a socket bound to every interface shows its address (getsockname, /proc/net/tcp).
WILDCARDS = frozenset({"0.0.0.0", "::"})


def is_listener_for(
    port: int, hosts: Collection[str] | None, bound_host: str, bound_port: int
) -> bool:
    """Is a socket bound to `bound_host`:`bound_port` the listener of a listen address on
    `port` at numeric `hosts` (None: every interface), not merely one in its way? Hosts
    compare as addresses (`::1` is `0:0::1`), a zone aside."""
    if bound_port != port:
        return False
    if hosts is None:
        return bound_host in WILDCARDS
    return any(_same_host(host, bound_host) for host in hosts)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b


def system_backlog() -> int:
    """The kernel's cap on a listen backlog (net.core.somaxconn); asking for more is clamped."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_addresses(address: Address) -> list[tuple[int, tuple[object, ...]]]:
    """(family, sockaddr) pairs to bind for an address. Every interface means one
    dual-stack IPv6 socket where the host has IPv6, else IPv4's 0.0.0.0."""
    if address.host is None:
        if ipv6_available():
            return [(socket.AF_INET6, ("::", address.port, 0, 0))]
        return [(socket.AF_INET, ("0.0.0.0", address.port))]
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {address}: {address.host!r} does not resolve ({exc.strerror})"
        ) from None
    seen: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr) not in seen and family in (socket.AF_INET, socket.AF_INET6):
            seen.append((family, tuple(sockaddr)))
    return seen


def open_listener(
    address: Address,
    family: int,
    sockaddr: tuple[object, ...],
    backlog: int,
    *,
    reuseport: bool = False,
) -> socket.socket:
    """A bound, listening, non-blocking socket with SO_REUSEADDR (and SO_REUSEPORT)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Every interface means IPv4 too; a named IPv6 address means only itself.
            v6only = 0 if address.host is None else 1
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(bind_error(address, exc)) from None
    return sock


def bind_error(address: Address, exc: OSError) -> str:
    """What a failed bind of `address` means, in one line (run's and check's wording)."""
    port = address.port
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {address}: port {port} is already in use "
            f"(see who holds it: ss -ltnp 'sport = :{port}')"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {address}: permission denied; ports below 1024 need root, "
            "CAP_NET_BIND_SERVICE (AmbientCapabilities= in a systemd unit) or socket activation"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: {address.host} is not an address of this host"
    return f"cannot listen on {address}: {exc.strerror or exc}"


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
