"""A worker process: `python -m pyforward.workers.worker FD PARENT INDEX`.

It runs the same `Runtime` as one process does, on the listening sockets the main process
sent, and takes its orders from the control channel (FD): reload, targets, stop. Of the
signals it keeps SIGTERM (drain; again: stop now, as systemd's stop of the whole cgroup
sends it to every process) and SIGUSR1 (its counts); SIGINT and SIGHUP are the main
process's, which passes on what they ask for. It dies with the main process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pyforward.config.model import Settings
from pyforward.engine.loops import loop_factory
from pyforward.engine.runtime import Runtime
from pyforward.engine.server import Forwarder
from pyforward.engine.sources import SourceCounts
from pyforward.engine.targets import RouteId
from pyforward.errors import PyforwardError
from pyforward.obs.logsetup import setup_logging
from pyforward.relay.connection import ResolvedTarget
from pyforward.systemd.notify import Notifier, Reporter
from pyforward.workers import messages as m
from pyforward.workers.channel import Channel
from pyforward.workers.pdeathsig import die_with_parent
from pyforward.workers.sourcetable import SharedSourceCounts

LOAD_INTERVAL = 1.0  # seconds between the worker's reports of its open connections


def by_route(
    counts: dict[int, int], socks: Sequence[socket.socket]
) -> dict[int, list[socket.socket]]:
    """Sockets sent in route order, `counts[i]` of them for route index `i`."""
    out: dict[int, list[socket.socket]] = {}
    rest = list(socks)
    for index in sorted(counts):
        out[index], rest = rest[: counts[index]], rest[counts[index] :]
    return out


class _WorkerReporter(Reporter):
    """Tells the main process, not systemd: the outcome of each reload."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(Notifier(None), lambda: "")
        self.worker = worker

    def reloaded(self) -> None:
        self.worker.channel.send(m.Reloaded(self.worker.runtime.last_reload_error))


class Worker:
    """One worker's runtime and what its control channel asks of it."""

    def __init__(
        self,
        channel: Channel,
        start: m.Start,
        socks: list[socket.socket],
        source_counts: SourceCounts | None = None,
    ) -> None:
        self.channel = channel
        self.index = start.index
        self.metrics = start.metrics
        self.settings = start.settings
        self._next: tuple[Settings, dict[int, list[socket.socket]]] | None = None
        self._pending_targets: dict[RouteId, Sequence[ResolvedTarget]] = {}
        self._stop_asked = False
        self._sigterm_seen = False
        self.runtime = Runtime(
            start.settings,
            reload_settings=self._reloaded_settings,
            loop_name="",
            reporter=_WorkerReporter(self),
            listeners=by_route(start.sockets, socks),
            source_counts=source_counts,
        )

    def _reloaded_settings(self) -> Settings:
        assert self._next is not None
        settings, socks = self._next
        # The new routes' listeners, bound by the main process, by their route index.
        self.runtime.reload_sockets = socks
        return settings

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGUSR1, self.runtime.log_counts)
        self.channel.listen(loop, self._on_message, self.drain)
        timer = loop.call_later(LOAD_INTERVAL, self._report_load)
        try:
            await self.runtime.run(self.runtime.stop_requested, self._ready)
        finally:
            timer.cancel()
        if self.metrics and self.runtime.forwarder is not None:
            self.channel.send(m.Snapshot(m.FINAL, self._families()))

    def _ready(self, forwarder: Forwarder) -> None:
        for route, targets in self._pending_targets.items():
            forwarder.set_targets(route, targets)
        self._pending_targets.clear()
        self.channel.send(m.Ready(os.getpid()))

    def drain(self) -> None:
        """The first stop, whoever asks (SIGTERM, the main process's Stop, its death): stop
        accepting, let connections finish for `shutdown_timeout`."""
        if not self._stop_asked:
            self._stop_asked = True
            self.runtime.request_stop()

    def on_sigterm(self) -> None:
        """SIGTERM drains; a second one resets what is open. systemd's stop signals every
        process of the unit and the main process passes the stop on: that is one stop."""
        if self._sigterm_seen:
            self.runtime.request_stop()
        self._sigterm_seen = True
        self.drain()

    def _on_message(self, message: m.Message, socks: list[socket.socket]) -> None:
        if isinstance(message, m.Targets):
            if self.runtime.forwarder is None:
                self._pending_targets[message.route] = message.targets
            else:
                self.runtime.set_targets(message.route, message.targets)
        elif isinstance(message, m.Reload):
            self._next = (message.settings, by_route(message.sockets, socks))
            self.runtime.request_reload()
        elif isinstance(message, m.Stop):
            self.drain()
            if message.now:
                self.runtime.request_stop()  # during the drain: reset what is open
        elif isinstance(message, m.SnapshotAsk):
            self.channel.send(m.Snapshot(message.serial, self._families()))

    def _families(self) -> list[object]:
        from pyforward.obs.metrics import make_registry  # noqa: PLC0415 (metrics only)

        runtime = self.runtime
        registry = make_registry(lambda: runtime.forwarder, datagram=lambda: runtime.datagram)
        return list(registry.collect())

    def _report_load(self) -> None:
        forwarder = self.runtime.forwarder
        if forwarder is not None:
            flows = len(self.runtime.datagram.flows) if self.runtime.datagram is not None else 0
            self.channel.send(m.Load(forwarder.stats.active + flows))
        loop = asyncio.get_running_loop()
        loop.call_later(LOAD_INTERVAL, self._report_load)


class _WorkerField(logging.Filter):
    """Every line of a worker names it: `worker=INDEX pid=PID` after the level."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker={index} pid={os.getpid()} "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def main(argv: Sequence[str]) -> int:
    fd, parent, index = (int(word) for word in argv)
    if not die_with_parent(parent):
        return 0  # the main process is gone already: serve no one
    with contextlib.suppress(OSError):  # what ps, top and `pyforward status` name it
        Path("/proc/self/comm").write_text(f"pyforward-w{index}"[:15])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: main's
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=fd))
    first = channel.receive()
    if first is None or not isinstance(first[0], m.Start):
        return 0
    start, socks, extra = first[0], first[1], first[2]
    # The table of connections per source the workers share (sourcetable.py).
    counts = SharedSourceCounts(extra[0]) if start.source_table and extra else None
    setup_logging(start.settings.log_level)
    for handler in logging.getLogger("pyforward").handlers:
        handler.addFilter(_WorkerField(index))
    factory, _ = loop_factory(start.settings.loop)
    worker = Worker(channel, replace(start, index=index), socks, counts)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(worker.serve())
    except PyforwardError as exc:
        channel.send(m.Failed(str(exc), exc.exit_code))
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
