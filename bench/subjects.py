"""The subjects: what stands between the client and the backend, each started fresh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.accounting import Memory, ProcessSet, SetFactory, memory_of
from bench.netutil import HOST, BenchError, free_port, wait_accepting

REPO = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 10.0
_STOP_GRACE = 2.0

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 5m
    timeout server 5m
listen forward
    bind {host}:{port}
    server backend {server}
"""


@dataclass(frozen=True)
class Subject:
    """One way of getting bytes from the client to the backend."""

    key: str  # short name: JSON, command line, chart
    label: str  # what the table prints
    kind: str  # none, socat, haproxy, pyforward
    options: tuple[str, ...] = ()

    @property
    def forwarder(self) -> bool:
        return self.kind != "none"


SUBJECTS = (
    Subject("none", "no forwarder", "none"),
    Subject("socat", "socat as deployed", "socat"),
    Subject("socat-b256k", "socat -b262144", "socat", ("-b262144",)),
    Subject("haproxy", "HAProxy splice-auto", "haproxy"),
    Subject("pyforward-splice", "pyforward splice uvloop", "pyforward", ("splice", "uvloop")),
    Subject("pyforward-copy", "pyforward copy uvloop", "pyforward", ("copy", "uvloop")),
    Subject(
        "pyforward-splice-asyncio", "pyforward splice asyncio", "pyforward", ("splice", "asyncio")
    ),
    Subject("pyforward-copy-asyncio", "pyforward copy asyncio", "pyforward", ("copy", "asyncio")),
)
BASELINE = "socat"  # ratios are to socat as deployed

# Where a subject forwards: a port on 127.0.0.1, or the path of a UNIX stream socket.
Target = int | str

_TARGET_FORMS = {
    "socat": ("TCP:{host}:{port}", "UNIX-CONNECT:{path}"),
    "haproxy": ("{host}:{port}", "{path}"),  # HAProxy reads an absolute path as UNIX
    "pyforward": ("{host}:{port}", "unix:{path}"),
}


def target_word(kind: str, target: Target) -> str:
    """How `kind` names `target` on its command line or in its config."""
    tcp, unix = _TARGET_FORMS[kind]
    if isinstance(target, str):
        return unix.format(path=target)
    return tcp.format(host=HOST, port=target)


def command(subject: Subject, port: int, target: Target, workdir: Path) -> list[str]:
    """The command line that makes `subject` listen on `port` and forward to `target`."""
    if subject.kind == "socat":
        return [
            "socat",
            *subject.options,
            f"TCP-LISTEN:{port},fork,reuseaddr,bind={HOST}",
            target_word("socat", target),
        ]
    if subject.kind == "haproxy":
        config = workdir / f"haproxy-{port}.cfg"
        server = target_word("haproxy", target)
        config.write_text(HAPROXY_CONFIG.format(host=HOST, port=port, server=server))
        return ["haproxy", "-db", "-f", str(config)]
    if subject.kind == "pyforward":
        relay, loop = subject.options
        return [
            sys.executable,
            "-m",
            "pyforward",
            "run",
            "--listen",
            f"{HOST}:{port}",
            "--target",
            target_word("pyforward", target),
            "--relay",
            relay,
            "--loop",
            loop,
            "--quiet",
        ]
    raise ValueError(f"{subject.key} runs no program")


def child_env() -> dict[str, str]:
    """The environment of started programs: this checkout's pyforward comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Running:
    """A started subject: where clients connect, and how to count what it uses."""

    subject: Subject
    port: int  # 0: none, the client goes to `unix` itself
    processes: ProcessSet | None
    started: float = 0.0  # monotonic time of exec
    accepting: float = 0.0  # monotonic time the first connection was accepted
    unix: str | None = None  # the UNIX socket of the backend, for the no-forwarder subject

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every process of the forwarder (0 with none)."""
        return self.processes.cpu_seconds() if self.processes is not None else 0.0

    def memory(self) -> Memory:
        """Summed PSS and RSS over the forwarder's processes."""
        if self.processes is None:
            return Memory(0, 0, 0)
        return memory_of(self.processes.pids())


@dataclass(frozen=True)
class Environment:
    workdir: Path
    sets: SetFactory


@contextlib.contextmanager
def running(subject: Subject, target: Target, env: Environment) -> Iterator[Running]:
    """Start `subject` forwarding to `target`; stop it and all its processes after."""
    if not subject.forwarder:
        if isinstance(target, str):
            yield Running(subject, 0, None, unix=target)
        else:
            yield Running(subject, target, None)
        return
    port = free_port()
    argv = command(subject, port, target, env.workdir)
    processes = env.sets.new()
    log_path = env.workdir / f"{subject.key}-{port}.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=child_env(),
            # The runner starts no threads, so running code between fork and exec is safe;
            # it puts the subject in its cgroup before it can fork a single child.
            preexec_fn=processes.preexec,  # noqa: PLW1509
            process_group=0,
        )
    processes.attach(process.pid)
    try:
        try:
            accepting = wait_accepting(port, _START_TIMEOUT, process, subject.label)
        except BenchError as exc:
            raise BenchError(f"{exc}; its output: {_tail(log_path)}") from None
        yield Running(subject, port, processes, started, accepting)
    finally:
        stop(process, processes)


def stop(process: subprocess.Popen[bytes], processes: ProcessSet) -> None:
    """SIGTERM the subject's process group, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Forks that left the group (none of ours do) would still be in the cgroup.
    deadline = time.monotonic() + _STOP_GRACE
    while processes.pids() and time.monotonic() < deadline:
        for pid in processes.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    processes.close()


def _tail(path: Path, limit: int = 300) -> str:
    text = path.read_text(errors="replace").strip()
    return " ".join(text[-limit:].split()) or "(none)"


def select(keys: list[str] | None) -> list[Subject]:
    """The subjects named (all when None), in the suite's order."""
    if not keys:
        return list(SUBJECTS)
    known = {s.key: s for s in SUBJECTS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise BenchError(f"unknown subject {', '.join(unknown)} (known: {', '.join(known)})")
    return [s for s in SUBJECTS if s.key in keys]
