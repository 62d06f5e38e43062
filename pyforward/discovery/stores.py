"""What a watcher keeps of its collection: the objects, parsed as they come, under a lock.

The watcher's thread writes (a list replaces everything, an event changes one object);
the event loop reads. The JSON is not kept: a parsed Node is a few names and addresses,
its JSON kilobytes. An object that cannot be used is left out and kept aside, with why,
until it is replaced or deleted (the model's `Parsed.rejected`, at most MAX_TARGETS named).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pyforward.discovery.errors import BadObject
from pyforward.discovery.model import (
    MAX_TARGETS,
    HostIdentity,
    Node,
    NodeChoice,
    Parsed,
    Rejected,
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


class _Store(Generic[T]):
    """Objects by key, parsed by `parse`; the ones that cannot be used kept aside, with why."""

    def __init__(self, parse: Callable[[object], T]) -> None:
        self._parse = parse
        self._lock = threading.Lock()
        self._rejected: dict[str, Rejected] = {}
        self.listed = False  # a list has been taken in

    def _parse_all(
        self, items: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, T], dict[str, Rejected]]:
        good: dict[str, T] = {}
        rejected: dict[str, Rejected] = {}
        for item in items:
            key, parsed, why = self._one("ADDED", item)
            if parsed is not None:
                good[key] = parsed
            if why is not None:
                rejected[key] = why
        return good, rejected

    def _one(self, kind: str, obj: dict[str, Any]) -> tuple[str, T | None, Rejected | None]:
        """One object: (key, the parsed object or None if deleted or unusable, why unusable)."""
        key = object_key(obj)
        if kind == "DELETED":
            return key, None, None
        try:
            return key, self._parse(obj), None
        except BadObject as exc:
            return key, None, Rejected(key.removeprefix("/"), str(exc))

    def _some_rejected(self) -> tuple[tuple[Rejected, ...], int]:
        """At most MAX_TARGETS of the objects left out (the first by key), and how many."""
        return tuple(
            heapq.nsmallest(MAX_TARGETS, self._rejected.values(), key=lambda r: r.name)
        ), len(self._rejected)


class ServiceStore(_Store[Service]):
    """The Services of one namespace."""

    def __init__(self) -> None:
        super().__init__(parse_service)
        self._services: dict[str, Service] = {}

    def replace(self, items: Sequence[dict[str, Any]]) -> None:
        good, rejected = self._parse_all(items)
        with self._lock:
            self._services, self._rejected, self.listed = good, rejected, True

    def apply(self, kind: str, obj: dict[str, Any]) -> bool:
        key, parsed, why = self._one(kind, obj)
        with self._lock:
            before = self._services.pop(key, None), self._rejected.pop(key, None)
            if parsed is not None:
                self._services[key] = parsed
            if why is not None:
                self._rejected[key] = why
            return before != (parsed, why)

    def parsed(self) -> Parsed[Service]:
        """Every Service, and every one left out: the one asked for may be among them."""
        with self._lock:
            return Parsed(tuple(self._services.values()), tuple(self._rejected.values()))


class NodeStore(_Store[Node]):
    """Every Node, ranked as targets for this host as it changes (see NodeRanking)."""

    def __init__(self, host: HostIdentity) -> None:
        super().__init__(parse_node)
        self._host = host
        self._ranking = NodeRanking(host)

    def replace(self, items: Sequence[dict[str, Any]]) -> None:
        good, rejected = self._parse_all(items)
        ranking = NodeRanking(self._host)  # built outside the lock: readers never wait on it
        ranking.replace(list(good.values()))
        with self._lock:
            self._ranking, self._rejected, self.listed = ranking, rejected, True

    def apply(self, kind: str, obj: dict[str, Any]) -> bool:
        key, parsed, why = self._one(kind, obj)
        name = key.partition("/")[2]
        with self._lock:
            was_rejected = self._rejected.pop(key, None)
            if why is not None:
                self._rejected[key] = why
            ranking = self._ranking
            changed = ranking.remove(name) if parsed is None else ranking.put(parsed)
            return changed or was_rejected != why

    def choose(self) -> NodeChoice:
        """The targets, best first (NoReadyNode when there is none)."""
        with self._lock:
            rejected, left_out = self._some_rejected()
            return self._ranking.choice(rejected, left_out)

    @property
    def counts(self) -> NodeCounts:
        with self._lock:
            return self._ranking.counts
