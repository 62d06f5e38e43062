"""Who is listening on which TCP port: /proc/net/tcp{,6} and the fds of processes.

`ss -tlnp | grep :443` also matches :4430 and says nothing about whether the socket
belongs to the right service; this reads the kernel's own tables and matches exact
addresses and socket inodes. Parsing is pure; reading /proc is the thin layer below it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyforward.config.addresses import Address, format_peer
from pyforward.engine.listeners import WILDCARDS, bind_addresses, is_listener_for
from pyforward.errors import StartupError

_LISTEN_STATE = "0A"


@dataclass(frozen=True)
class ListeningSocket:
    host: str  # numeric
    port: int
    inode: int

    @property
    def label(self) -> str:
        return format_peer((self.host, self.port))


def _decode_host(hex_text: str) -> str:
    raw = bytes.fromhex(hex_text)
    # The kernel prints each 32-bit word in host byte order (little-endian here).
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def parse_proc_net_tcp(text: str) -> list[ListeningSocket]:
    """The listening sockets in the text of /proc/net/tcp or /proc/net/tcp6."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN_STATE:
            continue
        host_hex, port_hex = fields[1].split(":")
        sockets.append(ListeningSocket(_decode_host(host_hex), int(port_hex, 16), int(fields[9])))
    return sockets


def listening_sockets(proc: Path = Path("/proc")) -> list[ListeningSocket]:
    """Every listening TCP socket in this network namespace."""
    found: list[ListeningSocket] = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            found += parse_proc_net_tcp((proc / "net" / name).read_text())
    return found


def overlaps(address: Address, hosts: Iterable[str], sock: ListeningSocket) -> bool:
    """Would listening on `address` (numeric `hosts`, none for every interface) collide
    with `sock`? Same port, and either side on every interface or both on one host."""
    if sock.port != address.port:
        return False
    hosts = set(hosts)
    if address.host is None or not hosts or sock.host in WILDCARDS:
        return True
    return sock.host in hosts


def exactly(address: Address, hosts: Iterable[str], sock: ListeningSocket) -> bool:
    """Is `sock` the listener for `address` itself (not merely one in its way)?"""
    return is_listener_for(
        address.port, None if address.host is None else list(hosts), sock.host, sock.port
    )


def numeric_hosts(address: Address) -> frozenset[str]:
    """The numeric hosts a listen address binds (none for every interface)."""
    if address.host is None:
        return frozenset()
    try:
        return frozenset(str(sockaddr[0]) for _, sockaddr in bind_addresses(address))
    except StartupError:  # a name that does not resolve: compare it as written
        return frozenset({address.host})


def socket_inodes(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """The inodes of the sockets process `pid` holds (empty when it cannot be read)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in (proc / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def owners(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """For each socket inode, the pids holding it (those this user may look at)."""
    found: dict[int, list[int]] = {inode: [] for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        for inode in socket_inodes(int(entry.name), proc) & inodes:
            found[inode].append(int(entry.name))
    return found


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def can_connect(host: str, port: int, timeout: float) -> str | None:
    """Try a TCP connection; None when it was accepted, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except (ConnectionResetError, ConnectionAbortedError):
        # The handshake completed and the peer closed at once (a forwarder whose target is
        # down does that); on a busy machine the reset can reach connect() itself.
        return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def probe_host(address: Address) -> str:
    """Where to connect to reach a listener on `address` from this host."""
    return "127.0.0.1" if address.host is None else address.host
