"""`--workers N`: N processes accept on the same listeners, the main process owns the rest.

Real processes and sockets on 127.0.0.1: the workers are told apart by the `pid=` every one
of their lines carries (the close lines among them)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.harness import (
    TIMEOUT,
    Backend,
    ForwarderProcess,
    connect,
    echo,
    fields,
    reads_until_closed,
    recv_all,
    run_cli,
)
from tests.hellos import real_hello
from tests.kubeapi import KubeApi, node, service
from tests.test_discovery_cli import clean_env
from tests.test_discovery_forwarding import SERVICES
from tests.test_discovery_reload import config_text
from tests.test_metrics import metrics_port, samples, scrape, wait_until
from tests.test_reload import ask, routes, tagged
from tests.test_sdnotify import NotifyListener

_STARTED = re.compile(r"event=worker-started worker=(\d+) pid=(\d+)")


@contextmanager
def with_workers(*args: str) -> Iterator[ForwarderProcess]:
    """`pyforward run --workers 2 ARGS`, once every worker accepts."""
    process = ForwarderProcess(["run", "--workers", "2", *args])
    try:
        process.wait_line(r"level=info event=ready workers=2")
        yield process
    finally:
        process.stop(signal.SIGTERM)
        for pid in started_pids(process):
            with _suppress_gone():
                os.kill(pid, signal.SIGKILL)


@contextmanager
def _suppress_gone() -> Iterator[None]:
    with suppress(ProcessLookupError):
        yield


def started_pids(process: ForwarderProcess) -> list[int]:
    return [int(match.group(2)) for line in process.lines if (match := _STARTED.search(line))]


def main_port(process: ForwarderProcess) -> int:
    line = process.wait_line(r"level=info event=listen address=")
    return int(line.rsplit(":", 1)[1])


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pids: list[int], timeout: float = TIMEOUT) -> None:
    wait_until(lambda: all(is_gone(pid) for pid in pids), f"exit of {pids}", timeout)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


def exchange(port: int, payload: bytes) -> None:
    with connect(port) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload


def test_two_workers_share_the_load_and_their_counts_add_up() -> None:
    clients, payload = 300, b"x" * 1000
    with (
        Backend(echo) as backend,
        with_workers(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        workers = started_pids(fwd)
        assert len(workers) == 2
        assert sorted(children(fwd.proc.pid)) == sorted(workers)
        port, scrape_port = main_port(fwd), metrics_port(fwd)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: exchange(port, payload), range(clients)))
        closes = fwd.closes(clients)
        by_pid = {int(close["pid"]) for close in closes}
        assert by_pid == set(workers), "both workers accept"
        found = samples(scrape(scrape_port))
        listen = f'listen="127.0.0.1:{port}"'
        assert found[f'pyforward_connections_total{{{listen},reason="eof"}}'] == clients
        assert found[f'pyforward_bytes_total{{direction="up",{listen}}}'] == clients * len(payload)
        assert found[f'pyforward_bytes_total{{direction="down",{listen}}}'] == clients * len(
            payload
        )
        assert found[f"pyforward_active_connections{{{listen}}}"] == 0
        assert found[f'pyforward_target_up{{{listen},target="{backend.address}"}}'] == 1


def test_a_reload_reaches_every_worker_and_a_bad_one_none(tmp_path: Path) -> None:
    config = tmp_path / "pyforward.toml"
    with Backend(tagged(b"one:")) as one, Backend(tagged(b"two:")) as two:
        config.write_text(routes((0, one.address)))
        with with_workers("--config", str(config)) as fwd:
            port = main_port(fwd)
            held = connect(port)
            assert ask(held, b"a") == b"one:a"
            config.write_text(routes((0, two.address)))
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line(r"level=info event=reloaded")
            seen: set[str] = set()
            deadline = time.monotonic() + TIMEOUT
            while len(seen) < 2:  # new connections on every worker use the new targets
                assert time.monotonic() < deadline, f"only {seen} answered"
                before = len(fwd.close_lines)
                with connect(port) as client:
                    assert ask(client, b"b") == b"two:b"
                seen.add(fwd.closes(before + 1)[before]["pid"])
            assert ask(held, b"c") == b"one:c"  # an established connection is left alone
            held.close()

            mark = len(fwd.lines)
            config.write_text("listen = [")
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line(r"level=error event=reload-failed", start=mark)
            # Refused in the main process: no worker so much as began a reload.
            assert not [line for line in fwd.lines[mark:] if "worker=" in line and "reload" in line]
            with connect(port) as client:
                assert ask(client, b"d") == b"two:d"


def test_sigterm_drains_and_stops_every_worker() -> None:
    with (
        Backend(echo) as backend,
        with_workers("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        workers = started_pids(fwd)
        held = connect(main_port(fwd))
        held.sendall(b"ping")
        assert held.recv(4) == b"ping"
        fwd.proc.send_signal(signal.SIGTERM)
        fwd.wait_line(r"level=info event=stopping")
        fwd.wait_line(r"event=draining active=1")
        held.sendall(b"still")  # the drain lets it finish
        assert held.recv(5) == b"still"
        held.close()
        assert fwd.proc.wait(TIMEOUT) == 0
        wait_gone(workers)


def test_no_worker_outlives_a_killed_main_process() -> None:
    with (
        Backend(echo) as backend,
        with_workers("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        workers = started_pids(fwd)
        held = connect(main_port(fwd))
        assert ask(held, b"before") == b"before"
        fwd.proc.kill()
        fwd.proc.wait(TIMEOUT)
        # Its worker drains: the open connection finishes, then every worker exits.
        assert ask(held, b"after") == b"after"
        held.close()
        wait_gone(workers)


def test_a_stop_before_every_worker_accepts_stops_the_start() -> None:
    with Backend(echo) as backend:
        fwd = ForwarderProcess(
            ["run", "--workers", "2", "-l", "127.0.0.1:0", "-t", backend.address]
        )
        try:
            fwd.wait_line(r"event=worker-started worker=1 ")
            fwd.proc.send_signal(signal.SIGTERM)
            assert fwd.proc.wait(TIMEOUT) == 0
            wait_gone(started_pids(fwd))
        finally:
            fwd.stop()


def test_a_killed_worker_is_logged_and_restarted() -> None:
    with (
        Backend(echo) as backend,
        with_workers("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        port = main_port(fwd)
        first = started_pids(fwd)
        mark = len(fwd.lines)
        os.kill(first[0], signal.SIGKILL)
        fwd.wait_line(rf'event=worker-exited worker=0 pid={first[0]} status="signal SIGKILL"')
        line = fwd.wait_line(r"event=worker-started worker=0 pid=(\d+)", start=mark)
        match = _STARTED.search(line)
        assert match is not None and int(match.group(2)) != first[0]
        new = int(match.group(2))
        fwd.wait_line(rf"pid={new} event=start ")
        wait_gone([first[0]])
        # The new worker serves: clients reach it (the listeners never closed).
        deadline = time.monotonic() + TIMEOUT
        while str(new) not in {close["pid"] for close in fwd.close_lines}:
            assert time.monotonic() < deadline, "the restarted worker never accepted"
            before = len(fwd.close_lines)
            exchange(port, b"hello")
            fwd.closes(before + 1)
        # Dying again soon after its start: the next restart waits twice as long.
        os.kill(new, signal.SIGKILL)
        again = fwd.wait_line(rf"event=worker-exited worker=0 pid={new} ")
        assert "restart_in=0.2" in again, again
        assert "restart_in=0.1" in fwd.wait_line(rf"event=worker-exited worker=0 pid={first[0]} ")


def test_max_connections_holds_for_the_forwarder_as_a_whole() -> None:
    with (
        Backend(echo) as backend,
        with_workers(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--max-connections", "2"
        ) as fwd,
    ):
        port = main_port(fwd)
        first, second = connect(port), connect(port)
        for client in (first, second):
            assert ask(client, b"in") == b"in"
        third = connect(port)  # queued in the backlog: two are open, the cap
        third.sendall(b"wait")
        third.settimeout(0.5)
        try:
            got = third.recv(4)
        except TimeoutError:
            got = b""
        assert got == b"", "a third connection was served past max_connections=2"
        first.close()  # a slot frees: the queued client is served
        third.settimeout(TIMEOUT)
        assert third.recv(4) == b"wait"
        second.close()
        third.close()


def test_one_worker_is_one_process() -> None:
    with Backend(echo) as backend:
        fwd = ForwarderProcess(
            ["run", "--workers", "1", "-l", "127.0.0.1:0", "-t", backend.address]
        )
        try:
            exchange(fwd.port, b"one")
            assert children(fwd.proc.pid) == []
            assert not [line for line in fwd.lines if "worker" in line]
        finally:
            fwd.stop()


def test_the_socat_command_line_stays_one_process() -> None:
    with Backend(echo) as backend:
        fwd = ForwarderProcess(
            ["socat", "TCP-LISTEN:0,bind=127.0.0.1,fork", f"TCP:{backend.address}"],
            env={"PYFORWARD_WORKERS": "2"},
        )
        try:
            exchange(fwd.port, b"socat")
            assert children(fwd.proc.pid) == []
        finally:
            fwd.stop()


def test_bad_worker_counts_are_one_line() -> None:
    cases = [
        (["--workers", "0"], "--workers"),
        (["--workers", "many"], "--workers"),
    ]
    for args, where in cases:
        done = run_cli("run", "-l", "127.0.0.1:0", "-t", "127.0.0.1:1", *args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and where in lines[0], lines
    done = run_cli("run", "-l", "127.0.0.1:0", "-t", "127.0.0.1:1", env={"PYFORWARD_WORKERS": "-1"})
    assert done.returncode == 2 and "PYFORWARD_WORKERS" in done.stderr


def test_a_stuck_port_fails_in_the_main_process_before_any_worker() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli("run", "--workers", "2", "-l", f"127.0.0.1:{port}", "-t", "127.0.0.1:1")
    assert done.returncode == 1
    assert "already in use" in done.stderr
    assert "worker-started" not in done.stderr


def test_systemd_hears_one_forwarder_and_no_watchdog_while_a_worker_is_missing(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "notify")
    listener = NotifyListener(path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    with Backend(echo) as backend:
        fwd = ForwarderProcess(
            ["run", "--workers", "2", "-l", "127.0.0.1:0", "-t", backend.address], env=env
        )
        try:
            ready = listener.until("READY")
            assert [note for note in ready if "READY" in note] == [ready[-1]]
            # Sent once the main process heard both workers accept: no worker is missing.
            assert "serving" not in ready[-1]["STATUS"]
            assert listener.until("WATCHDOG")[-1] == {"WATCHDOG": "1"}
            pid = started_pids(fwd)[0]
            os.kill(pid, signal.SIGKILL)
            missing = listener.until("STATUS")
            while "1 of 2 serving" not in missing[-1]["STATUS"]:
                missing = listener.until("STATUS")
            back = listener.until("STATUS")
            while "serving" in back[-1]["STATUS"]:
                back += listener.until("STATUS")
            # Between the death and the restarted worker's first accept: no ping.
            assert not [note for note in back if "WATCHDOG" in note]
            assert listener.until("WATCHDOG")[-1] == {"WATCHDOG": "1"}
            exchange(main_port(fwd), b"after")
        finally:
            fwd.stop()
            listener.sock.close()


def served_by_each(fwd: ForwarderProcess, port: int, expected: bytes) -> None:
    """Connect until both workers have answered, every answer `expected` + what was sent."""
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only {seen} answered"
        before = len(fwd.close_lines)
        with connect(port) as client:
            assert ask(client, b"q") == expected + b"q"
        seen.add(fwd.closes(before + 1)[before]["pid"])


def test_discovery_is_one_watch_and_its_targets_reach_every_worker(tmp_path: Path) -> None:
    kube = KubeApi(tmp_path)
    kube.start()
    try:
        with Backend(tagged(b"old:")) as old, Backend(tagged(b"new:")) as new:
            kube.put_node(node("node-a", "127.0.0.1"))
            kube.put_service(service(ports=(("https", 443, old.port),)))
            config = tmp_path / "pyforward.toml"
            text = config_text(kube, tmp_path).replace(
                "discover = true", "discover = true\nworkers = 2"
            )
            config.write_text(text)
            fwd = ForwarderProcess(["run", "--config", str(config)], env=clean_env(tmp_path))
            try:
                fwd.wait_line(r"level=info event=ready workers=2")
                port = main_port(fwd)
                served_by_each(fwd, port, b"old:")
                kube.put_service(service(ports=(("https", 443, new.port),)))
                fwd.wait_line(r"level=info event=target-change")
                served_by_each(fwd, port, b"new:")
                # One watch of the Service for the whole forwarder, not one per worker.
                assert len(kube.watches(SERVICES)) == 1
            finally:
                fwd.stop()
    finally:
        kube.stop()


def test_socket_activated_sockets_are_shared_by_every_worker() -> None:
    activate = shutil.which("systemd-socket-activate")
    assert activate is not None, "systemd-socket-activate is missing (Debian package systemd)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Backend(tagged(b"on:")) as backend:
        prefix = [activate, "-l", f"127.0.0.1:{port}", "--fdname=web"]
        args = ["run", "--workers", "2", "-l", f"127.0.0.1:{port}", "-t", backend.address]
        fwd = ForwarderProcess(args, prefix=prefix)
        try:
            fwd.wait_line("Listening on")
            # The first client starts the forwarder; it waits in the passed socket's backlog.
            with connect(port) as first:
                assert ask(first, b"1") == b"on:1"
            fwd.wait_line(rf"event=socket-activated address=127.0.0.1:{port} name=web")
            fwd.wait_line(r"level=info event=ready workers=2")
            served_by_each(fwd, port, b"on:")
        finally:
            fwd.stop()


def test_counts_stay_exact_across_a_killed_and_restarted_worker() -> None:
    with (
        Backend(echo) as backend,
        with_workers(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port, scrape_port = main_port(fwd), metrics_port(fwd)
        eof = f'pyforward_connections_total{{listen="127.0.0.1:{port}",reason="eof"}}'
        for _ in range(20):
            exchange(port, b"one")
        fwd.closes(20)
        assert samples(scrape(scrape_port))[eof] == 20  # each worker told its counts
        victim = started_pids(fwd)[0]
        mark = len(fwd.lines)
        os.kill(victim, signal.SIGKILL)
        fwd.wait_line(r"event=worker-started worker=0 ", start=mark)
        fwd.wait_line(r"level=info event=ready|worker=0 pid=\d+ event=start ", start=mark)
        for _ in range(20):
            exchange(port, b"two")
        fwd.closes(40)
        # The dead worker's 20-odd connections stay counted; the total never goes down.
        assert samples(scrape(scrape_port))[eof] == 40


def test_a_reload_opens_and_closes_listeners_for_every_worker(tmp_path: Path) -> None:
    config = tmp_path / "pyforward.toml"
    with socket.socket() as probe_a, socket.socket() as probe_b:
        probe_a.bind(("127.0.0.1", 0))
        probe_b.bind(("127.0.0.1", 0))
        port_a, port_b = probe_a.getsockname()[1], probe_b.getsockname()[1]
    with Backend(tagged(b"a:")) as one, Backend(tagged(b"b:")) as two:
        config.write_text(routes((port_a, one.address)))
        with with_workers("--config", str(config)) as fwd:
            served_by_each(fwd, port_a, b"a:")
            # B is new (bound by the main process, sent to each worker), A is gone.
            config.write_text(routes((port_b, two.address)))
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line(r"level=info event=reloaded")
            served_by_each(fwd, port_b, b"b:")
            try:
                connect(port_a).close()
                raise AssertionError("the removed listener still accepts")
            except ConnectionRefusedError:
                pass


def active_by_worker(fwd: ForwarderProcess) -> dict[str, int]:
    """Each worker's open connections, from the `event=counts` line SIGUSR1 makes it log."""
    mark = len(fwd.lines)
    os.kill(fwd.proc.pid, signal.SIGUSR1)
    found: dict[str, int] = {}
    while len(found) < 2:
        line = fwd.wait_line(r"worker=\d+ pid=\d+ event=counts ", start=mark)
        mark = fwd.lines.index(line, mark) + 1
        found[fields(line)["pid"]] = int(fields(line)["active"])
    return found


