"""SIGUSR1 at debug level: one line of fields per open connection. Pure but for the clock.

Read from what each connection already keeps for its close line (its id, client, listener,
target, start time and byte counts), at the moment of the signal: nothing is added to a
connection's life for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyforward.relay.connection import Connection


def open_connection_fields(
    connections: Iterable[Connection], now: float | None = None
) -> list[dict[str, object]]:
    """`event=connection` fields for each open connection, oldest first; `age` in seconds
    since accept, `up` and `down` the bytes relayed so far (as in the close line)."""
    now = time.monotonic() if now is None else now
    lines: list[dict[str, object]] = []
    for connection in sorted(connections, key=lambda c: c.id):
        if connection.closed:
            continue
        up, down = connection.byte_counts()
        lines.append(
            {
                "event": "connection",
                "id": connection.id,
                "client": connection.client_label,
                "listen": connection.listen_label,
                "target": connection.target_label,
                # The monotonic time of accept, kept by the connection for its `dur`.
                "age": round(now - connection.started, 3),
                "up": up,
                "down": down,
            }
        )
    return lines
