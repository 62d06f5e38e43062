"""A backend that sends back every byte it receives, on many connections at once.

Run as its own process (`python bench/echo_server.py PORT`) so it never shares an
interpreter lock with the client that measures. One thread, epoll, non-blocking: a
connection whose peer does not read stops being read (backpressure), so memory stays
bounded however many connections stream through it.
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys

_CHUNK = 1 << 16


def serve(port: int) -> None:
    """Echo on 127.0.0.1:port until SIGTERM."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    pending: dict[socket.socket, memoryview] = {}

    def drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        pending.pop(sock, None)
        sock.close()

    while True:
        for key, events in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                for _ in range(64):
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(conn, selectors.EVENT_READ, None)
                continue
            try:
                if events & selectors.EVENT_WRITE:
                    data = pending.pop(sock)
                else:
                    received = sock.recv(_CHUNK)
                    if not received:
                        drop(sock)
                        continue
                    data = memoryview(received)
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                drop(sock)
                continue
            if sent < len(data):
                pending[sock] = data[sent:]
                selector.modify(sock, selectors.EVENT_WRITE, None)
            elif events & selectors.EVENT_WRITE:
                selector.modify(sock, selectors.EVENT_READ, None)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(int(sys.argv[1]))


if __name__ == "__main__":
    main()
