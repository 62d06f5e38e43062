"""Splice through a shrunken (one-page) pipe against a full one, and against copying.

The measurement behind pyforward's rule for shrunken pipes (pyforward/relay/pipes.py): run as root,
`python bench/pipe_size.py`. It moves 512 MiB between two loopback TCP connections in one
blocking loop per method, alternating methods, and prints Gbit/s for each.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time

SIZE = 512 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def produce(sock: socket.socket) -> None:
    block = b"x" * (1 << 20)
    for _ in range(SIZE >> 20):
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)


def consume(sock: socket.socket) -> None:
    buffer = bytearray(1 << 20)
    while sock.recv_into(buffer):
        pass


def relay(method: str, size: int) -> tuple[int, float]:
    """Move SIZE bytes with `method` ('splice' through a pipe of `size`, or 'copy' with a
    buffer of `size`); return the size in effect and Gbit/s."""
    source_writer, source = connected_pair()
    destination, destination_reader = connected_pair()
    threads = [
        threading.Thread(target=produce, args=(source_writer,)),
        threading.Thread(target=consume, args=(destination_reader,)),
    ]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    if method == "splice":
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, size)
        size = fcntl.fcntl(write_end, _F_GETPIPE_SZ)
        while moved := os.splice(source.fileno(), write_end, size, flags=os.SPLICE_F_MOVE):
            while moved:
                moved -= os.splice(read_end, destination.fileno(), moved, flags=os.SPLICE_F_MOVE)
        os.close(read_end)
        os.close(write_end)
    else:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while received := source.recv_into(buffer):
            destination.sendall(view[:received])
    destination.shutdown(socket.SHUT_WR)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for sock in (source_writer, source, destination, destination_reader):
        sock.close()
    return size, SIZE * 8 / elapsed / 1e9


def main() -> None:
    for _ in range(3):
        for method, size in (("splice", 4096), ("splice", 65536), ("copy", 262144)):
            effective, gbits = relay(method, size)
            print(f"{method:6} {effective:7} bytes  {gbits:5.1f} Gbit/s", flush=True)


if __name__ == "__main__":
    main()
