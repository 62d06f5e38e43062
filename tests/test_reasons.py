"""The close reasons: one enum, and the README's table lists exactly its members."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from pyforward.obs.reasons import CloseReason
from pyforward.obs.stats import reason_counts

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_reasons() -> list[str]:
    """The first column of the README's table of close reasons, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| reason | meaning |") + 2  # past the header and its rule
    reasons = []
    for line in lines[start:]:
        match = re.match(r"\| `([a-z-]+)` \|", line)
        if match is None:
            break
        reasons.append(match.group(1))
    return reasons


def test_the_readme_table_lists_every_close_reason_in_the_enums_order() -> None:
    assert readme_reasons() == [reason.value for reason in CloseReason]


def test_the_values_are_the_ones_the_logs_have_always_used() -> None:
    assert [reason.value for reason in CloseReason] == [
        "eof",
        "reset",
        "idle-timeout",
        "connect-timeout",
        "refused",
        "unreachable",
        "shutdown",
        "denied",
        "source-limit",
        "first-byte-timeout",
        "bad-proxy-header",
        "no-route",
        "not-tls",
        "bad-tls-hello",
        "sni-timeout",
        "error",
        "flow-limit",
        "flow-evicted",
    ]
    assert f"reason={CloseReason.IDLE_TIMEOUT}" == "reason=idle-timeout"


def test_the_counts_come_in_the_enums_order() -> None:
    closed = Counter({CloseReason.ERROR: 1, CloseReason.EOF: 3, CloseReason.RESET: 0})
    assert reason_counts(closed) == {"closed_eof": 3, "closed_error": 1}
