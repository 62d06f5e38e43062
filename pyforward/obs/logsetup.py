"""Where log lines go and what every line carries: the level, and a time or a priority.

Every line is logfmt and starts with the fields it has whoever logged it:

    ts=2026-12-01T23:59:00.123+00:00 level=info event=listen address=127.0.0.1:8080 ...

On the journal (stderr is the stream systemd named in `JOURNAL_STREAM`) the journal stamps
each line with its own time, so `ts` is left out, and the line starts with its syslog priority
(`<6>level=info ...`), which journald takes off and keeps, so `journalctl -p warning` can
filter. Call sites log an already built logfmt message and know nothing of either.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from pyforward.obs.logfmt import escape, logfmt

LOGGER = "pyforward"

# Python's levels, each with its name in `level=` and its syslog priority (RFC 5424), from the
# highest down; a level between two takes the one below it (a custom 25 is info).
_LEVELS = (
    (logging.CRITICAL, "critical", 2),
    (logging.ERROR, "error", 3),
    (logging.WARNING, "warning", 4),
    (logging.INFO, "info", 6),
    (logging.DEBUG, "debug", 7),
)
_BY_NUMBER = {levelno: (name, priority) for levelno, name, priority in _LEVELS}


def level_of(levelno: int) -> tuple[str, int]:
    """The `level=` name and the syslog priority of a Python log level."""
    known = _BY_NUMBER.get(levelno)
    if known is not None:
        return known
    for threshold, name, priority in _LEVELS:
        if levelno >= threshold:
            return name, priority
    return "debug", 7


def writes_to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal stream systemd set up: `JOURNAL_STREAM` names its
    device and inode (systemd.exec(5)). A variable inherited by a process whose stderr went
    elsewhere (a pipe, a file, a terminal) does not match, and the lines stay plain."""
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not (sep and _is_number(device) and _is_number(inode)):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no descriptor (a test's capture) or a closed one
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() too, which int() refuses


def priority_prefix(levelno: int, journal: bool) -> str:
    """`<N>` for a line of level `levelno` written to the journal; "" elsewhere."""
    return f"<{level_of(levelno)[1]}>" if journal else ""


class LineFormatter(logging.Formatter):
    """One record, one line: `ts` (off the journal), `level`, then the message, and a
    traceback, when there is one, as an escaped `traceback=` field of the same line."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal
        # The time stamp up to the second, and the offset, of the last second formatted:
        # under load most lines fall in a second already seen.
        self._second: int | None = None
        self._whole = self._offset = ""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name != LOGGER and not record.name.startswith(LOGGER + "."):
            # A library's own text (asyncio's "Exception in callback ..."): a field of its own.
            message = logfmt({"logger": record.name, "msg": message})
        line = self.line(record.levelno, message, record.created)
        if record.exc_info:
            line += " " + logfmt({"traceback": self.formatException(record.exc_info)})
        return line

    def line(self, levelno: int, message: str, created: float, *, checked: bool = False) -> str:
        """The line of a message of pyforward's own at `levelno`, logged at `created`;
        `checked`: the message is known to be printable (logfmt escaped every value)."""
        if not checked and not message.isprintable():  # not built by logfmt: keep it one line
            message = escape(message)
        name, priority = level_of(levelno)
        if self.journal:
            return f"<{priority}>level={name} {message}"
        return f"ts={self.timestamp(created)} level={name} {message}"

    def timestamp(self, created: float) -> str:
        """ISO 8601 local time to the millisecond, with its offset from UTC."""
        # Rounded to the microsecond first, as datetime does, then cut to the millisecond.
        second = math.floor(created)
        micros = round((created - second) * 1_000_000)
        if micros == 1_000_000:
            second, micros = second + 1, 0
        if second != self._second:
            # A whole second: YYYY-MM-DDTHH:MM:SS then the offset, +HH:MM or -HH:MM.
            iso = datetime.datetime.fromtimestamp(second).astimezone().isoformat()
            self._second, self._whole, self._offset = second, iso[:19], iso[19:]
        return f"{self._whole}.{micros // 1000:03d}{self._offset}"


class LineHandler(logging.StreamHandler[TextIO]):
    """A `StreamHandler` for a line per connection. `write_line` takes pyforward's own lines
    of every connection (the close line) without the `LogRecord` that `logging` would build
    for each, and writes the lines of one turn of the event loop together, in order, with
    one write once the turn is over. Every record through `logging` (start, listen, reload,
    a warning, an error) is written at once, after the lines still pending; so is every line
    outside the loop, and at exit (`flush`, which `logging` calls then) whatever is left."""

    def __init__(self, stream: TextIO, formatter: LineFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self._format = formatter.format
        self._compose = formatter.line
        self._pending: list[str] = []
        self._scheduled = False  # a write of the pending lines is due at the end of the turn
        self._end_of_turn_once = self._end_of_turn  # bound once, not for every turn

    def emit(self, record: logging.LogRecord) -> None:
        # `Handler.handle` holds the lock.
        try:
            self._pending.append(self._format(record) + "\n")
            self._write_pending()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, levelno: int, message: str) -> None:
        """Log `message` at `levelno`, as `emit` would. The message is logfmt that pyforward
        built (every value written by `logfmt.value`): printable, one line."""
        line = self._compose(levelno, message, time.time(), checked=True)
        with self.lock:  # type: ignore[union-attr]  # always made by Handler.__init__
            self._put(line + "\n", levelno)

    def _put(self, line: str, levelno: int) -> None:
        self._pending.append(line)
        if self._scheduled:
            if levelno >= logging.WARNING:
                self._write_pending()  # the turn's write finds nothing left
            return
        # None outside the loop's thread, or with no loop running.
        loop = asyncio._get_running_loop()  # asyncio's own, made for this
        if loop is None or levelno >= logging.WARNING:
            self._write_pending()
            return
        self._scheduled = True
        loop.call_soon(self._end_of_turn_once)

    def _end_of_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            try:
                self._write_pending()
            except (OSError, ValueError):  # a stream gone bad (closed) must not stop the loop
                self._pending.clear()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            super().flush()


def direct_handler(logger: logging.Logger) -> LineHandler | None:
    """The line handler a record of `logger` would reach, when it is the only handler it
    would reach and no filter stands in the way (as `setup_logging` leaves pyforward's
    loggers): then a line may be given to it directly (`LineHandler.write_line`)."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        handlers = current.handlers
        if handlers:
            handler = handlers[0]
            if len(handlers) == 1 and type(handler) is LineHandler and not handler.filters:
                return handler
            return None
        if not current.propagate:
            return None
        current = current.parent
    return None


def setup_logging(
    level: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Send pyforward's log records at `level` ("debug" ... "error") and above to `stream`
    (stderr), one line each, and the warnings and errors of the libraries it runs on
    (asyncio, the Kubernetes client's urllib3) as lines of the same form."""
    stream = sys.stderr if stream is None else stream
    journal = writes_to_journal(stream, os.environ if environ is None else environ)
    handler = LineHandler(stream, LineFormatter(journal=journal))
    ours = logging.getLogger(LOGGER)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    # Without a handler of its own, a library's record would reach logging's last resort:
    # bare text, a traceback over many lines, and no level for the journal.
    everyone = logging.getLogger()
    everyone.handlers[:] = [handler]
    everyone.setLevel(max(logging.WARNING, ours.level))
    # A line carries none of the call site, thread or process a record can note, and a close
    # line is logged for every connection: what `logging` would work out for each record and
    # the formatter never shows, it is told not to (its documented switches; the frame walk
    # was a third of a close line's cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
