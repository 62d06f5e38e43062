"""The seed's exact socat command line, run by pyforward-socat inside a network namespace.

Run only inside a fresh network namespace (the test starts it with `unshare --net`):
it gives that namespace's loopback the seed's node address 10.211.55.14, runs an echo
backend on 10.211.55.14:32653, then `pyforward-socat TCP-LISTEN:443,fork,reuseaddr
TCP:10.211.55.14:32653` and sends bytes through port 443. No packet leaves the namespace.
Prints one line, `ok ...`, and exits 0 when every byte came back.
"""

from __future__ import annotations

import os
import subprocess
import sys

from forwarder_process import Forwarder, echo_server, exchange

SEED_ARGS = ["TCP-LISTEN:443,fork,reuseaddr", "TCP:10.211.55.14:32653"]
NODE_IP, NODE_PORT = "10.211.55.14", 32653


def main() -> int:
    # A fresh namespace's only interface is a loopback that is down, with no address:
    # refuse to run anywhere else, so the seed's address is never reached for real.
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    if [line.split(":")[1].strip() for line in links.stdout.splitlines()] != ["lo"]:
        print("not in a fresh network namespace; refusing to run", file=sys.stderr)
        return 2
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"], check=True)
    with echo_server(NODE_IP, NODE_PORT):
        forwarder = Forwarder(SEED_ARGS)
        try:
            port = forwarder.listen_port()
            payload = os.urandom(1 << 20)
            echoed = [exchange(host, 443, payload) for host in ("127.0.0.1", NODE_IP)]
            code = forwarder.stop()
        finally:
            forwarder.kill()
    if port != 443 or any(data != payload for data in echoed) or code != 0:
        print(f"failed: port={port} code={code} lines={forwarder.lines}", file=sys.stderr)
        return 1
    print(f"ok port={port} bytes={sum(len(d) for d in echoed)} code={code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
