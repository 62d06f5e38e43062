"""HTTP/3 through a UDP route: a real QUIC server and client (aioquic), TLS from trustme.

The route is what a k3s host runs for the gateway's HTTP/3 port (443/udp): QUIC's
datagrams pass untouched, so the handshake, the streams and the answer are end to end.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import trustme
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from tests.harness import TIMEOUT, ForwarderProcess
from tests.udp_peers import free_udp_port, udp_port

BODY = b"hello over h3 " * 5000  # 70 kB: many QUIC packets each way


class H3Server(QuicConnectionProtocol):
    """Answers every request with BODY and the request's path in a header."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._http = H3Connection(self._quic)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self._http.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                path = dict(h3_event.headers)[b":path"]
                self._http.send_headers(
                    h3_event.stream_id,
                    [(b":status", b"200"), (b"x-path", path)],
                )
                self._http.send_data(h3_event.stream_id, BODY, end_stream=True)
        self.transmit()


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._http = H3Connection(self._quic)
        self._answers: dict[int, asyncio.Future[list[H3Event]]] = {}
        self._events: dict[int, list[H3Event]] = {}

    async def get(self, authority: str, path: str) -> list[H3Event]:
        stream_id = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        answer: asyncio.Future[list[H3Event]] = asyncio.get_running_loop().create_future()
        self._answers[stream_id] = answer
        self._events[stream_id] = []
        self.transmit()
        return await asyncio.wait_for(answer, TIMEOUT)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self._http.handle_event(event):
            if isinstance(h3_event, HeadersReceived | DataReceived):
                self._events[h3_event.stream_id].append(h3_event)
                if h3_event.stream_ended:
                    self._answers[h3_event.stream_id].set_result(self._events[h3_event.stream_id])


async def _exchange(ca: trustme.CA, server_port: int, route_port: int, tmp: Path) -> None:
    cert = ca.issue_cert("gateway.test")
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server_config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    server_config.load_cert_chain(str(cert_file), str(key_file))
    server = await serve(
        "127.0.0.1", server_port, configuration=server_config, create_protocol=H3Server
    )
    try:
        client_config = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name="gateway.test",
            verify_mode=ssl.CERT_REQUIRED,
        )
        ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client_config.load_verify_locations(str(ca_file))
        async with connect(
            "127.0.0.1", route_port, configuration=client_config, create_protocol=H3Client
        ) as client:
            assert isinstance(client, H3Client)
            for path in ("/first", "/second"):
                events = await client.get("gateway.test", path)
                headers = dict(next(e for e in events if isinstance(e, HeadersReceived)).headers)
                assert headers[b":status"] == b"200" and headers[b"x-path"] == path.encode()
                body = b"".join(e.data for e in events if isinstance(e, DataReceived))
                assert body == BODY
    finally:
        server.close()


def test_http3_through_a_udp_route(tmp_path: Path) -> None:
    server_port = free_udp_port()
    process = ForwarderProcess(
        [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{server_port}",
            "--protocol",
            "udp",
        ]
    )
    try:
        route_port = udp_port(process)
        asyncio.run(_exchange(trustme.CA(), server_port, route_port, tmp_path))
    finally:
        assert process.stop() == 0
    (flow,) = [line for line in process.close_lines if line["relay"] == "udp"]
    assert int(flow["down"]) > 2 * len(BODY)  # both bodies came back through the flow
    assert int(flow["datagrams_up"]) > 10 and "dropped" not in flow
