"""`pyforward run` as a service: signals, systemd notifications, socket activation, reload.

The protocol with systemd (Type=notify), in the order it happens:
- READY=1 once every listener is bound (or taken over from a .socket unit) and every target
  resolved: `systemctl start` returns only then, so "started" means "accepting".
- STATUS= with the listeners, targets and active connections, refreshed while it changes,
  plus notes the forwarder carries (`Forwarder.status_notes`, e.g. degraded discovery).
- WATCHDOG=1 every half WatchdogSec, sent by a timer on the event loop: a stuck loop stops
  the pings and systemd restarts the service.
- SIGHUP (ExecReload=): RELOADING=1, the configuration reloaded (Forwarder.reload), then
  READY=1, whether the reload worked or not (a failed reload keeps what was running).
- SIGTERM or SIGINT: STOPPING=1, then the forwarder's ordered shutdown.
Outside systemd none of this sends anything; SIGHUP still reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyforward.config.settings import Settings
from pyforward.engine.server import Forwarder, apply_reload, serve
from pyforward.obs.logfmt import logfmt
from pyforward.systemd.activation import take_passed_sockets
from pyforward.systemd.notify import Notifier, message, watchdog_interval
from pyforward.systemd.status_text import format_status

if TYPE_CHECKING:  # discovery loads only when configured
    from pyforward.discovery.runtime import DiscoveryStatus

log = logging.getLogger("pyforward")

STATUS_REFRESH = 1.0  # seconds between checks whether the status line changed


class Supervisor:
    """Keeps systemd informed about one running forwarder, and reloads it on SIGHUP."""

    def __init__(
        self,
        notifier: Notifier,
        reload_settings: Callable[[], Settings] | None,
        watchdog: float | None,
    ) -> None:
        self.notifier = notifier
        self.reload_settings = reload_settings
        self.watchdog = watchdog
        self.forwarder: Forwarder | None = None
        self.last_reload_error: str | None = None
        self.discovery_note: str | None = None  # set while discovery is degraded
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_status = ""
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    def status(self) -> str:
        forwarder = self.forwarder
        if forwarder is None:
            return "starting"
        routes = [
            (listener.label, [target.label for target in listener.targets])
            for listener in forwarder.listeners
        ]
        notes = dict(forwarder.status_notes)
        if self.discovery_note:
            notes["discovery"] = self.discovery_note
        if self.last_reload_error:
            notes["reload"] = f"failed: {self.last_reload_error}"
        return format_status(routes, forwarder.stats.active, notes)

    def discovery_status(self, status: DiscoveryStatus) -> None:
        """Discovery's state changed: a degraded one shows in the status line at once."""
        self.discovery_note = f"degraded: {status.message}" if status.degraded else None
        if self.forwarder is not None and self.notifier.enabled:
            self._last_status = self.status()
            self.notifier.send(message(STATUS=self._last_status))

    # --- lifecycle, called by serve()

    def ready(self, forwarder: Forwarder) -> None:
        """Every listener is bound and every target resolved: tell systemd."""
        self.forwarder = forwarder
        self._last_status = self.status()
        self.notifier.send(message(READY="1", STATUS=self._last_status))
        if self.notifier.enabled:
            if self.watchdog is not None:
                self._watchdog_tick()
            self._schedule("status", STATUS_REFRESH, self._status_tick)

    def stopping(self) -> None:
        active = self.forwarder.stats.active if self.forwarder else 0
        self.notifier.send(message(STOPPING="1", STATUS=f"stopping; {active} active connections"))
        # The status refresh stops here; the watchdog pings go on while connections drain.
        timer = self._timers.pop("status", None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._reloading is not None:
            self._reloading.cancel()

    # --- timers

    def _schedule(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(delay, callback)

    def _watchdog_tick(self) -> None:
        assert self.watchdog is not None
        self.notifier.send(message(WATCHDOG="1"))
        self._schedule("watchdog", self.watchdog, self._watchdog_tick)

    def _status_tick(self) -> None:
        text = self.status()
        if text != self._last_status:
            self._last_status = text
            self.notifier.send(message(STATUS=text))
        self._schedule("status", STATUS_REFRESH, self._status_tick)

    # --- reload

    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way."""
        if self.reload_settings is None:
            log.info(logfmt({"event": "reload", "msg": "nothing to reload"}))
            return
        if self.forwarder is None:
            # Still starting: READY=1 must not go out before the listeners are bound.
            log.warning(logfmt({"event": "reload-ignored", "msg": "still starting"}))
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        assert self.forwarder is not None and self.reload_settings is not None
        while True:
            self._reload_again = False
            self.notifier.send(message(RELOADING="1", STATUS="reloading"))
            self.last_reload_error = await apply_reload(self.forwarder, self.reload_settings)
            self._last_status = self.status()
            self.notifier.send(message(READY="1", STATUS=self._last_status))
            if not self._reload_again:
                return


async def serve_supervised(
    settings: Settings,
    *,
    loop_name: str = "",
    reload_settings: Callable[[], Settings] | None = None,
) -> Forwarder:
    """Run the forwarder as a service until SIGTERM or SIGINT; SIGHUP reloads.

    Uses listening sockets passed by systemd when there are any (socket activation)."""
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_environment()
    supervisor = Supervisor(notifier, reload_settings, watchdog_interval(os.environ, os.getpid()))
    stop = asyncio.Event()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)

    async def shutdown_trigger() -> None:
        await stop.wait()
        supervisor.stopping()

    passed: dict[int, list[socket.socket]] = {}
    try:
        passed = take_passed_sockets(settings.routes)
        if settings.discovery is not None:
            # Imported here: static forwarding never loads discovery or kubernetes.
            from pyforward.discovery.runtime import serve_discovered  # noqa: PLC0415

            return await serve_discovered(
                settings,
                shutdown_trigger=shutdown_trigger,
                on_ready=supervisor.ready,
                on_status=supervisor.discovery_status,
                loop_name=loop_name,
                passed_sockets=passed,
            )
        return await serve(
            settings,
            shutdown_trigger=shutdown_trigger,
            on_ready=supervisor.ready,
            loop_name=loop_name,
            passed_sockets=passed,
        )
    finally:
        supervisor.close()
        for signum in handled:
            loop.remove_signal_handler(signum)
        for socks in passed.values():
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
        notifier.close()
