"""List, then watch, one collection in a thread; hand every state to a callback.

The `kubernetes` client blocks, so each watched collection gets its own thread. The
thread lists once, then watches from the list's resourceVersion; a stream the server
ends is resumed from the last resourceVersion seen, a 410 Gone leads to a new list,
and any other failure is reported and retried with exponential backoff. Nothing is
polled: lists happen at start and after a 410 only.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyforward.discovery.api import Listing, Resource
from pyforward.discovery.errors import DiscoveryError, WatchExpired
from pyforward.discovery.model import resource_version
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward.discovery")


@dataclass(frozen=True)
class WatchTiming:
    # The server ends each watch after this many seconds and it is resumed at once; a
    # watch silent for watch_timeout + read_margin is taken for a dead connection.
    watch_timeout: int = 240
    read_margin: float = 15.0
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    list_deadline: float = 60.0  # seconds for a list's whole answer


@dataclass(frozen=True)
class Changed:
    """The collection's store changed; read it (and call `taken()` first).

    Changes are coalesced: while one is delivered and not yet taken, more changes
    deliver nothing, so a fast stream of events never queues up behind a busy loop."""

    resource: Resource
    via: str  # "list" or "watch": what brought the first change of the batch


@dataclass(frozen=True)
class Connected:
    """A watch was (re)established: the API answers again."""

    resource: Resource


@dataclass(frozen=True)
class Trouble:
    """The collection cannot be followed right now; retrying."""

    resource: Resource
    error: DiscoveryError


Update = Changed | Connected | Trouble


class Store(Protocol):
    """Where the watcher puts the collection (see stores.py); True: something changed."""

    def replace(self, items: Sequence[dict[str, Any]]) -> None: ...

    def apply(self, kind: str, obj: dict[str, Any]) -> bool: ...


class WatchSource(Protocol):
    """What the watcher needs from the API (ClusterApi, or a stand-in)."""

    def list(
        self, resource: Resource, *, timeout: float = ..., deadline: float = ...
    ) -> Listing: ...

    def open_watch(
        self, resource: Resource, resource_version: str | None, timeout: int, read_timeout: float
    ) -> Iterable[dict[str, Any]]: ...


def backoff_delays(
    initial: float, maximum: float, rng: Callable[[], float] = random.random
) -> Iterator[float]:
    """Exponential backoff with jitter: about initial, 2*initial, ... up to maximum."""
    delay = initial
    while True:
        # Jitter keeps many forwarders restarted together from retrying in lockstep.
        yield delay * (0.5 + rng() / 2)
        delay = min(delay * 2, maximum)


class ResourceWatcher:
    """Follows one collection in a daemon thread; `deliver` is called from that thread."""

    def __init__(
        self,
        api: WatchSource,
        resource: Resource,
        store: Store,
        deliver: Callable[[Update], None],
        timing: WatchTiming,
    ) -> None:
        self.api = api
        self.resource = resource
        self.store = store
        self._pending = threading.Lock()  # held from a Changed delivered until it is taken
        self._deliver = deliver
        self._timing = timing
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"pyforward-watch-{resource.kind}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; the caller interrupts blocking reads (ClusterApi.close)."""
        self._stopping.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def taken(self) -> None:
        """Called by the reader before it reads the store: the next change delivers again."""
        if self._pending.locked():
            self._pending.release()

    def _changed(self, via: str) -> None:
        if self._pending.acquire(blocking=False):
            self._send(Changed(self.resource, via))

    def _run(self) -> None:
        timing = self._timing
        version: str | None = None
        delays = backoff_delays(timing.backoff_initial, timing.backoff_max)
        while not self._stopping.is_set():
            just_listed = False
            try:
                if version is None:
                    just_listed = True
                    listing = self.api.list(self.resource, deadline=timing.list_deadline)
                    self.store.replace(listing.items)
                    version = listing.resource_version
                    self._changed("list")
                    delays = backoff_delays(timing.backoff_initial, timing.backoff_max)
                started = time.monotonic()
                stream = self.api.open_watch(
                    self.resource,
                    version,
                    timing.watch_timeout,
                    timing.watch_timeout + timing.read_margin,
                )
                self._send(Connected(self.resource))
                events = 0
                for event in stream:
                    if self._stopping.is_set():
                        return
                    events += 1
                    just_listed = False
                    version = resource_version(event["object"]) or version
                    kind = event.get("type")
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue  # BOOKMARK: only the resourceVersion moves on
                    if self.store.apply(str(kind), event["object"]):
                        self._changed("watch")
                delays = backoff_delays(timing.backoff_initial, timing.backoff_max)
                if events == 0 and time.monotonic() - started < 1.0:
                    # A server that ends every watch at once must not make us spin.
                    self._stopping.wait(next(delays))
            except WatchExpired as exc:
                log.info(logfmt({"event": "watch-expired", "resource": self.resource, "msg": exc}))
                if just_listed:
                    # Expired straight after a list: a server in trouble; do not hammer it.
                    self._stopping.wait(next(delays))
                version = None  # list again, then watch from the new list
            except DiscoveryError as exc:
                if self._stopping.is_set():
                    return
                self._send(Trouble(self.resource, exc))
                self._stopping.wait(next(delays))

    def _send(self, update: Update) -> None:
        if not self._stopping.is_set():
            self._deliver(update)
