"""`pyforward check`: would this configuration run, and does what it names answer?

Like `nginx -t` or `haproxy -c`, and it also tries the world: everything `run` refuses
(the settings, a listen address that cannot be bound, a target name that does not
resolve) is an error; what `run` would start with but serve badly (a target that does
not accept, the Kubernetes API away) is a warning. A listen address that is held by this
very configuration's running forwarder is fine: that is the reload case. Each finding is
one line; the exit status is the worst of them (0 ok, 1 warnings, 2 errors).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

from pyforward.config.addresses import Address, Endpoint, UnixAddress
from pyforward.config.model import Settings, Transport
from pyforward.config.schema import env_name
from pyforward.datagram import probe
from pyforward.engine.listeners import bind_addresses, bind_error
from pyforward.engine.unix_listener import connect_problem, listen_problem
from pyforward.errors import ConfigError, StartupError
from pyforward.systemd import procnet as ports

PROBE_TIMEOUT = 2.0  # seconds for one connection to a target, at most its connect_timeout


class Level(IntEnum):
    """A finding's weight; the exit status is the worst one's value."""

    OK = 0
    WARNING = 1
    ERROR = 2


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str  # what was checked: "config", "listen *:443", "target 10.0.0.5:32653"
    text: str

    def line(self) -> str:
        return f"{self.level.name.lower()}: {self.subject}: {self.text}"


def exit_code(findings: Iterable[Finding]) -> int:
    return max((finding.level for finding in findings), default=Level.OK).value


@dataclass(frozen=True)
class Invocation:
    """How the check was asked for, to recognise this configuration's own forwarder:
    a `pyforward run` with the same config file, or with the same arguments."""

    config: Path | None
    run_args: tuple[str, ...]

    def is_running_as(self, pid: int) -> bool:
        args = run_arguments(process_argv(pid))
        if args is None:
            return False
        if self.config is None:
            return args == self.run_args
        theirs = config_argument(args) or _config_variable(pid)
        return theirs is not None and _same_file(theirs, self.config)


def run_arguments(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The arguments after `run` of a pyforward command line, or None for anything else."""
    for index, word in enumerate(argv):
        if Path(word).name == "pyforward" and argv[index + 1 : index + 2] == ["run"]:
            return tuple(argv[index + 2 :])
    return None


def config_argument(args: Sequence[str]) -> Path | None:
    for index, word in enumerate(args):
        if word in ("--config", "-c") and index + 1 < len(args):
            return Path(args[index + 1])
        if word.startswith("--config="):
            return Path(word.partition("=")[2])
    return None


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def _config_variable(pid: int, proc: Path = Path("/proc")) -> Path | None:
    """The PYFORWARD_CONFIG a process was started with (readable by root or its user)."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    for entry in raw.split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name == env_name("config").encode() and value:
            return Path(value.decode(errors="replace"))
    return None


def process_argv(pid: int, proc: Path = Path("/proc")) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def check_settings(load: Callable[[], Settings]) -> tuple[Settings | None, list[Finding]]:
    """Load the settings as `run` would; a refusal is the one finding."""
    try:
        settings = load()
    except ConfigError as exc:
        return None, [Finding(Level.ERROR, "config", str(exc))]
    routes = len(settings.routes)
    return settings, [
        Finding(Level.OK, "config", f"valid; {routes} route{'s' if routes != 1 else ''}")
    ]


def check_listen(address: Endpoint, invocation: Invocation) -> Finding:
    """Whether `run` could listen on `address` now, or this configuration already does."""
    subject = f"listen {address}"
    if isinstance(address, UnixAddress):
        taken = listen_problem(address)
        return Finding(Level.OK if taken is None else Level.ERROR, subject, taken or "free")
    if address.port == 0:
        return Finding(Level.OK, subject, "port 0: the system picks a free port")
    try:
        pairs = bind_addresses(address)
    except StartupError as exc:
        return Finding(Level.ERROR, subject, str(exc))
    for family, sockaddr in pairs:
        problem = _try_bind(address, family, sockaddr)
        if problem is None:
            continue
        if problem.errno == errno.EADDRINUSE:
            return _held(address, invocation, bind_error(address, problem))
        if problem.errno == errno.EACCES:
            # The installed service has CAP_NET_BIND_SERVICE; this user may not.
            return Finding(Level.WARNING, subject, f"{bind_error(address, problem)} (as this user)")
        return Finding(Level.ERROR, subject, bind_error(address, problem))
    return Finding(Level.OK, subject, "free")


def _try_bind(address: Address, family: int, sockaddr: tuple[object, ...]) -> OSError | None:
    """Bind as `run` binds (no listen: nothing can connect), then let go."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address.host is None else 1
                )
            sock.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


