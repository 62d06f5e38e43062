"""Load generators and backends of the soak suite, each run as a process of its own.

    python -m tests.soak.peers serve {echo,proxy-echo,stream,stall} [--port N]
    python -m tests.soak.peers {churn,streams,burst,hold,silent} --port N [options]

They run on uvloop, apart from the forwarder, so that on a small machine the generator is
not what is measured. Each prints JSON lines on stdout: a server `{"event": "ready",
"port": N}` once it listens and its result when it gets SIGTERM; a client its progress
events, then one `{"event": "result", ...}`. Jobs with phases wait for a word on stdin.

Every connection ends with one outcome: "ok", "aborted" (the client reset it on purpose),
or an error kind:
  refused    the connection was refused
  reset      the other side reset the connection (or it was torn down: ENOTCONN)
  eof-short  the stream ended before all its bytes arrived (bytes lost)
  mismatch   a byte differed from what was sent (bytes corrupted)
  excess     more bytes arrived than were sent
  timeout    the connection did not finish within its deadline
  error:NAME any other socket error
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

import uvloop

from pyforward.engine.fdlimit import raise_fd_limit
from tests.hellos import real_hello
from tests.soak.pattern import (
    HEADER,
    chunk,
    down_seed,
    header,
    matches,
    parse_header,
    up_seed,
)
from tests.soak.report import Latency

WRITE_CHUNK = 1 << 18
_LINGER_RESET = struct.pack("ii", 1, 0)
OK, ABORTED = "ok", "aborted"


def emit(**event: Any) -> None:
    """One JSON line on stdout, for the suite to read."""
    print(json.dumps(event), flush=True)


def classify(exc: BaseException | None) -> str:
    """The error kind of an exception a connection ended with."""
    if exc is None:
        return "eof-short"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
        return "reset"  # a shutdown() after the peer's reset already tore the connection down
    if isinstance(exc, OSError) and exc.errno:
        return "error:" + errno.errorcode.get(exc.errno, str(exc.errno))
    return "error:" + type(exc).__name__


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a reset (SO_LINGER 0), as a client that gives up mid-transfer does."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Options belong to the socket, not the descriptor: setting them on a duplicate
        # works with any loop's socket wrapper.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()  # type: ignore[attr-defined]


def constant(protocol: asyncio.Protocol) -> Callable[[], asyncio.Protocol]:
    """A protocol factory that hands out one protocol made beforehand."""
    return lambda: protocol


class Tally:
    """Outcomes of one process's connections."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.verified = 0  # bytes received and found to be exactly what was sent
        self.open = 0  # connections made and not yet lost
        self._idle = asyncio.Event()

    def opened(self) -> None:
        self.open += 1
        self._idle.clear()

    def lost(self) -> None:
        self.open -= 1
        if not self.open:
            self._idle.set()

    async def drained(self, timeout: float) -> None:
        """Wait (up to `timeout`) until every connection has ended."""
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)

    def result(self, **extra: Any) -> dict[str, Any]:
        errors = {k: n for k, n in self.outcomes.items() if k not in (OK, ABORTED)}
        return {
            "event": "result",
            "completed": self.outcomes[OK],
            "aborted": self.outcomes[ABORTED],
            "verified": self.verified,
            "errors": errors,
            **extra,
        }


