"""The one-line STATUS= text a running pyforward gives systemd, and its reading back.

`pyforward status` reads what the service last said (`systemctl show -p StatusText`), so the
text is written and read here and nowhere else. Its shape:

    forwarding [::]:443 -> 10.0.0.5:32653,10.0.0.6:32653; [::]:80 -> 10.0.0.5:31380;
    2 active connections; discovery degraded: API unreachable

Parts are separated by `; `. A note's text never holds `;` (it is replaced by `,` when
written), so every part can be read back exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MAX_ROUTES = 4  # routes named in the status line before it summarises
_SEPARATOR = "; "
_ACTIVE = re.compile(r"(\d+) active connections?")
_MORE = re.compile(r"and (\d+) more")
_PREFIX = "forwarding "


@dataclass(frozen=True)
class StatusText:
    """What the status line says: the routes it names, how many it left out, how busy."""

    routes: tuple[tuple[str, tuple[str, ...]], ...]
    active: int
    notes: Mapping[str, str] = field(default_factory=dict)
    more: int = 0


def format_status(
    routes: Sequence[tuple[str, Sequence[str]]], active: int, notes: Mapping[str, str]
) -> str:
    """The STATUS= text: where it listens, where to, how busy, what is wrong (`notes`, by
    key, e.g. `discovery` -> `degraded: ...`)."""
    shown = [f"{listen} -> {','.join(targets)}" for listen, targets in routes[:MAX_ROUTES]]
    if len(routes) > MAX_ROUTES:
        shown.append(f"and {len(routes) - MAX_ROUTES} more")
    noun = "connection" if active == 1 else "connections"
    parts = [f"{_PREFIX}{_SEPARATOR.join(shown)}", f"{active} active {noun}"]
    parts += [f"{key} {_one_part(text)}" for key, text in sorted(notes.items())]
    return _SEPARATOR.join(parts)


def parse_status(text: str) -> StatusText | None:
    """The status line read back, or None when `text` is not one (e.g. "starting", or what
    another program's unit says)."""
    if not text.startswith(_PREFIX):
        return None
    parts = text[len(_PREFIX) :].split(_SEPARATOR)
    routes: list[tuple[str, tuple[str, ...]]] = []
    more = 0
    for index, part in enumerate(parts):
        active = _ACTIVE.fullmatch(part)
        if active:
            notes = dict(note.partition(" ")[::2] for note in parts[index + 1 :])
            return StatusText(tuple(routes), int(active.group(1)), notes, more)
        if found := _MORE.fullmatch(part):
            more = int(found.group(1))
            continue
        listen, arrow, targets = part.partition(" -> ")
        if not arrow:
            return None
        routes.append((listen, tuple(targets.split(",")) if targets else ()))
    return None


def _one_part(text: str) -> str:
    return text.replace(";", ",")
