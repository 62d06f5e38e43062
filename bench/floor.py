"""The cheapest TCP relay CPython can run: what a connection costs an interpreter before any
feature of a forwarder.

`python bench/floor.py` runs, alternated, HAProxy `nbthread 1`, pyforward (`--quiet`, splice,
uvloop, one process) and this file's `floor` relay: one `select.epoll` loop on raw
non-blocking sockets, `recv_into`/`send` of one buffer, no event loop library, no logging,
no limits, no timeouts, no error handling beyond closing. Each is driven by `wrk -t1 -c16`
with `Connection: close` against nginx, pinned to the other CPU, and charged its own
user and system CPU (`/proc/PID/stat`) per connection. It prints the medians.

`--https`: the same with TLS between wrk and nginx (a handshake per connection, as the
`https` scenario of `bench/run.py`).

`python bench/floor.py memory` prints the PSS of idle processes: the interpreter alone, with
the modules any asyncio forwarder loads (asyncio, then uvloop, which imports ssl), an idle
`pyforward run`, the floor relay, and HAProxy `nbthread 1` with no connection. PSS shares a
library's pages among the processes that map it, so the figures of one run compare.

`python bench/floor.py serve LISTEN_PORT TARGET_PORT [--nested]` runs the floor relay alone
(`--nested`, subject `floor-nested`: on an epoll watched by another epoll, the loop waiting
on the outer one, as pyforward's relay is watched by its event loop).

The floor relay is a measuring stick, not a forwarder: it assumes a write never blocks
(true of the 18-byte request and 145-byte answer measured here) and drops what it cannot send.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The benchmark's modules are imported where they are used: the floor relay (`serve`) runs
# with nothing but what it needs, so that its memory is the interpreter's.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOST = "127.0.0.1"
NAME = "localhost"  # the name of bench/sni.py's certificate


def serve(listen_port: int, target_port: int, *, nested: bool = False) -> None:
    """Relay every connection to `target_port` until SIGTERM. `nested`: the sockets' epoll
    is watched by another, which the loop waits on (as pyforward's relay epoll is watched
    by the event loop's)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((HOST, listen_port))
    listener.listen(4096)
    listener.setblocking(False)
    poll = select.epoll()
    lfd = listener.fileno()
    poll.register(lfd, select.EPOLLIN)
    outer = select.epoll()
    outer.register(poll.fileno(), select.EPOLLIN)
    peer: dict[int, socket.socket] = {}  # fd -> the other side's socket
    own: dict[int, socket.socket] = {}  # fd -> its socket
    eofs: dict[int, int] = {}  # fd -> EOFs seen on its connection (shared by both fds' key)
    buf = bytearray(65536)
    view = memoryview(buf)
    target = (HOST, target_port)
    events_in = select.EPOLLIN | select.EPOLLRDHUP
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def close(fd: int) -> None:
        a = own.pop(fd)
        b = peer.pop(fd)
        own.pop(b.fileno(), None)
        peer.pop(b.fileno(), None)
        eofs.pop(min(fd, b.fileno()), None)
        a.close()
        b.close()

    while True:
        if nested:
            outer.poll()
        for fd, _ in poll.poll(0 if nested else -1):
            if fd == lfd:
                while True:
                    try:
                        client, _ = listener.accept()
                    except BlockingIOError:
                        break
                    client.setblocking(False)
                    server = socket.socket(
                        socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                    )
                    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    code = server.connect_ex(target)
                    if code not in (0, errno.EINPROGRESS):
                        client.close()
                        server.close()
                        continue
                    c, s = client.fileno(), server.fileno()
                    own[c], own[s] = client, server
                    peer[c], peer[s] = server, client
                    eofs[min(c, s)] = 0
                    poll.register(c, events_in)
                    poll.register(s, events_in)
                continue
            sock = own.get(fd)
            if sock is None:
                continue
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                close(fd)
                continue
            other = peer[fd]
            if n:
                try:
                    other.send(view[:n])
                except OSError:
                    close(fd)
                continue
            key = min(fd, other.fileno())
            eofs[key] += 1
            if eofs[key] == 2:
                close(fd)
                continue
            poll.modify(fd, 0)
            try:
                other.shutdown(socket.SHUT_WR)
            except OSError:
                close(fd)


def cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def subject_argv(name: str, port: int, target: int, workdir: Path) -> list[str]:
    if name == "haproxy":
        from bench.subjects import HAPROXY_CONFIG  # noqa: PLC0415

        config = workdir / f"haproxy-{port}.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                threads="    nbthread 1\n", host=HOST, port=port, server=f"{HOST}:{target}"
            )
        )
        return ["haproxy", "-db", "-f", str(config)]
    if name.startswith("pyforward"):
        relay = "copy" if name == "pyforward-copy" else "splice"
        return [
            sys.executable, "-m", "pyforward", "run", "--listen", f"{HOST}:{port}",
            "--target", f"{HOST}:{target}", "--quiet", "--relay", relay, "--loop", "uvloop",
        ]  # fmt: skip
    nested = ["--nested"] if name == "floor-nested" else []
    return [sys.executable, __file__, "serve", str(port), str(target), *nested]


