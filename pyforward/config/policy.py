"""What one connection of a route needs to know: its timeouts, keepalive, close logging,
the PROXY header it sends its target.

Built by the settings from the route's per-route options (one field per option of the
schema marked `policy`, of the same name), carried by the `Route`, and handed as it is to
each connection the route's listener accepts. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pyforward.config.access import AccessList
from pyforward.obs.closelog import LogConnections
from pyforward.obs.dump import DumpMode


class ProxyProtocol(StrEnum):
    """Which PROXY protocol header a route's connections send their target first."""

    OFF = "off"
    V1 = "v1"  # the text line
    V2 = "v2"  # the binary form


@dataclass(frozen=True)
class Policy:
    connect_timeout: float
    idle_timeout: float | None
    keepalive: bool
    first_byte_timeout: float | None = None
    log_connections: LogConnections = LogConnections.ALL
    proxy_protocol: ProxyProtocol = ProxyProtocol.OFF
    # Peers whose PROXY header is believed (the load balancers in front); others are
    # served as themselves. Only with accept_proxy_protocol, which requires some.
    accept_proxy_protocol: bool = False
    proxy_protocol_from: AccessList = field(default_factory=AccessList)
    # How long a client of a shared (sni) address gets to send its TLS ClientHello.
    sni_timeout: float = 5.0
    connect_retries: int | None = 0  # dials again when every target failed; None: forever
    connect_retry_interval: float = 1.0
    source_port: int | None = None  # the local port of each connect to a TCP target
    dump: DumpMode = DumpMode.OFF  # the bytes to stderr, as socat -v / -x (copy relay only)

    def reads_proxy_header(self, peer: str) -> bool:
        """Whether a connection from `peer` must start with a PROXY header."""
        return self.accept_proxy_protocol and self.proxy_protocol_from.permits(peer)
