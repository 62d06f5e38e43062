"""The metrics endpoint: exact counts, read live and by a real Prometheus server."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from pyforward.obs.metrics import DiscoveryState, make_registry
from tests.harness import (
    TIMEOUT,
    Backend,
    ForwarderProcess,
    connect,
    connect_and_read,
    echo,
    forwarder,
    pattern_bytes,
    recv_all,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[1]
_METRICS_LINE = re.compile(r"event=metrics address=127\.0\.0\.1:(\d+)")
_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (prometheus and promtool)",
)


def metrics_port(process: ForwarderProcess) -> int:
    match = _METRICS_LINE.search(process.wait_line(_METRICS_LINE.pattern))
    assert match is not None
    return int(match.group(1))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = answer.read().decode()
        return text


def samples(text: str) -> dict[str, float]:
    """`name{labels}` (labels as the exposition writes them) -> value."""
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def free_port() -> int:
    """A port nothing listens on, just before use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout}s"
        time.sleep(0.05)


def exchange(port: int, payload: bytes) -> None:
    """Send `payload` through the forwarder to an echo backend and read it all back."""
    with connect(port) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload


def test_counts_are_exact_and_promtool_accepts_them(tmp_path: Path) -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        listen = f"127.0.0.1:{fwd.port}"
        for index in range(5):
            exchange(fwd.port, pattern_bytes(index, 1000 + index))
        fwd.closes(5)
        text = scrape(port)
        found = samples(text)
        sent = sum(1000 + index for index in range(5))
        assert found[f'pyforward_bytes_total{{direction="up",listen="{listen}"}}'] == sent
        assert found[f'pyforward_bytes_total{{direction="down",listen="{listen}"}}'] == sent
        assert found[f'pyforward_connections_total{{listen="{listen}",reason="eof"}}'] == 5
        assert found[f'pyforward_active_connections{{listen="{listen}"}}'] == 0
        assert found[f'pyforward_connect_seconds_count{{listen="{listen}"}}'] == 5
        up = f'pyforward_target_up{{listen="{listen}",target="{backend.address}"}}'
        assert found[up] == 1
        relayed = sum(v for k, v in found.items() if k.startswith("pyforward_relay_bytes_total"))
        assert relayed == 2 * sent
        assert found["process_open_fds"] > 0
        assert "127.0.0.1:" not in "".join(k for k in found if "client" in k)
        if shutil.which("promtool"):
            check = subprocess.run(
                ["promtool", "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert check.returncode == 0 and not check.stdout + check.stderr, check


def test_a_long_connection_shows_its_bytes_before_it_closes() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        listen = f"127.0.0.1:{fwd.port}"
        payload = pattern_bytes(7, 300_000)
        with connect(fwd.port) as client:
            client.sendall(payload)
            received = bytearray()
            while len(received) < len(payload):
                received += client.recv(65536)
            found = samples(scrape(port))
            assert found[f'pyforward_active_connections{{listen="{listen}"}}'] == 1
            assert found[f'pyforward_bytes_total{{direction="up",listen="{listen}"}}'] == 300_000
            assert found[f'pyforward_bytes_total{{direction="down",listen="{listen}"}}'] == 300_000
            client.sendall(b"x")
            client.shutdown(socket.SHUT_WR)
            recv_all(client)
        fwd.closes(1)
        found = samples(scrape(port))
        # Counted once: what the open connection showed moved into the closed totals.
        assert found[f'pyforward_bytes_total{{direction="up",listen="{listen}"}}'] == 300_001
        assert found[f'pyforward_active_connections{{listen="{listen}"}}'] == 0


def test_a_refused_target_is_counted_and_marked_down_then_up() -> None:
    target_port = free_port()
    target = f"127.0.0.1:{target_port}"
    with forwarder(
        "--listen", "127.0.0.1:0", "--target", target, "--metrics", "127.0.0.1:0"
    ) as fwd:
        port = metrics_port(fwd)
        listen = f"127.0.0.1:{fwd.port}"
        up = f'pyforward_target_up{{listen="{listen}",target="{target}"}}'
        assert samples(scrape(port))[up] == 1
        connect_and_read(fwd.port, b"hello")
        fwd.closes(1)
        found = samples(scrape(port))
        assert found[f'pyforward_connections_total{{listen="{listen}",reason="refused"}}'] == 1
        assert found[up] == 0
        sock = socket.create_server(("127.0.0.1", target_port))
        with Backend.on_socket(sock, echo):
            exchange(fwd.port, b"back")
            fwd.closes(2)
            assert samples(scrape(port))[up] == 1


def test_other_paths_are_not_found() -> None:
    with forwarder(
        "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--metrics", "127.0.0.1:0"
    ) as fwd:
        port = metrics_port(fwd)
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT)
        assert raised.value.code == 404
        raised.value.close()


@pytest.mark.parametrize(
    ("value", "code", "message"),
    [
        ("9464", 2, "--metrics: '9464' is every interface; give HOST:PORT, e.g. 127.0.0.1:9464"),
        ("http://127.0.0.1:9464", 2, "--metrics: "),
        ("192.0.2.1:9464", 1, "cannot listen on 192.0.2.1:9464: 192.0.2.1 is not an address"),
    ],
)
def test_a_bad_metrics_address_is_one_line(value: str, code: int, message: str) -> None:
    result = run_cli(
        "run", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--metrics", value
    )
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_a_listen_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli(
            "run",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "127.0.0.1:9",
            env={"PYFORWARD_METRICS": f"127.0.0.1:{port}"},
        )
    assert result.returncode == 1, result.stderr
    assert (
        f"pyforward: error: cannot listen on 127.0.0.1:{port}: port {port} is already in use"
        in (result.stderr)
    )
    assert "Traceback" not in result.stderr


def test_static_forwarding_without_metrics_does_not_import_prometheus_client() -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        import pyforward.cli.app
        from pyforward.config.load import load_settings
        from pyforward.engine.runtime import serve

        settings = load_settings(
            {"listen": "127.0.0.1:0", "target": ["127.0.0.1:9"]}, None, dict(os.environ)
        )
        async def main():
            stop = asyncio.Event()
            def ready(forwarder):
                stop.set()
            await serve(settings, shutdown_trigger=stop.wait, on_ready=ready)
        asyncio.run(main())
        loaded = [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]
        loaded += [m for m in sys.modules if m.startswith("pyforward.obs.") and "metrics" in m]
        loaded += [m for m in sys.modules if m == "pyforward.obs.exporter"]
        print(sorted(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


# --- a real Prometheus server scraping pyforward


@contextlib.contextmanager
def prometheus(tmp_path: Path, scrape_port: int) -> Iterator[Callable[[str], list[object]]]:
    """Prometheus on 127.0.0.1, scraping 127.0.0.1:`scrape_port` every second; yields a
    query function returning the API's result list."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: pyforward
                static_configs:
                  - targets: ["127.0.0.1:{scrape_port}"]
            """
        )
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(expression: str) -> list[object]:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[object] = body["data"]["result"]
        return result

    try:
        wait_until(ready, "prometheus readiness", timeout=60)
        yield query
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def value_of(query: Callable[[str], list[object]], expression: str) -> float | None:
    result = query(expression)
    if not result:
        return None
    assert len(result) == 1, result
    item = result[0]
    assert isinstance(item, dict)
    return float(item["value"][1])


def wait_value(query: Callable[[str], list[object]], expression: str, expected: float) -> None:
    """Wait until Prometheus has scraped `expression` at `expected` (1 s scrapes)."""
    seen: list[float | None] = []

    def matches() -> bool:
        seen.append(value_of(query, expression))
        return seen[-1] == expected

    try:
        wait_until(matches, f"{expression} == {expected}", timeout=30)
    except AssertionError:
        raise AssertionError(f"{expression}: wanted {expected}, last saw {seen[-3:]}") from None


@needs_prometheus
def test_prometheus_scrapes_exact_counts_and_target_health(tmp_path: Path) -> None:
    target_port = free_port()
    target = f"127.0.0.1:{target_port}"
    with (
        forwarder(
            "--route",
            f"127.0.0.1:0={target}",
            "--metrics",
            "127.0.0.1:0",
        ) as fwd,
        prometheus(tmp_path, metrics_port(fwd)) as query,
    ):
        listen = f"127.0.0.1:{fwd.port}"
        wait_value(query, f'pyforward_target_up{{listen="{listen}",target="{target}"}}', 1)
        # The backend is away: one client is refused, and the target is marked down.
        connect_and_read(fwd.port, b"anyone?")
        fwd.closes(1)
        wait_value(query, f'pyforward_connections_total{{listen="{listen}",reason="refused"}}', 1)
        wait_value(query, f'pyforward_target_up{{listen="{listen}",target="{target}"}}', 0)
        # It returns: 7 connections of known sizes go through.
        sock = socket.create_server(("127.0.0.1", target_port))
        with Backend.on_socket(sock, echo):
            sizes = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000]
            for index, size in enumerate(sizes):
                exchange(fwd.port, pattern_bytes(index, size))
            fwd.closes(1 + len(sizes))
        wait_value(query, f'pyforward_target_up{{listen="{listen}",target="{target}"}}', 1)
        for direction in ("up", "down"):
            wait_value(
                query,
                f'pyforward_bytes_total{{listen="{listen}",direction="{direction}"}}',
                sum(sizes),
            )
        wait_value(query, f'pyforward_connections_total{{listen="{listen}",reason="eof"}}', 7)
        wait_value(query, f'sum(pyforward_connections_total{{listen="{listen}"}})', 8)
        wait_value(query, 'up{job="pyforward"}', 1)
        assert value_of(query, "process_open_fds") is not None


def test_refused_clients_are_counted_by_reason() -> None:
    with forwarder(
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:9",
        "--deny",
        "127.0.0.1",
        "--metrics",
        "127.0.0.1:0",
    ) as fwd:
        port = metrics_port(fwd)
        listen = f"127.0.0.1:{fwd.port}"
        for _ in range(3):
            connect_and_read(fwd.port, b"let me in")
        wanted = f'pyforward_refused_total{{listen="{listen}",reason="denied"}}'
        wait_until(lambda: samples(scrape(port)).get(wanted) == 3, "3 denied clients")
        found = samples(scrape(port))
        assert sum(v for k, v in found.items() if k.startswith("pyforward_connections_total")) == 0


def test_discovery_families_come_from_the_discovery_state() -> None:
    state = DiscoveryState({"default": False, "/etc/dev.kubeconfig": True}, 1_700_000_000.0)
    found = samples(generate_latest(make_registry(lambda: None, lambda: state)).decode())
    # One series per cluster the routes follow, named by its `cluster` label.
    assert [key for key in found if key.startswith("pyforward_discovery_degraded")] == [
        'pyforward_discovery_degraded{cluster="default"}',
        'pyforward_discovery_degraded{cluster="/etc/dev.kubeconfig"}',
    ]
    assert found['pyforward_discovery_degraded{cluster="/etc/dev.kubeconfig"}'] == 1
    assert found['pyforward_discovery_degraded{cluster="default"}'] == 0
    assert found["pyforward_discovery_last_change_timestamp_seconds"] == 1.7e9
    static = samples(generate_latest(make_registry(lambda: None)).decode())
    assert "pyforward_discovery_degraded" not in static


def test_check_tries_the_metrics_address() -> None:
    result = run_cli(
        "check", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--metrics", "192.0.2.1:9464"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "error: metrics 192.0.2.1:9464: cannot listen on 192.0.2.1:9464: "
        "192.0.2.1 is not an address of this host"
    ) in result.stdout.splitlines()


OPERATING = ROOT / "docs" / "operating.md"
_TABLE_ROW = re.compile(r"^\| `(pyforward_\w+)` \| (\w+) \|([^|]*)\|")


def documented_families() -> dict[str, tuple[str, set[str]]]:
    """The metrics table of docs/operating.md: family -> (type, labels)."""
    found = {}
    for line in OPERATING.read_text(encoding="utf-8").splitlines():
        match = _TABLE_ROW.match(line)
        if match:
            labels = set(re.findall(r"`(\w+)`", match.group(3)))
            found[match.group(1)] = (match.group(2), labels)
    return found


def test_the_docs_table_lists_every_family_with_its_labels() -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    state = DiscoveryState({"default": True}, 1.7e9)
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        exchange(fwd.port, b"x" * 100)
        fwd.closes(1)
        texts = [scrape(port), generate_latest(make_registry(lambda: None, lambda: state)).decode()]
    served: dict[str, tuple[str, set[str]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("pyforward_"):
                continue
            name = f"{family.name}_total" if family.type == "counter" else family.name
            labels = {key for sample in family.samples for key in sample.labels if key != "le"}
            served[name] = (family.type, labels)
    documented = documented_families()
    assert sorted(documented) == sorted(served)
    for name, (kind, labels) in served.items():
        assert documented[name][0] == kind, name
        if labels:  # a family with no sample here (UDP, no UDP route) shows no labels
            assert documented[name][1] == labels, name
