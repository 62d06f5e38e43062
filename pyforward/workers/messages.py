"""What the main process and a worker tell each other, one frozen dataclass a message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyforward.config.model import Settings
from pyforward.engine.targets import RouteId
from pyforward.relay.connection import ResolvedTarget

# --- main to worker


@dataclass(frozen=True)
class Start:
    """The first message: what to serve. The listening sockets of route index `i` come with
    it, `sockets[i]` of them, in route order."""

    settings: Settings
    index: int
    sockets: dict[int, int]
    metrics: bool  # whether to answer `SnapshotAsk`
    # Whether the table of connections per source (sourcetable.py) follows the sockets.
    source_table: bool = False


@dataclass(frozen=True)
class Reload:
    """A configuration the main process has loaded and checked; the sockets of its new
    routes come with it, as with `Start`."""

    settings: Settings
    sockets: dict[int, int]


@dataclass(frozen=True)
class Targets:
    route: RouteId
    targets: Sequence[ResolvedTarget]


@dataclass(frozen=True)
class Stop:
    now: bool  # False: drain for shutdown_timeout; True: reset what is open


@dataclass(frozen=True)
class SnapshotAsk:
    serial: int


# --- worker to main


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Failed:
    """The worker could not start (a target that does not resolve...); it exits next."""

    error: str
    exit_code: int


@dataclass(frozen=True)
class Reloaded:
    error: str | None


@dataclass(frozen=True)
class Load:
    active: int  # connections (and UDP flows) open in the worker now


FINAL = -1  # the serial of the snapshot a worker sends as it exits


@dataclass(frozen=True)
class Snapshot:
    serial: int
    families: list[Any]  # prometheus_client Metric objects


ToWorker = Start | Reload | Targets | Stop | SnapshotAsk
ToMain = Ready | Failed | Reloaded | Load | Snapshot
Message = ToMain | ToWorker
