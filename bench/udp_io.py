"""Which UDP I/O is faster under the event loop: raw sockets with `loop.add_reader`, or
asyncio datagram endpoints (`loop.create_datagram_endpoint`)? Two minimal relays, the same
flow-per-client logic, measured with bench/udp_load.py against bench/udp_echo.py:

    .venv/bin/python bench/udp_io.py [--seconds 2] [--loop uvloop|asyncio]

pyforward's datagram relay (pyforward/datagram/) is the first kind; this is the
measurement behind that choice. A relay runs as `python bench/udp_io.py relay KIND PORT
TARGET LOOP` in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netutil import HOST, free_port
from bench.udp_load import run_load, wait_answering

Address = tuple[Any, ...]


async def reader_relay(port: int, target: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((HOST, port))
    listener.setblocking(False)
    buffer = bytearray(65536)
    view = memoryview(buffer)
    flows: dict[Address, socket.socket] = {}

    def from_target(sock: socket.socket, client: Address) -> None:
        for _ in range(64):
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                return
            with contextlib.suppress(BlockingIOError):
                listener.sendto(view[:size], client)

    def from_client() -> None:
        for _ in range(64):
            try:
                size, client = listener.recvfrom_into(buffer)
            except BlockingIOError:
                return
            sock = flows.get(client)
            if sock is None:
                sock = flows[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect((HOST, target))
                loop.add_reader(sock.fileno(), from_target, sock, client)
            with contextlib.suppress(BlockingIOError):
                sock.send(view[:size])

    loop.add_reader(listener.fileno(), from_client)
    await asyncio.Event().wait()


class _Back(asyncio.DatagramProtocol):
    def __init__(self, front: asyncio.DatagramTransport, client: Address) -> None:
        self.front, self.client = front, client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.front.sendto(data, self.client)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, target: int) -> None:
        self.target = target
        self.flows: dict[Address, asyncio.DatagramTransport | None] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        back = self.flows.get(addr)
        if back is not None:
            back.sendto(data)
        elif addr not in self.flows:
            self.flows[addr] = None  # opening: datagrams until then are dropped
            asyncio.get_running_loop().create_task(self._open(addr, data))

    async def _open(self, addr: Address, first: bytes) -> None:
        assert self.transport is not None
        front = self.transport
        back, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Back(front, addr), remote_addr=(HOST, self.target)
        )
        self.flows[addr] = back
        back.sendto(first)


async def endpoint_relay(port: int, target: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Front(target), local_addr=(HOST, port))
    await asyncio.Event().wait()


def relay_main(kind: str, port: int, target: int, loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop  # noqa: PLC0415

        uvloop.install()
    relay = reader_relay if kind == "reader" else endpoint_relay
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay(port, target))


@contextlib.contextmanager
def _process(argv: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        wait_answering(port, 10.0, b"probe")
        yield
    finally:
        process.terminate()
        process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    echo_port = free_port()
    echo = [sys.executable, str(Path(__file__).with_name("udp_echo.py")), str(echo_port)]
    with _process(echo, echo_port):
        for round_index in range(1, args.rounds + 1):
            for kind in ("reader", "endpoint"):
                port = free_port()
                argv = [sys.executable, __file__, "relay", kind, str(port), str(echo_port)]
                with _process([*argv, args.loop], port):
                    small = run_load(
                        port, lambda n: bytes(64), clients=20, window=1, seconds=args.seconds
                    )
                    big = run_load(
                        port, lambda n: bytes(1400), clients=4, window=16, seconds=args.seconds
                    )
                print(
                    f"round {round_index} {kind:8} {args.loop}: "
                    f"{small.per_second:8.0f} round trips/s (64 B, 20 clients)  "
                    f"{big.mbit_per_second:6.0f} Mbit/s (1400 B, 4x16 in flight, "
                    f"{big.lost} lost)",
                    flush=True,
                )
                time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
