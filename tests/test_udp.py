"""UDP routes end to end: dnsmasq and dig behind `pyforward run --protocol udp`, datagram
sizes through an echo server, idle expiry, the flow cap, allow/deny and per-source limits."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TIMEOUT, ForwarderProcess, fields
from tests.udp_peers import (
    DNS_ADDRESS,
    UdpEcho,
    ask,
    dig_answers,
    dns_answer,
    dns_query,
    dnsmasq,
    free_udp_port,
)
from tests.udp_peers import udp_port as _udp_port


def _route(target_port: int, *extra: str) -> ForwarderProcess:
    return ForwarderProcess(
        [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{target_port}",
            "--protocol",
            "udp",
            *extra,
        ]
    )


@pytest.fixture
def dns_port(tmp_path: Path) -> Iterator[int]:
    with dnsmasq(tmp_path) as port:
        yield port


@pytest.fixture
def echo() -> Iterator[UdpEcho]:
    with UdpEcho() as server:
        yield server


def _client(source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((source, 0))
    sock.settimeout(5.0)
    return sock


def test_dig_answers_through_a_udp_route(dns_port: int) -> None:
    process = _route(dns_port)
    try:
        port = _udp_port(process)
        if shutil.which("dig") is None:
            pytest.skip("dig is not installed (Debian package bind9-dnsutils)")
        assert dig_answers(port, TIMEOUT) == [DNS_ADDRESS]
    finally:
        assert process.stop() == 0
    close = [line for line in process.close_lines if line["relay"] == "udp"]
    assert close and close[0]["reason"] == "shutdown"
    assert close[0]["datagrams_up"] == "1" and close[0]["datagrams_down"] == "1"


def test_2000_queries_from_20_clients_each_reply_matched(dns_port: int) -> None:
    """Every reply reaches the client that asked, with the id of its own query."""
    process = _route(dns_port)
    try:
        port = _udp_port(process)
        failures: list[str] = []
        answered = [0] * 20

        def client(index: int) -> None:
            with _client() as sock:
                for n in range(100):
                    query_id = index * 1000 + n  # unique across all clients
                    sock.sendto(dns_query(query_id), ("127.0.0.1", port))
                    try:
                        reply_id, addresses = dns_answer(sock.recv(4096))
                    except TimeoutError:
                        failures.append(f"client {index}: no reply to {query_id}")
                        return
                    if reply_id != query_id or addresses != [DNS_ADDRESS]:
                        failures.append(f"client {index}: {query_id} got {reply_id} {addresses}")
                        return
                    answered[index] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        assert not failures, failures[:5]
        assert sum(answered) == 2000
    finally:
        assert process.stop() == 0
    # One flow per client socket, each with its 100 queries and 100 replies.
    flows = [line for line in process.close_lines if line["relay"] == "udp"]
    assert len(flows) == 20
    assert {(f["datagrams_up"], f["datagrams_down"]) for f in flows} == {("100", "100")}


@pytest.mark.parametrize("size", [1, 1400, 65000])
def test_datagrams_keep_their_size_and_bounds(echo: UdpEcho, size: int) -> None:
    """Three datagrams back to back come back as three, each byte-exact: never merged,
    split or truncated."""
    process = _route(echo.port)
    try:
        port = _udp_port(process)
        sent = [bytes([seed]) * size for seed in (0x41, 0x42, 0x43)]
        sent = [data[:-1] + bytes([i]) for i, data in enumerate(sent)]
        with _client() as sock:
            for data in sent:
                sock.sendto(data, ("127.0.0.1", port))
            got = [sock.recv(65536) for _ in sent]
        assert got == sent
    finally:
        assert process.stop() == 0
    (flow,) = [line for line in process.close_lines if line["relay"] == "udp"]
    assert flow["up"] == flow["down"] == str(3 * size)
    assert flow["datagrams_up"] == "3" and "dropped" not in flow


def test_a_flow_closes_after_its_idle_timeout(dns_port: int) -> None:
    process = _route(dns_port, "--udp-idle-timeout", "0.3")
    try:
        port = _udp_port(process)
        assert ask(port, 7) == [DNS_ADDRESS]
        line = fields(process.wait_line(r"event=close .*reason=idle-timeout"))
        assert line["relay"] == "udp" and line["listen"] == f"udp:127.0.0.1:{port}"
        assert 0.3 <= float(line["dur"]) < 5
        # The client's next query starts a new flow, answered as the first was.
        assert ask(port, 8) == [DNS_ADDRESS]
    finally:
        assert process.stop() == 0


def test_replies_reach_the_client_that_sent(echo: UdpEcho) -> None:
    """Two clients: each flow has its own socket to the target, so each gets its own data."""
    process = _route(echo.port)
    try:
        port = _udp_port(process)
        with _client() as first, _client() as second:
            first.sendto(b"first", ("127.0.0.1", port))
            second.sendto(b"second", ("127.0.0.1", port))
            assert first.recv(100) == b"first"
            assert second.recv(100) == b"second"
        assert len(echo.peers) == 2  # the target saw two sources, one per flow
    finally:
        process.stop()


def test_the_flow_cap_evicts_one_exchange_flows_and_keeps_assured_ones(echo: UdpEcho) -> None:
    process = _route(echo.port, "--udp-max-flows", "2")
    try:
        port = _udp_port(process)
        target = ("127.0.0.1", port)
        with _client() as assured, _client() as once, _client() as third, _client() as fourth:
            for _ in range(2):  # two datagrams each way: an assured flow
                assured.sendto(b"a", target)
                assert assured.recv(10) == b"a"
            once.sendto(b"o", target)
            assert once.recv(10) == b"o"
            # At the cap: the one-exchange flow makes room, the assured one stays.
            third.sendto(b"t", target)
            assert third.recv(10) == b"t"
            evicted = fields(process.wait_line(r"event=close .*reason=flow-evicted"))
            assert evicted["client"] == f"127.0.0.1:{once.getsockname()[1]}"
            third.sendto(b"t", target)
            assert third.recv(10) == b"t"  # now assured too
            # Both flows assured: a new client is refused, and told of in the log.
            fourth.sendto(b"f", target)
            refused = fields(process.wait_line(r"event=refused .*reason=flow-limit"))
            assert refused["listen"] == f"udp:127.0.0.1:{port}"
            fourth.settimeout(0.3)
            with pytest.raises(TimeoutError):
                fourth.recv(10)
            assured.sendto(b"still", target)
            assert assured.recv(10) == b"still"
    finally:
        process.stop()


def test_deny_drops_and_logs_allow_lets_in(echo: UdpEcho) -> None:
    process = _route(echo.port, "--deny", "127.0.0.1/32")
    try:
        port = _udp_port(process)
        with _client("127.0.0.1") as denied, _client("127.0.0.2") as allowed:
            denied.sendto(b"no", ("127.0.0.1", port))
            line = fields(process.wait_line(r"event=refused .*reason=denied"))
            assert line["client"] == "127.0.0.1"
            allowed.sendto(b"yes", ("127.0.0.1", port))
            assert allowed.recv(10) == b"yes"
            denied.settimeout(0.2)
            with pytest.raises(TimeoutError):
                denied.recv(10)
        assert {peer for peer, _ in echo.peers} == {"127.0.0.1"}  # the forwarder's socket
        assert len(echo.peers) == 1
    finally:
        process.stop()


def test_per_source_limit_counts_flows(echo: UdpEcho) -> None:
    process = _route(echo.port, "--max-connections-per-source", "1")
    try:
        port = _udp_port(process)
        with _client() as first, _client() as second:
            first.sendto(b"1", ("127.0.0.1", port))
            assert first.recv(10) == b"1"
            second.sendto(b"2", ("127.0.0.1", port))
            line = fields(process.wait_line(r"event=refused .*reason=source-limit"))
            assert line["client"] == "127.0.0.1"
    finally:
        process.stop()


def test_a_target_that_is_not_there_closes_the_flow_as_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    process = _route(closed_port)
    try:
        port = _udp_port(process)
        with _client() as sock:
            sock.sendto(b"x", ("127.0.0.1", port))
            line = fields(process.wait_line(r"event=close .*reason=refused"))
        assert line["relay"] == "udp" and line["datagrams_up"] == "1"
        assert line["datagrams_down"] == "0"
    finally:
        assert process.stop() == 0


def test_flows_are_connections_in_the_metrics(echo: UdpEcho) -> None:
    from tests.test_metrics import metrics_port, scrape  # noqa: PLC0415

    process = _route(
        echo.port, "--udp-idle-timeout", "0.5", "--deny", "127.0.0.3", "--metrics", "127.0.0.1:0"
    )
    try:
        port = _udp_port(process)
        listen = f'listen="udp:127.0.0.1:{port}"'
        with _client() as sock, _client("127.0.0.3") as denied:
            for data in (b"one", b"two", b"three"):
                sock.sendto(data, ("127.0.0.1", port))
                assert sock.recv(10) == data
            denied.sendto(b"no", ("127.0.0.1", port))
            process.wait_line(r"event=refused .*reason=denied")
            text = scrape(metrics_port(process))
            assert f"pyforward_active_connections{{{listen}}} 1.0" in text
            assert f'pyforward_bytes_total{{direction="up",{listen}}} 11.0' in text
            assert f'pyforward_datagrams_total{{direction="down",{listen}}} 3.0' in text
            assert f'pyforward_refused_total{{{listen},reason="denied"}} 1.0' in text
            process.wait_line(r"event=close .*reason=idle-timeout")
            text = scrape(metrics_port(process))
        assert f"pyforward_active_connections{{{listen}}} 0.0" in text
        assert f'pyforward_connections_total{{{listen},reason="idle-timeout"}} 1.0' in text
        assert f'pyforward_bytes_total{{direction="down",{listen}}} 11.0' in text
        assert f'pyforward_datagrams_dropped_total{{direction="up",{listen}}} 0.0' in text
    finally:
        assert process.stop() == 0


def _socat(*args: str) -> ForwarderProcess:
    from tests.seed_in_netns import pyforward_socat  # noqa: PLC0415

    return ForwarderProcess(list(args), program=pyforward_socat())


def test_pyforward_socat_udp_listen_fork_serves_dig_and_many_peers(dns_port: int) -> None:
    listen_port = free_udp_port()
    process = _socat(f"UDP-LISTEN:{listen_port},fork,reuseaddr", f"UDP:127.0.0.1:{dns_port}")
    try:
        assert _udp_port(process) == listen_port
        if shutil.which("dig") is not None:
            assert dig_answers(listen_port, TIMEOUT) == [DNS_ADDRESS]
        for query_id in range(100, 110):  # a new peer (socket) each time
            assert ask(listen_port, query_id) == [DNS_ADDRESS]
    finally:
        assert process.stop() == 0


def test_pyforward_socat_udp_listen_without_fork_serves_one_peer_then_exits(echo: UdpEcho) -> None:
    listen_port = free_udp_port()
    process = _socat("-T", "0.5", f"UDP4-LISTEN:{listen_port}", f"UDP4:127.0.0.1:{echo.port}")
    try:
        _udp_port(process)
        with _client() as first, _client() as second:
            first.sendto(b"first", ("127.0.0.1", listen_port))
            assert first.recv(10) == b"first"
            second.sendto(b"second", ("127.0.0.1", listen_port))  # another peer: ignored
            second.settimeout(0.3)
            with pytest.raises(TimeoutError):
                second.recv(10)
            first.sendto(b"again", ("127.0.0.1", listen_port))
            assert first.recv(10) == b"again"
        # The peer's flow ends after -T idle seconds, and with it the process.
        assert process.proc.wait(TIMEOUT) == 0
    finally:
        process.stop()
    (flow,) = [line for line in process.close_lines if line["relay"] == "udp"]
    assert flow["reason"] == "idle-timeout" and flow["datagrams_up"] == "2"


def test_check_binds_udp_and_hears_a_refusing_target(echo: UdpEcho) -> None:
    from tests.harness import run_cli  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        done = run_cli(
            "check",
            "--route",
            f"127.0.0.1:{busy}=127.0.0.1:{closed}",
            "--route",
            f"127.0.0.1:0=127.0.0.1:{echo.port}",
            "--protocol",
            "udp",
        )
    lines = done.stdout.splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"error: listen udp:127.0.0.1:{busy}: cannot listen on 127.0.0.1:{busy}: "
        f"UDP port {busy} is already in use"
    ) in "\n".join(lines)
    assert any(
        line.startswith(f"warning: target udp:127.0.0.1:{closed}: nothing receives datagrams")
        for line in lines
    )
    assert f"ok: target udp:127.0.0.1:{echo.port}: answers a datagram" in lines


def test_a_udp_route_serves_on_a_datagram_socket_systemd_passes(echo: UdpEcho) -> None:
    """systemd-socket-activate --datagram holds the UDP socket (ListenDatagram=) and starts
    pyforward on the first datagram, which pyforward then reads from the passed socket."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is missing (Debian package systemd)")
    from tests.seed_in_netns import pyforward_socat  # noqa: PLC0415

    pyforward = str(Path(pyforward_socat()[0]).with_name("pyforward"))
    port = free_udp_port()
    target = f"127.0.0.1:{echo.port}"
    listen = f"127.0.0.1:{port}"
    run = [pyforward, "run", "--listen", listen, "--target", target, "--protocol", "udp"]
    process = ForwarderProcess(["--datagram", "-l", listen, *run], program=(activate,))
    try:
        process.wait_line(r"Listening on 127\.0\.0\.1:\d+")
        with _client() as sock:
            sock.sendto(b"first, before pyforward runs", ("127.0.0.1", port))
            assert sock.recv(100) == b"first, before pyforward runs"
        process.wait_line(r"event=socket-activated address=127\.0\.0\.1:" + str(port))
        assert "event=not-socket-activated" not in process.output()
    finally:
        process.stop()


