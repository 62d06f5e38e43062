"""Socket options a forwarded connection sets on its client and target sockets."""

from __future__ import annotations

import contextlib
import socket
import struct

# SO_LINGER on with a zero timeout: close() sends a reset instead of a FIN, so a peer cut
# short never mistakes what it received for the whole stream.
LINGER_RESET = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket) -> None:
    """Make the next close() of `sock` a reset (a socket already broken is left as it is)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def prepare(sock: socket.socket, *, keepalive: bool) -> None:
    """Non-blocking, no Nagle delay, and keepalive probes when the route asks for them."""
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        return  # no Nagle delay, no keepalive: a local stream
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive:
        set_keepalive(sock)
