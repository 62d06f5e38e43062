"""Which route a TLS server name selects: the host-name rules of SNI routing.

A route claims names: exact (`jenkins.dev.local.me`) or wildcard (`*.dev.local.me`, matching
exactly one label in place of the `*`, so neither `dev.local.me` nor `a.b.dev.local.me`). Names
compare case-insensitively, and a trailing dot is ignored on both sides. The most specific
claim wins: an exact name over a wildcard. Since a wildcard stands for one label, a name has at
most one wildcard that can match it (its parent's), so exact-over-wildcard is the whole order.

Two routes claiming the same name (after normalising) is a configuration error: `conflicts`
lists every such name, and `HostRouter` refuses to be built with any. An exact name and a
wildcard that covers it are not a conflict; the exact one wins.

Patterns are checked when the router is built: labels of letters, digits, `-` and `_` (an
internationalised name is given in its `xn--` form, as it is on the wire), at most 63 bytes
each and 253 in all, `*` only as the whole first label and never alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\Z")
_MAX_NAME = 253
_MAX_LABEL = 63


class HostNameError(ValueError):
    """A host-name pattern in the configuration is invalid, or claimed by two routes."""


def normalize(name: str) -> str:
    """The comparable form of a name: lower case, without one trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def check_pattern(pattern: str) -> str:
    """The normalised form of a route's name or wildcard; HostNameError if invalid."""
    name = normalize(pattern)
    if not name.isascii():
        raise HostNameError(f"{pattern!r}: give an internationalised name in its xn-- form")
    if len(name) > _MAX_NAME:
        raise HostNameError(f"{pattern!r}: longer than {_MAX_NAME} characters")
    labels = name.split(".")
    if labels[0] == "*":
        if len(labels) < 2:
            raise HostNameError(f"{pattern!r}: a wildcard needs a domain after '*.'")
        labels = labels[1:]
    for label in labels:
        if "*" in label:
            raise HostNameError(f"{pattern!r}: '*' may only be the whole first label")
        if not label or len(label) > _MAX_LABEL or not _LABEL.match(label):
            raise HostNameError(f"{pattern!r}: {label!r} is not a host-name label")
    return name


def matches(pattern: str, name: str) -> bool:
    """Whether a normalised `pattern` covers the server name `name`."""
    name = normalize(name)
    if pattern.startswith("*."):
        head, _, parent = name.partition(".")
        return bool(head) and parent == pattern[2:]
    return name == pattern


@dataclass(frozen=True)
class Conflict:
    """One name claimed by more than one route."""

    name: str
    routes: tuple[str, ...]  # the routes' labels, in the order given

    def __str__(self) -> str:
        return f"{self.name} is claimed by {' and '.join(self.routes)}"


def conflicts(claims: Iterable[tuple[str, Sequence[str]]]) -> list[Conflict]:
    """Every name that two or more routes claim; `claims` is (route label, its names) pairs.

    Raises HostNameError for an invalid name. A route naming one name twice claims it once.
    """
    owners: dict[str, list[str]] = {}
    for route, names in claims:
        for name in names:
            holders = owners.setdefault(check_pattern(name), [])
            if route not in holders:
                holders.append(route)
    return [Conflict(name, tuple(routes)) for name, routes in owners.items() if len(routes) > 1]


class HostRouter(Generic[T]):
    """Maps a server name to the route that claims it, most specific first."""

    def __init__(self, routes: Iterable[tuple[Sequence[str], T]], default: T | None = None):
        """`routes` are (names, route) pairs; `default` takes what no name selects."""
        routes = list(routes)
        found = conflicts((f"route {index}", names) for index, (names, _) in enumerate(routes, 1))
        if found:
            raise HostNameError("; ".join(str(conflict) for conflict in found))
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, T] = {}  # keyed by the domain after '*.'
        for names, route in routes:
            for name in names:
                pattern = check_pattern(name)
                if pattern.startswith("*."):
                    self._wildcards[pattern[2:]] = route
                else:
                    self._exact[pattern] = route
        self.default = default

    def lookup(self, server_name: str | None) -> T | None:
        """The route for `server_name` (None: the hello named none), else the default."""
        if server_name is None:
            return self.default
        name = normalize(server_name)
        if name in self._exact:
            return self._exact[name]
        head, _, parent = name.partition(".")
        if head and parent in self._wildcards:
            return self._wildcards[parent]
        return self.default
