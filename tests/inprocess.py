"""A forwarder running in a thread of the test process, for tests that inject faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

from pyforward.config.model import Settings
from pyforward.engine.runtime import serve
from pyforward.engine.server import Forwarder
from tests.harness import TIMEOUT


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append(record.getMessage())
            self._changed.notify_all()

    def wait(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> list[str]:
        """Wait until `count` lines match `pattern`; return every line that does."""
        regex = re.compile(pattern)

        def matching(lines: list[str]) -> list[str]:
            return [line for line in lines if regex.search(line)]

        self.wait_for(lambda lines: len(matching(lines)) >= count, pattern, timeout)
        with self._changed:
            return matching(self.lines)

    def wait_for(
        self, condition: Callable[[list[str]], bool], what: str, timeout: float = TIMEOUT
    ) -> None:
        """Wait until `condition(lines)` holds; `what` names it in the failure."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self.lines):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {what} in {timeout}s:\n" + "\n".join(self.lines[-50:])
                self._changed.wait(remaining)


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[tuple[Forwarder, LogLines]]:
    """Serve `settings` in a background thread until the block ends."""
    ready = threading.Event()
    holder: dict[str, object] = {}
    logs = LogLines()
    logger = logging.getLogger("pyforward")
    logger.addHandler(logs)
    logger.setLevel(logging.INFO)

    def main() -> None:
        async def run() -> None:
            stop = asyncio.Event()
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop

            def on_ready(forwarder: Forwarder) -> None:
                holder["forwarder"] = forwarder
                ready.set()

            await serve(settings, shutdown_trigger=stop.wait, on_ready=on_ready)

        try:
            asyncio.run(run())
        except BaseException as exc:
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        assert ready.wait(TIMEOUT), "the forwarder did not start"
        if "error" in holder:
            raise AssertionError(f"the forwarder failed: {holder['error']!r}")
        forwarder = holder["forwarder"]
        assert isinstance(forwarder, Forwarder)
        yield forwarder, logs
    finally:
        loop, stop = holder.get("loop"), holder.get("stop")
        if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event):
            loop.call_soon_threadsafe(stop.set)
        thread.join(TIMEOUT)
        logger.removeHandler(logs)


def on_loop(forwarder: Forwarder, function: Callable[[], object]) -> None:
    """Call `function` on the forwarder's event loop and wait until it has run."""
    done = threading.Event()

    def call() -> None:
        try:
            function()
        finally:
            done.set()

    forwarder.loop.call_soon_threadsafe(call)
    assert done.wait(TIMEOUT), "the event loop did not run the call"
