"""The scenarios of the soak suite, and the criteria each must meet.

A scenario is a function of a `Run`: it starts one forwarder and the peers it needs,
drives them, and records what fails with `run.check`. The `Run` adds the criteria every
scenario shares: the forwarder never exits on its own and logs no traceback; every peer
exits cleanly; once the load is gone the forwarder holds exactly the descriptors it held at
the start (pipes kept in the splice pool aside, at most 64) and no socket in CLOSE_WAIT;
on SIGTERM it exits 0 with its `event=stopped` line, whose counts agree with its close
lines.
"""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyforward.relay.pipes import PipePool
from tests.kubeapi import KubeApi, node, service
from tests.soak import procfs
from tests.soak.processes import Forwarder, Peer, SoakError, wait_until
from tests.soak.report import MIB, Latency, Outcome

KIB = 1 << 10
GIB = 1 << 30
CHURN_RSS_GROWTH = 2 * MIB  # allowed between the middle and the end of churn
# cluster-flood: generous bounds (the machine is shared); what matters is that they hold.
FLOOD_SLOWEST = 2.0  # seconds the slowest short connection may take during the flood
FLOOD_RSS_GROWTH = 64 * MIB  # peak over the baseline (which holds every node already)
FLOOD_LINE = 4 * KIB  # longest log line (close lines aside)
POOL_PIPE_FDS = 2 * PipePool().capacity


@dataclass(frozen=True)
class Scale:
    """How much load each scenario puts on; `FULL` for the record, `QUICK` for a check."""

    churn_phase: int  # short connections per churn phase; RSS is compared across two
    churn_concurrency: int
    streams: int
    stream_total: int  # bytes each way, all streams together
    restart_streams: int
    after_restart: int
    stalled: int  # connections stuck behind a stalled backend, or stalling clients
    slowloris: int
    healthy_streams: int  # checked streams that must pass while others stall
    healthy_size: int
    resets: int  # connections of which every other one resets itself mid-transfer
    reset_size: int
    burst: int
    flaps: int  # times the Kubernetes API goes away and comes back during churn
    flap_connections: int  # connections that must pass during each outage, and after
    flood_nodes: int  # nodes the cluster of cluster-flood lists
    flood_events: int  # Node events it sends as fast as it can, under churn
    fd_limit: int
    exhaustion_step: float  # seconds a held connection may take before the limit counts as hit
    exhaustion_window: float  # seconds the forwarder is watched while out of descriptors
    recovery: int


FULL = Scale(
    churn_phase=100_000,
    churn_concurrency=32,
    streams=100,
    stream_total=GIB,
    restart_streams=20,
    after_restart=1_000,
    stalled=50,
    slowloris=500,
    healthy_streams=20,
    healthy_size=8 * MIB,
    resets=200,
    reset_size=16 * MIB,
    burst=5_000,
    flaps=5,
    flap_connections=2_000,
    flood_nodes=5_000,
    flood_events=100_000,
    fd_limit=512,
    exhaustion_step=2.0,
    exhaustion_window=3.0,
    recovery=1_000,
)
QUICK = Scale(
    churn_phase=5_000,
    churn_concurrency=32,
    streams=100,
    stream_total=128 * MIB,
    restart_streams=10,
    after_restart=200,
    stalled=20,
    slowloris=100,
    healthy_streams=10,
    healthy_size=2 * MIB,
    resets=60,
    reset_size=8 * MIB,
    burst=2_000,
    flaps=1,
    flap_connections=500,
    flood_nodes=2_000,
    flood_events=20_000,
    fd_limit=512,
    exhaustion_step=1.0,
    exhaustion_window=1.0,
    recovery=200,
)


