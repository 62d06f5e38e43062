"""What one Node event costs discovery, at 1,000 and 5,000 nodes (and more, if asked).

The measurement behind discovery's node store (pyforward/discovery/stores.py and
ranking.py): `python bench/node_events.py [NODES ...]`. For each cluster size it sends
200 Node events (a node turning NotReady, or Ready again) and prints the time per event:

- `whole list`: every node parsed and ranked again, a bind test per node address (the
  cost of each event when the whole list was re-read on every one);
- `store`: the one node parsed and re-ranked, then the targets chosen from the store.

Node addresses are in 127.0.0.0/8, so the is-this-host test answers yes for every one
(the bind succeeds), as it would on a host carrying many addresses; nothing connects.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyforward.discovery.hostinfo import this_host
from pyforward.discovery.model import parse_nodes, parse_services, resolve, resolve_chosen
from pyforward.discovery.options import ServiceRef
from pyforward.discovery.stores import NodeStore
from tests.kubeapi import node, service

EVENTS = 200
REF = ServiceRef("istio-system", "istio-ingressgateway")


def cluster(count: int) -> list[dict[str, object]]:
    return [
        node(f"node-{i:06d}", f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255 or 1}")
        for i in range(count)
    ]


def events(nodes: list[dict[str, object]]) -> list[dict[str, object]]:
    step = max(1, len(nodes) // EVENTS)
    changed = []
    for n in range(EVENTS):
        original = nodes[(n * step) % len(nodes)]
        metadata = original["metadata"]
        addresses = original["status"]["addresses"]  # type: ignore[index]
        assert isinstance(metadata, dict)
        changed.append(node(metadata["name"], addresses[0]["address"], ready=n % 2 == 1))
    return changed


def whole_list(count: int) -> float:
    raw = cluster(count)
    services = parse_services([service()])
    host = this_host({})
    started = time.perf_counter()
    for event in events(raw)[:20]:  # slow: fewer events
        raw[int(str(event["metadata"]["name"]).split("-")[1]) % count] = event  # type: ignore[index]
        nodes = parse_nodes(raw)
        resolve(services, nodes, REF, ["https"], host=host, node_ip=None)
    return (time.perf_counter() - started) / 20


def store(count: int) -> float:
    services = parse_services([service()])
    nodes = NodeStore(this_host({}))
    raw = cluster(count)
    nodes.replace(raw)
    changes = events(raw)
    started = time.perf_counter()
    for event in changes:
        nodes.apply("MODIFIED", event)
        resolve_chosen(services, nodes.choose, REF, ["https"], node_ip=None)
    return (time.perf_counter() - started) / EVENTS


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [1000, 5000]
    for count in sizes:
        before, after = whole_list(count), store(count)
        print(
            f"{count:>7,} nodes: whole list {before * 1000:8.2f} ms per event, "
            f"store {after * 1000:6.3f} ms per event ({before / after:,.0f}x)"
        )


if __name__ == "__main__":
    main()
