"""The metrics listener cannot starve the forwarder: a flood of idle connections to it is
capped and timed out, forwarding goes on meanwhile, and scrapes answer once they are gone."""

from __future__ import annotations

import selectors
import socket
import time

from pyforward.obs.exporter import HEAD_TIMEOUT, MAX_SCRAPERS
from tests.harness import TIMEOUT, Backend, connect, echo, fields, forwarder
from tests.test_metrics import metrics_port, samples, scrape, wait_until

FLOOD = 200


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes or resets `sock` within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def still_open(socks: list[socket.socket], closing: int) -> list[socket.socket]:
    """Wait until `closing` of `socks` are closed by the peer (or TIMEOUT passed); the rest."""
    open_ = set(socks)
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(socks) - len(open_) < closing and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if closed_by_peer(ready, 0):
                    selector.unregister(ready)
                    open_.discard(ready)
    return [sock for sock in socks if sock in open_]


def forward(port: int, count: int) -> None:
    """`count` connections through the forwarder, one after another, each echoed."""
    for index in range(count):
        with connect(port) as client:
            client.sendall(b"ping %d" % index)
            assert client.recv(64) == b"ping %d" % index


def test_a_flood_of_idle_scrapers_neither_stops_forwarding_nor_scrapes_after_it() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        forward(fwd.port, 20)
        scrape(port)
        baseline = fwd.fd_count()  # the relay's pipes and the scrape's files opened already
        flooded_at = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(FLOOD)]
        # Beyond the cap, each is closed as soon as it is accepted, and that is said once.
        busy = fields(fwd.wait_line("event=metrics-busy"))
        assert busy["level"] == "warning" and busy["serving"] == str(MAX_SCRAPERS)
        held = still_open(idle, FLOOD - MAX_SCRAPERS)
        assert len(held) == MAX_SCRAPERS
        # Forwarding goes on while the flood holds every scrape slot.
        forward(fwd.port, 20)
        # The held ones are dropped once they have sent nothing for HEAD_TIMEOUT.
        for sock in held:
            assert closed_by_peer(sock, HEAD_TIMEOUT + 10)
        assert time.monotonic() - flooded_at >= HEAD_TIMEOUT - 0.5
        for sock in idle:
            sock.close()
        listen = f"127.0.0.1:{fwd.port}"
        eof = f'pyforward_connections_total{{listen="{listen}",reason="eof"}}'
        assert samples(scrape(port))[eof] == 40
        wait_until(lambda: fwd.fd_count() <= baseline, "the flood's descriptors closed")
        assert fwd.proc.poll() is None
        assert fwd.stop() == 0


def test_a_scraper_that_trickles_its_request_is_cut_off() -> None:
    with (
        Backend(echo) as backend,
        forwarder(
            "--listen", "127.0.0.1:0", "--target", backend.address, "--metrics", "127.0.0.1:0"
        ) as fwd,
    ):
        port = metrics_port(fwd)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.settimeout(HEAD_TIMEOUT + 10)
            cut = False
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 100:
                try:
                    slow.sendall(bytes([byte]))
                    time.sleep(0.05)  # the trickle itself, one byte per 50 ms: not a wait
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
            assert cut
        assert HEAD_TIMEOUT - 0.5 <= time.monotonic() - started < HEAD_TIMEOUT + 5
        assert "pyforward_active_connections" in scrape(port)
