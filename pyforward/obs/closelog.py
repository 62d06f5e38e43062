"""Which connections get a close line, and the counts of those that do not. Pure.

A close line per connection is the record of what happened to each client; under a flood
(thousands of resets a second) it is also the disk's and the journal's problem. Per route,
`log_connections` keeps every line (`all`, the default), only the lines of connections
that did not end cleanly (`errors`), or none; the closes left unlogged are counted per
listener and reason, and the counts are logged as one summary line per listener every
SUMMARY_INTERVAL seconds, and once more when the forwarder stops.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from pyforward.obs.logfmt import value
from pyforward.obs.reasons import CloseReason, Side
from pyforward.obs.stats import reason_counts

SUMMARY_INTERVAL = 10.0  # seconds between summary lines of the closes left unlogged

# The listen and target labels as written (quoted if need be): a route has few, and a close
# line names two of them; forgotten in one go should ever more of them be written.
_LABELS: dict[str, str] = {}
_LABELS_KEPT = 4096


class LogConnections(StrEnum):
    ALL = "all"
    ERRORS = "errors"
    NONE = "none"


# The one reason that is not an error: both sides finished and every byte was delivered.
CLEAN = CloseReason.EOF


def logs_close(mode: LogConnections, reason: CloseReason) -> bool:
    """Whether a connection that closed with `reason` gets its own close line."""
    if mode is LogConnections.ALL:
        return True
    if mode is LogConnections.ERRORS:
        return reason != CLEAN
    return False


def close_line(
    *,
    connection_id: int,
    client: str,
    listen: str,
    target: str,
    up: int,
    down: int,
    seconds: float,
    relay: str,
    reason: CloseReason,
    reset_by: Side | None,
    error: str,
    msg: str,
) -> str:
    """A connection's close line: what `logfmt` writes of these fields in this order
    (`reset_by`, `error`, `msg` only when set), built in one go, since it is written for
    every connection. `relay` (copy, splice or -), numbers, reasons and sides are never
    quoted; the labels and the error may be."""
    listen_text = _LABELS.get(listen)
    if listen_text is None:
        listen_text = _label(listen)
    target_text = _LABELS.get(target)
    if target_text is None:
        target_text = _label(target)
    # The duration as `value` writes a float (never quoted): to the microsecond, no
    # trailing zeros.
    rounded = round(seconds, 6)
    dur = f"{rounded:.6f}".rstrip("0").rstrip(".") if rounded else "0"
    line = (
        f"event=close id={connection_id} client={value(client)} listen={listen_text}"
        f" target={target_text} up={up} down={down} dur={dur} relay={relay} reason={reason}"
    )
    if reset_by is not None:
        line += f" reset_by={reset_by}"
    if error:
        line += f" error={value(error)}"
    if msg:
        line += f" msg={value(msg)}"
    return line


def _label(label: str) -> str:
    if len(_LABELS) >= _LABELS_KEPT:
        _LABELS.clear()
    text = _LABELS[label] = value(label)
    return text


class CloseSummary:
    """Counts of the closes left unlogged, per listener, since the last `take`."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[CloseReason]] = {}

    def count(self, listen: str, reason: CloseReason) -> None:
        counts = self._counts.get(listen)
        if counts is None:
            counts = self._counts[listen] = Counter()
        counts[reason] += 1

    def take(self) -> list[dict[str, object]]:
        """The fields of one summary line per listener with unlogged closes; resets."""
        lines: list[dict[str, object]] = [
            {"event": "closed-summary", "listen": listen, **reason_counts(counts)}
            for listen, counts in self._counts.items()
        ]
        self._counts.clear()
        return lines
