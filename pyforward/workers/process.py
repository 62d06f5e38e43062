"""One worker process as the main process sees it: start it, hear it, see it end."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyforward.workers import messages as m
from pyforward.workers.channel import Channel, socket_pair

# Kept from the main process's environment: what is systemd's to the main process alone.
_MAIN_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
_EXIT_POLL = 0.02  # seconds between checks that a worker whose channel closed has exited


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: the main process's, without systemd's notify socket,
    watchdog and socket activation (those are the main process's alone)."""
    return {
        key: value
        for key, value in env.items()
        if key not in _MAIN_ONLY and not key.startswith("LISTEN_FD")
    }


@dataclass(frozen=True)
class Backoff:
    """The wait before restarting a worker: `first`, doubled for each death in a row of a
    worker that served less than `steady` seconds, up to `most`."""

    first: float = 0.1
    most: float = 10.0
    steady: float = 30.0

    def delay(self, deaths_in_a_row: int) -> float:
        return min(self.first * 2.0 ** max(deaths_in_a_row - 1, 0), self.most)


@dataclass
class WorkerProcess:
    index: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    active: int = 0
    snapshot: list[Any] = field(default_factory=list)
    replies: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    reloaded: asyncio.Future[str | None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


def spawn(
    loop: asyncio.AbstractEventLoop,
    start: m.Start,
    socks: Sequence[socket.socket],
    extra: Sequence[int],
    *,
    on_message: Callable[[WorkerProcess, m.Message], None],
    on_exit: Callable[[WorkerProcess, int], None],
) -> WorkerProcess:
    """Start worker `start.index` with its first message and listening sockets."""
    ours, theirs = socket_pair()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyforward.workers.worker",
                str(theirs.fileno()),
                str(os.getpid()),
                str(start.index),
            ],
            pass_fds=(theirs.fileno(),),
            env=worker_environment(os.environ),
            stdin=subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    worker = WorkerProcess(start.index, proc, Channel(ours))
    # The packet waits in the socket until the worker reads it.
    worker.channel.send(start, socks, extra)

    def ended() -> None:
        # The channel closes as the process exits; its exit status follows a moment later.
        code = proc.poll()
        if code is None:
            loop.call_later(_EXIT_POLL, ended)
        else:
            on_exit(worker, code)

    worker.channel.listen(loop, lambda message, _: on_message(worker, message), ended)
    return worker
