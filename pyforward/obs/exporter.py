"""The metrics endpoint: GET /metrics, in the Prometheus text format, on the event loop.

On the loop rather than in prometheus_client's own server thread: a scrape then reads the
forwarder's counters between two callbacks, never while a connection is half-way from open
to closed, and needs no lock on the relay's path. A scrape costs the loop about a millisecond,
plus some 6 us per open connection (its counts are read). The server speaks just enough
HTTP/1.1 for a scraper or curl: one request per connection, a bounded request head, then
close.

It must never be a way to starve the forwarder. At most MAX_SCRAPERS connections are served
at once; one more is closed as soon as it is accepted (logged as `event=metrics-busy`, at
most every 5 s), so a flood costs an accept and a close each, never memory or a task that
stays. A client gets HEAD_TIMEOUT seconds to send its request and EXCHANGE_TIMEOUT for the
whole exchange, so idle or slow connections give their place up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from pyforward.config.addresses import Address, format_peer
from pyforward.engine.listeners import bind_addresses, close_all, open_listener
from pyforward.obs.logfmt import logfmt
from pyforward.obs.ratelimit import Every

log = logging.getLogger("pyforward")

_HEAD_LIMIT = 16384  # bytes of request line and headers; a scraper sends a few hundred
# Who scrapes one forwarder at once: a Prometheus or an HA pair, an agent, `pyforward status`
# or `top`, someone's curl; each holds its connection for a few milliseconds. Eight leaves
# room for all of them together, and bounds what a flood holds to eight small tasks.
MAX_SCRAPERS = 8
# A scraper sends its request at once; five seconds allow for a slow network, no more.
HEAD_TIMEOUT = 5.0
# Prometheus gives up on a scrape after its scrape_timeout, 10 s by default.
EXCHANGE_TIMEOUT = 10.0
_BUSY_LOG_INTERVAL = 5.0
# The text format every Prometheus since 2.0 reads (Debian 12's 2.42 among them). Newer
# prometheus_client calls its output 1.0.0, which differs only for names outside
# [a-zA-Z_:][a-zA-Z0-9_:]*, and pyforward's never are.
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """Serves `registry` at /metrics on `address` until `close`."""

    def __init__(
        self,
        address: Address,
        registry: CollectorRegistry,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.registry = registry
        # Awaited before each scrape: worker processes send their counts to the main one.
        self.refresh = refresh
        self.labels: list[str] = []
        self._servers: list[asyncio.Server] = []
        self.serving = 0  # connections being served now
        self.turned_away = 0  # connections closed at accept, the others being served
        self._busy_log = Every(_BUSY_LOG_INTERVAL)

    async def start(self) -> None:
        """Bind where the user said (the listen errors are `run`'s own), then serve."""
        socks = []
        try:
            for family, sockaddr in bind_addresses(self.address):
                socks.append(open_listener(self.address, family, sockaddr, 128))
            for sock in socks:
                self.labels.append(format_peer(sock.getsockname()))
                self._servers.append(await asyncio.start_server(self._handle, sock=sock))
        except BaseException:
            close_all(socks)
            raise
        for label in self.labels:
            log.info(logfmt({"event": "metrics", "address": label, "path": "/metrics"}))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.serving >= MAX_SCRAPERS:
            self._turn_away(writer)
            return
        self.serving += 1
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await self._exchange(reader, writer)
        except (OSError, TimeoutError):
            pass  # the scraper went away, or took too long; nothing to tell it
        finally:
            self.serving -= 1
            writer.transport.abort()  # never waits on a client that does not read

    def _turn_away(self, writer: asyncio.StreamWriter) -> None:
        self.turned_away += 1
        writer.transport.abort()
        if self._busy_log.due(asyncio.get_running_loop().time()):
            fields: dict[str, object] = {
                "event": "metrics-busy",
                "serving": self.serving,
                "closed": self._busy_log.take_suppressed() + 1,
                "msg": f"at most {MAX_SCRAPERS} scrapes at once; closed the ones beyond",
            }
            log.warning(logfmt(fields))

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        if len(head) > _HEAD_LIMIT:
            return
        method, target = _request_line(head)
        path = target.split("?", 1)[0]
        if path != "/metrics":
            status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
        elif method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        else:
            if self.refresh is not None:
                await self.refresh()  # the workers' counts, with --workers
            status, body, kind = "200 OK", generate_latest(self.registry), _CONTENT_TYPE
        headers = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(headers.encode("ascii") + (b"" if method == "HEAD" else body))
        await writer.drain()
        writer.close()
        await writer.wait_closed()


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        return "", ""
    return parts[0], parts[1]
