"""Passive health: targets that refuse or time out are tried last for a while. Pure.

A failed connect marks its target down for DOWN_FOR seconds. While down, a target is
moved behind the healthy ones, never dropped: when every target is down, all are still
tried, in the order given. A successful connect marks it up at once. Down times are kept
for the current targets only (`retain`), so the table never grows past them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

# Long enough that a dead node costs at most one slow connect per this period and client,
# short enough that a node back from a reboot gets traffic again quickly.
DOWN_FOR = 15.0

T = TypeVar("T", bound=Hashable)


class TargetHealth:
    """Down-until times per target; `now` comes from the caller (the event loop's clock)."""

    def __init__(self, down_for: float = DOWN_FOR) -> None:
        self.down_for = down_for
        self._down_until: dict[Hashable, float] = {}

    def failed(self, target: Hashable, now: float) -> bool:
        """Mark `target` down; True when it was up until now."""
        was_up = not self.is_down(target, now)
        self._down_until[target] = now + self.down_for
        return was_up

    def succeeded(self, target: Hashable) -> bool:
        """Mark `target` up; True when it was marked down."""
        return self._down_until.pop(target, None) is not None

    def is_down(self, target: Hashable, now: float) -> bool:
        until = self._down_until.get(target)
        return until is not None and until > now

    def order(self, targets: Sequence[T], now: float) -> Sequence[T]:
        """Healthy targets first in their given order, then the down ones."""
        if not self._down_until:
            return targets
        down = [t for t in targets if self.is_down(t, now)]
        if not down:
            return targets
        return [t for t in targets if not self.is_down(t, now)] + down

    def retain(self, targets: Iterable[Hashable]) -> None:
        """Forget every target but these (after the targets of a route changed)."""
        keep = set(targets)
        for target in list(self._down_until):
            if target not in keep:
                del self._down_until[target]