class StreamEnd(asyncio.Protocol):
    """One end of a checked stream: sends `send_len` bytes of one pattern while it
    receives `recv_len` bytes of another and checks each one, with flow control both
    ways. Finishes "ok" once both directions are done; `outcome` resolves once."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.send_seed = self.recv_seed = 0
        self.send_len = self.recv_len = 0
        self.sent = self.received = 0
        self._configured = False
        self._writing_paused = False
        self._send_done = False
        self._recv_done = False

    def configure(self, send_seed: int, send_len: int, recv_seed: int, recv_len: int) -> None:
        self.send_seed, self.send_len = send_seed, send_len
        self.recv_seed, self.recv_len = recv_seed, recv_len
        self._configured = True
        self._pump()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_CHUNK)
        self.tally.opened()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    def _pump(self) -> None:
        transport = self.transport
        if transport is None or self.outcome.done():
            return
        # A transport torn down by a reset may call resume_writing before connection_lost:
        # writing on would only discard chunks (up to the whole, perhaps endless, stream).
        while not self._writing_paused and self.sent < self.send_len:
            if transport.is_closing():
                return
            size = min(WRITE_CHUNK, self.send_len - self.sent)
            transport.write(chunk(self.send_seed, self.sent, size))
            self.sent += size
        self.progress()
        if self.sent == self.send_len and not self._send_done:
            self._send_done = True
            transport.write_eof()
            self._maybe_finish()

    def data_received(self, data: bytes) -> None:
        if self.outcome.done():
            return
        if self.received + len(data) > self.recv_len:
            self.end("excess", abort=True)
            return
        if not matches(self.recv_seed, self.received, data):
            self.end("mismatch", abort=True)
            return
        self.received += len(data)
        self.tally.verified += len(data)
        self.progress()

    def progress(self) -> None:
        """Called after every checked batch; jobs hook stalls and resets here."""

    def eof_received(self) -> bool:
        if self.received == self.recv_len:
            self._recv_done = True
            self._maybe_finish()
        else:
            self.end("eof-short", abort=True)
        return True  # keep the transport: our own direction may still be sending

    def _maybe_finish(self) -> None:
        if self._send_done and self._recv_done:
            self.end(OK)

    def end(self, kind: str, *, abort: bool = False) -> None:
        """Record the outcome (once) and close."""
        if self.outcome.done():
            return
        self.outcome.set_result(kind)
        self.tally.outcomes[kind] += 1
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.lost()
        self.end(classify(exc))


# --- servers


class EchoServer(asyncio.Protocol):
    """Echo until EOF, then close; what the byte check of churn and bursts talks to."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.tally.opened()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.done = True
        self.tally.outcomes[OK] += 1
        return False  # close once the echo is written

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.lost()
        if not self.done:
            self.tally.outcomes[classify(exc)] += 1


# The PROXY protocol v2 header of a TCP-over-IPv4 connection from 127.0.0.1 (its ports vary).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_TCP4_FROM_LOOPBACK = V2_SIGNATURE + b"\x21\x11\x00\x0c\x7f\x00\x00\x01"
V2_TCP4_LENGTH = 16 + 12


class ProxyEchoServer(EchoServer):
    """Require a PROXY v2 header naming a client on 127.0.0.1 first (a connection without
    one is reset), then echo what follows: exactly the client's bytes."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self._head: bytes | None = b""

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            super().data_received(data)
            return
        self._head += data
        if len(self._head) < V2_TCP4_LENGTH:
            return
        if not self._head.startswith(V2_TCP4_FROM_LOOPBACK):
            self.tally.outcomes["bad-proxy-header"] += 1
            self.done = True
            assert self.transport is not None
            reset(self.transport)
            return
        rest, self._head = self._head[V2_TCP4_LENGTH:], None
        if rest:
            super().data_received(rest)


class StreamServer(StreamEnd):
    """Reads a header naming the stream, then checks the client's bytes and sends its own."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self._head = b""

    def data_received(self, data: bytes) -> None:
        if self._configured:
            super().data_received(data)
            return
        self._head += data
        if len(self._head) < HEADER.size:
            return
        try:
            stream, up, down = parse_header(self._head[: HEADER.size])
        except ValueError:
            self.end("mismatch", abort=True)
            return
        rest, self._head = self._head[HEADER.size :], b""
        self.configure(down_seed(stream), down, up_seed(stream), up)
        if rest:
            super().data_received(rest)

    def eof_received(self) -> bool:
        if not self._configured:
            # A client that connected and left without a word (a slowloris giving up).
            self.end(OK if not self._head else "eof-short")
            return False
        return super().eof_received()


class StallServer:
    """Accepts and then neither reads nor writes, until told to let go. Plain sockets, no
    transport: a transport would start reading on its own."""

    def __init__(self, port: int, tally: Tally) -> None:
        self.tally = tally
        self.held: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", port), backlog=65535)
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            self.held.append(conn)
            self.tally.outcomes[OK] += 1

    def release(self) -> int:
        """Reset every held connection (the bytes they were sent are never read)."""
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            conn.close()
        count, self.held = len(self.held), []
        return count

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_word(reader: asyncio.StreamReader, word: str) -> None:
    """Wait for the suite to write `word` on our stdin."""
    while True:
        line = await reader.readline()
        if not line:
            raise SystemExit(f"stdin closed while waiting for {word!r}")
        if line.decode().strip() == word:
            return


