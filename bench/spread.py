"""How the kernel spreads new connections over worker processes: one shared listening
socket against a SO_REUSEPORT socket per process, and pyforward's `--workers 2` itself.

The measurement behind pyforward's choice of one set of sockets for all workers
(pyforward/workers/supervisor.py): `python bench/spread.py`. For each strategy two processes
accept on 127.0.0.1 and answer a tiny HTTP response, wrk opens new connections (`Connection:
close`) for 3 s at 1, 16 and 64 at once, and each process's share of them is printed. The
acceptors poll with epoll, as an event loop does.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.backends import nginx_server
from bench.netutil import HOST, free_port, wait_accepting

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
CONCURRENCY = (1, 16, 64)
SECONDS = 3


def acceptor(sock: socket.socket, counts: int) -> None:
    """Serve until SIGTERM, then write how many connections this process took to `counts`."""
    served = 0
    stop = False

    def done(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    while not stop:
        try:
            events = poller.poll(0.1)
        except InterruptedError:
            continue
        for _ in events:
            try:
                client, _ = sock.accept()
            except BlockingIOError:
                continue
            client.setblocking(True)
            try:
                client.recv(4096)
                client.sendall(ANSWER)
            except OSError:
                pass
            client.close()
            served += 1
    os.write(counts, f"{os.getpid()} {served}\n".encode())
    os._exit(0)


def listening(port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def wrk(port: int, connections: int) -> None:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "-H", "Connection: close"]
    subprocess.run([*argv, f"http://{HOST}:{port}/"], capture_output=True, check=True)


def kernel_spread(reuseport: bool, connections: int) -> list[int]:
    port = free_port()
    read_end, write_end = os.pipe()
    shared = None if reuseport else listening(port, False)
    pids = []
    for _ in range(2):
        sock = listening(port, True) if reuseport else shared
        assert sock is not None
        pid = os.fork()
        if pid == 0:
            acceptor(sock, write_end)
        pids.append(pid)
        if reuseport:
            sock.close()
    wait_accepting(port, 5.0)
    wrk(port, connections)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    os.close(write_end)
    with os.fdopen(read_end) as lines:
        counts = [int(line.split()[1]) for line in lines]
    if shared is not None:
        shared.close()
    return counts


def pyforward_spread(connections: int) -> list[int]:
    with tempfile.TemporaryDirectory() as workdir, nginx_server(Path(workdir)) as backend:
        port = free_port()
        log = Path(workdir) / "pyforward.log"
        with log.open("w") as out:
            argv = [sys.executable, "-m", "pyforward", "run", "--workers", "2"]
            argv += ["--listen", f"{HOST}:{port}", "--target", f"{HOST}:{backend}"]
            process = subprocess.Popen(argv, stderr=out)
            deadline = time.monotonic() + 20
            while "event=ready" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            wrk(port, connections)
            process.terminate()
            process.wait()
        found = re.findall(r"pid=(\d+) event=close ", log.read_text())
    return sorted(collections.Counter(found).values())


def shares(counts: list[int]) -> str:
    total = sum(counts) or 1
    parts = "/".join(f"{100 * n / total:.0f}%" for n in sorted(counts, reverse=True))
    return f"{parts} of {sum(counts)}"


def main() -> None:
    print(f"{'strategy':<28}" + "".join(f"{f'-c{c}':>22}" for c in CONCURRENCY))
    rows: list[tuple[str, Callable[[int], list[int]]]] = [
        ("one shared socket", functools.partial(kernel_spread, False)),
        ("SO_REUSEPORT per process", functools.partial(kernel_spread, True)),
        ("pyforward --workers 2", pyforward_spread),
    ]
    for name, measure in rows:
        cells = [shares(measure(c)) for c in CONCURRENCY]
        print(f"{name:<28}" + "".join(f"{cell:>22}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
