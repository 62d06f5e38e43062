"""SIGHUP reloads the config: new targets for new connections, the rest at the next restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyforward.addresses import parse_listen
from pyforward.daemon import status_line
from pyforward.reload import plan
from pyforward.settings import build_settings
from tests.echo import NamedEcho
from tests.test_sdnotify import NotifyListener

PYFORWARD = str(Path(sys.prefix) / "bin" / "pyforward")


def test_plan() -> None:
    old = build_settings({"route": ["443=10.0.0.5:1", "80=10.0.0.5:2"]}, {})
    new = build_settings(
        {"route": ["443=10.0.0.6:1", "8080=10.0.0.5:3"], "relay": "copy", "log_level": "debug"},
        {},
    )
    result = plan(old, new)
    assert [route.listen for route in result.changed_routes] == [parse_listen("443")]
    assert result.added == (parse_listen("8080"),)
    assert result.removed == (parse_listen("80"),)
    assert result.restart_keys == ("relay",)
    assert result.needs_restart == ("listen *:8080 added", "listen *:80 removed", "relay")
    assert result.log_level is not None
    assert plan(old, old).needs_restart == ()
    assert plan(old, old).changed_routes == ()


def test_status_line() -> None:
    routes = [("[::]:443", ["10.0.0.5:32653"])]
    assert (
        status_line(routes, 1, {}) == "forwarding [::]:443 -> 10.0.0.5:32653; 1 active connection"
    )
    many = [(f"[::]:{port}", ["10.0.0.5:1"]) for port in range(6)]
    line = status_line(many, 0, {"discovery": "degraded: API unreachable"})
    assert line.endswith("and 2 more; 0 active connections; discovery degraded: API unreachable")


@pytest.fixture
def echoes() -> Iterator[tuple[NamedEcho, NamedEcho]]:
    first, second = NamedEcho(b"first"), NamedEcho(b"second")
    yield first, second
    first.close()
    second.close()


def ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hi")
        return sock.recv(1024)


def test_sighup_retargets_and_keeps_running_on_a_bad_config(
    tmp_path: Path, echoes: tuple[NamedEcho, NamedEcho]
) -> None:
    config = tmp_path / "pyforward.toml"
    route = '[[route]]\nlisten = "127.0.0.1:0"\ntarget = ["127.0.0.1:{port}"]\n'
    config.write_text(route.format(port=echoes[0].port))
    listener = NotifyListener(str(tmp_path / "notify"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYFORWARD_", "LISTEN_"))}
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    proc = subprocess.Popen(
        [PYFORWARD, "run", "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        ready = listener.until("READY")[-1]
        match = re.search(r"127\.0\.0\.1:(\d+)", ready["STATUS"])
        assert match
        port = int(match.group(1))
        assert ask(port) == b"first:hi"

        config.write_text(route.format(port=echoes[1].port))
        proc.send_signal(signal.SIGHUP)
        assert listener.until("READY")[-1]["READY"] == "1"
        assert ask(port) == b"second:hi"

        config.write_text("this is not toml")
        proc.send_signal(signal.SIGHUP)
        after_bad = listener.until("READY")[-1]
        assert "reload failed: " in after_bad["STATUS"]
        assert ask(port) == b"second:hi"

        config.write_text('relay = "copy"\n' + route.format(port=echoes[1].port))
        proc.send_signal(signal.SIGHUP)
        listener.until("READY")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        listener.sock.close()
    assert "event=reload-failed" in log
    assert "not valid TOML" in log
    assert 'restart_needed=relay msg="these changes take effect at the next restart"' in log
