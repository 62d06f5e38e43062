"""`pyforward top`: the view of two scrapes (rendered to a string), where it finds the
endpoint, its one-line errors, and the live view under tmux against a real forwarder."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from pyforward.config.addresses import parse_listen
from pyforward.errors import ConfigError
from pyforward.obs.live import ListenerState, LiveState, parse_scrape
from pyforward.obs.top_view import Frame, render
from pyforward.systemd.install import InstallPaths
from tests.harness import TIMEOUT, Backend, connect, connect_and_read, echo, forwarder, run_cli
from tests.test_metrics import free_port, metrics_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
LISTEN = "127.0.0.1:8080"


def shown(frame: Frame, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(render(frame))
    output = console.file
    assert isinstance(output, io.StringIO)
    return output.getvalue()


def row(text: str, listen: str = LISTEN) -> list[str]:
    """The cells of `listen`'s row, split on runs of spaces (no cell holds two)."""
    for line in text.splitlines():
        if line.startswith(listen + " "):
            return _cells(line)
    raise AssertionError(f"no row for {listen} in:\n{text}")


def _cells(line: str) -> list[str]:
    # Byte rates are a number and a unit ("2.0 KiB"): keep them one cell.
    return re.findall(r"\S+(?: (?:B|KiB|MiB|GiB|up)\b)?", line)


def state(**counts: ListenerState) -> LiveState:
    return LiveState(listeners=dict(counts), started=1000.0)


def test_rates_are_differences_between_two_scrapes_over_the_interval() -> None:
    targets = {"10.0.0.5:32653": True, "10.0.0.6:32653": False}
    before = ListenerState(active=2, ended=10, ended_badly=1, up=1000, down=5000, targets=targets)
    after = ListenerState(
        active=5, ended=17, ended_badly=2, refused=3, up=5096, down=5000 + 3 * 1048576
    )
    after.targets = targets
    frame = Frame(
        "127.0.0.1:9464",
        LiveState(listeners={LISTEN: after}, started=1000.0),
        LiveState(listeners={LISTEN: before}, started=1000.0),
        interval=2.0,
        now=1000.0 + 185,
    )
    text = shown(frame)
    header = text.splitlines()[0]
    assert header.startswith("pyforward at 127.0.0.1:9464")
    assert "up 3 min" in header
    assert "q quits" not in header  # nothing reads keys here
    # listen, active, conn/s ((17+5 - (10+2)) / 2 s), up/s, down/s, ended, errors, refused
    assert row(text) == [LISTEN, "5", "5.0", "2.0 KiB", "1.5 MiB", "17", "2", "3", "1/2 up"]
    assert "down: 10.0.0.6:32653 (listen 127.0.0.1:8080)" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_the_first_view_and_a_restarted_forwarder_show_no_rate() -> None:
    counts = ListenerState(active=1, ended=4, up=10, down=20, targets={"10.0.0.5:1": True})
    first = shown(Frame("127.0.0.1:9464", state(**{LISTEN: counts}), interactive=True))
    assert row(first)[1:5] == ["1", "-", "-", "-"]
    assert "q quits" in first.splitlines()[0]
    restarted = ListenerState(active=0, ended=0, up=0, down=0, targets={"10.0.0.5:1": True})
    again = shown(
        Frame("127.0.0.1:9464", state(**{LISTEN: restarted}), state(**{LISTEN: counts}), 1.0)
    )
    assert row(again)[1:5] == ["0", "-", "-", "-"]
    # Restarted and already busier than before: the start time tells, not the counters.
    busier = ListenerState(active=9, ended=9, up=99, down=99, targets={"10.0.0.5:1": True})
    later = LiveState(listeners={LISTEN: busier}, started=2000.0)
    assert row(shown(Frame("127.0.0.1:9464", later, state(**{LISTEN: counts}), 1.0)))[1:5] == [
        "9",
        "-",
        "-",
        "-",
    ]


def test_a_removed_listener_is_not_shown_and_trouble_is() -> None:
    kept = ListenerState(targets={"10.0.0.5:1": True})
    removed = ListenerState(ended=3)  # a reload took it away: counts, no targets
    live = LiveState(listeners={LISTEN: kept, "127.0.0.1:9999": removed}, discovery_degraded=True)
    text = shown(Frame("127.0.0.1:9464", live, problem="Connection refused"))
    assert "127.0.0.1:9999" not in text
    assert "discovery DEGRADED" in text
    assert "NOT ANSWERING: Connection refused" in text