async def serve(mode: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "stall":
        stall = StallServer(port, tally)
        emit(event="ready", port=stall.sock.getsockname()[1])

        async def release_on_word() -> None:
            await wait_word(await _stdin(), "release")
            emit(event="released", count=stall.release())

        releaser = asyncio.ensure_future(release_on_word())
        await stop.wait()
        releaser.cancel()
        stall.close()
        emit(**tally.result())
        return
    factories: dict[str, Callable[[], asyncio.Protocol]] = {
        "echo": lambda: EchoServer(tally),
        "proxy-echo": lambda: ProxyEchoServer(tally),
        "stream": lambda: StreamServer(tally),
    }
    server = await loop.create_server(
        factories[mode], "127.0.0.1", port, backlog=65535, reuse_address=True
    )
    emit(event="ready", port=server.sockets[0].getsockname()[1])
    await stop.wait()
    # Stopped right after the last client finished, the last bytes and EOF of a
    # connection may still be on their way here: let what is open end first.
    server.close()
    await tally.drained(timeout=10.0)
    emit(**tally.result(open=tally.open))


# --- clients


def _message(stream: int, size: int) -> bytes:
    return chunk(up_seed(stream), 0, size)


class EchoCheck(asyncio.Protocol):
    """Send a message, half-close, expect exactly the message back and then EOF."""

    def __init__(self, message: bytes, tally: Tally, *, half_close: bool = True) -> None:
        self.message = message
        self.tally = tally
        self.half_close = half_close
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.echoed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.message)
        if self.half_close:
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # Half-closed, the whole echo is judged at EOF, so an excess byte is caught too.
        full = len(self.buffer) >= len(self.message)
        if not self.half_close and full and not self.echoed.done():
            self._judge()

    def _judge(self) -> None:
        if self.buffer == self.message:
            self.echoed.set_result(OK)
            self.tally.verified += len(self.buffer)
        elif len(self.buffer) > len(self.message) and self.buffer.startswith(self.message):
            self.echoed.set_result("excess")
        elif self.message.startswith(self.buffer):
            self.echoed.set_result("eof-short")
        else:
            self.echoed.set_result("mismatch")

    def round_trip(self, message: bytes) -> None:
        """Send `message` again on a held connection; `echoed` resolves when it is back."""
        assert self.transport is not None
        self.message, self.buffer = message, bytearray()
        self.echoed = asyncio.get_running_loop().create_future()
        self.transport.write(message)

    def eof_received(self) -> bool:
        if not self.echoed.done():
            self._judge()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.echoed.done():
            self.echoed.set_result(classify(exc))
        if not self.closed.done():
            self.closed.set_result(OK if exc is None else classify(exc))


