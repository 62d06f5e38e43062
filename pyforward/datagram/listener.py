"""One bound UDP socket of a route: it reads client datagrams, finds or starts each
client's flow (admission in the forwarder), and expires its flows."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyforward.config.access import AccessList
from pyforward.config.addresses import Address, client_host, format_peer
from pyforward.config.model import Route
from pyforward.datagram.flow import ClientAddress, Flow, reason_of
from pyforward.datagram.flows import FlowTable
from pyforward.engine.listeners import bind_error
from pyforward.engine.targets import RouteId
from pyforward.errors import StartupError
from pyforward.obs.reasons import CloseReason
from pyforward.relay.dial import ResolvedTarget

if TYPE_CHECKING:
    from pyforward.datagram.server import DatagramForwarder

_BATCH = 64  # client datagrams read per wakeup before other work gets a turn
_SOCKET_BUFFER = 4 << 20  # asked for each listener's buffers; the kernel caps it (rmem_max)


class DatagramListener:
    """One bound UDP socket of a route, and the route's flows that arrived on it."""

    def __init__(
        self, owner: DatagramForwarder, sock: socket.socket, rid: RouteId, route: Route
    ) -> None:
        self.owner = owner
        self.sock = sock
        self.label = "udp:" + format_peer(sock.getsockname())
        self.route_id = rid
        self.route = route
        self.targets: list[ResolvedTarget] = []
        self.table: FlowTable[ClientAddress] = FlowTable(
            route.udp_max_flows,
            route.udp_idle_timeout,
            owner.settings.max_connections_per_source,
            owner.source_counts,
            self.label,
        )
        self.flows: dict[ClientAddress, Flow] = {}
        self.started = 0  # flows started since start

    @property
    def access(self) -> AccessList:
        return self.route.access

    def readable(self) -> None:
        owner = self.owner
        buffer, view = owner.buffer, owner.view
        recvfrom_into, flows, recent = self.sock.recvfrom_into, self.flows, self.table.recent
        now = owner.loop.time()  # one reading per wakeup: the batch arrived together
        for _ in range(_BATCH):
            try:
                size, client = recvfrom_into(buffer)
            except BlockingIOError:
                return
            except OSError:
                continue  # an error queued on the socket; the next datagram may be fine
            flow = flows.get(client)
            if flow is None:
                flow = self._new_flow(client)
                if flow is None:
                    continue
            # On to the target, inline (no call of the flow's per datagram); a full send
            # buffer drops the datagram (counted).
            state = flow.state
            try:
                flow.sock.send(view[:size])
            except BlockingIOError:
                state.counts.dropped_up += 1
                continue
            except OSError as exc:
                # An earlier datagram's ICMP error is reported on this send: the target is
                # not there. This datagram is lost too, as it would be on the wire.
                flow.failed(exc)
                continue
            counts = state.counts
            counts.datagrams_up += 1
            counts.bytes_up += size
            state.last = now
            recent(client)

    def _new_flow(self, client: ClientAddress) -> Flow | None:
        owner = self.owner
        source = client_host(str(client[0]))
        refused = owner.refusal(self, source)
        admission = self.table.admission(source) if refused is None else None
        if admission is not None:
            refused = admission.refused
        if refused is not None or admission is None:
            owner.refuse(self.label, refused or CloseReason.ERROR, source)
            return None
        if admission.evict is not None:
            self.flows[admission.evict.key].close(CloseReason.FLOW_EVICTED)
        targets: Sequence[ResolvedTarget] = owner.health.order(self.targets, owner.loop.time())
        if not targets:
            owner.refuse(self.label, CloseReason.ERROR, source)
            return None
        state = self.table.add(client, source, owner.loop.time())
        if state is None:  # another worker took the source's last flow meanwhile
            owner.refuse(self.label, CloseReason.SOURCE_LIMIT, source)
            return None
        try:
            flow = Flow(self, state, targets[0])
        except OSError as exc:
            self.table.remove(state)
            owner.refuse(self.label, reason_of(exc), source)
            return None
        self.flows[client] = flow
        self.started += 1
        owner.flow_started()
        return flow

    def flow_closed(self, flow: Flow, reason: CloseReason) -> None:
        self.table.remove(flow.state)
        self.flows.pop(flow.state.key, None)
        self.owner.flow_closed(self, flow, reason)

    def expire(self, now: float) -> None:
        for state in self.table.expired(now):
            self.flows[state.key].close(CloseReason.IDLE_TIMEOUT)

    def close(self, reason: CloseReason) -> None:
        for flow in list(self.flows.values()):
            flow.close(reason)
        with contextlib.suppress(ValueError, OSError):
            self.owner.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def open_datagram_socket(
    address: Address, family: int, sockaddr: tuple[object, ...], *, reuse_port: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket. No SO_REUSEADDR: on UDP it would let a second
    process bind the same port and take part of the datagrams. `reuse_port`: one of the
    group a forwarder with workers binds (workers/listeners.py), which checks first that
    nothing else holds the port."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        if family == socket.AF_INET6:
            v6only = 0 if address.host is None else 1
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        message = bind_error(address, exc).replace("ss -ltnp", "ss -lunp")
        if exc.errno == errno.EADDRINUSE:
            message = message.replace(f"port {address.port}", f"UDP port {address.port}", 1)
        raise StartupError(message) from None
    return sock