class Run:
    """One scenario under one event loop and relay path."""

    def __init__(self, scenario: str, loop: str, relay: str, scale: Scale, workdir: Path):
        self.scenario, self.loop, self.relay, self.scale = scenario, loop, relay, scale
        self.dir = workdir / f"{scenario}-{loop}-{relay}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.errors: Counter[str] = Counter()
        self.verified = 0
        self.fwd: Forwarder | None = None
        self.baseline: procfs.Usage | None = None
        self.baseline_fds: Counter[str] = Counter()  # see relay_fds()
        # Sockets to these ports are the forwarder's own business (the Kubernetes API),
        # not the relay's: they come and go with the API and are not compared.
        self.foreign_ports: set[int] = set()
        self._settle_failed = False
        self.peers: list[Peer] = []
        self.cleanups: list[Callable[[], None]] = []  # run by finish(), last first
        self._names: Counter[str] = Counter()
        self._streams = 0
        self.started = time.monotonic()

    # --- recording

    def check(self, ok: bool, failure: str) -> bool:
        """Record `failure` unless `ok`; return `ok`."""
        if not ok:
            self.failures.append(failure)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)

    def count(
        self, result: Mapping[str, Any], label: str, expected: Collection[str] = ()
    ) -> Mapping[str, Any]:
        """Add a peer's result: its verified bytes, and its errors, each of which fails the
        run unless its kind is `expected` here."""
        self.verified += int(result["verified"])
        left = int(result.get("open") or 0)
        self.check(not left, f"{label}: {left} connection(s) still open when it stopped")
        for kind, number in result["errors"].items():
            self.errors[kind] += number
            self.check(kind in expected, f"{label}: {number} connection(s) ended with {kind}")
        return result

    # --- processes

    @property
    def forwarder(self) -> Forwarder:
        assert self.fwd is not None, "the scenario has not started the forwarder"
        return self.fwd

    def start_forwarder(
        self, *args: str, listeners: int = 1, prefix: Sequence[str] = ()
    ) -> list[int]:
        """`pyforward run ARGS` with this run's loop and relay; its listening ports. The
        descriptors, memory and CPU it has once listening are the baseline."""
        self.fwd = Forwarder(
            [*args, "--relay", self.relay, "--loop", self.loop],
            self.dir / "pyforward.log",
            prefix,
        )
        ports = self.fwd.wait_ready(listeners)
        self.take_baseline()
        return ports

    def take_baseline(self) -> None:
        """Measure the baseline now (a forwarder still settling at start takes it later)."""
        self.baseline = self.forwarder.usage()
        self.baseline_fds = self.relay_fds()

    def relay_fds(self) -> Counter[str]:
        """The forwarder's descriptors by kind, less pipes (the splice pool keeps some).
        With `foreign_ports`, sockets count only when /proc/net/tcp lists them and they are
        not connected to one of those ports: a client socket the API server reset, still
        open, is listed nowhere, and it is the client library's to close, not the relay's."""
        fwd = self.forwarder
        fds = fwd.usage().fds_except_pipes()
        if self.foreign_ports:
            owned = procfs.owned_sockets(fwd.pid)
            fds["socket"] = sum(1 for s in owned if s.remote_port not in self.foreign_ports)
        return fds

    def _peer(self, name: str, args: Sequence[str]) -> Peer:
        self._names[name] += 1
        label = name if self._names[name] == 1 else f"{name}-{self._names[name]}"
        peer = Peer(label, args, self.dir)
        self.peers.append(peer)
        return peer

    def server(self, mode: str, port: int = 0) -> tuple[Peer, int]:
        """A backend (`echo`, `stream` or `stall`) and its port, once it listens."""
        peer = self._peer(f"backend-{mode}", ["serve", mode, "--port", str(port)])
        return peer, int(peer.wait("ready")["port"])

    def client(self, job: str, port: int, *args: object) -> Peer:
        """A load generator; each gets its own range of stream numbers."""
        self._streams += 1
        base = self._streams * 10_000_000
        argv = [job, "--port", str(port), "--base", str(base), *map(str, args)]
        return self._peer(job, argv)

    # --- shared criteria

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the forwarder holds what it held at the baseline (pooled pipes aside),
        then check that no socket of its is left in CLOSE_WAIT."""
        fwd, baseline = self.forwarder, self.baseline
        assert baseline is not None
        wanted = self.baseline_fds
        try:
            wait_until(lambda: self.relay_fds() == wanted, timeout, "settled")
        except SoakError:
            self._settle_failed = True
            now = self.relay_fds()
            tcp = [
                f"{s.state}:{s.local_port}->{s.remote_port}" for s in procfs.owned_sockets(fwd.pid)
            ]
            self.check(
                False,
                f"descriptors not back to the baseline: {dict(now)} vs {dict(wanted)}; "
                f"its TCP sockets now: {', '.join(tcp)}",
            )
        pipes = fwd.usage().fds["pipe"] - baseline.fds["pipe"]
        self.check(0 <= pipes <= POOL_PIPE_FDS, f"{pipes} pipe ends beyond the pool's bound")
        waiting = [s for s in procfs.owned_sockets(fwd.pid) if s.state == procfs.CLOSE_WAIT]
        stuck = [s for s in waiting if s.remote_port not in self.foreign_ports]
        self.check(not stuck, f"{len(stuck)} socket(s) left in CLOSE_WAIT: {stuck}")
        if len(waiting) > len(stuck):
            self.note(
                f"{len(waiting) - len(stuck)} socket(s) to the Kubernetes API in CLOSE_WAIT "
                "(a pooled connection the API server closed, kept by the kubernetes client "
                "until its next request)"
            )

    def expect_closes(self, allowed: Collection[str]) -> None:
        """Every connection closed with one of the `allowed` reasons."""
        other = {k: n for k, n in self.forwarder.closes.items() if k not in allowed}
        self.check(not other, f"unexpected close reasons: {other}")

    def finish(self) -> Outcome:
        """Stop everything; apply the shared criteria; the outcome."""
        for peer in self.peers:
            peer.close()
        for cleanup in reversed(self.cleanups):
            cleanup()
        fwd, baseline = self.fwd, self.baseline
        if fwd is None or baseline is None:
            return self._outcome(
                connections=0, closes={}, fds=(0, 0, 0), pooled=0, rss=(0, 0, 0), cpu=0.0
            )
        alive = self.check(fwd.alive(), f"pyforward exited on its own ({fwd.proc.returncode})")
        if alive and not self._settle_failed:
            self.settle(timeout=10.0)
        final = fwd.usage() if alive else baseline
        # Counted as the criterion counts them: sockets to foreign ports left out.
        base_count = self.baseline_fds.total() + baseline.fds["pipe"]
        final_count = (self.relay_fds().total() if alive else 0) + final.fds["pipe"]
        code, stopped = fwd.stop()
        self.check(code == 0, f"pyforward exited {code} on SIGTERM")
        self.check(bool(stopped), "no event=stopped line")
        self.check(not fwd.alarms, f"pyforward logged: {fwd.alarms[:3]}")
        closes = {k.removeprefix("closed_"): int(v) for k, v in stopped.items() if "closed_" in k}
        logged = {k: n for k, n in fwd.closes.items() if n}
        with_lines = {k: n for k, n in closes.items() if k not in ("denied", "source-limit")}
        self.check(
            not stopped or with_lines == logged,
            f"stopped line counts {with_lines} but the log has {logged} close lines",
        )
        pooled = max(final.fds["pipe"] - baseline.fds["pipe"], 0)
        return self._outcome(
            connections=int(stopped.get("accepted", 0)),
            closes=closes or logged,
            fds=(base_count, max(fwd.peak_fds, final_count), final_count),
            pooled=pooled,
            rss=(baseline.rss, final.peak_rss, final.rss),
            cpu=final.cpu - baseline.cpu,
        )

    def _outcome(
        self,
        *,
        connections: int,
        closes: Mapping[str, int],
        fds: tuple[int, int, int],
        pooled: int,
        rss: tuple[int, int, int],
        cpu: float,
    ) -> Outcome:
        return Outcome(
            scenario=self.scenario,
            loop=self.loop,
            relay=self.relay,
            connections=connections,
            verified=self.verified,
            errors=dict(self.errors),
            closes=dict(closes),
            fds=fds,
            pooled_pipe_fds=pooled,
            rss=rss,
            cpu=cpu,
            seconds=time.monotonic() - self.started,
            failures=tuple(self.failures),
            notes=tuple(self.notes),
        )


def _target(port: int) -> tuple[str, ...]:
    return ("--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port}")


def _healthy_traffic(run: Run, port: int, label: str) -> None:
    """Checked streams and short connections that must all pass, whatever else is stuck."""
    scale = run.scale
    streams = run.client(
        "streams",
        port,
        "--count",
        scale.healthy_streams,
        "--up",
        scale.healthy_size,
        "--down",
        scale.healthy_size,
    )
    churn = run.client("churn", port, "--count", 1_000, "--concurrency", 16, "--protocol", "stream")
    for peer, what, count in (
        (streams, "streams", scale.healthy_streams),
        (churn, "short connections", 1_000),
    ):
        result = run.count(peer.result(), f"{label}: {what}")
        run.check(result["completed"] == count, f"{label}: {result['completed']}/{count} {what}")


# --- scenarios


def churn(run: Run) -> None:
    """Short connections, each with a byte check, in two equal phases; between the end of
    the first and the end of the second, RSS may grow by at most 2 MiB."""
    phase = run.scale.churn_phase
    backend, backend_port = run.server("echo")
    [port] = run.start_forwarder(*_target(backend_port))
    rss = []
    for number in (1, 2):
        client = run.client(
            "churn", port, "--count", phase, "--concurrency", run.scale.churn_concurrency
        )
        result = run.count(client.result(timeout=60 + phase / 100), f"phase {number}")
        run.check(result["completed"] == phase, f"phase {number}: {result['completed']} ok")
        run.forwarder.wait_closes(number * phase)
        run.settle()
        rss.append(run.forwarder.usage().rss)
        run.note(f"phase {number}: {phase:,} connections at {phase / result['elapsed']:,.0f}/s")
    growth = rss[1] - rss[0]
    run.note(
        f"RSS {rss[0] / MIB:.2f} MiB after {phase:,} connections, {rss[1] / MIB:.2f} MiB "
        f"after {2 * phase:,} ({growth / MIB:+.2f} MiB)"
    )
    run.check(growth <= CHURN_RSS_GROWTH, f"RSS grew {growth / MIB:.2f} MiB in the second half")
    run.count(backend.stop(), "echo backend")
    run.expect_closes({"eof"})


def _free_port() -> int:
    """A loopback port nothing holds now (routes by name need a fixed port to share)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sni_proxy(run: Run) -> None:
    """Churn through one address routed by TLS server name: two names, each to a backend that
    requires a PROXY v2 header and then echoes (so the echo check proves the target got
    exactly the client's bytes, hello first), and plain clients to the default route, all at
    once, in two phases; RSS may grow by at most 2 MiB between the end of one and the other."""
    phase = run.scale.churn_phase // 4
    concurrency = max(run.scale.churn_concurrency // 3, 1)
    backends = {name: run.server("proxy-echo") for name in ("a.soak.test", "b.soak.test")}
    plain, plain_port = run.server("echo")
    port = _free_port()
    config = run.dir / "sni.toml"
    config.write_text(
        "".join(
            f'[[route]]\nlisten = "127.0.0.1:{port}"\nsni = "{name}"\n'
            f'target = "127.0.0.1:{backend_port}"\nproxy_protocol = "v2"\n'
            for name, (_, backend_port) in backends.items()
        )
        + f'[[route]]\nlisten = "127.0.0.1:{port}"\ntarget = "127.0.0.1:{plain_port}"\n'
    )
    run.start_forwarder("--config", str(config))
    rss = []
    for number in (1, 2):
        clients = [
            (run.client("churn", port, "--count", phase, "--concurrency", concurrency,
                        *(("--hello", name) if name else ())), name or "plain")
            for name in (*backends, "")
        ]  # fmt: skip
        for client, label in clients:
            result = run.count(client.result(timeout=60 + phase / 50), f"phase {number} {label}")
            run.check(result["completed"] == phase, f"{label}: {result['completed']}/{phase} ok")
        run.forwarder.wait_closes(number * phase * 3)
        run.settle()
        rss.append(run.forwarder.usage().rss)
        run.note(f"phase {number}: {3 * phase:,} connections, two names and plain")
    growth = rss[1] - rss[0]
    run.note(f"RSS {rss[0] / MIB:.2f} MiB, then {rss[1] / MIB:.2f} MiB ({growth / MIB:+.2f} MiB)")
    run.check(growth <= CHURN_RSS_GROWTH, f"RSS grew {growth / MIB:.2f} MiB in the second half")
    for name, (backend, _) in backends.items():
        result = run.count(backend.stop(), f"backend of {name}")
        served = int(result["completed"])
        run.check(served == phase * 2, f"backend of {name} served {served}, not {phase * 2}")
    run.count(plain.stop(), "plain backend")
    run.expect_closes({"eof"})


def streaming(run: Run) -> None:
    """Many long streams at once, both ways, every byte checked at the far end."""
    scale = run.scale
    each = math.ceil(scale.stream_total / scale.streams)
    backend, backend_port = run.server("stream")
    [port] = run.start_forwarder(*_target(backend_port))
    client = run.client(
        "streams", port, "--count", scale.streams, "--up", each, "--down", each, "--timeout", 900
    )
    result = run.count(client.result(timeout=960), "clients")
    run.forwarder.wait_closes(scale.streams)
    far = run.count(backend.stop(), "backend")
    for side, got in (("clients", result), ("backend", far)):
        run.check(got["completed"] == scale.streams, f"{side}: {got['completed']} streams whole")
        run.check(got["verified"] == scale.streams * each, f"{side}: {got['verified']} B checked")
    rate = 2 * scale.streams * each / result["elapsed"]
    run.note(
        f"{scale.streams} streams of {each / MIB:.2f} MiB each way at once, "
        f"{rate / MIB:,.0f} MiB/s through pyforward"
    )
    run.expect_closes({"eof"})


def backend_restart(run: Run) -> None:
    """The backend is killed mid-stream and started again on the same port: the streams it
    carried end (reset, or short), none hangs; while it is down clients are refused; once
    it is back, new connections succeed from the first."""
    scale = run.scale
    backend, backend_port = run.server("stream")
    [port] = run.start_forwarder(*_target(backend_port))
    endless = 1 << 40
    streams = run.client(
        "streams",
        port,
        "--count",
        scale.restart_streams,
        "--up",
        endless,
        "--down",
        endless,
        "--timeout",
        20,
    )
    streams.wait("flowing")
    backend.kill()
    killed = time.monotonic()
    cut = run.count(streams.result(), "streams cut by the kill", expected={"reset", "eof-short"})
    ended = sum(cut["errors"].values())
    run.check(ended == scale.restart_streams, f"{ended}/{scale.restart_streams} streams ended")
    run.forwarder.wait_closes(scale.restart_streams)
    after_kill = time.monotonic() - killed
    run.note(f"{scale.restart_streams} streams cut, all closed {after_kill:.2f}s after the kill")
    run.settle()
    down = run.client(
        "churn", port, "--count", 20, "--concurrency", 4, "--timeout", 10, "--protocol", "stream"
    )
    refused = run.count(down.result(), "while down", expected={"reset", "eof-short"})
    run.check(refused["completed"] == 0, "a connection succeeded with no backend")
    run.forwarder.wait_closes(scale.restart_streams + 20)
    run.check(
        run.forwarder.closes["refused"] == 20, "clients not refused while the backend was down"
    )
    backend, _ = run.server("stream", backend_port)
    back = time.monotonic()
    after = run.client(
        "churn", port, "--count", scale.after_restart, "--concurrency", 16, "--protocol", "stream"
    )
    result = run.count(after.result(), "after the restart")
    run.check(result["completed"] == scale.after_restart, f"{result['completed']} ok after restart")
    run.note(
        f"{scale.after_restart:,} connections after the restart, the first started "
        f"{time.monotonic() - back - result['elapsed']:.3f}s after the backend listened; all ok"
    )
    _healthy_traffic(run, port, "after the restart")
    run.count(backend.stop(), "restarted backend")
    run.expect_closes({"eof", "reset", "refused"})


def backend_stall(run: Run) -> None:
    """A backend that accepts and never reads: its clients get stuck (the forwarder
    buffers no more than a batch each), traffic to another backend flows on; clients that
    reset are let go at once; once the backend lets go, everything closes."""
    scale = run.scale
    half = scale.stalled // 2
    stall, stall_port = run.server("stall")
    good, good_port = run.server("stream")
    stuck_port, good_listen = run.start_forwarder(
        "--route",
        f"127.0.0.1:0=127.0.0.1:{stall_port}",
        "--route",
        f"127.0.0.1:0=127.0.0.1:{good_port}",
        listeners=2,
    )
    groups = {}
    for how in ("close", "reset"):
        groups[how] = run.client(
            "streams",
            stuck_port,
            "--count",
            half,
            "--up",
            64 * MIB,
            "--down",
            0,
            "--wait-go",
            "--on-go",
            how,
        )
    for peer in groups.values():
        peer.wait("flowing")
    _healthy_traffic(run, good_listen, "beside the stalled backend")
    usage = run.forwarder.usage()
    assert run.baseline is not None
    held = usage.peak_rss - run.baseline.rss
    # Each stuck connection holds at most one copy batch (256 KiB) of user memory.
    bound = scale.stalled * 256 * KIB + 16 * MIB
    run.note(f"{scale.stalled} connections stuck, peak RSS {held / MIB:+.1f} MiB over baseline")
    run.check(held <= bound, f"RSS grew {held / MIB:.1f} MiB with {scale.stalled} stuck")
    closes_before = run.forwarder.closes.total()
    groups["reset"].tell("go")
    run.count(groups["reset"].result(), "clients that reset")
    try:
        run.forwarder.wait_closes(closes_before + half, timeout=10)
    except SoakError:
        still = closes_before + half - run.forwarder.closes.total()
        run.check(False, f"{still}/{half} client resets not acted on while the backend stalls")
    groups["close"].tell("go")
    run.count(groups["close"].result(), "clients that close")
    stall.tell("release")
    stall.wait("released")
    run.forwarder.wait_closes(closes_before + 2 * half, timeout=30)
    run.settle()
    run.count(good.stop(), "healthy backend")
    run.count(stall.stop(), "stalled backend")
    run.expect_closes({"eof", "reset"})


def client_stall(run: Run) -> None:
    """Clients that stop reading (the forwarder must not buffer what the backend keeps
    sending) and clients that connect and say nothing; others pass meanwhile. Then half the
    stalled readers read on and must get every byte, the other half reset."""
    scale = run.scale
    half = scale.stalled // 2
    backend, backend_port = run.server("stream")
    [port] = run.start_forwarder(*_target(backend_port))
    groups = {}
    for how in ("resume", "reset"):
        groups[how] = run.client(
            "streams",
            port,
            "--count",
            half,
            "--up",
            0,
            "--down",
            32 * MIB,
            "--stall-after",
            MIB,
            "--wait-go",
            "--on-go",
            how,
        )
    silent = run.client("silent", port, "--count", scale.slowloris)
    for peer in groups.values():
        peer.wait("stalled")
    connected = silent.wait("connected")
    run.check(connected["count"] == scale.slowloris, f"silent clients: {connected}")
    _healthy_traffic(run, port, "beside stalled clients")
    assert run.baseline is not None
    held = run.forwarder.usage().peak_rss - run.baseline.rss
    bound = scale.stalled * 256 * KIB + 16 * MIB
    run.note(
        f"{scale.stalled} readers stalled and {scale.slowloris} silent, "
        f"peak RSS {held / MIB:+.1f} MiB over baseline"
    )
    run.check(held <= bound, f"RSS grew {held / MIB:.1f} MiB with {scale.stalled} stalled")
    for peer in (*groups.values(), silent):
        peer.tell("go")
    resumed = run.count(groups["resume"].result(), "stalled readers that read on")
    run.check(resumed["completed"] == half, f"{resumed['completed']}/{half} read on to the end")
    quit_ = run.count(groups["reset"].result(), "stalled readers that reset")
    run.check(quit_["aborted"] == half, f"{quit_['aborted']}/{half} reset")
    gone = run.count(silent.result(), "silent clients")
    run.check(gone["completed"] == scale.slowloris, f"silent: {gone}")
    total = scale.stalled + scale.slowloris + scale.healthy_streams + 1_000
    run.forwarder.wait_closes(total)
    run.settle()
    far = run.count(backend.stop(), "backend", expected={"reset"})
    run.check(
        far["errors"].get("reset", 0) == half, f"backend saw {far['errors']} not {half} resets"
    )
    run.expect_closes({"eof", "reset"})


def client_reset(run: Run) -> None:
    """Every other client resets at some point of its transfer; the rest complete; each
    reset is passed on to the backend and nothing is left behind."""
    scale = run.scale
    backend, backend_port = run.server("stream")
    [port] = run.start_forwarder(*_target(backend_port))
    client = run.client(
        "streams",
        port,
        "--count",
        scale.resets,
        "--up",
        scale.reset_size,
        "--down",
        scale.reset_size,
        "--reset-every",
        2,
    )
    result = run.count(client.result(), "clients")
    half = scale.resets // 2
    run.check(result["completed"] == half, f"{result['completed']}/{half} completed")
    run.check(result["aborted"] == half, f"{result['aborted']}/{half} reset")
    run.forwarder.wait_closes(scale.resets)
    run.settle()
    # A reset can reach the forwarder after it relayed everything and closed cleanly, and
    # reach the backend after it finished: so the far side sees at most `half` resets.
    far = run.count(backend.stop(), "backend", expected={"reset", "eof-short"})
    cut = sum(far["errors"].values())
    run.check(far["completed"] + cut == scale.resets, f"backend: {far} for {scale.resets}")
    run.check(far["completed"] >= half, f"backend: {far['completed']}/{half} completed")
    closes = run.forwarder.closes
    run.check(closes["reset"] >= cut, f"backend saw {cut} cut, pyforward reset {closes['reset']}")
    run.note(
        f"{half} clients reset mid-transfer: pyforward closed {closes['reset']} with reset "
        f"(the rest had already finished), the backend saw {cut} cut short"
    )
    run.expect_closes({"eof", "reset"})


def burst(run: Run) -> None:
    """Thousands of connections opened at once, each checked, all open at the same time."""
    count = run.scale.burst
    backend, backend_port = run.server("echo")
    [port] = run.start_forwarder(*_target(backend_port))
    client = run.client("burst", port, "--count", count, "--timeout", 120)
    opened = client.wait("open", timeout=180)
    fds = run.forwarder.usage().fd_count
    run.check(opened["count"] == count, f"{opened['count']}/{count} open at once")
    run.check(fds >= 2 * count, f"pyforward held {fds} descriptors for {count} connections")
    run.note(f"{count:,} connections opened at once, all checked within {opened['seconds']:.2f}s")
    client.tell("release")
    result = run.count(client.result(), "burst")
    run.check(result["completed"] == count, f"{result['completed']}/{count} echoed")
    run.forwarder.wait_closes(count)
    run.settle()
    run.count(backend.stop(), "echo backend")
    run.expect_closes({"eof"})


def fd_exhaustion(run: Run) -> None:
    """Under a low hard RLIMIT_NOFILE, clients hold connections until the forwarder runs
    out of descriptors: it keeps running without spinning, says so in its log, the held
    connections keep working, and it serves again once they close."""
    scale = run.scale
    limit = scale.fd_limit
    backend, backend_port = run.server("echo")
    [port] = run.start_forwarder(
        *_target(backend_port), prefix=["prlimit", f"--nofile={limit}:{limit}", "--"]
    )
    start = run.forwarder.wait_line("event=start")
    run.check(f"fd_limit={limit}" in start, f"start line does not show the limit: {start}")
    holder = run.client(
        "hold", port, "--max", 4 * limit, "--knocks", 100, "--step-timeout", scale.exhaustion_step
    )
    held = holder.wait("held", timeout=120)
    run.check(held["count"] >= limit // 2 - 32, f"only {held['count']} held under {limit} fds")
    knocked = holder.wait("knocked", timeout=60)
    for kind, number in knocked["outcomes"].items():
        if kind != "ok":
            run.errors[f"knock:{kind}"] += number
    pid = run.forwarder.pid
    cpu, wall = procfs.cpu_of(pid), time.monotonic()
    time.sleep(scale.exhaustion_window)  # a measurement window: CPU while out of fds
    share = (procfs.cpu_of(pid) - cpu) / (time.monotonic() - wall)
    run.check(run.forwarder.alive(), "pyforward died out of descriptors")
    run.check(share < 0.25, f"pyforward used {share:.0%} of a core while out of descriptors")
    told = run.forwarder.has_line("event=accept-paused.*EMFILE") or bool(
        run.forwarder.close_errors["EMFILE"]
    )
    run.check(told, "nothing in the log says descriptors ran out")
    paused = len([line for line in run.forwarder.lines if "event=accept-paused" in line])
    run.note(
        f"held {held['count']} connections (then: {held['failure']}), "
        f"knocks {knocked['outcomes']}, CPU {share:.0%} of a core while out of fds; log: "
        f"{paused} accept-paused line(s), "
        f"{run.forwarder.close_errors['EMFILE']} close(s) with error=EMFILE"
    )
    holder.tell("release")
    result = run.count(holder.result(), "held connections after the shortage")
    run.check(result["completed"] == held["count"], f"{result['completed']} still relayed")
    recovery = run.client("churn", port, "--count", scale.recovery, "--concurrency", 8)
    again = run.count(recovery.result(), "after the holders left")
    run.check(again["completed"] == scale.recovery, f"{again['completed']} ok after recovery")
    run.settle()
    run.count(backend.stop(), "echo backend")
    run.expect_closes({"eof", "reset", "error"})


def discovery_flap(run: Run) -> None:
    """Churn through a forwarder that follows the gateway Service through the Kubernetes
    API while the API server goes away and comes back, again and again (a k3s restart):
    no connection fails, each outage and each return is logged, and a NodePort change
    after the last one reaches new connections."""
    scale = run.scale
    first, first_port = run.server("echo")
    # The test API server of the default suite (real HTTPS, watch streams), run by this
    # process in threads: what it serves is a single watch, no load to speak of.
    api = KubeApi(run.dir)
    api.start()
    run.cleanups.append(api.stop)

    def gateway(node_port: int) -> dict[str, Any]:
        return service(ports=(("http2", 80, None), ("https", 443, node_port)))

    api.put_service(gateway(first_port))
    api.put_node(node("soak-node", "127.0.0.1"))
    run.foreign_ports.add(api.port)
    [port] = run.start_forwarder(
        "--discover",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig",
        str(api.kubeconfig),
        "--state-dir",
        str(run.dir / "state"),
        "--discover-timeout",
        "30",
    )
    warm_up = run.count(run.client("churn", port, "--count", 200).result(), "first connections")
    run.forwarder.wait_closes(200)
    run.check(warm_up["completed"] == 200, f"{warm_up['completed']}/200 before any outage")
    # Only now has it settled: the first target found and saved, connections relayed.
    run.take_baseline()
    every = 100
    churn = run.client(
        "churn", port, "--until-stop", "--concurrency", 16, "--progress-every", every
    )

    def passed(connections: int) -> None:
        """Wait until `connections` more have been started from now on."""
        now = max((e["started"] for e in churn.events if e.get("event") == "progress"), default=0)
        churn.wait("progress", timeout=120, where=lambda e: e["started"] >= now + connections)

    passed(every)
    for _ in range(scale.flaps):
        mark = run.forwarder.line_count()
        api.stop()
        run.forwarder.wait_line("event=discovery-degraded", after=mark)
        passed(scale.flap_connections)
        mark = run.forwarder.line_count()
        api.start()
        run.forwarder.wait_line("event=discovery-ok", after=mark, timeout=60)
        passed(scale.flap_connections)  # with the API back, before it goes again
    second, second_port = run.server("echo")
    api.put_service(gateway(second_port))
    run.forwarder.wait_line(f"event=target-change.*:{second_port}")
    passed(scale.flap_connections)
    churn.tell("stop")
    result = run.count(churn.result(), "churn through the outages")
    total = result["completed"] + sum(result["errors"].values())
    run.forwarder.wait_closes(200 + total)
    run.settle()
    moved = run.count(second.stop(), "backend after the NodePort change")
    run.check(moved["completed"] > 0, "no connection reached the new NodePort")
    run.count(first.stop(), "backend before the NodePort change")
    run.note(
        f"{scale.flaps} API outages, each with {scale.flap_connections:,}+ connections; "
        f"{result['completed']:,} connections, none failed; {moved['completed']:,} went to "
        f"the new NodePort after the change"
    )
    run.expect_closes({"eof"})


def cluster_flood(run: Run) -> None:
    """Churn through a forwarder that follows a cluster of thousands of nodes while the
    API server sends their events as fast as it can (each flips a batch of nodes between
    Ready and NotReady): no connection fails or waits long, memory stays bounded, log
    lines stay short, the last event is taken in soon after it is sent, and a NodePort
    change after the flood reaches new connections."""
    scale = run.scale
    first, first_port = run.server("echo")
    api = KubeApi(run.dir)  # in this process's threads, as in discovery-flap
    api.start()
    run.cleanups.append(api.stop)

    def gateway(node_port: int) -> dict[str, Any]:
        return service(ports=(("http2", 80, None), ("https", 443, node_port)))

    def cluster(ready: bool) -> list[dict[str, Any]]:
        # 127.1.0.0/16: loopback, so nothing outside this host is ever addressed.
        return [
            node(f"node-{i:05d}", f"127.1.{(i + 1) >> 8 & 255}.{(i + 1) & 255}", ready=ready)
            for i in range(scale.flood_nodes)
        ]

    api.put_service(gateway(first_port))
    api.put_nodes([node("soak-node", "127.0.0.1"), *cluster(ready=True)])
    run.foreign_ports.add(api.port)
    [port] = run.start_forwarder(
        "--discover",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig",
        str(api.kubeconfig),
        "--state-dir",
        str(run.dir / "state"),
        "--discover-timeout",
        "30",
        prefix=("env", "NODE_NAME=soak-node"),  # this host is node soak-node: its first target
    )
    warm_up = run.count(run.client("churn", port, "--count", 200).result(), "first connections")
    run.forwarder.wait_closes(200)
    run.check(warm_up["completed"] == 200, f"{warm_up['completed']}/200 before the flood")
    run.take_baseline()  # with every node listed and ranked
    churn = run.client("churn", port, "--until-stop", "--concurrency", 16, "--progress-every", 100)
    churn.wait("progress", timeout=60)
    batch = 500
    ready = [cluster(ready=False), cluster(ready=True)]
    flood_started = time.monotonic()
    for index in range(scale.flood_events // batch):
        start = (index * batch) % scale.flood_nodes
        api.put_nodes(ready[index % 2][start : start + batch])
    # Last, every other node goes NotReady: once that shows, the whole flood was taken in.
    mark = run.forwarder.line_count()
    api.put_nodes(ready[0])
    flood_took = time.monotonic() - flood_started
    run.forwarder.wait_line("event=target-change .*ready_nodes=1 ", after=mark, timeout=60)
    caught_up = time.monotonic() - flood_started - flood_took
    second, second_port = run.server("echo")
    api.put_service(gateway(second_port))
    run.forwarder.wait_line(f"event=target-change.*:{second_port}", timeout=30)
    now = max((e["started"] for e in churn.events if e.get("event") == "progress"), default=0)
    churn.wait("progress", timeout=120, where=lambda e: e["started"] >= now + 500)
    churn.tell("stop")
    result = run.count(churn.result(), "churn through the flood")
    total = result["completed"] + sum(result["errors"].values())
    run.forwarder.wait_closes(200 + total)
    latency = Latency(result["median"], result["p99"], result["slowest"])
    run.check(
        latency.slowest <= FLOOD_SLOWEST,
        f"a connection took {latency.slowest:.2f} s during the flood (bound {FLOOD_SLOWEST} s)",
    )
    usage = run.forwarder.usage()
    assert run.baseline is not None
    growth = usage.peak_rss - run.baseline.rss
    run.check(
        growth <= FLOOD_RSS_GROWTH,
        f"peak RSS {growth / MIB:.1f} MiB over the baseline (bound {FLOOD_RSS_GROWTH // MIB} MiB)",
    )
    longest = max(len(line) for line in run.forwarder.lines)
    run.check(longest <= FLOOD_LINE, f"a log line of {longest:,} characters")
    run.check(caught_up < 10, f"the last Node event showed {caught_up:.1f} s after it was sent")
    run.settle()
    moved = run.count(second.stop(), "backend after the NodePort change")
    run.check(moved["completed"] > 0, "no connection reached the new NodePort")
    run.count(first.stop(), "backend before the NodePort change")
    run.note(
        f"{scale.flood_nodes:,} nodes, {scale.flood_events + scale.flood_nodes:,} Node events "
        f"sent in {flood_took:.1f} s, the last taken in {caught_up:.2f} s later; "
        f"{result['completed']:,} connections meanwhile, none failed, {latency}; "
        f"peak RSS +{growth / MIB:.1f} MiB; longest log line {longest:,} characters"
    )
    run.expect_closes({"eof"})


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "churn": churn,
    "streaming": streaming,
    "backend-restart": backend_restart,
    "backend-stall": backend_stall,
    "client-stall": client_stall,
    "client-reset": client_reset,
    "burst": burst,
    "fd-exhaustion": fd_exhaustion,
    "discovery-flap": discovery_flap,
    "cluster-flood": cluster_flood,
    "sni-proxy": sni_proxy,
}


def run_scenario(name: str, loop: str, relay: str, scale: Scale, workdir: Path) -> Outcome:
    """Run one scenario; a scenario that breaks off (SoakError) fails with the reason."""
    run = Run(name, loop, relay, scale, workdir)
    try:
        SCENARIOS[name](run)
    except SoakError as exc:
        run.check(False, str(exc))
    except BaseException:
        run.finish()
        raise
    return run.finish()
