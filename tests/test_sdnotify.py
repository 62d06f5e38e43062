"""sd_notify: what `pyforward run` tells systemd, read from a datagram socket as systemd would."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyforward.config.settings import build_settings
from pyforward.engine.runtime import Runtime
from pyforward.systemd.notify import (
    Notifier,
    Reporter,
    message,
    socket_address,
    watchdog_interval,
)

PYFORWARD = str(Path(sys.prefix) / "bin" / "pyforward")


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def until(self, key: str) -> list[dict[str, str]]:
        """Messages up to and including the first with `key`."""
        seen = []
        while True:
            note = self.next()
            seen.append(note)
            if key in note:
                return seen


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[tuple[str, NotifyListener]]:
    path = str(tmp_path / "notify")
    listener = NotifyListener(path)
    yield path, listener
    listener.sock.close()


@pytest.fixture
def backend() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def start(
    notify: str, target_port: int, *extra: str, watchdog_usec: int = 0
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "LISTEN_"))}
    env["NOTIFY_SOCKET"] = notify
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen(
        [
            PYFORWARD,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{target_port}",
            *extra,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def listen_port(status: str) -> int:
    match = re.search(r"forwarding 127\.0\.0\.1:(\d+) -> ", status)
    assert match, status
    return int(match.group(1))


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def test_ready_status_watchdog_reload_stopping(
    notify_path: tuple[str, NotifyListener], backend: socket.socket
) -> None:
    path, listener = notify_path
    proc = start(path, backend.getsockname()[1], watchdog_usec=400_000)
    try:
        ready = listener.next()
        assert ready["READY"] == "1"
        # READY=1 means accepting: the first connection attempt must succeed.
        port = listen_port(ready["STATUS"])
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert ready["STATUS"].endswith("0 active connections")
        backend.accept()[0].close()

        notes = listener.until("WATCHDOG")
        assert notes[-1] == {"WATCHDOG": "1"}
        # The status line follows the active connections.
        status_notes = [n for n in listener.until("STATUS") if "STATUS" in n]
        assert status_notes[-1]["STATUS"].endswith("1 active connection")
        client.close()

        proc.send_signal(signal.SIGHUP)
        reload_notes = listener.until("READY")
        assert any(n.get("RELOADING") == "1" for n in reload_notes)
        assert reload_notes[-1]["READY"] == "1"

        proc.send_signal(signal.SIGTERM)
        assert listener.until("STOPPING")[-1]["STOPPING"] == "1"
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_pyforward_socat_notifies_and_reloads_as_run_does(
    notify_path: tuple[str, NotifyListener], backend: socket.socket
) -> None:
    path, listener = notify_path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "LISTEN_"))}
    env["NOTIFY_SOCKET"] = path
    target = f"TCP:127.0.0.1:{backend.getsockname()[1]}"
    proc = subprocess.Popen(
        [PYFORWARD + "-socat", "TCP-LISTEN:0,bind=127.0.0.1,fork", target],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = listener.next()
        assert ready["READY"] == "1"
        socket.create_connection(("127.0.0.1", listen_port(ready["STATUS"])), timeout=5).close()
        backend.accept()[0].close()  # forwarded: it reached the target
        proc.send_signal(signal.SIGHUP)
        reload_notes = listener.until("READY")
        assert any(n.get("RELOADING") == "1" for n in reload_notes)
        assert "reload" not in reload_notes[-1]["STATUS"]  # it worked: no failure noted
        proc.send_signal(signal.SIGTERM)
        assert listener.until("STOPPING")[-1]["STOPPING"] == "1"
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_abstract_notify_socket(backend: socket.socket) -> None:
    name = f"pyforward-test-{os.getpid()}"
    listener = NotifyListener(b"\0" + name.encode())
    proc = start("@" + name, backend.getsockname()[1])
    try:
        assert listener.next()["READY"] == "1"
    finally:
        stop(proc)
        listener.sock.close()


def test_no_ready_when_the_port_cannot_be_bound(
    notify_path: tuple[str, NotifyListener], backend: socket.socket
) -> None:
    path, listener = notify_path
    taken = backend.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "LISTEN_"))}
    env["NOTIFY_SOCKET"] = path
    result = subprocess.run(
        [PYFORWARD, "run", "--listen", f"127.0.0.1:{taken}", "--target", "127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "already in use" in result.stderr
    listener.sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        listener.sock.recv(4096)


def test_socket_address() -> None:
    assert socket_address("@name") == b"\0name"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_and_only_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_newline_in_a_value_cannot_forge_a_field(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "n"))
    notifier = Notifier(str(tmp_path / "n"))
    assert notifier.send(message(STATUS="target down\nREADY=1"))
    assert listener.next() == {"STATUS": "target down READY=1"}
    notifier.close()
    listener.sock.close()


def test_notifier_without_systemd_sends_nothing() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send(message(READY="1")) is False


def test_degraded_discovery_shows_in_the_status_at_once(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "n"))
    settings = build_settings({"listen": "443", "target": ["10.0.0.5:32653"]}, {})
    runtime = Runtime(settings)
    runtime.reporter = Reporter(Notifier(str(tmp_path / "n")), runtime.status)
    runtime.source.name = "discovery"
    target = SimpleNamespace(label="10.0.0.5:32653")
    forwarder: Any = SimpleNamespace(
        listeners=[SimpleNamespace(label="[::]:443", targets=[target])],
        stats=SimpleNamespace(active=0),
    )
    runtime.forwarder = forwarder
    runtime.reporter._ready = True  # as after READY=1
    runtime.source_status("degraded: API unreachable")
    assert listener.next()["STATUS"] == (
        "forwarding [::]:443 -> 10.0.0.5:32653; 0 active connections; "
        "discovery degraded: API unreachable"
    )
    runtime.source_status(None)
    assert "discovery" not in listener.next()["STATUS"]
    runtime.reporter.notifier.close()
    listener.sock.close()
