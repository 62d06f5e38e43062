"""A UDP backend that sends every datagram back to its sender, whole.

Run as its own process (`python bench/udp_echo.py PORT`) so it never shares an interpreter
lock with the client that measures. One socket, blocking reads: the kernel queues what it
cannot take yet, and drops past its buffer, as it would for any UDP server.
"""

from __future__ import annotations

import signal
import socket
import sys

_BUFFER = 4 << 20


def serve(port: int) -> None:
    """Echo on 127.0.0.1:port until SIGTERM."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
    sock.bind(("127.0.0.1", port))
    buffer = bytearray(65536)
    view = memoryview(buffer)
    while True:
        size, peer = sock.recvfrom_into(buffer)
        try:
            sock.sendto(view[:size], peer)
        except OSError:
            continue  # the peer went away; UDP has no one to tell


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(int(sys.argv[1]))
