"""pyforward under a real systemd (PID 1 of namespaces this test makes; see systemd_box.py).

The venv under test is this test run's own (made from the machine's default python3), seen
inside the box at the same path: where that interpreter lives under a 0700 /root, the
unit must expose it to the service's dynamic user, or the service fails as 203/EXEC.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pyz import Build, host_python
from tests.systemd_box import (
    HOST_CLIENT_SIDE,
    NODE_ADDRESS,
    REQUIRE_ENV,
    CannotRun,
    NetNs,
    Network,
    SystemdBox,
    check_can_run,
    lab,
    require_or_skip,
)


class Backend:
    """An echo server in the node namespace that prefixes replies with `node:`."""

    def __init__(self, netns: NetNs) -> None:
        self.netns = netns
        self.port = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = self.netns.listen((NODE_ADDRESS, self.port))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(self._sock,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    @staticmethod
    def _serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=Backend._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    conn.sendall(b"node:" + data)


def exchange(net: Network, port: int, payload: bytes = b"hello") -> bytes:
    """From the client namespace, through the host's listener: send, read the reply."""
    with net.client.connect((HOST_CLIENT_SIDE, port)) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def pyforward(box: SystemdBox, *args: str, check: bool = True) -> tuple[int, str, str]:
    result = box.run([box.pyforward, *args], check=check, timeout=90)
    return result.returncode, result.stdout, result.stderr


def status_json(box: SystemdBox, name: str) -> tuple[int, dict[str, object]]:
    code, out, _ = pyforward(box, "status", "--name", name, "--json", check=False)
    return code, json.loads(out)


def journal(box: SystemdBox, priority: str, unit: str = "pyforward.service") -> str:
    """The unit's journal at `priority` and above, messages only."""
    args = ["journalctl", "-u", unit, "-p", priority, "-o", "cat", "--no-pager"]
    return box.run(args).stdout


def levels(report: dict[str, object]) -> dict[str, str]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {check["subject"]: check["level"] for check in checks}


def process_status(box: SystemdBox, unit: str) -> dict[str, str]:
    pid = box.show(unit, "MainPID")["MainPID"]
    text = box.run(["cat", f"/proc/{pid}/status"]).stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def leftovers(box: SystemdBox, name: str) -> list[str]:
    """Whatever of an installation is still in the box."""
    paths = [
        "/etc/pyforward",
        f"/etc/systemd/system/{name}.service",
        f"/etc/systemd/system/{name}.socket",
        f"/etc/systemd/system/multi-user.target.wants/{name}.service",
        f"/etc/systemd/system/sockets.target.wants/{name}.socket",
        f"/var/lib/{name}",
        f"/var/lib/private/{name}",
    ]
    found = [path for path in paths if box.path(path).exists() or box.path(path).is_symlink()]
    units = box.systemctl("list-units", "--all", "--plain", "--no-legend", f"{name}.*").stdout
    found += [line for line in units.splitlines() if line.strip()]
    return found


@pytest.fixture(scope="module")
def box_lab() -> Iterator[tuple[Network, SystemdBox]]:
    try:
        check_can_run()
    except CannotRun as exc:
        require_or_skip(str(exc))
    with lab() as (net, box):
        yield net, box