def served(port: int, payload: bytes) -> bool:
    """Whether a new connection is served (False: reset at once, refused)."""
    try:
        with connect(port) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            data, error = reads_until_closed(client)
    except OSError as error:
        # The reset can come before the send or the shutdown returns; a shutdown after it
        # fails with ENOTCONN, which is not a ConnectionError.
        if isinstance(error, ConnectionError) or error.errno == errno.ENOTCONN:
            return False
        raise
    return data == payload and error is None


def wait_served(port: int) -> None:
    """A worker logs a close line a moment before it gives the client's slot back (and the
    other worker may take the next client in between): wait for the slot."""
    wait_until(lambda: served(port, b"back"), "a freed per-source slot")


def test_the_per_source_limit_holds_for_the_forwarder_as_a_whole() -> None:
    args = ["--listen", "127.0.0.1:0", "--max-connections-per-source", "2"]
    with Backend(echo) as backend, with_workers(*args, "--target", backend.address) as fwd:
        port = main_port(fwd)
        deadline = time.monotonic() + TIMEOUT
        while True:  # until one worker holds each of the client's two connections
            assert time.monotonic() < deadline, "no attempt put one connection on each worker"
            held = []
            try:
                for _ in range(2):
                    held.append(connect(port))
                    assert ask(held[-1], b"in") == b"in"
            except ConnectionResetError:
                # A slot of the last attempt not given back yet (its worker logs the close
                # a moment before): try again.
                pass
            else:
                if sorted(active_by_worker(fwd).values()) == [1, 1]:
                    break
            for client in held:
                client.close()
            wait_served(port)
        try:
            # A third is refused whichever worker takes it: the limit is the forwarder's.
            for _ in range(6):
                assert not served(port, b"x"), "served past the per-source limit"
            held[0].close()
            wait_served(port)  # its slot is given back
        finally:
            for client in held:
                client.close()


def test_routes_sharing_an_address_by_server_name_work_on_every_worker() -> None:
    """One socket for the address, bound once and sent to both workers: each worker routes
    a hello by its name and a plain client to the default."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    hello = real_hello("a.test")
    with (
        Backend(echo) as named,
        Backend(echo) as default,
        with_workers(
            "--route", f"a.test@127.0.0.1:{port}={named.address}",
            "--route", f"127.0.0.1:{port}={default.address}",
        ) as fwd,
    ):  # fmt: skip
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: exchange(port, hello if i % 2 else b"plain"), range(80)))
        closes = fwd.closes(80)
        assert {int(close["pid"]) for close in closes} == set(started_pids(fwd))
        targets = {close["target"] for close in closes}
        assert targets == {named.address, default.address}
        assert named.accepted == default.accepted == 40
