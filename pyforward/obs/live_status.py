"""`pyforward status --metrics HOST:PORT`: what a running forwarder says, and whether its
targets accept now.

The process's own account (listeners, connections open and ended, bytes each way, which
targets passive health has down, discovery) comes from its metrics endpoint; each target
is also tried, as the service's status does, since a target that went away since the last
client is still taken to accept by the forwarder.
"""

from __future__ import annotations

import time

from pyforward.config.addresses import Address, parse_target
from pyforward.errors import ConfigError
from pyforward.obs.live import LiveState, ScrapeError, duration, read_live
from pyforward.systemd import procnet as ports
from pyforward.systemd.install import PROBE_TIMEOUT
from pyforward.systemd.status import Level, StatusReport


def live_status(address: Address) -> StatusReport:
    """A report on the pyforward serving metrics at `address`."""
    report = StatusReport(f"pyforward at {address}")
    add_live_checks(report, address)
    return report


def add_live_checks(
    report: StatusReport, address: Address, *, of_service: bool = False
) -> LiveState | None:
    """Add what the forwarder at `address` says to `report`; None when nothing answers.

    `of_service`: the service's status has checked its listeners and targets already; add
    only the forwarder's own account, and a silent endpoint is a warning, not an outage."""
    subject = f"metrics {address}"
    try:
        state = read_live(address)
    except ScrapeError as exc:
        report.add(
            subject,
            Level.WARN if of_service else Level.DOWN,
            f"{exc}: no pyforward answers here (is one running with --metrics {address}?)",
        )
        return None
    running = ""
    if state.started is not None:
        running = f", running for {duration(time.time() - state.started)}"
    report.add(subject, Level.OK, f"a pyforward answers{running}")
    if len(state.discovery_clusters) > 1:
        # Routes in several clusters: each one's state, by the name the metrics give it.
        for cluster, degraded in state.discovery_clusters.items():
            if degraded:
                detail = "degraded: forwarding to unconfirmed targets"
                report.add(f"discovery (cluster {cluster})", Level.WARN, detail)
            else:
                report.add(f"discovery (cluster {cluster})", Level.OK, "following the cluster")
    elif state.discovery_degraded:
        report.add("discovery", Level.WARN, "degraded: forwarding to unconfirmed targets")
    for listen, counts in state.listeners.items():
        if not counts.targets:
            continue  # a listener a reload removed: its counts stay, it no longer listens
        badly = f", {counts.ended_badly} not cleanly" if counts.ended_badly else ""
        refused = f", {counts.refused} refused" if counts.refused else ""
        report.add(
            f"listen {listen}",
            Level.OK,
            f"{_plural(counts.active, 'active connection')}, {counts.ended} ended{badly}"
            f"{refused}; up {_bytes(counts.up)}, down {_bytes(counts.down)}",
        )
        if of_service:
            for target, up in counts.targets.items():
                if not up:
                    report.add(
                        f"target {target}",
                        Level.WARN,
                        "pyforward has it down after a failed connect",
                    )
            continue
        results = {target: _try(target) for target in counts.targets}
        reachable = [target for target, problem in results.items() if problem is None]
        down = Level.DOWN if not reachable else Level.WARN
        for target, problem in results.items():
            marked = not counts.targets[target]
            if problem is not None:
                said = "; pyforward has it down too" if marked else ""
                report.add(f"target {target}", down, f"unreachable: {problem}{said}")
            elif marked:
                report.add(
                    f"target {target}",
                    Level.WARN,
                    "accepts now; pyforward marked it down after a failed connect "
                    "(tried last for up to 15 s, or until a connection succeeds)",
                )
            else:
                report.add(f"target {target}", Level.OK, "accepts connections")
    return state


def _try(target: str) -> str | None:
    try:
        address = parse_target(target)
    except ConfigError:
        return None  # not an address this host can try (it came from the forwarder)
    assert address.host is not None
    return ports.can_connect(address.host.strip("[]"), address.port, PROBE_TIMEOUT)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit} ({count} B)"
