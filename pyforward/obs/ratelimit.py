"""At most one log line per interval for events that can come in floods."""

from __future__ import annotations


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
