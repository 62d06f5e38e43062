"""The benchmark's pure parts (parsers, statistics, bars) and its CPU accounting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from bench.accounting import SetFactory, cgroup2_root, parse_smaps_rollup, parse_stat
from bench.bars import judge
from bench.model import Figure, Metric
from bench.scenarios.connrate import parse_wrk
from bench.scenarios.throughput import iperf3_bytes
from bench.stats import percentile, summarize

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.19us  207.36us   3.01ms   86.12%
    Req/Sec     6.47k   512.20     7.01k    70.00%
  Latency Distribution
     50%  571.00us
     75%  650.00us
     90%  801.00us
     99%    1.46ms
  6437 requests in 1.00s, 0.95MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 2
Requests/sec:   6433.71
Transfer/sec:      0.95MB
"""


def test_wrk_output_gives_rate_percentiles_in_ms_and_errors() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed == pytest.approx(
        {"rate": 6433.71, "requests": 6437, "p50": 0.571, "p99": 1.46, "errors": 6}
    )


def test_iperf3_bidir_counts_both_directions() -> None:
    report = {
        "end": {
            "sum_sent": {"bytes": 999, "seconds": 1.0},
            "sum_received": {"bytes": 1000, "seconds": 1.0},
            "sum_received_bidir_reverse": {"bytes": 500, "seconds": 1.01},
        }
    }
    assert iperf3_bytes(report) == (1500, 1.01)


def test_smaps_rollup_and_stat_parsing() -> None:
    rollup = "00400000-7ffd [rollup]\nRss:  2048 kB\nPss:  512 kB\nPss_Anon:  100 kB\n"
    assert parse_smaps_rollup(rollup) == (512, 2048)
    # The command name may hold spaces and parentheses.
    stat = "42 (a b) c) S 1 4242 4242 0 -1 0 0 0 0 0 7 3 11 13 20 0 1 0 0 0 0"
    assert parse_stat(stat) == (4242, 7 + 3 + 11 + 13)


def test_percentile_interpolates_and_median_spread_ratio() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1001))), 99.9) == pytest.approx(999.0)
    metric = Metric("m", "m", "u", "higher")
    figures = [
        Figure("s", "m", "u", subject, r, value)
        for subject, values in (("socat", (1.0, 2.0, 9.0)), ("fast", (4.0, 6.0, 5.0)))
        for r, value in enumerate(values, 1)
    ]
    by_subject = {s.subject: s for s in summarize(figures, [metric], ["socat", "fast"], "socat")}
    assert (by_subject["fast"].median, by_subject["fast"].low, by_subject["fast"].high) == (
        5.0,
        4.0,
        6.0,
    )
    assert by_subject["fast"].ratio == 2.5
    assert by_subject["socat"].ratio == 1.0


def test_bars_are_judged_on_ratios_and_absolute_values() -> None:
    metrics = [
        Metric("throughput.up", "", "Gbit/s", "higher"),
        Metric("startup.accepting", "", "ms", "lower"),
    ]
    figures = [
        Figure("t", "throughput.up", "Gbit/s", "socat", 1, 10.0),
        Figure("t", "throughput.up", "Gbit/s", "haproxy", 1, 20.0),
        Figure("t", "throughput.up", "Gbit/s", "py", 1, 23.0),
        Figure("s", "startup.accepting", "ms", "py", 1, 350.0),
    ]
    summaries = summarize(figures, metrics, ["socat", "haproxy", "py"], "socat")
    verdicts = {v.bar.text: v for v in judge(summaries, "py")}
    assert verdicts["throughput up >= 2.2x socat"].met is True
    assert verdicts["throughput up >= 1.2x HAProxy"].met is False  # 1.15x
    assert verdicts["start-up <= 300 ms"].measured == 350.0
    assert verdicts["start-up <= 300 ms"].met is False
    assert verdicts["throughput down >= 2.2x socat"].met is None  # not measured


# A parent that forks a child which burns CPU and is reaped, then waits to be counted.
FORKER = textwrap.dedent(
    """
    import os, sys, time
    pid = os.fork()
    if pid == 0:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    os.fork() or time.sleep(30)  # a live child too
    print("ready", flush=True)
    time.sleep(30)
    """
)


@pytest.mark.parametrize("use_cgroup", [False, True], ids=["process-group", "cgroup2"])
def test_cpu_of_reaped_forks_and_live_processes_are_counted(use_cgroup: bool) -> None:
    if use_cgroup and cgroup2_root() is None:
        pytest.skip("no writable cgroup v2 hierarchy (needs root); the fallback is tested")
    factory = SetFactory(use_cgroup=use_cgroup)
    processes = factory.new()
    assert processes.method == ("cgroup2" if use_cgroup else "process-group")
    with subprocess.Popen(
        [sys.executable, "-c", FORKER],
        stdout=subprocess.PIPE,
        preexec_fn=processes.preexec,  # noqa: PLW1509  (the test starts no threads)
        process_group=0,
    ) as child:
        processes.attach(child.pid)
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            assert len(processes.pids()) == 2  # the parent and its live child
            assert processes.cpu_seconds() >= 0.25
        finally:
            os.killpg(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while processes.pids() and time.monotonic() < deadline:
        time.sleep(0.01)  # the killed grandchild leaves its cgroup once reaped
    processes.close()
    factory.close()


def test_the_metrics_subject_is_scraped_while_it_runs_and_a_failed_scrape_is_an_error() -> None:
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from bench.netutil import BenchError, free_port  # noqa: PLC0415
    from bench.subjects import scraping  # noqa: PLC0415

    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with scraping(server.server_address[1], interval=0.05):
            assert paths[:1] == ["/metrics"]  # the first scrape is done before the block runs
            deadline = time.monotonic() + 10
            while len(paths) < 3:
                assert time.monotonic() < deadline, "no further scrapes"
                time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(BenchError, match="Connection refused"), scraping(free_port(), 0.05):
        pass


def test_the_floor_relay_carries_a_request_and_its_answer_with_half_close() -> None:
    """bench/floor.py's measuring stick is a relay: what it measures is a real exchange."""
    backend = socket.create_server(("127.0.0.1", 0))
    answered = threading.Event()

    def answer() -> None:
        conn, _ = backend.accept()
        with conn:
            got = b""
            while chunk := conn.recv(4096):
                got += chunk
            conn.sendall(b"got:" + got)
        answered.set()

    threading.Thread(target=answer, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = subprocess.Popen(
        [sys.executable, "bench/floor.py", "serve", str(port), str(backend.getsockname()[1])]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the floor relay never listened"
                assert relay.poll() is None, "the floor relay exited"
                time.sleep(0.05)
        with client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)  # the backend answers after the client's EOF
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
        assert reply == b"got:ping"
        assert answered.wait(5)
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(10) == 0
        backend.close()
