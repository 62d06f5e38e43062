"""The main process of a forwarder with workers.

It owns what is one per forwarder, as `engine/runtime.py` does for one process: the
signals; what systemd is told (READY once every worker accepts, STATUS adding up their
connections and flows, WATCHDOG only while every worker serves); the listening sockets
(bound here once, or taken from systemd, and sent to each worker: every worker accepts
from the same TCP sockets, and reads its own socket of each UDP route, `listeners.py`);
the target source (one discovery watch, its changes sent to every worker); reload (loaded
and checked here, so a configuration that fails changes no worker); the metrics endpoint
(the workers' counts added up, `metrics.py`); and the workers themselves: one that dies is
logged and restarted after a back-off, and every one dies with this process
(`pdeathsig.py`). In order:

1. Signals; the target source starts; every listener is bound (or taken over).
2. The workers start, each with its sockets; once every one accepts: READY=1.
3. Until SIGTERM or SIGINT: serve, restart what dies, reload on SIGHUP.
4. STOPPING=1; this process closes its copies of the listeners, and every worker drains;
   past `shutdown_timeout` (and a grace), what still runs is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyforward import __version__
from pyforward.config.model import Settings
from pyforward.engine.listeners import close_all
from pyforward.engine.targets import RouteId, StaticTargets, TargetSource, route_ids
from pyforward.errors import PyforwardError, StartupError
from pyforward.obs.logfmt import logfmt
from pyforward.relay.connection import ResolvedTarget
from pyforward.systemd.activation import take_passed_sockets
from pyforward.systemd.notify import Reporter
from pyforward.systemd.status_text import format_status
from pyforward.workers import messages as m
from pyforward.workers import reload, sourcetable
from pyforward.workers.listeners import (
    Listeners,
    bind_routes,
    close_routes,
    sockets_for,
    udp_workers,
)
from pyforward.workers.plan import worker_settings
from pyforward.workers.process import Backoff, WorkerProcess, spawn

log = logging.getLogger("pyforward")

_STOP_GRACE = 5.0  # seconds past shutdown_timeout before a worker still running is killed


class Supervisor:
    """Runs `count` workers for `settings` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        targets: TargetSource | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.source: TargetSource = targets if targets is not None else StaticTargets()
        self.reload_settings = reload_settings
        self.backoff = backoff or Backoff()
        self.reporter = Reporter.from_environment(self.status, self.all_serving)
        self.workers: dict[int, WorkerProcess] = {}
        self.listeners: Listeners = {}
        self.source_table = -1  # the memfd of the shared counts per source, once made
        self.pushed: dict[RouteId, Sequence[ResolvedTarget]] = {}
        self.retired: list[list[Any]] = []  # counters of workers that died
        self.source_note: str | None = None
        self.last_reload_error: str | None = None
        self.targets_changed_at = time.time()
        self._deaths: dict[int, int] = {}  # deaths in a row, by worker index
        self._stop = asyncio.Event()
        self._stopping = False
        self._all_gone = asyncio.Event()
        self._started: asyncio.Future[None] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # --- what systemd is told

    def all_serving(self) -> bool:
        return len(self.workers) == self.count and all(w.ready for w in self.workers.values())

    def status(self) -> str:
        ids = route_ids(self.settings.routes)
        routes = []
        for rid, route in zip(ids, self.settings.routes, strict=True):
            targets = [t.label for t in self.pushed[rid]] if rid in self.pushed else None
            shown = targets if targets is not None else [str(t) for t in route.targets]
            sockets = self.listeners.get(rid)
            for label in sockets.labels if sockets is not None else []:
                routes.append((label, shown))
        notes = {}
        serving = sum(w.ready for w in self.workers.values())
        if serving != self.count:
            notes["workers"] = f"{serving} of {self.count} serving"
        if self.source_note:
            notes[self.source.name] = self.source_note
        if self.last_reload_error:
            notes["reload"] = f"failed: {self.last_reload_error}"
        return format_status(routes, self.active(), notes)

    def active(self) -> int:
        return sum(worker.active for worker in self.workers.values())

    # --- the target source's sink

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        self.targets_changed_at = time.time()
        self.pushed[route] = list(targets)
        for worker in self.workers.values():
            worker.channel.send(m.Targets(route, list(targets)))

    def source_status(self, note: str | None) -> None:
        self.source_note = note
        self.reporter.status_changed()

    # --- signals

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            return
        if self._stopping:
            log.warning(logfmt({"event": "stop-now", "active": self.active()}))
            for worker in self.workers.values():
                worker.channel.send(m.Stop(now=True))

    def request_reload(self) -> None:
        if self.reload_settings is None or self._started is None or self._stopping:
            log.warning(logfmt({"event": "reload-ignored", "msg": "starting or stopping"}))
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True  # once more after the one under way
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    def log_counts(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGUSR1)

    # --- the life of the forwarder

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
            signal.SIGUSR1: self.log_counts,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        try:
            passed = take_passed_sockets(self.settings.routes)
            try:
                await self._serve(loop, passed)
            finally:
                await self._stop_workers()
                await self.source.stop()
        finally:
            self.reporter.close()
            for signum in handlers:
                loop.remove_signal_handler(signum)
            close_routes(self.listeners)

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, passed: dict[int, list[socket.socket]]
    ) -> None:
        self.settings = await self.source.start(self.settings)
        self.listeners = bind_routes(self.settings, passed, self.count)
        # max_connections_per_source, coordinated: one table for every worker.
        self.source_table = sourcetable.create(
            sourcetable.table_size(self.settings.max_connections)
        )
        log.info(
            logfmt(
                {
                    "event": "start",
                    "version": __version__,
                    "workers": self.count,
                    "max_connections": self.settings.max_connections or "none",
                }
            )
        )
        metrics = None
        if self.settings.metrics is not None:
            from pyforward.workers.exporter import start_worker_metrics  # noqa: PLC0415

            metrics = await start_worker_metrics(self.settings.metrics, self)
        try:
            self.source.attach(self)
            self._started = loop.create_future()
            for index in range(self.count):
                self._spawn(index)
            stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            either: list[asyncio.Future[Any]] = [self._started, stop]
            try:
                # A stop before every worker accepts (one in a crash loop) stops the start.
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if self._started.done():
                self._started.result()  # a worker that could not start: its error
                self.reporter.ready()
                log.info(logfmt({"event": "ready", "workers": self.count}))
                await self._stop.wait()
            # 1. Tell systemd; 2. close this process's copies of the listeners, so new
            # clients are refused once the workers close theirs; 3. every worker drains.
            self._stopping = True
            self.reporter.stopping(self.active())
            log.info(logfmt({"event": "stopping", "active": self.active()}))
            close_routes(self.listeners)
            if self.source_table >= 0:
                os.close(self.source_table)
            for worker in self.workers.values():
                worker.channel.send(m.Stop(now=False))
        finally:
            if metrics is not None:
                await metrics.close()

    async def _stop_workers(self) -> None:
        """Wait for every worker to end; past the deadline, kill what remains."""
        self._stopping = True
        for worker in self.workers.values():
            worker.channel.send(m.Stop(now=False))
        if self.workers:
            deadline = self.settings.shutdown_timeout + _STOP_GRACE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), deadline)
        for worker in list(self.workers.values()):
            log.warning(logfmt({"event": "worker-killed", "worker": worker.index}))
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            worker.proc.wait()
        log.info(logfmt({"event": "stopped", "workers": self.count}))

    # --- the workers

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        # A restarted worker gets the same sockets back: its own of each UDP route, so the
        # kernel's hash of the other workers' clients does not change.
        counts, socks = sockets_for(self.listeners, self.settings, index)
        settings = worker_settings(self.settings, self.count, index, udp_workers(self.listeners))
        start = m.Start(settings, index, counts, self.settings.metrics is not None, True)
        extra = [self.source_table]
        try:
            worker = spawn(
                asyncio.get_running_loop(),
                start,
                socks,
                extra,
                on_message=self._on_message,
                on_exit=self._exited,
            )
        except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): try again later
            self._schedule_restart(
                index,
                {
                    "event": "worker-start-failed",
                    "worker": index,
                    "error": exc.strerror or str(exc),
                },
                0.0,
            )
            return
        for route, targets in self.pushed.items():
            worker.channel.send(m.Targets(route, list(targets)))
        self.workers[index] = worker
        self._all_gone.clear()
        log.info(logfmt({"event": "worker-started", "worker": index, "pid": worker.pid}))

    def _on_message(self, worker: WorkerProcess, message: m.Message) -> None:
        if isinstance(message, m.Ready):
            worker.ready = True
            if self.all_serving():
                if self._started is not None and not self._started.done():
                    self._started.set_result(None)
                self.reporter.status_changed()
        elif isinstance(message, m.Load):
            worker.active = message.active
        elif isinstance(message, m.Snapshot):
            worker.snapshot = message.families
            reply = worker.replies.pop(message.serial, None)
            if reply is not None and not reply.done():
                reply.set_result(None)
        elif isinstance(message, m.Reloaded):
            if worker.reloaded is not None and not worker.reloaded.done():
                worker.reloaded.set_result(message.error)
        elif isinstance(message, m.Failed) and self._started and not self._started.done():
            # Before READY: the forwarder cannot start; say why, once, and stop.
            self._started.set_exception(StartupError(message.error))

    def _exited(self, worker: WorkerProcess, code: int) -> None:
        from pyforward.workers.metrics import counters_of  # noqa: PLC0415

        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if worker.snapshot:
            self.retired.append(counters_of(worker.snapshot))
        for future in [*worker.replies.values(), worker.reloaded]:
            if future is not None and not future.done():
                future.cancel()
        lived = time.monotonic() - worker.started
        how = f"signal {_signal_name(-code)}" if code < 0 else f"exit {code}"
        fields: dict[str, object] = {
            "event": "worker-exited",
            "worker": worker.index,
            "pid": worker.pid,
            "status": how,
            "served_s": round(lived, 1),
        }
        if self._stopping:
            log.info(logfmt(fields))
            if not self.workers:
                self._all_gone.set()
            return
        self._schedule_restart(worker.index, fields, lived)

    def _schedule_restart(self, index: int, fields: dict[str, object], lived: float) -> None:
        """Log why worker `index` is gone and start it again after the back-off."""
        deaths = 1 if lived >= self.backoff.steady else self._deaths.get(index, 0) + 1
        self._deaths[index] = deaths
        delay = self.backoff.delay(deaths)
        log.warning(logfmt({**fields, "restart_in": round(delay, 2)}))
        self.reporter.status_changed()
        asyncio.get_running_loop().call_later(delay, self._spawn, index)

    # --- reload

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            self.reporter.reloading()
            self.last_reload_error = await self._apply_reload()
            self.reporter.reloaded()
            if not self._reload_again:
                return

    async def _apply_reload(self) -> str | None:
        """Load and check the new configuration here; only then send it to every worker."""
        assert self.reload_settings is not None
        log.info(logfmt({"event": "reloading"}))
        try:
            new, opened = await reload.checked(
                self.reload_settings(), self.source, self.listeners, self.count
            )
        except PyforwardError as exc:
            log.error(
                logfmt({"event": "reload-failed", "error": str(exc), "msg": "kept the old config"})
            )
            return str(exc)
        if new.workers != self.settings.workers:
            log.warning(logfmt({"event": "reload", "msg": "changing workers needs a restart"}))
        removed = set(self.listeners) - set(route_ids(new.routes))
        self.listeners.update(opened)
        self.settings = new
        errors = await reload.send(
            self.workers.values(), new, self.count, self.listeners, set(opened)
        )
        for rid in removed:
            close_all(self.listeners.pop(rid).every)
        if errors:
            # Checked here first, so only the world changing in between gets this far.
            log.error(
                logfmt({"event": "reload-failed", "error": errors[0], "workers": len(errors)})
            )
            return errors[0]
        listening = sum(len(route.labels) for route in self.listeners.values())
        log.info(logfmt({"event": "reloaded", "listeners": listening}))
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def supervise(
    settings: Settings,
    count: int,
    *,
    targets: TargetSource | None = None,
    reload_settings: Callable[[], Settings] | None = None,
) -> None:
    """Serve `settings` with `count` worker processes until SIGTERM or SIGINT."""
    await Supervisor(settings, count, targets=targets, reload_settings=reload_settings).run()
