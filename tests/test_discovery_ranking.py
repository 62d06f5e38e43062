"""The incremental node ranking against `choose_nodes`, and the watch's line splitter."""

from __future__ import annotations

import random

import pytest

from pyforward.discovery.api import LineSplitter, LineTooLong
from pyforward.discovery.errors import NoReadyNode
from pyforward.discovery.model import MAX_TARGETS, HostIdentity, Node, Parsed, choose_nodes
from pyforward.discovery.ranking import NodeRanking


def _node(rng: random.Random, name: str) -> Node:
    address = f"127.0.{rng.randrange(4)}.{rng.randrange(1, 250)}"
    addresses = (("InternalIP", address), ("Hostname", name)) if rng.random() < 0.9 else ()
    return Node(name, addresses, ready=rng.random() < 0.8, ready_detail="")


def test_the_ranking_kept_event_by_event_chooses_as_the_whole_list_would() -> None:
    rng = random.Random(7)
    asked: list[str] = []

    def is_local(address: str) -> bool:
        asked.append(address)
        return address.startswith("127.0.0.")

    host = HostIdentity(frozenset({"n-3"}), lambda address: address.startswith("127.0.0."))
    ranking = NodeRanking(HostIdentity(host.names, is_local))
    nodes: dict[str, Node] = {}
    for step in range(3000):
        name = f"n-{rng.randrange(60)}"
        if rng.random() < 0.2:
            nodes.pop(name, None)
            ranking.remove(name)
        else:
            nodes[name] = _node(rng, name)
            ranking.put(nodes[name])
        if step % 50:
            continue
        try:
            whole = choose_nodes(Parsed(tuple(nodes.values())), host).candidates[:MAX_TARGETS]
        except NoReadyNode as exc:
            with pytest.raises(NoReadyNode) as raised:
                ranking.choice()
            assert str(raised.value).split(":")[0] == str(exc).split(":")[0]
            continue
        assert ranking.choice().candidates == whole
    # The is-this-host test is asked once per address, not once per event.
    assert len(asked) == len(set(asked))


def test_an_unchanged_node_changes_nothing() -> None:
    ranking = NodeRanking(HostIdentity(frozenset(), lambda address: False))
    node = Node("a", (("InternalIP", "127.0.0.2"),), ready=True, ready_detail="")
    assert ranking.put(node)
    assert not ranking.put(Node("a", (("InternalIP", "127.0.0.2"),), True, ""))
    assert ranking.remove("a")
    assert not ranking.remove("a")


def test_no_candidate_names_a_few_nodes_and_counts_the_rest() -> None:
    ranking = NodeRanking(HostIdentity(frozenset(), lambda address: False))
    ranking.replace([Node(f"n-{i:04d}", (), ready=False, ready_detail="off") for i in range(1000)])
    with pytest.raises(NoReadyNode) as raised:
        ranking.choice()
    text = str(raised.value)
    assert text.count("not Ready (off)") == MAX_TARGETS
    assert text.endswith(f"and {1000 - MAX_TARGETS:,} more")


def test_lines_split_across_chunks_and_a_line_without_end_is_bounded() -> None:
    lines = LineSplitter(limit=100)
    assert lines.feed(b'{"a": 1}\n{"b"') == [b'{"a": 1}']
    assert lines.feed(b": 2}\n\n") == [b'{"b": 2}', b""]
    assert lines.pending == 0
    assert lines.feed(b"x" * 60) == []
    assert lines.pending == 60
    with pytest.raises(LineTooLong, match="more than 100 bytes without a newline"):
        lines.feed(b"x" * 60)
    assert lines.pending == 0