@pytest.fixture
def backend(box_lab: tuple[Network, SystemdBox]) -> Iterator[Backend]:
    server = Backend(box_lab[0].node)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_install_serves_survives_sigkill_reports_status_and_uninstalls(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    net, box = box_lab
    target = f"{NODE_ADDRESS}:{backend.port}"
    try:
        code, out, err = pyforward(box, "install", "--listen", "443", "--target", target)
        # install returned: the very first connection must get through, no retrying.
        assert exchange(net, 443) == b"node:hello", (out, err)
        assert "accepts on *:443" in out

        # Least privilege: not root, and CAP_NET_BIND_SERVICE (bit 10) as its only capability.
        proc = process_status(box, "pyforward.service")
        assert proc["Uid"].split()[0] != "0"
        assert int(proc["CapEff"], 16) == 1 << 10

        code, report = status_json(box, "pyforward")
        assert code == 0, report
        assert set(levels(report).values()) == {"ok"}
        assert levels(report)["through *:443"] == "ok"

        # SIGKILL of the main process: systemd restarts it and forwarding resumes.
        old_pid = box.show("pyforward.service", "MainPID")["MainPID"]
        box.systemctl("kill", "--signal=KILL", "--kill-whom=main", "pyforward.service")

        def restarted() -> bool:
            props = box.show("pyforward.service", "NRestarts", "ActiveState", "MainPID")
            return (
                props["NRestarts"] == "1"
                and props["ActiveState"] == "active"
                and props["MainPID"] not in {"0", old_pid}
            )

        box.wait_for("restart after SIGKILL", restarted)
        assert exchange(net, 443, b"again") == b"node:again"

        # Target down: the listener still accepts, but status says forwarding is down.
        backend.stop()
        code, report = status_json(box, "pyforward")
        assert code == 2, report
        assert levels(report).get(f"target {target}") == "down", report
        assert levels(report).get("listen *:443") == "ok", report
        # The journal took each line's priority: the target's warning is shown by
        # `journalctl -p warning`, the info lines (start, listen, close) are not.
        down = f"level=warning event=target-down target={target} "
        box.wait_for("the warning in the journal", lambda: down in journal(box, "warning"))
        assert "level=info" not in journal(box, "warning")
        assert "level=info event=start " in journal(box, "info")
        backend.start()
        assert status_json(box, "pyforward")[0] == 0

        # Service stopped: down, and says so.
        box.systemctl("stop", "pyforward.service")
        code, report = status_json(box, "pyforward")
        assert code == 2, report
        assert levels(report).get("pyforward.service") == "down", report
        assert levels(report).get("listen *:443") == "down", report
    finally:
        pyforward(box, "uninstall", check=False)
    assert leftovers(box, "pyforward") == []
    with pytest.raises(ConnectionRefusedError):
        exchange(net, 443)
    code, report = status_json(box, "pyforward")
    assert code == 2
    assert levels(report) == {"pyforward.service": "down"}


def test_install_from_the_single_file_build_forwards_and_uninstalls(
    box_lab: tuple[Network, SystemdBox], backend: Backend, pyz: Build
) -> None:
    """pyforward.pyz copied to /opt in the box, installed by the host's own python3 running
    it: the unit runs that interpreter and that file, as the service's dynamic user."""
    net, box = box_lab
    python = host_python()  # under /usr (or the venv's base, bound in): seen inside the box
    archive = "/opt/pyforward/pyforward.pyz"
    box.path("/opt/pyforward").mkdir(mode=0o755, parents=True)
    shutil.copy(pyz.archive, box.path(archive))
    box.path(archive).chmod(0o644)
    name = "pyf-pyz"

    def from_archive(*args: str, check: bool = True) -> tuple[int, str, str]:
        result = box.run([python, archive, *args], check=check, timeout=90)
        return result.returncode, result.stdout, result.stderr

    try:
        _, out, err = from_archive(
            "install",
            "--name",
            name,
            "--listen",
            "8443",
            "--target",
            f"{NODE_ADDRESS}:{backend.port}",
        )
        assert exchange(net, 8443) == b"node:hello", (out, err)
        exec_start = box.show(f"{name}.service", "ExecStart")["ExecStart"]
        assert f"argv[]={python} -I {archive} run --config /etc/pyforward/{name}.toml" in exec_start
        code, out, _ = from_archive("status", "--name", name, "--json", check=False)
        assert code == 0, out
        # uvloop is not in the archive: the service runs on asyncio.
        journal = box.run(["journalctl", "-u", f"{name}.service", "--no-pager"]).stdout
        assert "loop=asyncio" in journal
    finally:
        from_archive("uninstall", "--name", name, check=False)
        shutil.rmtree(box.path("/opt/pyforward"), ignore_errors=True)
    assert leftovers(box, name) == []


def connect_while_restarting(
    net: Network, box: SystemdBox, unit: str, port: int, restarts: int = 2
) -> tuple[list[str | None], int]:
    """Keep a client connecting through `port` while `unit` restarts; return each
    connection's error (None when it got its reply) and how many started mid-restart."""
    results: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        count = 0
        while not stop.is_set():
            started = time.monotonic()
            payload = str(count).encode()
            try:
                reply = exchange(net, port, payload)
                error = None if reply == b"node:" + payload else f"reply {reply!r}"
            except OSError as exc:
                error = repr(exc)
            results.append((started, error))
            count += 1

    def wait_for_more(seen: int) -> None:
        box.wait_for("client connections", lambda: len(results) >= seen + 3)

    thread = threading.Thread(target=client)
    thread.start()
    windows = []
    try:
        for _ in range(restarts):
            wait_for_more(len(results))
            old_pid = box.show(unit, "MainPID")["MainPID"]
            began = time.monotonic()
            box.systemctl("restart", unit)
            windows.append((began, time.monotonic()))
            assert box.show(unit, "MainPID")["MainPID"] not in {"0", old_pid}
        wait_for_more(len(results))
    finally:
        stop.set()
        thread.join(timeout=30)
    during = sum(1 for started, _ in results if any(a <= started <= b for a, b in windows))
    return [error for _, error in results], during


def test_restart_without_socket_activation_refuses_connections(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    """The contrast for the next test: while a plain service restarts, nothing listens."""
    net, box = box_lab
    try:
        pyforward(box, "install", "--listen", "8080", "--target", f"{NODE_ADDRESS}:{backend.port}")
        errors, during = connect_while_restarting(net, box, "pyforward.service", 8080, restarts=1)
        assert during > 0
        assert any(error and "ConnectionRefusedError" in error for error in errors)
    finally:
        pyforward(box, "uninstall", check=False)
    assert leftovers(box, "pyforward") == []


def test_socket_activation_restart_refuses_no_connection(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    net, box = box_lab
    name = "pyf-sockets"
    target = f"{NODE_ADDRESS}:{backend.port}"
    try:
        pyforward(
            box,
            "install",
            "--name",
            name,
            "--socket-activation",
            "--listen",
            "443",
            "--target",
            target,
        )
        assert exchange(net, 443) == b"node:hello"
        # systemd holds port 443: the service itself needs no capability at all.
        assert int(process_status(box, f"{name}.service")["CapEff"], 16) == 0

        errors, during = connect_while_restarting(net, box, f"{name}.service", 443)
        assert during > 0
        assert [error for error in errors if error] == []

        code, report = status_json(box, name)
        assert code == 0, report
    finally:
        pyforward(box, "uninstall", "--name", name, check=False)
    assert leftovers(box, name) == []
    with pytest.raises(ConnectionRefusedError):
        exchange(net, 443)


def test_replaces_the_socat_unit_and_uninstall_puts_it_back(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    net, box = box_lab
    if not Path("/usr/bin/socat").exists():
        require_or_skip("socat is not installed (apt-get install socat)")
    name = "k3s-ingress-forward"
    target = f"{NODE_ADDRESS}:{backend.port}"
    # The unit the setup pyforward replaces, as that setup renders it.
    socat_unit = (
        "[Unit]\nAfter=network-online.target k3s.service\nWants=network-online.target\n"
        "[Service]\nType=simple\nUser=root\nRestart=always\nRestartSec=3\n"
        f"ExecStart=/usr/bin/socat TCP-LISTEN:9443,fork,reuseaddr TCP:{target}\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    unit_file = box.path(f"/etc/systemd/system/{name}.service")
    unit_file.write_text(socat_unit)
    box.systemctl("daemon-reload")
    box.systemctl("enable", "--now", f"{name}.service")
    try:
        box.wait_for("socat listening", lambda: _accepts(net, 9443))
        # No route given: install carries socat's over from the unit it replaces.
        _, out, err = pyforward(box, "install", "--name", name)
        assert f"from {name}.service: listen *:9443 (from TCP-LISTEN:9443)" in err
        assert f"kept it as /etc/pyforward/backup/{name}.service" in out
        assert exchange(net, 9443) == b"node:hello"
        assert "pyforward run" in box.show(f"{name}.service", "ExecStart")["ExecStart"]

        pyforward(box, "uninstall", "--name", name)
        assert unit_file.read_text() == socat_unit
        assert box.systemctl("is-enabled", f"{name}.service").stdout.strip() == "enabled"
        assert box.systemctl("is-active", f"{name}.service").stdout.strip() == "active"
        assert "socat" in box.show(f"{name}.service", "ExecStart")["ExecStart"]
        assert not box.path("/etc/pyforward").exists()
        box.wait_for("socat listening again", lambda: _accepts(net, 9443))
    finally:
        box.systemctl("disable", "--now", f"{name}.service", check=False)
        unit_file.unlink(missing_ok=True)
        box.systemctl("daemon-reload")


def _accepts(net: Network, port: int) -> bool:
    try:
        net.client.connect((HOST_CLIENT_SIDE, port), timeout=1).close()
    except OSError:
        return False
    return True


def test_install_reports_a_service_that_cannot_start(box_lab: tuple[Network, SystemdBox]) -> None:
    """The seed's failure, made loud: install exits 1 with the unit's state and its log."""
    _, box = box_lab
    try:
        code, out, err = pyforward(
            box,
            "install",
            "--name",
            "broken",
            "--listen",
            "7000",
            "--target",
            "no-such-host.invalid:80",
            check=False,
        )
        assert code == 1
        assert "broken.service is not serving" in err
        assert "does not resolve" in out  # the service's own log line, shown by install
        assert status_json(box, "broken")[0] == 2
    finally:
        pyforward(box, "uninstall", "--name", "broken", check=False)
    assert leftovers(box, "broken") == []


def test_a_stuck_event_loop_is_restarted_by_the_watchdog(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    net, box = box_lab
    name = "pyf-watchdog"
    unit = f"{name}.service"
    dropin = box.path(f"/etc/systemd/system/{unit}.d/fast-watchdog.conf")
    try:
        pyforward(
            box,
            "install",
            "--name",
            name,
            "--listen",
            "7443",
            "--target",
            f"{NODE_ADDRESS}:{backend.port}",
        )
        # A shorter watchdog than the unit's 10 s, to keep the test short.
        dropin.parent.mkdir()
        dropin.write_text("[Service]\nWatchdogSec=2\nTimeoutAbortSec=1\n")
        box.systemctl("daemon-reload")
        box.systemctl("restart", unit)

        # The pings arrive: systemd's last watchdog timestamp keeps moving.
        first = box.show(unit, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        box.wait_for(
            "a WATCHDOG=1 ping",
            lambda: (
                box.show(unit, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
                not in {first, "0"}
            ),
        )
        assert box.show(unit, "ActiveState")["ActiveState"] == "active"

        # A loop that stops running stops the pings: systemd kills and restarts the service.
        old_pid = box.show(unit, "MainPID")["MainPID"]
        box.systemctl("kill", "--signal=SIGSTOP", "--kill-whom=main", unit)

        def restarted() -> bool:
            props = box.show(unit, "NRestarts", "ActiveState", "MainPID")
            return (
                props["NRestarts"] == "1"
                and props["ActiveState"] == "active"
                and (props["MainPID"] not in {"0", old_pid})
            )

        box.wait_for("a restart after the watchdog timeout", restarted)
        journal = box.run(["journalctl", "-u", unit, "--no-pager"]).stdout
        assert "Watchdog timeout" in journal
        assert exchange(net, 7443) == b"node:hello"
    finally:
        dropin.unlink(missing_ok=True)
        if dropin.parent.exists():
            dropin.parent.rmdir()
        pyforward(box, "uninstall", "--name", name, check=False)
    assert leftovers(box, name) == []


def test_cannot_run_is_a_failure_where_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="cannot run: needs root"):
        require_or_skip("needs root")
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception):
        require_or_skip("needs root")


def test_two_workers_are_ready_together_and_live_in_the_unit_cgroup(
    box_lab: tuple[Network, SystemdBox], backend: Backend
) -> None:
    net, box = box_lab
    name = "pyf-workers"
    unit = f"{name}.service"
    target = f"{NODE_ADDRESS}:{backend.port}"
    try:
        # With a per-source limit: the table the workers share runs under the unit's hardening.
        pyforward(
            box,
            "install",
            "--name",
            name,
            "--listen",
            "8443",
            "--target",
            target,
            "--workers",
            "2",
            "--max-connections-per-source",
            "8",
        )
        # install returned once systemd had READY=1: by then every worker accepted, and the
        # status line sent with READY says so (it names workers not yet serving).
        props = box.show(unit, "ActiveState", "StatusText", "MainPID", "ControlGroup")
        assert props["ActiveState"] == "active", props
        assert "serving" not in props["StatusText"], props
        main = props["MainPID"]
        workers = box.run(["cat", f"/proc/{main}/task/{main}/children"]).stdout.split()
        assert len(workers) == 2
        procs = box.run(["cat", f"/sys/fs/cgroup{props['ControlGroup']}/cgroup.procs"])
        assert set(procs.stdout.split()) == {main, *workers}
        shown = box.systemctl("status", unit, "--no-pager", "--lines=0", check=False).stdout
        assert all(f"{pid} " in shown for pid in workers), shown

        def both_served() -> bool:
            assert exchange(net, 8443) == b"node:hello"
            lines = journal(box, "info", unit)
            return all(f"pid={pid} event=close " in lines for pid in workers)

        box.wait_for("a connection served by each worker", both_served)
        code, report = status_json(box, name)
        assert code == 0, report
        assert all(f"pid {pid} (pyforward-w" in json.dumps(report) for pid in workers), report

        box.systemctl("stop", unit)
        gone = box.run(["cat", f"/sys/fs/cgroup{props['ControlGroup']}/cgroup.procs"], check=False)
        assert gone.stdout.split() == []
    finally:
        pyforward(box, "uninstall", "--name", name, check=False)
    assert leftovers(box, name) == []
