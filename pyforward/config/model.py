"""What a configuration amounts to: the frozen `Settings` and its `Route`s, and the enums and
bounds their fields take. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from pyforward.config.access import AccessList
from pyforward.config.addresses import Address, Endpoint
from pyforward.config.policy import Policy
from pyforward.obs.closelog import LogConnections

if TYPE_CHECKING:  # a type only: the core loads nothing of discovery
    from pyforward.discovery.options import DiscoverySettings, ServiceRef


# The kernel caps a backlog at net.core.somaxconn anyway; anything larger is a typo.
MAX_BACKLOG = 65535


class RelayMode(StrEnum):
    AUTO = "auto"
    SPLICE = "splice"
    COPY = "copy"


class LoopName(StrEnum):
    AUTO = "auto"
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Transport(StrEnum):
    """What a route forwards: TCP connections, or UDP datagrams (flows, datagram/)."""

    TCP = "tcp"
    UDP = "udp"


# A UDP flow idle this long is closed: longer than QUIC's usual idle timeout (30 s in
# quic-go, Chromium and aioquic's 60 s), so the protocol ends a connection before the
# forwarder forgets it; Linux conntrack keeps a replied UDP flow 120 s as well. DNS needs
# no shorter value: at the flow cap, one-exchange flows are evicted first (datagram/flows.py).
UDP_IDLE_TIMEOUT = 120.0
UDP_MAX_FLOWS = 4096  # per route; each flow holds one socket to the target


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Route:
    """One listener, where its connections go, and what each connection needs to know."""

    listen: Endpoint
    targets: tuple[Endpoint, ...]
    policy: Policy
    access: AccessList = field(default_factory=AccessList)
    # Discovered routes: no static targets; the Service and its port (name or number) to
    # follow (discovery fills in the top-level Service for a route that names none).
    service_port: str | None = None
    service: ServiceRef | None = None
    # The cluster a discovered route follows its Service in: its kubeconfig and node address
    # (discovery fills in the top-level ones; None: found as docs/kubernetes.md says).
    kubeconfig: str | None = None
    node_ip: str | None = None
    protocol: Transport = Transport.TCP
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    udp_max_flows: int = UDP_MAX_FLOWS
    # The TLS server names whose connections this route takes; () on a shared address: its
    # default (config/sni.py).
    sni: tuple[str, ...] = ()
    reuseport: bool = False  # SO_REUSEPORT on its TCP listeners
    # A unix: listener's socket file: its mode and owner (None: as bind() leaves them).
    unix_mode: int | None = None
    unix_user: str | None = None
    unix_group: str | None = None
    # Where each value the user gave it was given, by key: `--kubeconfig`, `FILE: key`,
    # `FILE: route 2 (listen 0.0.0.0:443): key`. For errors found only when a value is
    # used (a kubeconfig that does not exist); no part of what the route is.
    given_in: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def origin(self, key: str) -> str | None:
        """Where the value of `key` was given; None: it is the default."""
        return dict(self.given_in).get(key)

    @property
    def connect_timeout(self) -> float:
        return self.policy.connect_timeout

    @property
    def idle_timeout(self) -> float | None:
        return self.policy.idle_timeout

    @property
    def keepalive(self) -> bool:
        return self.policy.keepalive

    @property
    def first_byte_timeout(self) -> float | None:
        return self.policy.first_byte_timeout

    @property
    def log_connections(self) -> LogConnections:
        return self.policy.log_connections


@dataclass(frozen=True)
class Settings:
    routes: tuple[Route, ...]
    relay: RelayMode
    loop: LoopName
    log_level: LogLevel
    backlog: int | None
    max_connections: int | None
    shutdown_timeout: float
    max_connections_per_source: int | None = None
    discovery: DiscoverySettings | None = None  # set by the discovery feature when on
    metrics: Address | None = None  # where /metrics is served; None: nowhere
    workers: int | None = 1  # processes serving the listeners; None: one per usable CPU