async def _connect(port: int, factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport | str:
    """A connection to 127.0.0.1:port, or the error kind it failed with."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_connection(factory, "127.0.0.1", port)
    except OSError as exc:
        return classify(exc)
    return transport


async def echo_once(port: int, message: bytes, tally: Tally, deadline: float) -> str:
    """One short connection: connect, send, half-close, check the echo, close."""
    protocol = EchoCheck(message, tally)
    transport: asyncio.Transport | str = "timeout"
    try:
        async with asyncio.timeout(deadline):
            transport = await _connect(port, lambda: protocol)
            if isinstance(transport, str):
                return transport
            outcome = await protocol.echoed
            await protocol.closed
            return outcome
    except TimeoutError:
        if not isinstance(transport, str):
            transport.abort()
        return "timeout"


class ShortStream(StreamEnd):
    """A small checked stream each way: a short connection to a `stream` backend."""

    def __init__(self, tally: Tally, stream: int, size: int) -> None:
        super().__init__(tally)
        self.stream, self.size = stream, size

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(header(self.stream, self.size, self.size))
        self.configure(up_seed(self.stream), self.size, down_seed(self.stream), self.size)


async def stream_once(port: int, stream: int, size: int, tally: Tally, deadline: float) -> None:
    """One short checked stream; its outcome goes to `tally`."""
    protocol = ShortStream(tally, stream, size)
    try:
        async with asyncio.timeout(deadline):
            transport = await _connect(port, constant(protocol))
            if isinstance(transport, str):
                protocol.end(transport)
            await protocol.outcome
    except TimeoutError:
        protocol.end("timeout", abort=True)


async def churn(args: argparse.Namespace) -> None:
    """Short connections one after another on `concurrency` workers: an echo check each
    (`--protocol echo`), or a small checked stream each way (`--protocol stream`). With
    `--until-stop`, they go on until "stop" on stdin, reporting progress as they go."""
    tally = Tally()
    started = time.monotonic()
    next_index = 0
    stopping = asyncio.Event()
    every: int = args.progress_every

    took: list[float] = []  # seconds each connection took, start to close
    # With --hello NAME each message starts with a real TLS ClientHello naming NAME.
    hello = real_hello(args.hello) if args.hello else b""

    async def worker() -> None:
        nonlocal next_index
        while not stopping.is_set() and (args.until_stop or next_index < args.count):
            stream = args.base + next_index
            next_index += 1
            began = time.monotonic()
            if args.protocol == "stream":
                await stream_once(args.port, stream, args.size, tally, args.timeout)
            else:
                message = hello + _message(stream, args.size)
                tally.outcomes[await echo_once(args.port, message, tally, args.timeout)] += 1
            took.append(time.monotonic() - began)
            if every and next_index % every == 0:
                emit(event="progress", started=next_index, completed=tally.outcomes[OK])

    async def stop_on_word() -> None:
        await wait_word(await _stdin(), "stop")
        stopping.set()

    stopper = asyncio.ensure_future(stop_on_word()) if args.until_stop else None
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    if stopper is not None:
        stopper.cancel()
    elapsed = time.monotonic() - started
    latency = Latency.of(took)
    emit(
        **tally.result(
            elapsed=elapsed, median=latency.median, p99=latency.p99, slowest=latency.slowest
        )
    )


class StreamClient(StreamEnd):
    def __init__(self, tally: Tally, job: StreamJob, stream: int, reset_at: int | None) -> None:
        super().__init__(tally)
        self.job = job
        self.stream = stream
        self.reset_at = reset_at
        self.flowing = False
        self.stalled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        job = self.job
        assert self.transport is not None
        self.transport.write(header(self.stream, job.up, job.down))
        self.configure(up_seed(self.stream), job.up, down_seed(self.stream), job.down)

    def progress(self) -> None:
        job = self.job
        if (
            not self.flowing
            and self.sent >= min(job.flowing_at, self.send_len)
            and self.received >= min(job.flowing_at, self.recv_len)
        ):
            self.flowing = True
            job.now_flowing()
        if self.outcome.done():
            return
        if self.reset_at is not None and self.received >= self.reset_at and self.recv_len:
            self.give_up("reset")
        elif job.stall_after is not None and not self.stalled and self.received >= job.stall_after:
            self.stalled = True
            assert self.transport is not None
            self.transport.pause_reading()
            job.now_stalled()

    def give_up(self, how: str) -> None:
        """End the connection on purpose: with a reset, or by closing (a FIN)."""
        assert self.transport is not None
        self.tally.outcomes[ABORTED] += 1
        self.outcome.set_result(ABORTED)
        if how == "reset":
            reset(self.transport)
        else:
            self.transport.abort()  # no flush: what is still unsent stays unsent


class StreamJob:
    """Many checked streams at once, with optional resets, stalls and a deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.up: int = args.up
        self.down: int = args.down
        self.flowing_at = args.flowing_at
        self.stall_after: int | None = args.stall_after
        self.tally = Tally()
        self.flowing = 0
        self.stalled = 0
        self.clients: list[StreamClient] = []

    def now_flowing(self) -> None:
        self.flowing += 1
        if self.flowing == self.args.count:
            emit(event="flowing", count=self.flowing)

    def now_stalled(self) -> None:
        self.stalled += 1
        if self.stalled == self.args.count:
            emit(event="stalled", count=self.stalled, received=self.received())

    def received(self) -> int:
        return sum(client.received for client in self.clients)

    def reset_point(self, index: int) -> int | None:
        """Where connection `index` resets itself, if it is one of those that do."""
        every: int = self.args.reset_every
        if not every or index % every:
            return None
        # Spread over the first half of the transfer, deterministic per connection.
        return 1 + (index * 7_919_993) % max(self.down // 2, 1)

    async def one(self, index: int) -> None:
        stream = self.args.base + index
        client = StreamClient(self.tally, self, stream, self.reset_point(index))
        self.clients.append(client)
        transport = await _connect(self.args.port, lambda: client)
        if isinstance(transport, str):
            client.end(transport)

    async def run(self) -> None:
        args = self.args
        started = time.monotonic()
        await asyncio.gather(*(self.one(index) for index in range(args.count)))
        outcomes = asyncio.gather(*(client.outcome for client in self.clients))
        if args.wait_go:
            await wait_word(await _stdin(), "go")
            for client in self.clients:
                if client.outcome.done() or client.transport is None:
                    continue
                if args.on_go == "resume":
                    client.transport.resume_reading()
                else:
                    client.give_up(args.on_go)
        try:
            await asyncio.wait_for(asyncio.shield(outcomes), args.timeout)
        except TimeoutError:
            for client in self.clients:
                client.end("timeout", abort=True)
        emit(
            **self.tally.result(
                elapsed=time.monotonic() - started,
                sent=sum(client.sent for client in self.clients),
            )
        )


async def streams(args: argparse.Namespace) -> None:
    await StreamJob(args).run()


async def burst(args: argparse.Namespace) -> None:
    """Open `count` connections at once, check an echo on each while all are open."""
    tally = Tally()
    started = time.monotonic()
    protocols = [
        EchoCheck(_message(args.base + i, args.size), tally, half_close=False)
        for i in range(args.count)
    ]

    async def one(protocol: EchoCheck) -> str:
        transport = await _connect(args.port, lambda: protocol)
        if isinstance(transport, str):
            return transport
        return await protocol.echoed

    try:
        async with asyncio.timeout(args.timeout):
            outcomes = await asyncio.gather(*(one(p) for p in protocols))
    except TimeoutError:
        outcomes = [p.echoed.result() if p.echoed.done() else "timeout" for p in protocols]
    all_open = time.monotonic() - started
    open_at_once = sum(1 for p in protocols if p.transport is not None and not p.closed.done())
    emit(event="open", count=open_at_once, seconds=all_open)
    await wait_word(await _stdin(), "release")
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    await asyncio.gather(*(p.closed for p in protocols if p.transport is not None))
    tally.outcomes.update(outcomes)
    emit(**tally.result(all_open=all_open, open_at_once=open_at_once))


async def hold(args: argparse.Namespace) -> None:
    """Open checked connections one by one and keep them, until one fails (the forwarder
    is out of descriptors); knock with more; on "release", check each held connection
    still relays, then close them all."""
    tally = Tally()
    held: list[EchoCheck] = []
    failure = ""
    for index in range(args.max):
        protocol = EchoCheck(_message(args.base + index, args.size), tally, half_close=False)
        outcome = "timeout"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.step_timeout):
                transport = await _connect(args.port, constant(protocol))
                outcome = transport if isinstance(transport, str) else await protocol.echoed
        if outcome != OK:
            failure = outcome
            if protocol.transport is not None:
                protocol.transport.abort()
            break
        held.append(protocol)
    emit(event="held", count=len(held), failure=failure)

    async def knock(index: int) -> tuple[str, EchoCheck]:
        protocol = EchoCheck(
            _message(args.base + args.max + index, args.size), tally, half_close=False
        )
        try:
            async with asyncio.timeout(args.step_timeout):
                transport = await _connect(args.port, lambda: protocol)
                if isinstance(transport, str):
                    return transport, protocol
                return await protocol.echoed, protocol
        except TimeoutError:
            return "timeout", protocol

    knocks = await asyncio.gather(*(knock(i) for i in range(args.knocks)))
    knocked = Counter(outcome for outcome, _ in knocks)
    for _, protocol in knocks:
        if protocol.transport is not None:
            protocol.transport.abort()
    emit(event="knocked", outcomes=dict(knocked))
    await wait_word(await _stdin(), "release")
    # The held connections outlived the shortage: each must still carry bytes both ways.
    for index, protocol in enumerate(held):
        protocol.round_trip(_message(args.base + 2 * args.max + index, args.size))
    still: Counter[str] = Counter()
    try:
        async with asyncio.timeout(args.step_timeout * 5):
            still.update(await asyncio.gather(*(p.echoed for p in held)))
    except TimeoutError:
        still.update(p.echoed.result() if p.echoed.done() else "timeout" for p in held)
    for protocol in held:
        assert protocol.transport is not None
        protocol.transport.write_eof()
    await asyncio.gather(*(p.closed for p in held))
    # Outcomes: every held connection counts once, by whether it still relayed.
    tally.outcomes = still
    emit(**tally.result(held=len(held), failure=failure, knocked=dict(knocked)))


async def silent(args: argparse.Namespace) -> None:
    """Connect and say nothing (slowloris) until "go", then leave with a FIN."""
    tally = Tally()
    protocols = [EchoCheck(b"", tally, half_close=False) for _ in range(args.count)]
    connected = await asyncio.gather(*(_connect(args.port, constant(p)) for p in protocols))
    failed = Counter(result for result in connected if isinstance(result, str))
    emit(event="connected", count=args.count - sum(failed.values()), errors=dict(failed))
    await wait_word(await _stdin(), "go")
    early: Counter[str] = Counter()
    for protocol in protocols:
        if protocol.transport is None:
            continue
        if protocol.closed.done():
            early["closed-early"] += 1  # the forwarder let go of a client that was still there
        protocol.transport.close()
    closed = await asyncio.gather(*(p.closed for p in protocols if p.transport is not None))
    tally.outcomes.update(closed)
    tally.outcomes.update(failed)
    tally.outcomes.update(early)
    emit(**tally.result())


# --- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.peers")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("mode", choices=["echo", "proxy-echo", "stream", "stall"])
    server.add_argument("--port", type=int, default=0)

    def client(name: str) -> argparse.ArgumentParser:
        job = sub.add_parser(name)
        job.add_argument("--port", type=int, required=True)
        job.add_argument("--base", type=int, default=0, help="first stream number")
        job.add_argument("--count", type=int, default=1)
        job.add_argument("--size", type=int, default=64)
        job.add_argument("--timeout", type=float, default=30.0)
        return job

    churn_job = client("churn")
    churn_job.add_argument("--concurrency", type=int, default=32)
    churn_job.add_argument("--protocol", choices=["echo", "stream"], default="echo")
    churn_job.add_argument("--until-stop", action="store_true", help="until 'stop' on stdin")
    churn_job.add_argument("--progress-every", type=int, default=0)
    churn_job.add_argument("--hello", default="", help="start with a TLS ClientHello for NAME")
    streams_job = client("streams")
    streams_job.add_argument("--up", type=int, required=True)
    streams_job.add_argument("--down", type=int, required=True)
    streams_job.add_argument("--flowing-at", type=int, default=1 << 20)
    streams_job.add_argument("--reset-every", type=int, default=0)
    streams_job.add_argument("--stall-after", type=int, default=None)
    streams_job.add_argument("--wait-go", action="store_true", help="wait for 'go' on stdin")
    streams_job.add_argument("--on-go", choices=["resume", "reset", "close"], default="resume")
    client("burst")
    hold_job = client("hold")
    hold_job.add_argument("--max", type=int, default=100_000)
    hold_job.add_argument("--knocks", type=int, default=100)
    hold_job.add_argument("--step-timeout", type=float, default=2.0)
    client("silent")
    return parser


JOBS: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "churn": churn,
    "streams": streams,
    "burst": burst,
    "hold": hold,
    "silent": silent,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # Bursts and holds keep thousands of sockets open in this one process.
    raise_fd_limit()
    if args.command == "serve":
        job: Awaitable[None] = serve(args.mode, args.port)
    else:
        job = JOBS[args.command](args)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(job)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
