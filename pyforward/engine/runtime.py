"""The runtime: one forwarder's life in this process, for `run`, `pyforward-socat` and the
service alike.

It owns what is one per process: the signals (installed here and nowhere else), reload,
what systemd is told (`systemd.notify.Reporter`: READY, STATUS, WATCHDOG, RELOADING,
STOPPING), the listening sockets systemd passes (socket activation), and the route targets'
source (`targets.TargetSource`: the configuration's own, or discovery). In order:

1. Signals: SIGTERM and SIGINT stop (a second one during the drain stops at once), SIGHUP
   reloads, SIGUSR1 logs each route's counts
   (and, at debug level, each open connection). Only without an injected `shutdown_trigger`:
   a caller that brings its own trigger (a test, an embedding program) keeps its signals.
2. The target source starts: every route's targets are known before anything listens.
3. The forwarder binds (or takes over) every listener and starts accepting.
4. The source is attached (its changes reach new connections), then READY=1.
5. Until the trigger (or, with `max_accepts`, the last connection's end): serve.
6. STOPPING=1, then the forwarder's ordered shutdown: stop accepting, let connections
   finish for `shutdown_timeout`, reset what remains.
7. The source stops; the signals are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from pyforward import __version__
from pyforward.config.model import Settings, Transport
from pyforward.engine.fdlimit import raise_fd_limit
from pyforward.engine.server import Forwarder, closed_counts, log_listeners
from pyforward.engine.sources import SourceCounts
from pyforward.engine.targets import RouteId, StaticTargets, TargetSource
from pyforward.errors import PyforwardError
from pyforward.obs.logfmt import logfmt
from pyforward.obs.open_connections import open_connection_fields
from pyforward.relay.connection import ResolvedTarget
from pyforward.systemd.activation import take_passed_sockets
from pyforward.systemd.notify import Reporter
from pyforward.systemd.status_text import format_status

if TYPE_CHECKING:
    from pyforward.datagram.server import DatagramForwarder

log = logging.getLogger("pyforward")

Trigger = Callable[[], Awaitable[object]]


class Runtime:
    """Runs one forwarder: start, serve, reload, report, stop (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        targets: TargetSource | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        max_accepts: int | None = None,
        loop_name: str = "",
        reporter: Reporter | None = None,
        listeners: dict[int, list[socket.socket]] | None = None,
        source_counts: SourceCounts | None = None,
    ) -> None:
        self.settings = settings
        self.source: TargetSource = targets if targets is not None else StaticTargets()
        self.reload_settings = reload_settings
        self.max_accepts = max_accepts
        self.loop_name = loop_name
        self.reporter = reporter if reporter is not None else Reporter.from_environment(self.status)
        self.forwarder: Forwarder | None = None
        # The UDP routes, beside the TCP ones; None while there is none (nothing of
        # pyforward/datagram is loaded until a route needs it: `_start_datagram`).
        self.datagram: DatagramForwarder | None = None
        self.source_note: str | None = None
        self.last_reload_error: str | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False
        self.targets_changed_at = time.time()  # Unix time; the metrics show it for discovery
        # Listening sockets bound elsewhere, by route index (a worker's, from the main
        # process); None: systemd's, if it passed any.
        self.listeners = listeners
        # A worker's UDP routes are served on the main process's sockets alone (each its own
        # of the route's group): it never binds one itself.
        self.binds_udp = listeners is None
        # A worker's: the sockets of a reload's new routes, set as it hands the settings over.
        self.reload_sockets: dict[int, list[socket.socket]] | None = None
        self.source_counts = source_counts  # None: the forwarder counts in this process

    # --- what systemd's status line says

    def status(self) -> str:
        forwarder = self.forwarder
        if forwarder is None:
            return "starting"
        routes = [
            (listener.label, [target.label for target in listener.targets])
            for listener in forwarder.listeners
        ]
        if self.datagram is not None:
            routes += [
                (listener.label, [target.label for target in listener.targets])
                for listener in self.datagram.listeners
            ]
        flows = len(self.datagram.flows) if self.datagram is not None else 0
        notes = {}
        if self.source_note:
            notes[self.source.name] = self.source_note
        if self.last_reload_error:
            notes["reload"] = f"failed: {self.last_reload_error}"
        return format_status(routes, forwarder.stats.active + flows, notes)

    # --- the target source's sink

    def set_targets(self, route: RouteId, targets: Sequence[ResolvedTarget]) -> None:
        self.targets_changed_at = time.time()
        if self.forwarder is not None:
            self.forwarder.set_targets(route, targets)
        if self.datagram is not None:
            self.datagram.set_targets(route, targets)

    def source_status(self, note: str | None) -> None:
        self.source_note = note
        self.reporter.status_changed()

    # --- what the signals ask for

    def request_stop(self) -> None:
        """SIGTERM or SIGINT: the ordered shutdown; during it, a second one stops at once."""
        if not self._stop.is_set():
            self._stop.set()
            return
        if self._stopping and self.forwarder is not None:
            active = len(self.forwarder.connections)
            log.warning(
                logfmt(
                    {
                        "event": "stop-now",
                        "active": active,
                        "msg": "asked again: resetting what is open instead of draining",
                    }
                )
            )
            self.forwarder.close()

    async def stop_requested(self) -> None:
        """Until `request_stop`: the trigger of a caller that installs its own signals."""
        await self._stop.wait()

    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way."""
        if self.reload_settings is None:
            log.info(logfmt({"event": "reload", "msg": "nothing to reload"}))
            return
        if self.forwarder is None or self._stopping:
            # Still starting: READY=1 must not go out before the listeners are bound.
            what = "still starting" if self.forwarder is None else "stopping"
            log.warning(logfmt({"event": "reload-ignored", "msg": what}))
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    def log_counts(self) -> None:
        """SIGUSR1: one line per route with its live counts, and at debug level one per open
        connection; nothing else changes."""
        forwarder = self.forwarder
        if forwarder is None:
            log.info(logfmt({"event": "counts", "msg": "still starting"}))
            return
        udp = self.datagram.route_counts() if self.datagram is not None else []
        for fields in [*forwarder.route_counts(), *udp]:
            log.info(logfmt({"event": "counts", **fields}))
        if log.isEnabledFor(logging.DEBUG):
            for fields in open_connection_fields(forwarder.connections):
                log.debug(logfmt(fields))

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
        """Load and apply a new configuration, logging the outcome; the error, if it failed."""
        assert self.forwarder is not None and self.reload_settings is not None
        log.info(logfmt({"event": "reloading"}))
        try:
            loaded = self.reload_settings()
            passed, self.reload_sockets = self.reload_sockets, None
            if passed is not None:
                self.forwarder.passed_sockets = dict(passed)
            await self.forwarder.reload(loaded, fill=self.source.fill)
            if self.datagram is not None:
                await self.datagram.reload(self.forwarder.settings, passed)
            else:  # the first UDP route, if the new configuration has one
                self.datagram = await self._start_datagram(self.forwarder.settings, passed or {})
        except PyforwardError as exc:
            log.error(
                logfmt({"event": "reload-failed", "error": str(exc), "msg": "kept the old config"})
            )
            return str(exc)
        log_listeners(self.forwarder)
        log.info(logfmt({"event": "reloaded", "listeners": len(self.forwarder.listeners)}))
        return None

    # --- the life of the forwarder

    async def run(
        self,
        shutdown_trigger: Trigger | None = None,
        on_ready: Callable[[Forwarder], None] | None = None,
    ) -> Forwarder:
        """Serve until `shutdown_trigger` returns (default: SIGTERM or SIGINT), or, with
        `max_accepts`, until that many connections have come and gone."""
        loop = asyncio.get_running_loop()
        signals = _Signals(loop, self) if shutdown_trigger is None else None
        passed: dict[int, list[socket.socket]] = {}
        try:
            if self.listeners is not None:
                passed, self.listeners = self.listeners, None
            else:
                passed = take_passed_sockets(self.settings.routes)
            try:
                return await self._serve(
                    loop, shutdown_trigger or self._stop.wait, on_ready, passed
                )
            finally:
                await self.source.stop()
        finally:
            self.reporter.close()
            if self._reloading is not None:
                self._reloading.cancel()
            if signals is not None:
                signals.remove()
            for socks in passed.values():
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.close()

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        trigger: Trigger,
        on_ready: Callable[[Forwarder], None] | None,
        passed: dict[int, list[socket.socket]],
    ) -> Forwarder:
        if self.settings.metrics is not None:
            # Imported here: forwarding without --metrics never loads prometheus_client.
            from pyforward.obs.serve_metrics import start_metrics  # noqa: PLC0415
        fd_limit = raise_fd_limit()
        settings = await self.source.start(self.settings)
        forwarder = Forwarder(
            settings,
            loop,
            max_accepts=self.max_accepts,
            passed_sockets=passed,
            source_counts=self.source_counts,
        )
        await forwarder.start()
        try:
            datagram = await self._start_datagram(settings, passed)
        except BaseException:
            forwarder.close()
            raise
        log.info(
            logfmt(
                {
                    "event": "start",
                    "version": __version__,
                    "loop": self.loop_name or type(loop).__module__.split(".")[0],
                    "relay": forwarder.relay,
                    "max_connections": settings.max_connections or "none",
                    "fd_limit": fd_limit,
                }
            )
        )
        log_listeners(forwarder)
        if datagram is not None:
            log_datagram_listeners(datagram)
        metrics = None
        try:
            if settings.metrics is not None:
                metrics = await start_metrics(settings.metrics, self)
            self.forwarder, self.datagram = forwarder, datagram
            self.source.attach(self)
            if on_ready is not None:
                on_ready(forwarder)
            self.reporter.ready()
            if self.max_accepts is None:
                await trigger()
            else:
                finished = [forwarder.finished.wait]
                if datagram is not None:
                    finished.append(datagram.finished.wait)
                await _first_of(trigger, *finished)
            # 1. Tell systemd, and say so in the log.
            self._stopping = True
            self.reporter.stopping(forwarder.stats.active)
            log.info(logfmt({"event": "stopping", "active": len(forwarder.connections)}))
            # 2. Stop accepting, drain, then reset what is left (`request_stop` may hurry it).
            await forwarder.shutdown(settings.shutdown_timeout)
        finally:
            # UDP flows have nothing in flight: closed at once, not drained. (The UDP side
            # may have been started by a reload.)
            udp = self.datagram if self.datagram is not None else datagram
            if udp is not None:
                udp.close()
            forwarder.close()  # a no-op after shutdown; when cancelled, nothing is left open
            if metrics is not None:
                await metrics.close()
        log.info(
            logfmt(
                {
                    "event": "stopped",
                    "accepted": forwarder.stats.accepted,
                    "spliced_bytes": forwarder.stats.spliced_bytes,
                    "copied_bytes": forwarder.stats.copied_bytes,
                    **closed_counts(forwarder.stats),
                }
            )
        )
        return forwarder

    async def _start_datagram(
        self, settings: Settings, passed: dict[int, list[socket.socket]]
    ) -> DatagramForwarder | None:
        """The UDP side of `settings`, bound and reading; None without a UDP route. Its
        package is imported here, once, when the first UDP route appears."""
        if not any(route.protocol is Transport.UDP for route in settings.routes):
            return None
        from pyforward.datagram.server import DatagramForwarder  # noqa: PLC0415 (UDP only)

        datagram = DatagramForwarder(
            settings,
            asyncio.get_running_loop(),
            max_flows_total=self.max_accepts,
            passed_sockets=passed,
            bind=self.binds_udp,
            source_counts=self.source_counts,
        )
        await datagram.start()
        return datagram


def log_datagram_listeners(datagram: DatagramForwarder) -> None:
    """One `event=listen` line per UDP listener, as for TCP's (`log_listeners`)."""
    for listener in datagram.listeners:
        targets = ",".join(target.label for target in listener.targets)
        log.info(logfmt({"event": "listen", "address": listener.label, "target": targets}))


