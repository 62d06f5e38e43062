"""The control channel of one worker: an AF_UNIX SOCK_SEQPACKET socket pair, one message a
packet (pickled, compressed), listening sockets passed alongside (SCM_RIGHTS).

Only the main process and its own worker hold the two ends (the pair is made by the main
process and handed to the worker alone), so unpickling trusts no one else. A packet keeps
its boundaries, so no framing; an end that closes (its process died) reads as EOF."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import zlib
from collections.abc import Callable, Sequence

from pyforward.workers.messages import Message, Reload, Start

_MAX_PACKET = 4 << 20  # bytes; a snapshot of many routes compresses far below this
_MAX_FDS = 253  # SCM_MAX_FD: the kernel passes no more in one message
_SEND_TIMEOUT = 5.0  # seconds a send may wait for the peer to read (it reads at once)

OnMessage = Callable[[Message, list[socket.socket]], None]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the main process's end, the worker's end), neither inheritable."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Channel:
    """One end: `send` a message (with sockets), `listen` for them on the loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(
        self, message: Message, socks: Sequence[socket.socket] = (), extra: Sequence[int] = ()
    ) -> bool:
        """Send one message, with `socks` and then the descriptors `extra` (a Start's table
        of connections per source); False when the other end is gone."""
        if self.closed:
            return False
        data = zlib.compress(pickle.dumps(message, pickle.HIGHEST_PROTOCOL), 1)
        fds = [sock.fileno() for sock in socks] + list(extra)
        try:
            self.sock.settimeout(_SEND_TIMEOUT)
            for start in range(0, max(len(fds), 1), _MAX_FDS):
                chunk = fds[start : start + _MAX_FDS]
                # The message rides with the first chunk; later ones carry sockets only.
                socket.send_fds(self.sock, [data if start == 0 else b"+"], chunk)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)
        return True

    def receive(self) -> tuple[Message, list[socket.socket], list[int]] | None:
        """Block for one message, its sockets and other descriptors (a worker's first
        one); None at EOF."""
        self.sock.setblocking(True)
        try:
            return self._read()
        finally:
            self.sock.setblocking(False)

    def listen(
        self, loop: asyncio.AbstractEventLoop, on_message: OnMessage, on_eof: Callable[[], None]
    ) -> None:
        """Call `on_message` for each message from now on, `on_eof` once the end closes."""
        self._loop = loop
        self.sock.setblocking(False)

        def readable() -> None:
            while not self.closed:
                try:
                    got = self._read()
                except BlockingIOError:
                    return
                if got is None:
                    self.close()
                    on_eof()
                    return
                message, socks, extra = got
                for fd in extra:
                    os.close(fd)  # only a Start carries any
                on_message(message, socks)

        loop.add_reader(self.sock.fileno(), readable)

    def _read(self) -> tuple[Message, list[socket.socket], list[int]] | None:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _MAX_PACKET, _MAX_FDS)
        except BlockingIOError:
            raise
        except OSError:
            return None
        if not data:
            return None
        message = pickle.loads(zlib.decompress(data))
        sockets = sum(message.sockets.values()) if isinstance(message, Start | Reload) else 0
        wanted = sockets + (1 if isinstance(message, Start) and message.source_table else 0)
        while len(fds) < wanted:
            # More descriptors than one packet carries: they follow, in order.
            self.sock.setblocking(True)
            _, more, _, _ = socket.recv_fds(self.sock, 16, _MAX_FDS)
            self.sock.setblocking(False)
            if not more:
                break
            fds += more
        socks = [socket.socket(fileno=fd) for fd in fds[:sockets]]
        return message, socks, list(fds[sockets:])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()
