"""`pyforward status --metrics`: the live state of a forwarder running in the foreground."""

from __future__ import annotations

import socket

import pytest

from pyforward.config.addresses import parse_listen
from pyforward.obs.live import ScrapeError, parse_scrape
from pyforward.obs.live_status import add_live_checks
from pyforward.systemd.status import Level, StatusReport
from tests.harness import Backend, connect, connect_and_read, echo, forwarder, recv_all, run_cli
from tests.test_metrics import free_port, metrics_port

SCRAPE = """\
# HELP pyforward_active_connections Connections open now.
# TYPE pyforward_active_connections gauge
pyforward_active_connections{listen="127.0.0.1:8080"} 2.0
# TYPE pyforward_connections_total counter
pyforward_connections_total{listen="127.0.0.1:8080",reason="eof"} 5.0
pyforward_connections_total{listen="127.0.0.1:8080",reason="refused"} 1.0
# TYPE pyforward_bytes_total counter
pyforward_bytes_total{direction="up",listen="127.0.0.1:8080"} 100.0
pyforward_bytes_total{direction="down",listen="127.0.0.1:8080"} 2000.0
# TYPE pyforward_target_up gauge
pyforward_target_up{listen="127.0.0.1:8080",target="127.0.0.1:8000"} 0.0
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e+09
"""


def test_a_scrape_reads_as_listeners_counts_and_targets() -> None:
    state = parse_scrape(SCRAPE)
    listener = state.listeners["127.0.0.1:8080"]
    assert (listener.active, listener.ended, listener.ended_badly) == (2, 6, 1)
    assert (listener.up, listener.down) == (100, 2000)
    assert listener.targets == {"127.0.0.1:8000": False}
    assert state.started == 1.7e9
    assert state.discovery_degraded is None


def test_a_scrape_without_pyforward_is_refused() -> None:
    with pytest.raises(ScrapeError, match="not with pyforward's metrics"):
        parse_scrape("# TYPE up gauge\nup 1.0\n")


def test_status_of_a_foreground_run_when_forwarding_and_when_the_target_is_down() -> None:
    backend = Backend(echo)
    with forwarder(
        "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
    ) as fwd:
        address = f"127.0.0.1:{metrics_port(fwd)}"
        listen = f"127.0.0.1:{fwd.port}"
        with connect(fwd.port) as client:
            client.sendall(b"x" * 1000)
            client.shutdown(socket.SHUT_WR)
            assert len(recv_all(client)) == 1000
        fwd.closes(1)
        held = connect(fwd.port)
        held.sendall(b"y")
        assert held.recv(1) == b"y"
        result = run_cli("status", "--metrics", address)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"[  ok] metrics {address}: a pyforward answers, running for")
        assert lines[1] == (
            f"[  ok] listen {listen}: 1 active connection, 1 ended; up 1001 B, down 1001 B"
        )
        assert lines[2] == f"[  ok] target {backend.address}: accepts connections"
        assert lines[-1] == "ok: forwarding works"
        held.close()
        backend.close()
        result = run_cli("status", "--metrics", address)
        assert result.returncode == 2, result.stdout
        assert f"[down] target {backend.address}: unreachable: Connection refused" in (
            result.stdout
        )
        assert result.stdout.splitlines()[-1] == "down: forwarding does not work"


def test_status_when_nothing_runs() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("status", "--metrics", address)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"[down] metrics {address}: Connection refused: no pyforward answers here "
        f"(is one running with --metrics {address}?)",
        "down: forwarding does not work",
    ]


def test_a_service_status_adds_the_forwarders_own_account() -> None:
    target = f"127.0.0.1:{free_port()}"
    with forwarder(
        "--listen", "127.0.0.1:0", "--target", target, "--metrics", "127.0.0.1:0"
    ) as fwd:
        address = parse_listen(f"127.0.0.1:{metrics_port(fwd)}")
        connect_and_read(fwd.port, b"anyone?")
        fwd.closes(1)
        report = StatusReport("pyforward")
        add_live_checks(report, address, of_service=True)
        assert [(c.subject, c.level) for c in report.checks] == [
            (f"metrics {address}", Level.OK),
            (f"listen 127.0.0.1:{fwd.port}", Level.OK),
            (f"target {target}", Level.WARN),
        ]
    # A service whose endpoint is silent still forwards, as far as this says: a warning.
    report = StatusReport("pyforward")
    assert add_live_checks(report, address, of_service=True) is None
    assert [c.level for c in report.checks] == [Level.WARN]
