"""What a running pyforward says about itself through its metrics endpoint.

`parse_scrape` is pure: the text of a scrape in, a `LiveState` out. `read_live` fetches
the scrape (plain HTTP on loopback or wherever `metrics` was bound) and parses it. Used by
`pyforward status --metrics HOST:PORT`, for a forwarder in the foreground as for a service.
"""

from __future__ import annotations

import http.client
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from pyforward.config.addresses import Address
from pyforward.errors import PyforwardError

SCRAPE_TIMEOUT = 2.0  # seconds for the endpoint to answer


class ScrapeError(PyforwardError):
    """The endpoint did not answer, or answered with something that is not pyforward's."""


@dataclass
class ListenerState:
    active: int = 0
    ended: int = 0  # connections that have ended, any reason
    ended_badly: int = 0  # of those, every reason but eof
    refused: int = 0  # clients refused at accept
    up: int = 0  # bytes, client to target
    down: int = 0  # bytes, target to client
    targets: dict[str, bool] = field(default_factory=dict)  # target -> taken to accept


@dataclass
class LiveState:
    listeners: dict[str, ListenerState] = field(default_factory=dict)
    started: float | None = None  # the process's start, Unix time
    discovery_degraded: bool | None = None  # any cluster degraded; None: no discovery
    # Each cluster discovery follows (the `cluster` label): degraded or not.
    discovery_clusters: dict[str, bool] = field(default_factory=dict)


def parse_scrape(text: str) -> LiveState:
    """The listeners, their counts and targets, and the process start, from a scrape."""
    state = LiveState()
    listeners: defaultdict[str, ListenerState] = defaultdict(ListenerState)
    seen_pyforward = False
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ScrapeError(f"not a Prometheus scrape ({exc})") from None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name.startswith("pyforward_"):
                seen_pyforward = True
            listen = labels.get("listen")
            if name == "process_start_time_seconds":
                state.started = value
            elif name == "pyforward_discovery_degraded":
                state.discovery_clusters[labels.get("cluster", "default")] = bool(value)
                state.discovery_degraded = any(state.discovery_clusters.values())
            elif listen is None:
                continue
            elif name == "pyforward_active_connections":
                listeners[listen].active = int(value)
            elif name == "pyforward_connections_total":
                listeners[listen].ended += int(value)
                if labels.get("reason") != "eof":
                    listeners[listen].ended_badly += int(value)
            elif name == "pyforward_refused_total":
                listeners[listen].refused += int(value)
            elif name == "pyforward_bytes_total":
                if labels.get("direction") == "up":
                    listeners[listen].up = int(value)
                else:
                    listeners[listen].down = int(value)
            elif name == "pyforward_target_up":
                listeners[listen].targets[labels.get("target", "?")] = bool(value)
    if not seen_pyforward:
        raise ScrapeError("it answers, but not with pyforward's metrics")
    state.listeners = dict(listeners)
    return state


def read_live(address: Address, timeout: float = SCRAPE_TIMEOUT) -> LiveState:
    """Scrape `address`'s /metrics and parse it; ScrapeError says why not."""
    host = "127.0.0.1" if address.host is None else address.host
    connection = http.client.HTTPConnection(host, address.port, timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        answer = connection.getresponse()
        body = answer.read()
    except TimeoutError:
        raise ScrapeError(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ScrapeError(getattr(exc, "strerror", None) or str(exc) or repr(exc)) from None
    finally:
        connection.close()
    if answer.status != 200:
        raise ScrapeError(f"/metrics answered {answer.status} {answer.reason}")
    return parse_scrape(body.decode("utf-8", "replace"))


def duration(seconds: float) -> str:
    """An uptime, as status and top show it: seconds, then minutes, then hours."""
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
