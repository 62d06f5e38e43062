"""UDP routes with `--workers 2`: each worker reads its own SO_REUSEPORT socket of the route,
so a client's flow lives in one worker; the counts add up; a killed worker comes back on
the same socket; reload, caps and per-source limits hold for the forwarder as a whole.

Real processes and sockets on 127.0.0.1, dnsmasq and dig as the DNS peers: the workers are
told apart by the `worker=` and `pid=` every line of theirs carries."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.harness import TIMEOUT, ForwarderProcess, fields, run_cli
from tests.test_metrics import metrics_port, samples, scrape, wait_until
from tests.test_workers import started_pids, wait_gone
from tests.udp_peers import (
    DNS_ADDRESS,
    UdpEcho,
    dig_answers,
    dns_answer,
    dns_query,
    dnsmasq,
    free_udp_port,
    udp_port,
)


@contextmanager
def udp_workers(target_port: int, *extra: str) -> Iterator[tuple[ForwarderProcess, int]]:
    """`pyforward run --workers 2` with one UDP route to `target_port`, once both serve."""
    fwd = ForwarderProcess(
        [
            "run",
            "--workers",
            "2",
            "-l",
            "127.0.0.1:0",
            "-t",
            f"127.0.0.1:{target_port}",
            "--protocol",
            "udp",
            *extra,
        ]
    )
    try:
        fwd.wait_line(r"level=info event=ready workers=2")
        yield fwd, udp_port(fwd)
    finally:
        fwd.stop()
        for pid in started_pids(fwd):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # a port of its own: a flow of its own
    sock.settimeout(TIMEOUT)
    return sock


def served_by_worker(fwd: ForwarderProcess) -> dict[str, int]:
    """Each worker's flows started since its start, from the `event=counts` line SIGUSR1
    makes it log for the UDP route."""
    mark = len(fwd.lines)
    os.kill(fwd.proc.pid, signal.SIGUSR1)
    found: dict[str, int] = {}
    while len(found) < 2:
        line = fwd.wait_line(r"worker=\d+ pid=\d+ event=counts .*listen=udp:", start=mark)
        mark = fwd.lines.index(line, mark) + 1
        counts = fields(line)
        found[counts["worker"]] = int(counts["served"])
    return found


@pytest.fixture
def dns_port(tmp_path: Path) -> Iterator[int]:
    with dnsmasq(tmp_path) as port:
        yield port


def test_many_dns_clients_each_get_their_own_replies_from_both_workers(dns_port: int) -> None:
    clients, queries = 24, 40
    with udp_workers(dns_port, "--metrics", "127.0.0.1:0") as (fwd, port):
        if shutil.which("dig") is None:
            pytest.skip("dig is not installed (Debian package bind9-dnsutils)")
        assert dig_answers(port, TIMEOUT) == [DNS_ADDRESS]
        failures: list[str] = []

        def ask_all(index: int) -> None:
            with client() as sock:
                for n in range(queries):
                    query_id = index * 1000 + n  # unique across all clients
                    sock.sendto(dns_query(query_id), ("127.0.0.1", port))
                    reply_id, addresses = dns_answer(sock.recv(4096))
                    if reply_id != query_id or addresses != [DNS_ADDRESS]:
                        failures.append(f"{index}: {query_id} got {reply_id} {addresses}")
                        return

        threads = [threading.Thread(target=ask_all, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        assert not failures, failures[:5]
        # The kernel spread the clients' flows over both workers' sockets.
        served = served_by_worker(fwd)
        assert sorted(served) == ["0", "1"] and all(served.values()), served
        assert sum(served.values()) == clients + 1  # and dig's
        found = samples(scrape(metrics_port(fwd)))
        listen = f'listen="udp:127.0.0.1:{port}"'
        assert found[f"pyforward_active_connections{{{listen}}}"] == clients + 1
        assert found[f'pyforward_datagrams_total{{direction="up",{listen}}}'] == (
            clients * queries + 1
        )
        assert found[f'pyforward_datagrams_total{{direction="down",{listen}}}'] == (
            clients * queries + 1
        )
    # Each flow lived in one worker: one close line per client, each with all its queries.
    flows = [line for line in fwd.close_lines if line["relay"] == "udp"]
    assert len(flows) == clients + 1
    assert len({line["client"] for line in flows}) == clients + 1
    assert sorted(int(line["datagrams_up"]) for line in flows) == [1] + [queries] * clients


def test_a_killed_worker_comes_back_on_its_socket_and_the_others_keep_their_flows() -> None:
    with UdpEcho() as echo, udp_workers(echo.port) as (fwd, port):
        socks = [client() for _ in range(16)]
        try:
            for n, sock in enumerate(socks):
                sock.sendto(b"one %d" % n, ("127.0.0.1", port))
                assert sock.recv(100) == b"one %d" % n
            assert len(echo.peers) == 16  # a flow each, a socket of its own to the target
            victim = started_pids(fwd)[0]
            mark = len(fwd.lines)
            os.kill(victim, signal.SIGKILL)
            fwd.wait_line(rf"event=worker-exited worker=0 pid={victim} ", start=mark)
            # Sent while worker 0 is down: its clients' datagrams wait in its socket, which
            # this process keeps open, and the restarted worker reads them.
            for n, sock in enumerate(socks):
                sock.sendto(b"two %d" % n, ("127.0.0.1", port))
            for n, sock in enumerate(socks):
                assert sock.recv(100) == b"two %d" % n
            wait_gone([victim])
            line = fwd.wait_line(r"event=worker-started worker=0 pid=(\d+)", start=mark)
            restarted = fields(line)["pid"]
            served = served_by_worker(fwd)
            # Worker 1's clients kept their flows (no new socket to the target); worker 0's
            # flows died with it, and its clients alone are new flows in its successor.
            assert served["0"] >= 1 and served["1"] >= 1, served
            assert served["0"] + served["1"] == 16, "no client moved to another worker"
            assert len(echo.peers) == 16 + served["0"]
        finally:
            for sock in socks:
                sock.close()
    by_pid: dict[str, int] = {}
    for close in fwd.close_lines:
        by_pid[close["pid"]] = by_pid.get(close["pid"], 0) + 1
    assert by_pid[restarted] == served["0"]


def test_a_reload_reaches_both_workers_udp_sockets(tmp_path: Path) -> None:
    config = tmp_path / "pyforward.toml"
    first_port, second_port = free_udp_port(), free_udp_port()
    with UdpEcho() as first, UdpEcho() as second, UdpEcho() as third:
        config.write_text(
            f'protocol = "udp"\nworkers = 2\n[[route]]\nlisten = "127.0.0.1:{first_port}"\n'
            f'target = "127.0.0.1:{first.port}"\n'
        )
        fwd = ForwarderProcess(["run", "--config", str(config)])
        try:
            fwd.wait_line(r"level=info event=ready workers=2")
            config.write_text(
                config.read_text().replace(str(first.port), str(second.port))
                + f'[[route]]\nlisten = "127.0.0.1:{second_port}"\n'
                f'target = "127.0.0.1:{third.port}"\n'
            )
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line(r"level=info event=reloaded")
            for n in range(16):
                for port in (first_port, second_port):
                    with client() as sock:
                        sock.sendto(b"after %d" % n, ("127.0.0.1", port))
                        assert sock.recv(100) == b"after %d" % n
            # The new flows of the kept route went to its new target, the new route's to its
            # own, from both workers (their sockets to the targets).
            assert not first.peers and len(second.peers) == len(third.peers) == 16
            listening = [line for line in fwd.lines if "event=listen address=udp:" in line]
            assert {fields(line).get("worker") for line in listening} >= {"0", "1"}
        finally:
            assert fwd.stop() == 0
    news = {
        close["worker"] for close in fwd.close_lines if close["listen"].endswith(f":{second_port}")
    }
    assert news == {"0", "1"}, "both workers serve the route the reload added"


def test_the_flow_cap_and_the_per_source_limit_hold_for_the_forwarder_as_a_whole() -> None:
    with (
        UdpEcho() as echo,
        udp_workers(echo.port, "--udp-max-flows", "4", "--metrics", "127.0.0.1:0") as (fwd, port),
    ):
        listen = f'listen="udp:127.0.0.1:{port}"'
        for n in range(20):
            with client() as sock:
                sock.sendto(b"%d" % n, ("127.0.0.1", port))
                assert sock.recv(10) == b"%d" % n
        found = samples(scrape(metrics_port(fwd)))
        # Two flows each at most: the clients past them evicted one-exchange flows.
        assert found[f"pyforward_active_connections{{{listen}}}"] == 4
        assert found[f'pyforward_connections_total{{{listen},reason="flow-evicted"}}'] == 16
    with (
        UdpEcho() as echo,
        udp_workers(echo.port, "--max-connections-per-source", "3", "--metrics", "127.0.0.1:0") as (
            fwd,
            port,
        ),
    ):
        listen = f'listen="udp:127.0.0.1:{port}"'
        socks = [client() for _ in range(12)]
        try:
            for sock in socks:
                sock.sendto(b"x", ("127.0.0.1", port))
            scraped = metrics_port(fwd)
            refused = f'pyforward_refused_total{{{listen},reason="source-limit"}}'

            def all_heard() -> bool:
                found = samples(scrape(scraped))
                return (
                    found.get(refused, 0) + found[f"pyforward_active_connections{{{listen}}}"] == 12
                )

            wait_until(all_heard, "every client admitted or refused")
            found = samples(scrape(scraped))
            # 3 flows for 127.0.0.1 across both workers (the shared table), not 3 each.
            assert found[f"pyforward_active_connections{{{listen}}}"] == 3
            assert found[refused] == 9
            assert len(echo.peers) == 3
        finally:
            for sock in socks:
                sock.close()


def test_a_udp_port_in_use_fails_in_the_main_process_even_against_reuseport() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        # Another process's socket that lets others join its port: a forwarder must not.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        done = run_cli(
            "run",
            "--workers",
            "2",
            "-l",
            f"127.0.0.1:{port}",
            "-t",
            "127.0.0.1:9",
            "--protocol",
            "udp",
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"UDP port {port} is already in use" in errors[0], errors
    assert "worker-started" not in done.stderr


def test_a_udp_socket_systemd_passes_is_served_by_one_worker() -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is missing (Debian package systemd)")
    port = free_udp_port()
    listen = f"127.0.0.1:{port}"
    with UdpEcho() as echo:
        run = ["run", "--workers", "2", "-l", listen, "-t", f"127.0.0.1:{echo.port}"]
        fwd = ForwarderProcess(
            [*run, "--protocol", "udp"], prefix=[activate, "--datagram", "-l", listen]
        )
        try:
            fwd.wait_line(r"Listening on 127\.0\.0\.1:\d+")
            socks = [client() for _ in range(8)]
            try:
                for n, sock in enumerate(socks):
                    sock.sendto(b"%d" % n, ("127.0.0.1", port))
                    assert sock.recv(10) == b"%d" % n
            finally:
                for sock in socks:
                    sock.close()
            fwd.wait_line(rf"level=warning event=udp-one-worker address=udp:{listen}")
            fwd.wait_line(r"level=info event=ready workers=2")
        finally:
            fwd.stop()
    assert {close["worker"] for close in fwd.close_lines} == {"0"}
    assert len(fwd.close_lines) == 8


def test_workers_with_a_unix_listener_are_one_line(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 'in.sock'}"
    done = run_cli("run", "--workers", "2", "-l", listen, "-t", "127.0.0.1:1")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0] and "unix:" in lines[0], lines


def test_systemd_status_adds_up_the_flows_of_both_workers(tmp_path: Path) -> None:
    from tests.test_sdnotify import NotifyListener  # noqa: PLC0415

    path = str(tmp_path / "notify")
    listener = NotifyListener(path)
    with UdpEcho() as echo:
        args = ["-l", "127.0.0.1:0", "-t", f"127.0.0.1:{echo.port}", "--protocol", "udp"]
        fwd = ForwarderProcess(["run", "--workers", "2", *args], env={"NOTIFY_SOCKET": path})
        socks = [client() for _ in range(10)]
        try:
            ready = listener.until("READY")[-1]["STATUS"]
            port = udp_port(fwd)
            assert ready.startswith(f"forwarding udp:127.0.0.1:{port} -> 127.0.0.1:{echo.port};")
            for n, sock in enumerate(socks):
                sock.sendto(b"%d" % n, ("127.0.0.1", port))
                assert sock.recv(10) == b"%d" % n
            status = ready
            while "10 active connections" not in status:
                status = listener.until("STATUS")[-1]["STATUS"]
            served = served_by_worker(fwd)  # both workers' flows in that count
            assert served.keys() == {"0", "1"} and sum(served.values()) == 10, served
            assert all(served.values()), served
        finally:
            for sock in socks:
                sock.close()
            fwd.stop()
            listener.sock.close()


def test_the_first_udp_route_can_come_with_a_reload(tmp_path: Path) -> None:
    from tests.harness import Backend, echo  # noqa: PLC0415

    config = tmp_path / "pyforward.toml"
    udp_listen = free_udp_port()
    with Backend(echo) as backend, UdpEcho() as target:
        config.write_text(
            f'workers = 2\n[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{backend.address}"\n'
        )
        fwd = ForwarderProcess(["run", "--config", str(config)])
        try:
            fwd.wait_line(r"level=info event=ready workers=2")
            config.write_text(
                config.read_text()
                + f'[[route]]\nlisten = "127.0.0.1:{udp_listen}"\nprotocol = "udp"\n'
                f'target = "127.0.0.1:{target.port}"\n'
            )
            fwd.proc.send_signal(signal.SIGHUP)
            fwd.wait_line(r"level=info event=reloaded")
            for n in range(16):
                with client() as sock:
                    sock.sendto(b"%d" % n, ("127.0.0.1", udp_listen))
                    assert sock.recv(10) == b"%d" % n
        finally:
            assert fwd.stop() == 0
    # Both workers started the UDP side on the sockets the reload sent them.
    assert {close["worker"] for close in fwd.close_lines} == {"0", "1"}