def _held(address: Address, invocation: Invocation, refusal: str) -> Finding:
    """A port in use: by this configuration's forwarder (fine), or by whom."""
    subject = f"listen {address}"
    hosts = ports.numeric_hosts(address)
    listening = [s for s in ports.listening_sockets() if ports.overlaps(address, hosts, s)]
    owners = ports.owners({sock.inode for sock in listening})
    pids = sorted({pid for sock in listening for pid in owners.get(sock.inode, [])})
    ours = [pid for pid in pids if invocation.is_running_as(pid)]
    if ours:
        return Finding(Level.OK, subject, f"held by this configuration's forwarder (pid {ours[0]})")
    if pids:
        who = ", ".join(f"pid {pid} ({ports.process_name(pid)})" for pid in pids)
        return Finding(Level.ERROR, subject, f"{refusal}; held by {who}")
    if listening:
        return Finding(
            Level.WARNING,
            subject,
            f"{refusal}; held by a process this user cannot look at "
            "(as root, check says whether it is this configuration's forwarder)",
        )
    return Finding(Level.ERROR, subject, refusal)


def check_target(address: Endpoint, timeout: float) -> list[Finding]:
    """Whether a target resolves (else `run` refuses) and accepts a connection now."""
    subject = f"target {address}"
    if isinstance(address, UnixAddress):
        problem = connect_problem(address, timeout)
        if problem is None:
            return [Finding(Level.OK, subject, "accepts connections")]
        return [
            Finding(
                Level.WARNING,
                subject,
                f"does not accept connections ({problem}); run would start, "
                "and clients would be turned away",
            )
        ]
    assert address.host is not None
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [
            Finding(
                Level.ERROR, subject, f"host {address.host!r} does not resolve ({exc.strerror})"
            )
        ]
    host = str(infos[0][4][0])
    problem = ports.can_connect(host, address.port, timeout)
    if problem is not None:
        return [
            Finding(
                Level.WARNING,
                subject,
                f"does not accept connections ({problem}); run would start, "
                "and clients would be turned away",
            )
        ]
    resolved = "" if host == address.host else f" ({host})"
    return [Finding(Level.OK, subject, f"accepts connections{resolved}")]


def check_udp_listen(address: Address) -> Finding:
    """Whether a UDP route's port can be bound now."""
    subject = f"listen udp:{address}"
    if address.port == 0:
        return Finding(Level.OK, subject, "port 0: the system picks a free port")
    problem = probe.listen_problem(address)
    return (
        Finding(Level.OK, subject, "free")
        if problem is None
        else Finding(Level.ERROR, subject, problem)
    )


def check_udp_target(address: Address) -> list[Finding]:
    """Whether a UDP target resolves, and refuses an empty datagram (nothing listens)."""
    subject = f"target udp:{address}"
    assert address.host is not None
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        return [
            Finding(
                Level.ERROR, subject, f"host {address.host!r} does not resolve ({exc.strerror})"
            )
        ]
    family, host = infos[0][0], str(infos[0][4][0])
    answer = probe.target_answer(host, address.port, family)
    if answer == "answers":
        return [Finding(Level.OK, subject, "answers a datagram")]
    if answer is None:
        return [
            Finding(Level.OK, subject, "does not refuse datagrams (UDP: silence is all it can say)")
        ]
    return [
        Finding(
            Level.WARNING,
            subject,
            f"nothing receives datagrams there ({answer}); run would start, "
            "and clients' datagrams would be lost",
        )
    ]


