"""sd_notify(3): telling systemd about readiness, status, liveness and shutdown.

`Notifier` sends one datagram; `Reporter` says when, for a running forwarder.

A few lines of AF_UNIX datagrams, so no dependency. The protocol: each datagram is
newline-separated `KEY=VALUE` assignments sent to the socket named in $NOTIFY_SOCKET
(a path, or an abstract name written with a leading `@`). Outside systemd the variable
is unset and every call here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward.systemd.notify")

STATUS_REFRESH = 1.0  # seconds between checks whether the status line changed


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value; None when it names none we use."""
    if value.startswith("@"):
        # An abstract socket: a leading NUL byte instead of `@`, no file on disk.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # empty, or a vsock address: not for a host-local forwarder


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises; None when the watchdog is off or meant for another process."""
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec_text) / 2 / 1_000_000


@dataclass(frozen=True)
class Message:
    """One notification; `fields` in the order they are sent."""

    fields: tuple[tuple[str, str], ...]

    def encode(self) -> bytes:
        # A newline inside a value would start a new assignment: flatten it.
        return "\n".join(f"{k}={' '.join(v.splitlines())}" for k, v in self.fields).encode()


def message(**fields: str) -> Message:
    """A notification from keyword fields, e.g. message(READY="1", STATUS="serving")."""
    return Message(tuple(fields.items()))


class Notifier:
    """Sends notifications to systemd, or nothing when not run by systemd."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(socket_address(env.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, note: Message) -> bool:
        """Send one notification; True when it left. Never blocks, never raises."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(note.encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            # systemd gone or its queue full: the service keeps forwarding regardless, and
            # one warning is enough to explain a watchdog restart that may follow.
            if not self._failed:
                self._failed = True
                code = errno.errorcode.get(exc.errno or 0, str(exc))
                log.warning(logfmt({"event": "notify-failed", "error": code}))
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class Reporter:
    """Tells systemd what a running forwarder is doing (Type=notify), in this order:

    - READY=1 with STATUS= once every listener accepts (`ready`): `systemctl start` returns
      only then, so "started" means "accepting";
    - STATUS= again whenever the text `status()` gives changes (checked every
      STATUS_REFRESH seconds, and at once on `status_changed`);
    - WATCHDOG=1 every `watchdog` seconds from a timer on the event loop: a stuck loop
      stops the pings and systemd restarts the service;
    - RELOADING=1 on reload (`reloading`), READY=1 after it (`reloaded`), whether it
      worked or not (a failed reload keeps what was running);
    - STOPPING=1 when the ordered shutdown begins (`stopping`); the watchdog goes on while
      connections drain.
    Without a notify socket (not run by systemd) nothing is sent and no timer runs.
    """

    def __init__(
        self,
        notifier: Notifier,
        status: Callable[[], str],
        watchdog: float | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.notifier = notifier
        self.status = status
        self.watchdog = watchdog
        # Whether to ping the watchdog now (worker processes: only while every one serves).
        self.alive = alive
        self._ready = False
        self._last_status = ""
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @classmethod
    def from_environment(
        cls, status: Callable[[], str], alive: Callable[[], bool] = lambda: True
    ) -> Reporter:
        """The reporter for this process: $NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID."""
        interval = watchdog_interval(os.environ, os.getpid())
        return cls(Notifier.from_environment(), status, interval, alive)

    def ready(self) -> None:
        """Every listener accepts: READY=1, then the status refresh and watchdog pings."""
        self._ready = True
        self._last_status = self.status()
        self.notifier.send(message(READY="1", STATUS=self._last_status))
        if self.notifier.enabled:
            if self.watchdog is not None:
                self._watchdog_tick()
            self._schedule("status", STATUS_REFRESH, self._status_tick)

    def status_changed(self) -> None:
        """Something the status line shows changed: send it now, not at the next refresh."""
        if self._ready and self.notifier.enabled:
            self._last_status = self.status()
            self.notifier.send(message(STATUS=self._last_status))

    def reloading(self) -> None:
        self.notifier.send(message(RELOADING="1", STATUS="reloading"))

    def reloaded(self) -> None:
        self._last_status = self.status()
        self.notifier.send(message(READY="1", STATUS=self._last_status))

    def stopping(self, active: int) -> None:
        self.notifier.send(message(STOPPING="1", STATUS=f"stopping; {active} active connections"))
        # The status refresh stops here; the watchdog pings go on while connections drain.
        self._ready = False
        timer = self._timers.pop("status", None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.notifier.close()

    def _schedule(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._timers[name] = asyncio.get_running_loop().call_later(delay, callback)

    def _watchdog_tick(self) -> None:
        assert self.watchdog is not None
        if self.alive():
            self.notifier.send(message(WATCHDOG="1"))
        self._schedule("watchdog", self.watchdog, self._watchdog_tick)

    def _status_tick(self) -> None:
        text = self.status()
        if text != self._last_status:
            self._last_status = text
            self.notifier.send(message(STATUS=text))
        self._schedule("status", STATUS_REFRESH, self._status_tick)
