"""Socket options a forwarded connection sets on its client and target sockets."""

from __future__ import annotations

import _socket
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

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


# A target's socket is made non-blocking by `socket()` itself, where Linux can (one ioctl
# less per connection).
TARGET_SOCKET_TYPE = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
BORN_NONBLOCKING = TARGET_SOCKET_TYPE != socket.SOCK_STREAM
# A socket's family as the int the C type keeps (`socket.socket.family` builds an enum from
# it on every read, which costs more than the rest of `prepare`).
_family = cast(Callable[[socket.socket], int], _socket.socket.family.__get__)


def prepare(
    sock: socket.socket, *, keepalive: bool, nonblocking: bool = False, nodelay: bool = False
) -> None:
    """Non-blocking (`nonblocking`: it already is), no Nagle delay (`nodelay`: it has none
    already), and keepalive probes when the route asks for them."""
    if not nonblocking:
        sock.setblocking(False)
    if _family(sock) == socket.AF_UNIX:
        return  # no Nagle delay, no keepalive: a local stream
    if not nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive:
        set_keepalive(sock)


def listen_without_delay(listener: socket.socket) -> None:
    """No Nagle delay on a TCP listening socket, so that the sockets it accepts start
    without one (Linux copies the option to them; `inherits_nodelay` checks that it did)."""
    if _family(listener) != socket.AF_UNIX:
        with contextlib.suppress(OSError):
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def inherits_nodelay(accepted: socket.socket) -> bool:
    """Whether `accepted`, from a listener `listen_without_delay` set, has no Nagle delay."""
    try:
        return bool(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        return False