def test_a_view_from_a_real_scrape_text() -> None:
    scrape = textwrap.dedent(
        f"""\
        pyforward_active_connections{{listen="{LISTEN}"}} 3.0
        pyforward_connections_total{{listen="{LISTEN}",reason="eof"}} 7.0
        pyforward_connections_total{{listen="{LISTEN}",reason="refused"}} 1.0
        pyforward_bytes_total{{listen="{LISTEN}",direction="up"}} 100.0
        pyforward_bytes_total{{listen="{LISTEN}",direction="down"}} 200.0
        pyforward_target_up{{listen="{LISTEN}",target="127.0.0.1:9"}} 0.0
        """
    )
    text = shown(Frame("127.0.0.1:9464", parse_scrape(scrape)))
    assert row(text) == [LISTEN, "3", "-", "-", "-", "8", "1", "0", "0/1 up"]


# --- where top looks, and what it says when it cannot


def test_the_metrics_address_comes_from_the_flag_then_env_then_the_config(
    tmp_path: Path,
) -> None:
    from pyforward.cli.top import metrics_address  # noqa: PLC0415

    paths = InstallPaths(config_dir=tmp_path / "etc")
    config = tmp_path / "fwd.toml"
    config.write_text('metrics = "127.0.0.1:9003"\n')
    env = {"PYFORWARD_METRICS": "127.0.0.1:9002"}
    assert metrics_address("127.0.0.1:9001", config, env, "pyforward", paths).port == 9001
    assert metrics_address(None, config, env, "pyforward", paths).port == 9002
    assert metrics_address(None, config, {}, "pyforward", paths).port == 9003
    with pytest.raises(ConfigError, match="no metrics address"):
        metrics_address(None, None, {}, "pyforward", paths)
    # The installed service's own config, as `status` reads it.
    paths.config_dir.mkdir()
    (paths.config_dir / "edge.toml").write_text('metrics = "127.0.0.1:9004"\n')
    assert metrics_address(None, None, {}, "edge", paths).port == 9004
    config.write_text('metrics = "9005"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(config))}: metrics: "):
        metrics_address(None, config, {}, "pyforward", paths)


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--metrics", "nope"], {}, 2, "pyforward: error: --metrics: invalid listen address"),
        ([], {"PYFORWARD_METRICS": "1.2.3.4:x"}, 2, "pyforward: error: PYFORWARD_METRICS: "),
        ([], {"PYFORWARD_METRICS": ""}, 2, "pyforward: error: no metrics address"),
    ],
)
def test_a_bad_address_is_one_line(
    args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    result = run_cli("top", "--name", "no-such-unit", *args, env=env)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1, result.stderr


def test_nothing_answering_is_one_line() -> None:
    port = free_port()
    result = run_cli("top", "--metrics", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr == (
        f"pyforward: error: --metrics 127.0.0.1:{port}: no pyforward answers there "
        f"(Connection refused); is one running with --metrics 127.0.0.1:{port}?\n"
    )
    assert result.stdout == ""


def test_once_prints_one_view_of_a_running_forwarder() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        held = connect(fwd.port)
        held.sendall(b"x")
        assert held.recv(1) == b"x"
        result = run_cli("top", "--metrics", f"127.0.0.1:{port}", "--once", "--interval", "0.2")
        held.close()
    assert result.returncode == 0, result.stderr
    cells = row(result.stdout, f"127.0.0.1:{fwd.port}")
    assert (cells[1], cells[-1]) == ("1", "1/1 up")


def test_run_with_metrics_does_not_import_rich() -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        import pyforward.cli.app
        from pyforward.config.load import load_settings
        from pyforward.engine.runtime import serve

        settings = load_settings(
            {"listen": "127.0.0.1:0", "target": ["127.0.0.1:9"], "metrics": "127.0.0.1:0"},
            None,
            dict(os.environ),
        )
        async def main():
            stop = asyncio.Event()
            await serve(settings, shutdown_trigger=stop.wait, on_ready=lambda f: stop.set())
        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] == "rich" or m.endswith("top")))
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
    assert result.stdout.strip() == "[]"


# --- the live view, in a terminal


class Tmux:
    """A tmux server of the test's own (its own socket), one detached session."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.status_file = socket.with_suffix(".status")

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def wait_screen(self, pattern: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text, re.MULTILINE):
                return text
            assert time.monotonic() < deadline, f"no {pattern!r} on screen:\n{text}"
            time.sleep(0.1)  # polling the screen, with a deadline

    def exit_status(self) -> int | None:
        """The exit status of the session's command once it has ended (None while it runs)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(self.status_file.read_text())
        return None


