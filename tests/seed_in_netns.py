"""The seed's exact socat command line, run by pyforward-socat inside a network namespace.

Run as `python -m tests.seed_in_netns` only inside a fresh network namespace (the test
starts it with `unshare --net`): it gives that namespace's loopback the seed's node
address 10.211.55.14, runs an echo backend on 10.211.55.14:32653, then
`pyforward-socat TCP-LISTEN:443,fork,reuseaddr TCP:10.211.55.14:32653` and sends bytes
through port 443. No packet leaves the namespace. Prints `ok ...` and exits 0 when every
byte came back.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.harness import TIMEOUT, Backend, ForwarderProcess, echo, pattern_bytes, recv_all

SEED_ARGS = ["TCP-LISTEN:443,fork,reuseaddr", "TCP:10.211.55.14:32653"]
NODE_IP, NODE_PORT = "10.211.55.14", 32653


def pyforward_socat() -> list[str]:
    """The installed console script beside this interpreter (the install must have one)."""
    path = Path(sys.executable).with_name("pyforward-socat")
    if not path.exists():
        raise AssertionError(f"{path} is missing: install the project (pip install -e .)")
    return [str(path)]


def exchange(host: str, port: int, payload: bytes) -> bytes:
    """Send `payload` while reading, half-close, and return all that came back until EOF."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:

        def send() -> None:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = recv_all(conn)
        sender.join(TIMEOUT)
        return received


def main() -> int:
    # A fresh namespace has one interface, a loopback that is down: refuse to run
    # anywhere else, so the seed's address is never reached for real.
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    if names != ["lo"] or "<LOOPBACK>" not in links.stdout:  # only lo, and it is down
        print(f"not in a fresh network namespace ({names}); refusing to run", file=sys.stderr)
        return 2
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"], check=True)
    node = socket.create_server((NODE_IP, NODE_PORT))
    payload = pattern_bytes(443, 1 << 20)
    with Backend.on_socket(node, echo):
        forwarder = ForwarderProcess(SEED_ARGS, program=pyforward_socat())
        try:
            port = forwarder.port
            echoed = [exchange(host, 443, payload) for host in ("127.0.0.1", NODE_IP)]
        finally:
            code = forwarder.stop()
    if port != 443 or any(data != payload for data in echoed) or code != 0:
        print(f"failed: port={port} code={code}\n{forwarder.output()}", file=sys.stderr)
        return 1
    print(f"ok port={port} bytes={sum(len(data) for data in echoed)} code={code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
