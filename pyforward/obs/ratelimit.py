"""At most one log line per interval for events that can come in floods."""

from __future__ import annotations

import logging

from pyforward.obs.logfmt import logfmt


class Every:
    """`due(now)` is true at most once per `interval` seconds; `suppressed` counts the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = float("-inf")
        self.suppressed = 0

    def due(self, now: float) -> bool:
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        return True

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count

    def warn(self, logger: logging.Logger, fields: dict[str, object]) -> None:
        """Log the line `due` allowed as a warning, with `more=` the count of those it
        left out since the last one."""
        if suppressed := self.take_suppressed():
            fields["more"] = suppressed
        logger.warning(logfmt(fields))