def measure(
    name: str, target: int, workdir: Path, seconds: int, scheme: str
) -> tuple[float, float, float]:
    """conn/s, user and system CPU per connection (us) of one subject."""
    port = free_port()
    # One CPU for the subject, the other for wrk (nginx shares them).
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *subject_argv(name, port, target, workdir)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        time.sleep(0.3)
        u0, s0 = cpu_ticks(proc.pid)
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds}s",
             "-H", "Connection: close", f"{scheme}://{NAME}:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        u1, s1 = cpu_ticks(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    found = re.search(r"(\d+) requests in", out)
    assert found is not None, out
    count = int(found[1])
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return count / seconds, (u1 - u0) * tick / count, (s1 - s0) * tick / count


IDLE_IMPORTS = {
    "python, nothing imported": "pass",
    "python, asyncio": "import asyncio",
    "python, asyncio + uvloop (+ ssl)": "import asyncio, uvloop",
}


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def idle_pss(argv: list[str], ready: Path | None, workdir: Path) -> int:
    """PSS of `argv` once it is idle (`ready`: a file it writes when it is)."""
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while ready is not None and not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # settled: start-up allocations done
        return pss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows: list[tuple[str, int]] = []
        for label, code in IDLE_IMPORTS.items():
            ready = workdir / f"ready-{len(rows)}"
            script = "\n".join(
                (
                    code,
                    "import pathlib, time",
                    f"pathlib.Path({str(ready)!r}).touch()",
                    "time.sleep(60)",
                )
            )
            rows.append((label, idle_pss([sys.executable, "-c", script], ready, workdir)))
        port = free_port()
        argv = subject_argv("pyforward", port, free_port(), workdir)
        rows.append(("pyforward run, idle", idle_pss(argv, None, workdir)))
        argv = subject_argv("floor", free_port(), free_port(), workdir)
        rows.append(("the floor relay, idle", idle_pss(argv, None, workdir)))
        argv = subject_argv("haproxy", free_port(), free_port(), workdir)
        rows.append(("HAProxy nbthread 1, idle", idle_pss(argv, None, workdir)))
    for label, kib in rows:
        print(f"{label:36s} {kib / 1024:6.1f} MiB PSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--subjects", default="haproxy,pyforward,floor")
    parser.add_argument("--https", action="store_true", help="TLS to nginx, through each")
    args, rest = parser.parse_known_args()
    if rest[:1] == ["serve"]:
        serve(int(rest[1]), int(rest[2]), nested="--nested" in rest)
        return
    if rest[:1] == ["memory"]:
        memory()
        return
    from bench.backends import nginx_server  # noqa: PLC0415
    from bench.sni import https_server  # noqa: PLC0415

    names = args.subjects.split(",")
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    backend = https_server if args.https else nginx_server
    scheme = "https" if args.https else "http"
    with tempfile.TemporaryDirectory() as tmp, backend(Path(tmp)) as target:
        for _ in range(args.rounds):
            for name in names:
                rows[name].append(measure(name, target, Path(tmp), args.seconds, scheme))
    print(f"{'subject':12s} {'conn/s':>8s} {'user us':>8s} {'sys us':>8s} {'total us':>9s}")
    for name, got in rows.items():
        rate, user, system = (statistics.median(column) for column in zip(*got, strict=True))
        total = statistics.median(u + s for _, u, s in got)
        print(f"{name:12s} {rate:8.0f} {user:8.1f} {system:8.1f} {total:9.1f}")


if __name__ == "__main__":
    main()
