"""The processes of a soak run, seen from the suite: the forwarder and its peers.

Both are watched through events (a line on stderr, a JSON line on stdout) and /proc;
nothing here waits a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tests.soak import procfs

ROOT = Path(__file__).resolve().parents[2]
_LISTEN = re.compile(r"event=listen address=\S+:(\d+)")
_REASON = re.compile(r" reason=(\S+)")
_ERROR = re.compile(r" error=(\S+)")
_FIELD = re.compile(r'(\w[\w-]*)=("[^"]*"|\S*)')
# Signs of a crash or of an exception that escaped into the event loop.
_ALARMS = (
    "Traceback",
    "Exception in callback",
    "Fatal Python error",
    "double free",
    "Segmentation fault",
)
_SAMPLE_EVERY = 0.05


class SoakError(Exception):
    """A process of the run did not do what it must; the message says which and how."""


def fields(line: str) -> dict[str, str]:
    """The key=value pairs of a logfmt line."""
    return {key: value.strip('"') for key, value in _FIELD.findall(line)}


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = _SAMPLE_EVERY
) -> None:
    """Poll `condition` (state only /proc can tell) until it holds; SoakError after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SoakError(f"{what}: not so after {timeout:g}s")
        time.sleep(poll)


class Forwarder:
    """`python -m pyforward run ARGS`: its log (kept on disk, close lines counted, not kept
    in memory), its listening ports, and samples of its descriptor count."""

    def __init__(self, args: Sequence[str], log_path: Path, prefix: Sequence[str] = ()) -> None:
        self.command = [*prefix, sys.executable, "-m", "pyforward", "run", *args]
        self.log_path = log_path
        self.lines: list[str] = []  # every line but the per-connection close lines
        self.closes: Counter[str] = Counter()  # close lines by reason
        self.close_errors: Counter[str] = Counter()  # their error= fields (EMFILE, ...)
        self.alarms: list[str] = []
        self.ports: list[int] = []
        self.peak_fds = 0
        self._changed = threading.Condition()
        self._eof = False
        self._stopping = threading.Event()
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("w") as log:
            for raw in self.proc.stderr:
                log.write(raw)
                line = raw.rstrip("\n")
                with self._changed:
                    if "event=close " in line:
                        match = _REASON.search(line)
                        self.closes[match.group(1) if match else "?"] += 1
                        if error := _ERROR.search(line):
                            self.close_errors[error.group(1)] += 1
                    else:
                        self.lines.append(line)
                        if match := _LISTEN.search(line):
                            self.ports.append(int(match.group(1)))
                        if any(alarm in line for alarm in _ALARMS):
                            self.alarms.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _sample(self) -> None:
        while not self._stopping.wait(_SAMPLE_EVERY):
            try:
                self.peak_fds = max(self.peak_fds, procfs.fd_count(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                if self._eof:
                    raise SoakError(f"pyforward exited ({self.proc.wait()}) before {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SoakError(f"pyforward: no {what} within {timeout:g}s")
                self._changed.wait(remaining)

    def wait_ready(self, listeners: int = 1, timeout: float = 30.0) -> list[int]:
        """The ports it listens on, once its `event=listen` lines are out."""
        self._wait(lambda: len(self.ports) >= listeners, timeout, "event=listen line")
        return list(self.ports)

    def wait_closes(self, count: int, timeout: float = 60.0) -> None:
        """Wait until `count` connections have logged their close line."""
        self._wait(lambda: self.closes.total() >= count, timeout, f"{count} close lines")

    def wait_line(self, pattern: str, timeout: float = 30.0, after: int = 0) -> str:
        """The first line (from index `after`) matching `pattern`, waiting for it."""
        regex = re.compile(pattern)
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines[after:] if regex.search(line)]
            return bool(found)

        self._wait(seen, timeout, f"a line matching {pattern!r}")
        return found[0]

    def line_count(self) -> int:
        """How many lines (close lines aside) so far: a mark for `wait_line(after=...)`."""
        with self._changed:
            return len(self.lines)

    def has_line(self, pattern: str) -> bool:
        regex = re.compile(pattern)
        with self._changed:
            return any(regex.search(line) for line in self.lines)

    def usage(self) -> procfs.Usage:
        return procfs.usage(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """SIGTERM; the exit code and the fields of the `event=stopped` line (empty if none)."""
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout)
        stopped = [line for line in self.lines if "event=stopped" in line]
        return code, fields(stopped[-1]) if stopped else {}

    def kill(self) -> None:
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)


class Peer:
    """A process of `tests.soak.peers`: JSON events from its stdout, words to its stdin."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self._stderr: IO[str] = self.log_path.open("w")
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.soak.peers", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def stderr_tail(self, lines: int = 5) -> str:
        self._stderr.flush()
        return " | ".join(self.log_path.read_text().splitlines()[-lines:])

    def wait(
        self,
        event: str,
        timeout: float = 60.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The first event named `event` (and passing `where`), waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for found in self.events:
                    if found.get("event") == event and where(found):
                        return found
                if self._eof:
                    code = self.proc.wait()
                    raise SoakError(
                        f"{self.name} exited ({code}) without {event!r}: {self.stderr_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SoakError(f"{self.name}: no {event!r} within {timeout:g}s")
                self._changed.wait(remaining)

    def tell(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        """The job's result; the process must then exit 0."""
        result = self.wait("result", timeout)
        code = self.proc.wait(timeout)
        if code != 0:
            raise SoakError(f"{self.name} exited {code}: {self.stderr_tail()}")
        return result

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM a server; its result."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.result(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._stderr.close()
