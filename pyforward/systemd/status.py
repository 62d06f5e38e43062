"""`pyforward status`: does the installed service forward, right now?

The unit's state, then for every route: is exactly that address listening and held by
this service, does it accept, does each target accept, does a connection through the
listener stay up (the forwarder closes it at once when it cannot reach the target).
Exit 0 when all is well, 1 for warnings, 2 when forwarding is down.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path

from pyforward.config.addresses import Address, UnixAddress
from pyforward.config.load import load_config_only
from pyforward.config.model import Route, Settings
from pyforward.engine.unix_listener import connect_problem
from pyforward.errors import ConfigError
from pyforward.systemd import procnet as ports
from pyforward.systemd import systemctl
from pyforward.systemd.install import (
    PROBE_TIMEOUT,
    SYSTEM,
    InstallPaths,
    config_path,
    written_by_pyforward,
)
from pyforward.systemd.status_text import parse_status
from pyforward.systemd.systemctl import unit_state
from pyforward.systemd.units import check_name

THROUGH_WAIT = 1.0  # seconds a connection through the listener must stay up to count


class Level(IntEnum):
    OK = 0
    WARN = 1
    DOWN = 2


@dataclass(frozen=True)
class Check:
    subject: str
    level: Level
    detail: str


@dataclass
class StatusReport:
    name: str
    unit: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)

    def add(self, subject: str, level: Level, detail: str) -> None:
        self.checks.append(Check(subject, level, detail))

    @property
    def exit_code(self) -> int:
        return int(max((check.level for check in self.checks), default=Level.OK))

    def to_json(self) -> str:
        data = {
            "name": self.name,
            "unit": self.unit,
            "checks": [{**asdict(c), "level": c.level.name.lower()} for c in self.checks],
            "journal": self.journal,
            "exit_code": self.exit_code,
        }
        return json.dumps(data, indent=2)

    def to_text(self) -> str:
        lines = []
        # systemd keeps the last STATUS= after the service stops: show it only while it runs.
        running = self.unit.get("ActiveState") in {"active", "reloading"}
        status_text = self.unit.get("StatusText") if running else None
        for check in self.checks:
            lines.append(f"[{check.level.name.lower():>4}] {check.subject}: {check.detail}")
            if status_text and check.subject == f"{self.name}.service":
                lines.append(f"       it says: {status_text}")
                status_text = None
        lines += [f"  {line}" for line in self.journal]
        verdict = {
            Level.OK: "ok: forwarding works",
            Level.WARN: "warning: forwarding works, but see above",
            Level.DOWN: "down: forwarding does not work",
        }
        lines.append(verdict[Level(self.exit_code)])
        return "\n".join(lines)


def read_installed_settings(name: str, paths: InstallPaths = SYSTEM) -> Settings:
    """The settings the installed service runs with (its config file, no environment)."""
    return load_config_only(config_path(name, paths))


def through_listener(host: str, port: int, wait: float = THROUGH_WAIT) -> str | None:
    """Connect through the listener and see whether the connection stays up; None if it
    does (the forwarder reached the target), else what happened."""
    try:
        sock = socket.create_connection((host, port), timeout=PROBE_TIMEOUT)
    except OSError as exc:
        return f"cannot connect ({exc.strerror or exc})"
    with sock:
        sock.settimeout(wait)
        try:
            data = sock.recv(1)
        except TimeoutError:
            return None  # still open: the forwarder is connected to the target
        except OSError:
            return "reset at once: the forwarder could not reach the target"
        if not data:
            return "closed at once: the forwarder could not reach the target"
    return None  # the target spoke first


def status(name: str, paths: InstallPaths = SYSTEM) -> StatusReport:
    """Check the installed service, its listeners and its targets."""
    report = StatusReport(check_name(name))
    service, socket_unit = f"{name}.service", f"{name}.socket"
    if not systemctl.systemd_running():
        report.add(
            "systemd", Level.DOWN, "not running here; `pyforward run` forwards in the foreground"
        )
        return report
    report.unit = systemctl.show(service)
    unit = report.unit
    if unit["LoadState"] != "loaded":
        report.add(service, Level.DOWN, f"not installed (pyforward install --name {name})")
        return report
    if not written_by_pyforward(Path(unit["FragmentPath"])):
        report.add(service, Level.WARN, f"{unit['FragmentPath']} was not written by pyforward")
    if unit["UnitFileState"] != "enabled":
        report.add(service, Level.WARN, f"{unit['UnitFileState']}: it will not start at boot")
    socket_props = systemctl.show(socket_unit, ("LoadState", "ActiveState"))
    socket_active = socket_props["ActiveState"] == "active"
    running = unit["ActiveState"] in {"active", "reloading"}
    if running:
        report.add(service, Level.OK, unit_state(unit))
        said = parse_status(unit["StatusText"])
        if said is not None and said.notes.get("discovery", "").startswith("degraded"):
            report.add("discovery", Level.WARN, said.notes["discovery"])
    elif socket_active:
        report.add(
            service,
            Level.WARN,
            f"{unit['ActiveState']}; {socket_unit} holds the ports and starts it "
            "at the next connection",
        )
    else:
        report.add(service, Level.DOWN, unit_state(unit))
        report.journal = systemctl.journal_tail(service, 10)
    try:
        settings = read_installed_settings(name, paths)
    except ConfigError as exc:
        report.add("config", Level.DOWN, str(exc))
        return report
    main_pid = int(unit["MainPID"]) if unit["MainPID"].isdigit() else 0
    ours = ({main_pid} if running and main_pid else set()) | ({1} if socket_active else set())
    listening = ports.listening_sockets()
    held = ports.owners({sock.inode for sock in listening})
    clusters = _cluster_names(settings)
    for index, route in enumerate(settings.routes):
        check_route(
            report, route, listening, held, ours, probe_through=running, cluster=clusters.get(index)
        )
    if running and settings.metrics is not None:
        # Imported here: prometheus_client is loaded only where metrics are on.
        from pyforward.obs.live_status import add_live_checks  # noqa: PLC0415

        add_live_checks(report, settings.metrics, of_service=True)
    configured = [
        (r.listen, ports.numeric_hosts(r.listen))
        for r in settings.routes
        if isinstance(r.listen, Address)
    ]
    for sock in listening:
        owned = main_pid and main_pid in held.get(sock.inode, [])
        if owned and not any(ports.exactly(a, h, sock) for a, h in configured):
            report.add(
                f"listen {sock.label}",
                Level.WARN,
                "the service listens here but the config does not say so "
                f"(restart to apply the config: systemctl restart {name})",
            )
    return report


def check_route(
    report: StatusReport,
    route: Route,
    listening: list[ports.ListeningSocket],
    held: Mapping[int, list[int]],
    ours: set[int],
    *,
    probe_through: bool,
    cluster: str | None = None,
) -> None:
    """Check one route: exactly its address listening and held by `ours`, accepting; its
    targets accepting; and, with `probe_through`, a connection through it staying up.
    `cluster`: the cluster a discovered route follows, named when there are several."""
    if isinstance(route.listen, UnixAddress) or any(
        isinstance(target, UnixAddress) for target in route.targets
    ):
        check_unix_route(report, route)
        return
    hosts = ports.numeric_hosts(route.listen)
    subject = f"listen {route.listen}"
    exact = [sock for sock in listening if ports.exactly(route.listen, hosts, sock)]
    if not exact:
        others = [s for s in listening if ports.overlaps(route.listen, hosts, s)]
        who = "; ".join(f"{s.label} by {_who(held.get(s.inode, []))}" for s in others)
        report.add(subject, Level.DOWN, "nothing listens" + (f" (port held: {who})" if who else ""))
        return
    holders = sorted({pid for sock in exact for pid in held.get(sock.inode, [])})
    if holders and not set(holders) & ours:
        report.add(subject, Level.DOWN, f"listening, but held by {_who(holders)}, not the service")
        return
    problem = ports.can_connect(ports.probe_host(route.listen), route.listen.port, PROBE_TIMEOUT)
    if problem is not None:
        report.add(subject, Level.DOWN, f"listening but not accepting: {problem}")
        return
    report.add(subject, Level.OK, f"accepts connections (held by {_who(holders)})")
    timeout = min(route.connect_timeout, PROBE_TIMEOUT)
    results = []
    for target in route.targets:
        assert isinstance(target, Address) and target.host is not None
        results.append((target, ports.can_connect(target.host, target.port, timeout)))
    failures = [target for target, failure in results if failure is not None]
    # With failover, a target down while another answers is a warning, not an outage.
    down = Level.DOWN if len(failures) == len(route.targets) else Level.WARN
    for target, failure in results:
        if failure is None:
            report.add(f"target {target}", Level.OK, "accepts connections")
        else:
            report.add(f"target {target}", down, f"unreachable: {failure}")
    if not route.targets:
        # Discovered: the service follows the cluster; `pyforward discover` shows what it says.
        followed = f" (Service {route.service})" if route.service is not None else ""
        where = f"cluster {cluster}" if cluster is not None else "the cluster"
        report.add(f"targets of {route.listen}", Level.OK, f"discovered from {where}{followed}")
    if probe_through and (not route.targets or len(failures) < len(route.targets)):
        host = ports.probe_host(route.listen)
        problem = through_listener(host, route.listen.port)
        level = Level.OK if problem is None else Level.DOWN
        detail = problem or "a connection through the listener reached the target"
        report.add(f"through {route.listen}", level, detail)


def _cluster_names(settings: Settings) -> dict[int, str]:
    """The cluster of each discovered route by index, when they follow several; else {}."""
    if settings.discovery is None:
        return {}
    # Imported here: a static configuration loads nothing of discovery.
    from pyforward.discovery.followed import cluster_names  # noqa: PLC0415

    return cluster_names(settings)


def check_unix_route(report: StatusReport, route: Route) -> None:
    """A route with a UNIX socket on either side: each end accepts a connection now."""
    ends = [(f"listen {route.listen}", route.listen, Level.DOWN)]
    down = Level.DOWN if len(route.targets) == 1 else Level.WARN
    ends += [(f"target {target}", target, down) for target in route.targets]
    for subject, end, level in ends:
        if isinstance(end, UnixAddress):
            problem = connect_problem(end, PROBE_TIMEOUT)
        else:
            problem = ports.can_connect(ports.probe_host(end), end.port, PROBE_TIMEOUT)
        if problem is None:
            report.add(subject, Level.OK, "accepts connections")
        else:
            report.add(subject, level, f"not accepting: {problem}")


def _who(pids: list[int]) -> str:
    if not pids:
        return "a process this user cannot see (run as root to know which)"
    return ", ".join(f"pid {pid} ({ports.process_name(pid)})" for pid in pids)
