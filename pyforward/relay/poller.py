"""Readiness callbacks for the relay's raw sockets.

On Linux the relay's sockets live on an epoll of our own, which the event loop watches
as a single descriptor. The reason: uvloop (through libuv's uv_poll) treats POLLERR on a
watched descriptor as fatal to the watcher: it closes it and never calls the callback.
A socket that receives a reset, or a connect that is refused, reports exactly that, so
with the loop's own `add_reader` such a connection would hang until a timeout. Our epoll
hands every error and hang-up to the callbacks as readiness, where the next recv, send,
splice or SO_ERROR read reports it properly.

Callbacks must tolerate spurious wakeups (a descriptor closed and reused within one
batch of events): the relay's do, since every operation is non-blocking.

A socket nobody reads or writes for the moment (its bytes wait behind a peer that is not
reading) can still be watched for errors: epoll reports an error or hang-up even with no
event asked for, so a reset there is noticed at once rather than when the peer drains.

`read_once` is for a stage that waits for the client's first bytes and then leaves the socket
alone until the pump starts (the wait for a TLS ClientHello): one-shot, the kernel disarms the
watch as it reports it, so leaving costs no system call, and the pump's watch later re-arms the
same registration (a modify instead of a delete and an add).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any, Protocol

Callback = Callable[..., object]

# Errors and hang-ups wake both callbacks: the next operation on the socket reports them.
_TROUBLE = getattr(select, "EPOLLERR", 0) | getattr(select, "EPOLLHUP", 0)
_READ_EVENTS = getattr(select, "EPOLLIN", 0) | _TROUBLE
_WRITE_EVENTS = getattr(select, "EPOLLOUT", 0) | _TROUBLE
_ONCE = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)
# A reader also hears of the peer's FIN (no wakeup more: the socket is readable then too),
# so that bytes and the FIN behind them are relayed in one wakeup (`peer_closed`).
_PEER_CLOSED = getattr(select, "EPOLLRDHUP", 0)
_READ = getattr(select, "EPOLLIN", 0) | _PEER_CLOSED
_DISARMED = -1  # in the epoll, reporting nothing, errors included (a one-shot that fired)


class Poller(Protocol):
    # During a reader's callback: nonzero when the peer has shut down its sending, so what
    # the socket holds ends with EOF (0 elsewhere, and where the poller cannot tell).
    peer_closed: int

    def add_reader(self, fd: int, callback: Callback, *args: Any) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def read_once(self, fd: int, callback: Callback) -> None: ...
    def add_writer(self, fd: int, callback: Callback, *args: Any) -> None: ...
    def remove_writer(self, fd: int) -> None: ...
    def done_writing(self, fd: int) -> None: ...
    def watch_errors(self, fd: int, callback: Callback, *args: Any) -> None: ...
    def unwatch_errors(self, fd: int) -> None: ...
    def watch(
        self, fd: int, reader: Callback, arg: Any, on_errors: Callback, errors_arg: Any
    ) -> None: ...
    def forget(self, fd: int) -> None: ...
    def close(self) -> None: ...


class EpollPoller:
    """Level-triggered epoll, dispatched from one reader on the event loop."""

    _BATCH = 512

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, tuple[Callback, tuple[Any, ...]]] = {}
        self._writers: dict[int, tuple[Callback, tuple[Any, ...]]] = {}
        self._error_watchers: dict[int, tuple[Callback, tuple[Any, ...]]] = {}
        self._once: dict[int, Callback] = {}  # see read_once
        self._masks: dict[int, int] = {}
        self._settle_later: list[int] = []  # see done_writing
        self.peer_closed = 0
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add_reader(self, fd: int, callback: Callback, *args: Any) -> None:
        self._readers[fd] = (callback, args)
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None or self._once.pop(fd, None) is not None:
            self._update(fd)

    def read_once(self, fd: int, callback: Callback) -> None:
        """Call `callback` the next time `fd` is readable (or in error), once: the watch is
        gone when it is called (call again for the next time). A socket with no other
        reader or writer only: its registration is kept, disarmed, for the next watch."""
        self._once[fd] = callback
        self._update(fd)

    def add_writer(self, fd: int, callback: Callback, *args: Any) -> None:
        self._writers[fd] = (callback, args)
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def done_writing(self, fd: int) -> None:
        """`remove_writer`, from within one of this poller's callbacks, telling epoll only
        once the batch of events is handled, if nothing else changed `fd`'s watch by then.
        A dial's socket becomes the pump's this way: EPOLLOUT to EPOLLIN in one call."""
        if self._writers.pop(fd, None) is not None:
            self._settle_later.append(fd)

    def watch_errors(self, fd: int, callback: Callback, *args: Any) -> None:
        """Call `callback` on an error or hang-up of `fd` while it has no reader or writer
        (a reader or writer is woken by it instead)."""
        self._error_watchers[fd] = (callback, args)
        self._update(fd)

    def unwatch_errors(self, fd: int) -> None:
        if self._error_watchers.pop(fd, None) is not None:
            self._update(fd)

    def watch(
        self, fd: int, reader: Callback, arg: Any, on_errors: Callback, errors_arg: Any
    ) -> None:
        """`add_reader(fd, reader, arg)` and `watch_errors(fd, on_errors, errors_arg)` in
        one update: what the pump asks of each socket when it starts."""
        self._readers[fd] = (reader, (arg,))
        self._error_watchers[fd] = (on_errors, (errors_arg,))
        self._update(fd)

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed: drop its callbacks without a system call. Closing
        a descriptor takes it out of the epoll by itself (the relay never duplicates its
        sockets' descriptors), so telling epoll first would be one call per socket for
        nothing."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._error_watchers.pop(fd, None)
        self._once.pop(fd, None)
        self._masks.pop(fd, None)

    def _update(self, fd: int) -> None:
        mask: int | None = (_READ if fd in self._readers else 0) | (
            select.EPOLLOUT if fd in self._writers else 0
        )
        if fd in self._once:
            mask = _ONCE
        elif not mask and fd not in self._error_watchers:
            mask = None  # not registered at all
        old = self._masks.get(fd)
        if mask == old:
            return
        if mask is None and old == _DISARMED:
            return  # reports nothing already; it stays for the next watch, or its close
        if mask is None:
            del self._masks[fd]
            self._epoll.unregister(fd)
        elif old is None:
            self._masks[fd] = mask
            self._epoll.register(fd, mask)
        else:
            self._masks[fd] = mask
            self._epoll.modify(fd, mask)

    def _dispatch(self) -> None:
        try:
            self._run_callbacks()
        finally:
            if self._settle_later:
                for fd in self._settle_later:
                    self._update(fd)  # nothing to do if something else updated it since
                self._settle_later.clear()

    def _run_callbacks(self) -> None:
        readers, writers = self._readers, self._writers
        for fd, events in self._epoll.poll(0, self._BATCH):
            # Asked before the callbacks run, which may add or remove watches.
            unattended = events & _TROUBLE and fd not in readers and fd not in writers
            if events & _READ_EVENTS:
                entry = readers.get(fd)
                if entry is not None:
                    self.peer_closed = events & _PEER_CLOSED
                    entry[0](*entry[1])
                    self.peer_closed = 0
                elif fd in self._once:
                    self._masks[fd] = _DISARMED  # the kernel disarmed it as it reported it
                    self._once.pop(fd)()
            if events & _WRITE_EVENTS:
                entry = writers.get(fd)
                if entry is not None:
                    entry[0](*entry[1])
            if unattended:
                entry = self._error_watchers.get(fd)
                if entry is not None:
                    entry[0](*entry[1])

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()


class LoopPoller:
    """The event loop's own readiness callbacks, where there is no epoll."""

    peer_closed = 0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.add_reader = loop.add_reader
        self.add_writer = loop.add_writer
        self._loop = loop

    def remove_reader(self, fd: int) -> None:
        self._loop.remove_reader(fd)

    def read_once(self, fd: int, callback: Callback) -> None:
        self._loop.add_reader(fd, self._once, fd, callback)

    def _once(self, fd: int, callback: Callback) -> None:
        self._loop.remove_reader(fd)
        callback()

    def remove_writer(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def done_writing(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def watch_errors(self, fd: int, callback: Callback, *args: Any) -> None:
        """Without epoll, an error waits for the next read or write to report it."""

    def unwatch_errors(self, fd: int) -> None:
        pass

    def watch(
        self, fd: int, reader: Callback, arg: Any, on_errors: Callback, errors_arg: Any
    ) -> None:
        self._loop.add_reader(fd, reader, arg)

    def forget(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)

    def close(self) -> None:
        pass


def make_poller(loop: asyncio.AbstractEventLoop) -> Poller:
    return EpollPoller(loop) if hasattr(select, "epoll") else LoopPoller(loop)