def check_discovery(settings: Settings, timeout: float) -> list[Finding]:
    """Whether each cluster's Kubernetes API answers and gives a target; then those
    targets."""
    # Imported here: a static configuration loads nothing of discovery.
    from pyforward.discovery.followed import (  # noqa: PLC0415
        cluster_settings,
        one_cluster_settings,
    )

    parts = cluster_settings(settings)
    if len(parts) <= 1:
        return _check_cluster(one_cluster_settings(settings), timeout, "discovery")
    findings = []
    for cluster, part in parts:
        findings += _check_cluster(part, timeout, f"discovery ({cluster.label})")
    return findings


def _check_cluster(settings: Settings, timeout: float, subject: str) -> list[Finding]:
    from pyforward.discovery import report  # noqa: PLC0415
    from pyforward.discovery.errors import ApiRefused, DiscoveryError  # noqa: PLC0415

    try:
        found = report.inspect(settings)
    except ConfigError as exc:  # no usable kubeconfig: the error names it, and where
        return [Finding(Level.ERROR, "discovery", str(exc))]
    except ApiRefused as exc:
        return [Finding(Level.ERROR, subject, str(exc))]
    except DiscoveryError as exc:
        return [
            Finding(
                Level.WARNING,
                subject,
                f"{exc}; run would serve the last saved targets, or wait for the API",
            )
        ]
    if found.error is not None or found.targets is None:
        return [Finding(Level.ERROR, subject, str(found.error))]
    findings = [Finding(Level.OK, subject, f"the API at {found.api} answers ({found.kubeconfig})")]
    findings += [Finding(Level.WARNING, subject, warning) for warning in found.warnings]
    for followed, route in zip(found.routes, found.targets, strict=True):
        targets = ", ".join(str(t) for t in route.targets)
        findings.append(
            Finding(Level.OK, subject, f"{followed.label} -> {targets} ({followed.service})")
        )
        for target in route.targets:
            findings += check_target(target, timeout)
    return findings


def check(load: Callable[[], Settings], invocation: Invocation) -> list[Finding]:
    """Every finding about the configuration `load` gives, in the order run meets them."""
    settings, findings = check_settings(load)
    if settings is None:
        return findings
    # An address that sni routes share is one socket: checked once (port 0 is one each).
    listens: list[tuple[Transport, Endpoint]] = []
    for route in settings.routes:
        listen = route.listen
        key = (route.protocol, listen)
        if (isinstance(listen, UnixAddress) or listen.port != 0) and key in listens:
            continue
        listens.append(key)
        if route.protocol is Transport.UDP:
            assert isinstance(listen, Address), "a UDP route listens on an IP address"
            findings.append(check_udp_listen(listen))
        else:
            findings.append(check_listen(listen, invocation))
    if settings.metrics is not None:
        metrics = check_listen(settings.metrics, invocation)
        findings.append(replace(metrics, subject=f"metrics {settings.metrics}"))
    seen: set[tuple[Endpoint, Transport]] = set()
    for route in settings.routes:
        for target in route.targets:
            if (target, route.protocol) not in seen:
                seen.add((target, route.protocol))
                if route.protocol is Transport.UDP:
                    assert isinstance(target, Address), "a UDP route forwards to an IP address"
                    findings += check_udp_target(target)
                    continue
                findings += check_target(target, min(route.connect_timeout, PROBE_TIMEOUT))
    if settings.discovery is not None:
        timeout = min(route.connect_timeout for route in settings.routes)
        findings += check_discovery(settings, min(timeout, PROBE_TIMEOUT))
    return findings


def summary(findings: Sequence[Finding]) -> str:
    """The last line: what the findings add up to."""
    errors = sum(f.level == Level.ERROR for f in findings)
    warnings = sum(f.level == Level.WARNING for f in findings)
    if errors:
        return f"error: {errors} error(s), {warnings} warning(s): run would refuse this"
    if warnings:
        return f"warning: {warnings} warning(s): run would start, but not everything answers"
    return "ok: run would start, and everything answers"
