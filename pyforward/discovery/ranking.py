"""The nodes, ranked as targets, kept up to date one node at a time. Pure.

`choose_nodes` ranks a whole list; a cluster of thousands of nodes sends a Node event
every few seconds, so re-ranking everything on each one costs the node count every time
(and a bind test per node address). Here each event costs one node: a node whose parsed
form did not change (most status updates) costs nothing, an address's is-this-host answer
is asked once, and the chosen targets are read off the front of a sorted list.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

from pyforward.discovery.errors import NoReadyNode
from pyforward.discovery.model import (
    MAX_TARGETS,
    Candidate,
    HostIdentity,
    Node,
    NodeChoice,
    Rejected,
    rank_node,
    some_of,
)

_ADDRESS_CACHE_MIN = 1024  # the is-this-host cache is bounded by the node count, or this


@dataclass(frozen=True)
class NodeCounts:
    nodes: int
    candidates: int  # Ready, with an InternalIP


class NodeRanking:
    """Nodes by name; `choice()` is `choose_nodes` on them, cut to MAX_TARGETS (and
    without the skipped nodes, which only the error for no candidate names)."""

    def __init__(self, host: HostIdentity) -> None:
        self._names = host.names
        self._is_local = host.is_local_address
        self._local: dict[str, bool] = {}
        self._host = HostIdentity(host.names, self._is_local_cached)
        self._nodes: dict[str, Node] = {}
        self._order: list[tuple[int, str]] = []  # (rank, name) of every candidate, sorted
        self._candidates: dict[str, tuple[int, Candidate]] = {}
        self._skipped: dict[str, str] = {}

    def _is_local_cached(self, address: str) -> bool:
        answer = self._local.get(address)
        if answer is None:
            if len(self._local) >= max(_ADDRESS_CACHE_MIN, 2 * len(self._nodes)):
                self._local.clear()  # addresses of nodes long gone: start over
            answer = self._local[address] = self._is_local(address)
        return answer

    @property
    def counts(self) -> NodeCounts:
        return NodeCounts(len(self._nodes), len(self._order))

    def replace(self, nodes: list[Node]) -> None:
        """Start over from a full list (the answers about addresses are asked again)."""
        self._nodes.clear()
        self._order.clear()
        self._candidates.clear()
        self._skipped.clear()
        self._local.clear()
        for node in nodes:
            self.put(node)

    def put(self, node: Node) -> bool:
        """Add or update a node; True when that can change the choice."""
        if self._nodes.get(node.name) == node:
            return False  # e.g. a heartbeat: nothing discovery uses changed
        self.remove(node.name)
        self._nodes[node.name] = node
        place = rank_node(node, self._host)
        if isinstance(place, str):
            self._skipped[node.name] = place
        else:
            self._candidates[node.name] = place
            bisect.insort(self._order, (place[0], node.name))
        return True

    def remove(self, name: str) -> bool:
        """Forget a node; True when it was known."""
        if self._nodes.pop(name, None) is None:
            return False
        self._skipped.pop(name, None)
        place = self._candidates.pop(name, None)
        if place is not None:
            key = (place[0], name)
            index = bisect.bisect_left(self._order, key)
            del self._order[index]
        return True

    def choice(self, rejected: tuple[Rejected, ...] = (), left_out: int = 0) -> NodeChoice:
        """The best MAX_TARGETS candidates, as `choose_nodes` would rank them; `rejected`
        (some of the `left_out` Node objects that could not be used) are passed on."""
        if not self._order:
            if not self._nodes and not left_out:
                raise NoReadyNode("no Ready node: the cluster lists no nodes")
            skipped = heapq.nsmallest(MAX_TARGETS, self._skipped.items())
            parts = [f"{name} {why}" for name, why in skipped] + [r.reason for r in rejected]
            detail = some_of(parts, len(self._skipped) + left_out)
            raise NoReadyNode(f"no Ready node with an InternalIP: {detail}")
        candidates = [self._candidates[name][1] for _, name in self._order[:MAX_TARGETS]]
        if self._order[0][0] == 2:
            first = candidates[0]
            candidates[0] = Candidate(
                first.node, first.address, "no node is this host; first by name"
            )
        if left_out > len(rejected):
            rejected = (*rejected, Rejected("", f"and {left_out - len(rejected):,} more nodes"))
        return NodeChoice(tuple(candidates), (), rejected)
