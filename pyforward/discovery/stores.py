"""What a watcher keeps of its collection: the objects, parsed as they come, under a lock.

The watcher's thread writes (a list replaces everything, an event changes one object);
the event loop reads. The JSON is not kept: a parsed Node is a few names and addresses,
its JSON kilobytes. An object that does not parse is remembered as the collection's
problem until it is replaced or deleted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pyforward.discovery.errors import DiscoveryError
from pyforward.discovery.model import (
    HostIdentity,
    Node,
    NodeChoice,
    Service,
    parse_node,
    parse_service,
)
from pyforward.discovery.ranking import NodeCounts, NodeRanking

T = TypeVar("T")


def object_key(obj: dict[str, Any]) -> str:
    """NAMESPACE/NAME of an API object, as the API server keys it."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return "/"
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


class _Parsed(Generic[T]):
    """Objects by key, parsed by `parse`; bad ones kept aside with their error."""

    def __init__(self, parse: Callable[[dict[str, Any]], T]) -> None:
        self._parse = parse
        self._lock = threading.Lock()
        self._bad: dict[str, DiscoveryError] = {}
        self.listed = False  # a list has been taken in

    def _parse_all(
        self, items: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, T], dict[str, DiscoveryError]]:
        good: dict[str, T] = {}
        bad: dict[str, DiscoveryError] = {}
        for item in items:
            key = object_key(item)
            try:
                good[key] = self._parse(item)
            except DiscoveryError as exc:
                bad[key] = exc
        return good, bad

    def problem(self) -> DiscoveryError | None:
        """The first object that did not parse (and how many did not), if any."""
        with self._lock:
            if not self._bad:
                return None
            first = next(iter(self._bad.values()))
            if len(self._bad) == 1:
                return first
            return type(first)(f"{first} (and {len(self._bad) - 1:,} more objects like it)")

    def _one(self, kind: str, obj: dict[str, Any]) -> tuple[str, T | None, DiscoveryError | None]:
        """Parse one event's object: (key, the parsed object or None if deleted or bad, error)."""
        key = object_key(obj)
        if kind == "DELETED":
            return key, None, None
        try:
            return key, self._parse(obj), None
        except DiscoveryError as exc:
            return key, None, exc


class ServiceStore(_Parsed[Service]):
    """The Services of one namespace."""

    def __init__(self) -> None:
        super().__init__(parse_service)
        self._services: dict[str, Service] = {}

    def replace(self, items: Sequence[dict[str, Any]]) -> None:
        good, bad = self._parse_all(items)
        with self._lock:
            self._services, self._bad, self.listed = good, bad, True

    def apply(self, kind: str, obj: dict[str, Any]) -> bool:
        key, parsed, error = self._one(kind, obj)
        with self._lock:
            before = self._services.get(key)
            self._services.pop(key, None)
            had_error = self._bad.pop(key, None) is not None
            if parsed is not None:
                self._services[key] = parsed
            if error is not None:
                self._bad[key] = error
            return before != parsed or had_error or error is not None

    def services(self) -> tuple[Service, ...]:
        with self._lock:
            return tuple(self._services.values())


class NodeStore(_Parsed[Node]):
    """Every Node, ranked as targets for this host as it changes (see NodeRanking)."""

    def __init__(self, host: HostIdentity) -> None:
        super().__init__(parse_node)
        self._host = host
        self._ranking = NodeRanking(host)

    def replace(self, items: Sequence[dict[str, Any]]) -> None:
        good, bad = self._parse_all(items)
        ranking = NodeRanking(self._host)  # built outside the lock: readers never wait on it
        ranking.replace(list(good.values()))
        with self._lock:
            self._ranking, self._bad, self.listed = ranking, bad, True

    def apply(self, kind: str, obj: dict[str, Any]) -> bool:
        key, parsed, error = self._one(kind, obj)
        name = key.partition("/")[2]
        with self._lock:
            had_error = self._bad.pop(key, None) is not None
            if error is not None:
                self._bad[key] = error
            ranking = self._ranking
            changed = ranking.remove(name) if parsed is None else ranking.put(parsed)
            return changed or had_error or error is not None

    def choose(self) -> NodeChoice:
        """The targets, best first (NoReadyNode when there is none)."""
        with self._lock:
            return self._ranking.choice()

    @property
    def counts(self) -> NodeCounts:
        with self._lock:
            return self._ranking.counts
