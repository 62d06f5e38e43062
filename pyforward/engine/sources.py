"""Connections open per client address, for `max_connections_per_source`.

The forwarder takes a slot at admission (`take`, refused at the cap) and gives it back
when the connection closes. One process counts in a dict (`LocalSourceCounts`); worker
processes share one table (`pyforward.workers.sourcetable`), so the limit holds for the
forwarder as a whole."""

from __future__ import annotations

from collections import Counter
from typing import Protocol


class SourceCounts(Protocol):
    def take(self, source: str, cap: int) -> bool:
        """Count one more connection of `source`, unless it holds `cap` already (False)."""
        ...

    def give_back(self, source: str) -> None:
        """One connection of `source`, counted by `take`, has closed."""

    def count(self, source: str) -> int:
        """The connections of `source` counted now."""
        ...


class LocalSourceCounts:
    """The counts of one process."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def take(self, source: str, cap: int) -> bool:
        if self._open[source] >= cap:
            return False
        self._open[source] += 1
        return True

    def give_back(self, source: str) -> None:
        self._open[source] -= 1
        if self._open[source] <= 0:
            del self._open[source]

    def count(self, source: str) -> int:
        return self._open[source]
