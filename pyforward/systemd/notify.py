"""sd_notify(3): telling systemd about readiness, status, liveness and shutdown.

A few lines of AF_UNIX datagrams, so no dependency. The protocol: each datagram is
newline-separated `KEY=VALUE` assignments sent to the socket named in $NOTIFY_SOCKET
(a path, or an abstract name written with a leading `@`). Outside systemd the variable
is unset and every call here does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward.systemd.notify")


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
