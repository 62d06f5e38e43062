"""The signals of a real `pyforward run` process beyond the ordered shutdown and reload
(those are in test_lifecycle.py and test_reload.py): SIGUSR1's counts, a second SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
import time

from tests.harness import Backend, connect, echo, fields, forwarder, reads_until_closed


def test_sigusr1_logs_each_routes_counts_and_keeps_serving() -> None:
    with (
        Backend(echo) as first,
        Backend(echo) as second,
        forwarder(
            "--route", f"127.0.0.1:0={first.address}", "--route", f"127.0.0.1:0={second.address}"
        ) as fwd,
    ):
        (_, port_a), (_, port_b) = fwd.listen_addresses(2)
        done = connect(port_a)
        done.sendall(b"x")
        assert done.recv(1) == b"x"
        done.close()
        fwd.closes(1)
        held = connect(port_a)
        held.sendall(b"y")
        assert held.recv(1) == b"y"
        for _ in range(3):  # never terminates, however often
            fwd.proc.send_signal(signal.SIGUSR1)
        lines = [fwd.wait_line("event=counts", start=0)]
        start = fwd.lines.index(lines[0]) + 1
        lines.append(fwd.wait_line("event=counts", start=start))
        counts = {fields(line)["listen"]: fields(line) for line in lines}
        a, b = counts[f"127.0.0.1:{port_a}"], counts[f"127.0.0.1:{port_b}"]
        assert (a["active"], a["served"], a["target"]) == ("1", "2", first.address)
        assert (b["active"], b["served"], b["target"]) == ("0", "0", second.address)
        # Still forwarding, on the connection held and on a new one.
        held.sendall(b"z")
        assert held.recv(1) == b"z"
        held.close()
        with connect(port_b) as client:
            client.sendall(b"w")
            assert client.recv(1) == b"w"
        assert fwd.proc.poll() is None
        assert fwd.stop() == 0


def test_a_second_sigterm_during_the_drain_stops_at_once() -> None:
    accepted = threading.Event()
    finished = threading.Event()

    def never_done(conn: socket.socket) -> None:
        accepted.set()
        finished.wait(60)

    with (
        Backend(never_done) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--shutdown-timeout", "60"
        ) as fwd,
    ):
        client = connect(fwd.port)
        client.sendall(b"x")
        assert accepted.wait(10)
        fwd.proc.send_signal(signal.SIGTERM)
        fwd.wait_line("event=draining")
        asked = time.monotonic()
        fwd.proc.send_signal(signal.SIGTERM)
        stop_now = fields(fwd.wait_line("event=stop-now"))
        assert stop_now["active"] == "1"
        _, error = reads_until_closed(client)
        client.close()
        assert fwd.proc.wait(10) == 0
        assert time.monotonic() - asked < 10  # not the 60 s the drain had
        assert isinstance(error, ConnectionResetError)  # cut short, and the client knows
        assert fwd.closes(1)[0]["reason"] == "shutdown"
        finished.set()


def test_sigusr1_at_debug_lists_each_open_connection_and_keeps_serving() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--log-level", "debug"
        ) as fwd,
    ):
        listen = f"127.0.0.1:{fwd.port}"
        small, large = connect(fwd.port), connect(fwd.port)
        opened = {}
        for client, payload in ((small, b"hello"), (large, b"x" * 70_000)):
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += client.recv(65536)
            peer = _name(client)
            opened[peer] = fields(fwd.wait_line(f"event=open .*client={peer}"))["id"]
        fwd.proc.send_signal(signal.SIGUSR1)
        first = fwd.wait_line("event=counts")
        start = fwd.lines.index(first)
        listed = [fwd.wait_line("event=connection", start=start)]
        listed.append(fwd.wait_line("event=connection", start=fwd.lines.index(listed[0]) + 1))
        by_client = {fields(line)["client"]: fields(line) for line in listed}
        assert set(by_client) == set(opened)
        sizes = {_name(small): 5, _name(large): 70_000}
        for name, line in by_client.items():
            size = sizes[name]
            assert line["id"] == opened[name]  # the id of its open line, and of its close
            assert (line["listen"], line["target"]) == (listen, backend.address)
            assert (line["up"], line["down"]) == (str(size), str(size))
            assert line["level"] == "debug"
            assert 0 <= float(line["age"]) < 60
        # Never terminates; the connections go on, and a second listing shows them older.
        small.sendall(b"again")
        assert small.recv(5) == b"again"
        fwd.proc.send_signal(signal.SIGUSR1)
        later = fwd.wait_line(
            f"event=connection id={opened[_name(small)]} ", start=fwd.lines.index(listed[1]) + 1
        )
        assert fields(later)["up"] == "10"
        assert float(fields(later)["age"]) >= float(by_client[_name(small)]["age"])
        small.close()
        large.close()
        fwd.closes(2)
        assert fwd.proc.poll() is None
        assert fwd.stop() == 0


def test_sigusr1_at_info_lists_no_connection() -> None:
    with (
        Backend(echo) as backend,
        forwarder("--listen", "127.0.0.1:0", "--target", backend.address) as fwd,
    ):
        client = connect(fwd.port)
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        fwd.proc.send_signal(signal.SIGUSR1)
        fwd.wait_line("event=counts")
        client.close()  # its close line comes after anything the signal wrote
        fwd.closes(1)
        assert fields(fwd.wait_line("event=counts"))["active"] == "1"
        assert not [line for line in fwd.lines if "event=connection" in line]
        assert fwd.stop() == 0


def _name(client: socket.socket) -> str:
    """A client as the forwarder's lines name it."""
    host, port = client.getsockname()[:2]
    return f"{host}:{port}"
