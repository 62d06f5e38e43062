"""A connection's stages, driven in this process on loopback socket pairs: no forwarder,
no listener, no dial. The stages here stand in for the ones to come (a ClientHello read
before the route is chosen, a header written to the target) and record what they see."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import weakref
from collections.abc import Iterator, Sequence

import pytest

from pyforward.obs.closelog import CloseSummary
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason
from pyforward.obs.stats import Stats
from pyforward.relay.connection import Connection, Policy, ResolvedTarget, stages_for
from pyforward.relay.dial import Dial
from pyforward.relay.pipes import PipePool, splice_available
from pyforward.relay.poller import Poller, make_poller
from pyforward.relay.stages import FirstByteGate, SendToTarget, Stage, StageHost
from tests.harness import fields

TIMEOUT = 10.0
POLICY = Policy(connect_timeout=5.0, idle_timeout=None, keepalive=False)
RELAYS = ["copy", *(["splice"] if splice_available() else [])]


class Owner:
    """The server's side of a connection, recorded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, splice: bool) -> None:
        self.loop = loop
        self.poller: Poller = make_poller(loop)
        self.stats = Stats()
        self.pipes = PipePool() if splice else None
        self.close_summary = CloseSummary()
        self.closed = asyncio.Event()
        self.crashes: list[Exception] = []

    def connection_closed(self, connection: Connection) -> None:
        self.closed.set()

    def admit(self, connection: Connection) -> CloseReason | None:
        return None

    def connection_crashed(self, connection: Connection, exc: Exception) -> None:
        self.crashes.append(exc)
        connection.fail(exc)

    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None:
        pass

    def target_connected(self, target: ResolvedTarget) -> None:
        pass

    def close(self) -> None:
        if self.pipes is not None:
            self.pipes.close()
        self.poller.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        one = socket.create_connection(server.getsockname())
        other, _ = server.accept()
    one.setblocking(False)
    other.setblocking(False)
    return one, other


class ReadGreeting(Stage):
    """A client-side stage that takes the client's first `size` bytes from the socket."""

    side = "client"

    def __init__(self, size: int, record: list[str]) -> None:
        self.size, self.record = size, record
        self.read = b""

    def start(self, host: StageHost) -> None:
        self.host = host
        self.record.append("client")
        host.poller.add_reader(host.client.fileno(), self._readable)

    def _readable(self) -> None:
        self.read += self.host.client.recv(self.size - len(self.read))
        if len(self.read) == self.size:
            self.host.poller.remove_reader(self.host.client.fileno())
            self.host.consumed(self.read)
            self.host.advance()


class HandOver(Stage):
    """Stands in for the dial: the target is a socket already connected."""

    side = "dial"

    def __init__(self, target: socket.socket, record: list[str]) -> None:
        self.target, self.record = target, record

    def start(self, host: StageHost) -> None:
        self.record.append("dial")
        self.target.setblocking(False)
        host.target = self.target
        host.advance()


class Header(SendToTarget):
    """A target-side stage that writes a header before anything of the client's."""

    def __init__(self, data: bytes, record: list[str]) -> None:
        super().__init__(data)
        self.record = record

    def start(self, host: StageHost) -> None:
        self.record.append("target")
        super().start(host)


class Waits(Stage):
    """A stage that never finishes on its own, holding a timer."""

    side = "client"

    def __init__(self, record: list[str]) -> None:
        self.record = record
        self.timer: asyncio.TimerHandle | None = None

    def start(self, host: StageHost) -> None:
        self.record.append("waits")
        self.timer = host.loop.call_later(3600, host.advance)

    def stop(self) -> None:
        self.record.append("stopped")
        assert self.timer is not None
        self.timer.cancel()


@pytest.fixture
def pairs() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def connect(
    owner: Owner, client: socket.socket, stages: Sequence[Stage], policy: Policy = POLICY
) -> Connection:
    connection = Connection(
        owner,
        client,
        client_label="127.0.0.1:1",
        listen_label="127.0.0.1:2",
        targets=[],
        policy=policy,
        failover_log=Every(5.0),
        stages=stages,
    )
    connection.start()
    return connection


async def read_to_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT):
        received += chunk
    return bytes(received)