def test_reload_sends_new_flows_to_the_new_target_and_keeps_open_ones(tmp_path: Path) -> None:
    import signal  # noqa: PLC0415

    config = tmp_path / "pyforward.toml"
    with UdpEcho() as first, UdpEcho() as second:
        config.write_text(
            f'protocol = "udp"\n[[route]]\nlisten = "127.0.0.1:0"\n'
            f'target = "127.0.0.1:{first.port}"\n'
        )
        process = ForwarderProcess(["run", "--config", str(config)])
        try:
            port = _udp_port(process)
            with _client() as early:
                early.sendto(b"a", ("127.0.0.1", port))
                assert early.recv(10) == b"a"
                config.write_text(config.read_text().replace(str(first.port), str(second.port)))
                process.proc.send_signal(signal.SIGHUP)
                process.wait_line(r"event=reloaded")
                with _client() as late:
                    late.sendto(b"b", ("127.0.0.1", port))
                    assert late.recv(10) == b"b"
                early.sendto(b"c", ("127.0.0.1", port))
                assert early.recv(10) == b"c"
                process.proc.send_signal(signal.SIGUSR1)
                counts = fields(process.wait_line(r"event=counts .*listen=udp:"))
                assert (counts["active"], counts["served"]) == ("2", "2")
                assert counts["target"] == f"127.0.0.1:{second.port}"
            assert len(first.peers) == 1 and len(second.peers) == 1
        finally:
            assert process.stop() == 0
    targets = {line["client"]: line["target"] for line in process.close_lines}
    assert sorted(targets.values()) == sorted(
        [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
    )


def test_an_ipv6_udp_route() -> None:
    with UdpEcho("::1") as echo:
        process = ForwarderProcess(
            ["run", "--listen", "[::1]:0", "--target", f"[::1]:{echo.port}", "--protocol", "udp"]
        )
        try:
            line = process.wait_line(r"event=listen address=udp:\[::1\]:\d+")
            port = int(line.split("]:")[1].split()[0])
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(b"six" * 500, ("::1", port))
                assert sock.recv(2000) == b"six" * 500
                client = sock.getsockname()[1]
        finally:
            assert process.stop() == 0
    (flow,) = process.close_lines
    assert flow["client"] == f"[::1]:{client}" and flow["target"] == f"[::1]:{echo.port}"


def test_a_target_that_turns_from_one_answer_to_bursts_loses_nothing() -> None:
    """A flow whose target answers one datagram at a time reads one per wakeup; when the
    target starts sending many at once, every one still reaches the client, in order."""
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(5.0)

    def serve() -> None:
        while True:
            try:
                data, peer = target.recvfrom(100)
            except OSError:
                return
            count = int(data.split(b" ")[1])
            for index in range(count):
                target.sendto(b"%d" % index, peer)

    threading.Thread(target=serve, daemon=True).start()
    process = _route(target.getsockname()[1])
    try:
        port = _udp_port(process)
        with _client() as client:
            for _ in range(10):  # answers of one: the flow reads singly
                client.sendto(b"send 1", ("127.0.0.1", port))
                assert client.recv(100) == b"0"
            for count in (200, 3, 1, 150):
                client.sendto(b"send %d" % count, ("127.0.0.1", port))
                got = [client.recv(100) for _ in range(count)]
                assert got == [b"%d" % index for index in range(count)]
    finally:
        process.stop()
        target.close()