async def serve(
    settings: Settings,
    *,
    targets: TargetSource | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    shutdown_trigger: Trigger | None = None,
    on_ready: Callable[[Forwarder], None] | None = None,
    max_accepts: int | None = None,
    loop_name: str = "",
) -> Forwarder:
    """Run a forwarder for `settings` until SIGTERM or SIGINT (or `shutdown_trigger`).

    `targets`: where routes forward (default: the configuration's own targets);
    `reload_settings`: what SIGHUP loads and applies; `max_accepts`: serve that many
    connections, then return once they have ended (socat without `fork`); `on_ready`:
    called with the forwarder once it accepts. See `Runtime`.
    """
    runtime = Runtime(
        settings,
        targets=targets,
        reload_settings=reload_settings,
        max_accepts=max_accepts,
        loop_name=loop_name,
    )
    return await runtime.run(shutdown_trigger, on_ready)


class _Signals:
    """The process's signal handlers, all of them; `remove` gives them back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: Runtime) -> None:
        self.loop = loop
        self.handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: runtime.request_stop,
            signal.SIGINT: runtime.request_stop,
            signal.SIGHUP: runtime.request_reload,
            signal.SIGUSR1: runtime.log_counts,
        }
        for signum, handler in self.handlers.items():
            loop.add_signal_handler(signum, handler)

    def remove(self) -> None:
        for signum in self.handlers:
            self.loop.remove_signal_handler(signum)


async def _first_of(*waits: Trigger) -> None:
    """Wait until the first of `waits` returns (or raises); cancel the others."""
    tasks = [asyncio.ensure_future(wait()) for wait in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # an exception from a trigger is the caller's to see