def close_line(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    [line] = [r.getMessage() for r in caplog.records if "event=close" in r.getMessage()]
    return fields(line)


@pytest.mark.asyncio
@pytest.mark.parametrize("relay", RELAYS)
async def test_stages_run_in_order_and_their_bytes_reach_the_target_before_the_relays(
    relay: str, pairs: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=relay == "splice")
    client_peer, client = tcp_pair()
    target, target_peer = tcp_pair()
    pairs += [client_peer, target_peer]
    record: list[str] = []
    # Both larger than the target's send buffer: the header stage waits for it to drain,
    # and so does the delivery of what the greeting stage read; the relay, with the rest
    # of the client's bytes waiting, must overtake neither.
    header = b"H" * (8 << 20)
    greeting_bytes = b"G" * (1 << 20)
    greeting = ReadGreeting(len(greeting_bytes), record)
    stages = [greeting, HandOver(target, record), Header(header, record)]
    connect(owner, client, stages)

    async def send() -> None:
        await loop.sock_sendall(client_peer, greeting_bytes + b" and the rest")
        client_peer.shutdown(socket.SHUT_WR)

    sending = asyncio.create_task(send())
    received = await read_to_eof(loop, target_peer)
    await sending
    assert record == ["client", "dial", "target"]
    assert greeting.read == greeting_bytes
    assert received == header + greeting_bytes + b" and the rest"
    target_peer.shutdown(socket.SHUT_WR)
    assert await read_to_eof(loop, client_peer) == b""
    await asyncio.wait_for(owner.closed.wait(), TIMEOUT)
    close = close_line(caplog)
    expected_up = str(len(greeting_bytes) + len(b" and the rest"))
    assert (close["reason"], close["up"], close["relay"]) == ("eof", expected_up, relay)
    assert owner.stats.closed == {CloseReason.EOF: 1}
    assert owner.crashes == []
    owner.close()


@pytest.mark.asyncio
async def test_the_first_byte_gate_times_out_before_any_later_stage(
    pairs: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    pairs.append(client_peer)
    record: list[str] = []
    connect(owner, client, [FirstByteGate(0.05), Waits(record)])
    await asyncio.wait_for(owner.closed.wait(), TIMEOUT)
    assert record == []
    assert close_line(caplog)["reason"] == "first-byte-timeout"
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(loop.sock_recv(client_peer, 1), TIMEOUT)
    owner.close()


@pytest.mark.asyncio
async def test_the_first_byte_gate_lets_the_connection_go_on_once_the_client_speaks(
    pairs: list[socket.socket],
) -> None:
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    pairs.append(client_peer)
    record: list[str] = []
    connection = connect(owner, client, [FirstByteGate(TIMEOUT), Waits(record)])
    await asyncio.sleep(0)
    assert record == []
    client_peer.send(b"x")
    while not record:
        await asyncio.sleep(0.01)
    assert record == ["waits"]
    connection.close(CloseReason.SHUTDOWN, reset=True)
    assert record == ["waits", "stopped"]
    owner.close()


@pytest.mark.asyncio
async def test_a_close_while_a_stage_runs_stops_it(
    pairs: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    pairs.append(client_peer)
    record: list[str] = []
    after: list[str] = []
    connection = connect(owner, client, [Waits(record), Waits(after)])
    connection.close(CloseReason.SHUTDOWN, reset=True)
    assert (record, after) == (["waits", "stopped"], [])
    assert close_line(caplog)["reason"] == "shutdown"
    assert client.fileno() == -1
    owner.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("side", ["client", "target"])
async def test_a_reset_says_which_side_sent_it(
    side: str, pairs: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    target, target_peer = tcp_pair()
    pairs += [client_peer, target_peer]
    connect(owner, client, [HandOver(target, [])])
    await loop.sock_sendall(client_peer, b"ping")
    assert await asyncio.wait_for(loop.sock_recv(target_peer, 4), TIMEOUT) == b"ping"
    resetting = client_peer if side == "client" else target_peer
    resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetting.close()
    await asyncio.wait_for(owner.closed.wait(), TIMEOUT)
    close = close_line(caplog)
    assert (close["reason"], close["reset_by"]) == ("reset", side)
    owner.close()


@pytest.mark.asyncio
async def test_the_open_line_at_debug_level_shares_the_close_lines_id(
    pairs: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "pyforward.relay.connection")
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=False)
    client_peer, client = tcp_pair()
    pairs.append(client_peer)
    first = connect(owner, client, [Waits([])])
    first.close(CloseReason.SHUTDOWN)
    second_peer, client = tcp_pair()
    pairs.append(second_peer)
    second = connect(owner, client, [Waits([])])
    second.close(CloseReason.SHUTDOWN)
    lines = [fields(r.getMessage()) for r in caplog.records]
    assert [(line["event"], line["id"]) for line in lines] == [
        ("open", str(first.id)),
        ("close", str(first.id)),
        ("open", str(second.id)),
        ("close", str(second.id)),
    ]
    assert second.id == first.id + 1
    owner.close()


def test_a_routes_stages_are_the_first_byte_gate_when_asked_for_then_the_dial() -> None:
    without = stages_for(POLICY, Every(5.0))
    assert [type(stage) for stage in without] == [Dial]
    gated = stages_for(Policy(5.0, None, False, first_byte_timeout=2.0), Every(5.0))
    assert [type(stage) for stage in gated] == [FirstByteGate, Dial]
    assert [stage.side for stage in gated] == ["client", "dial"]


@pytest.mark.asyncio
@pytest.mark.parametrize("relay", RELAYS)
async def test_a_closed_connection_is_freed_without_the_garbage_collector(
    relay: str, pairs: list[socket.socket]
) -> None:
    """Its stages and pump point back at it: unless the close breaks those cycles, every
    connection waits for the cyclic collector, whose passes over thousands of them stall
    the loop (seen as tens of milliseconds at p99 on new connections)."""
    loop = asyncio.get_running_loop()
    owner = Owner(loop, splice=relay == "splice")
    client_peer, client = tcp_pair()
    target, target_peer = tcp_pair()
    pairs += [client_peer, target_peer]
    connection = connect(owner, client, [HandOver(target, [])])
    await loop.sock_sendall(client_peer, b"ping")
    assert await asyncio.wait_for(loop.sock_recv(target_peer, 4), TIMEOUT) == b"ping"
    client_peer.shutdown(socket.SHUT_WR)
    target_peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(owner.closed.wait(), TIMEOUT)
    assert connection.byte_counts() == (4, 0)
    gc.disable()
    try:
        freed = weakref.ref(connection)
        del connection
        assert freed() is None
    finally:
        gc.enable()
    owner.close()
