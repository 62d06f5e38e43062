"""Process-wide counters, kept from the first connection so a fallback is never silent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

# The closed list of reasons a connection ends with; the README documents each one.
REASONS = (
    "eof",  # both sides finished sending (each half-closed or closed), nothing lost
    "reset",  # one side reset the connection; the reset was passed on to the other
    "idle-timeout",  # no byte in either direction for idle_timeout seconds
    "connect-timeout",  # the target did not accept within connect_timeout
    "refused",  # every target refused the connection
    "unreachable",  # no route to the target, or the network is down
    "shutdown",  # the forwarder stopped before the connection finished
    "denied",  # the client's address is not allowed (allow/deny lists)
    "source-limit",  # the client's address already has max_connections_per_source open
    "first-byte-timeout",  # the client sent nothing within first_byte_timeout
    "error",  # any other socket error; the log line names it
)


@dataclass
class Stats:
    accepted: int = 0
    active: int = 0
    spliced_bytes: int = 0
    copied_bytes: int = 0
    accept_paused: int = 0  # times accepting paused for want of descriptors
    closed: Counter[str] = field(default_factory=Counter)


def reason_counts(closed: Mapping[str, int]) -> dict[str, int]:
    """`closed_REASON: count` for every reason with a count, in REASONS order."""
    order = {reason: index for index, reason in enumerate(REASONS)}
    reasons = sorted(closed, key=lambda reason: (order.get(reason, len(order)), reason))
    return {f"closed_{reason}": closed[reason] for reason in reasons if closed[reason]}
