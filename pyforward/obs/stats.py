"""Process-wide counters, kept from the first connection so a fallback is never silent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyforward.obs.reasons import CloseReason

_ORDER = {reason: index for index, reason in enumerate(CloseReason)}


@dataclass
class Stats:
    accepted: int = 0
    active: int = 0
    spliced_bytes: int = 0
    copied_bytes: int = 0
    accept_paused: int = 0  # times accepting paused for want of descriptors
    closed: Counter[CloseReason] = field(default_factory=Counter)


def reason_counts(closed: Mapping[CloseReason, int]) -> dict[str, int]:
    """`closed_REASON: count` for every reason with a count, in CloseReason's order."""
    reasons = sorted(closed, key=lambda reason: (_ORDER.get(reason, len(_ORDER)), reason))
    return {f"closed_{reason}": closed[reason] for reason in reasons if closed[reason]}
