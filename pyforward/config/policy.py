"""What one connection of a route needs to know: its timeouts, keepalive, close logging.

Built by the settings from the route's per-route options (one field per option of the
schema marked `policy`, of the same name), carried by the `Route`, and handed as it is to
each connection the route's listener accepts. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyforward.obs.closelog import LogConnections


@dataclass(frozen=True)
class Policy:
    connect_timeout: float
    idle_timeout: float | None
    keepalive: bool
    first_byte_timeout: float | None = None
    log_connections: LogConnections = LogConnections.ALL