@contextlib.contextmanager
def tmux_session(tmp_path: Path, command: list[str]) -> Iterator[Tmux]:
    """`command` in a detached 100x20 session. Its exit status is written to a file by the
    shell around it (tmux's own can be missing when the pane closes before it is reaped);
    the shell's trap lets Ctrl-C reach the command while the shell itself carries on."""
    index = len(list(tmp_path.glob("tmux-*.sock")))
    tmux = Tmux(tmp_path / f"tmux-{index}.sock")
    done = tmux.status_file
    script = f'trap : INT; "$@"; echo $? > {done}.new; mv {done}.new {done}; sleep 60'
    tmux(
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "100",
        "-y",
        "20",
        "env",
        f"PYTHONPATH={ROOT}",
        "sh",
        "-c",
        script,
        "sh",
        *command,
    )
    try:
        yield tmux
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            tmux("kill-server")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_the_live_view_follows_connections_and_targets(tmp_path: Path) -> None:
    gone = free_port()  # nothing listens there: the second route's target is refused
    with (
        Backend(echo) as backend,
        forwarder(
            "--route",
            f"127.0.0.1:0={backend.address}",
            "--route",
            f"127.0.0.1:0=127.0.0.1:{gone}",
            "--metrics",
            "127.0.0.1:0",
        ) as fwd,
    ):
        (_, live_port), (_, dead_port) = fwd.listen_addresses(2)
        port = metrics_port(fwd)
        top = [sys.executable, "-m", "pyforward", "top", "--metrics", f"127.0.0.1:{port}"]
        with tmux_session(tmp_path, [*top, "--interval", "0.3"]) as tmux:
            live, dead = f"127.0.0.1:{live_port}", f"127.0.0.1:{dead_port}"
            tmux.wait_screen(rf"^{re.escape(live)} +0 .* 1/1 up")
            held = []
            for _ in range(3):
                client = connect(live_port)
                client.sendall(b"x" * 1000)
                assert client.recv(1000)
                held.append(client)
            connect_and_read(dead_port, b"anyone?")  # refused: its target is marked down
            screen = tmux.wait_screen(rf"^{re.escape(dead)} .* 0/1 up")
            screen = tmux.wait_screen(rf"^{re.escape(live)} +3 ")
            assert f"down: 127.0.0.1:{gone} (listen {dead})" in screen
            assert row(screen, live)[-1] == "1/1 up"
            assert "q quits" in screen.splitlines()[0]
            for client in held:
                client.close()
            tmux.wait_screen(rf"^{re.escape(live)} +0 +\S+ .* 3 +0 +0 +1/1 up")
            tmux("send-keys", "-t", "top", "q")
            wait_until(lambda: tmux.exit_status() is not None, "top's exit after q")
            assert tmux.exit_status() == 0
        # Ctrl-C quits as cleanly.
        with tmux_session(tmp_path, top) as tmux:
            tmux.wait_screen(rf"^{re.escape(live)} ")
            tmux("send-keys", "-t", "top", "C-c")
            wait_until(lambda: tmux.exit_status() is not None, "top's exit after Ctrl-C")
            assert tmux.exit_status() == 0
            assert "Traceback" not in tmux.screen()


def test_stdin_at_its_end_quits(tmp_path: Path) -> None:
    """Keys come from the terminal; a closed input (no terminal left) ends top too."""
    from pyforward.cli.top import _wait_for_quit  # noqa: PLC0415

    read_end, write_end = os.pipe()
    os.close(write_end)
    with open(read_end, encoding="utf-8") as keys:
        assert _wait_for_quit(keys, time.monotonic() + 5)
    assert not _wait_for_quit(None, time.monotonic() + 0.01)


def test_a_forwarder_that_stops_answering_is_shown_and_tried_again_each_interval() -> None:
    from pyforward.cli.top import watch  # noqa: PLC0415

    body = (
        f'pyforward_active_connections{{listen="{LISTEN}"}} 2.0\n'
        f'pyforward_target_up{{listen="{LISTEN}",target="127.0.0.1:9"}} 1.0\n'
    ).encode()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            conn.sendall(head + body)
        server.close()  # then nothing listens there: refused

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    output = io.StringIO()
    console = Console(file=output, width=80, color_system=None)
    began = time.monotonic()
    watch(parse_listen(f"127.0.0.1:{port}"), 0.2, 3, console, None)
    took = time.monotonic() - began
    thread.join(TIMEOUT)
    text = output.getvalue()
    assert text.count("NOT ANSWERING: Connection refused") == 3
    assert text.count("pyforward at ") == 3  # three views, the last figures kept in each
    assert all(cells[1] == "2" for cells in _rows(text, LISTEN))
    assert took >= 3 * 0.2 - 0.05  # one try per interval, not a loop of refused connects


def _rows(text: str, listen: str) -> list[list[str]]:
    return [_cells(line) for line in text.splitlines() if line.startswith(listen + " ")]
