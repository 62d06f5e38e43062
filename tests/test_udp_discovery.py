"""A UDP route following the gateway Service's UDP port (HTTP/3 on 443/udp) through
discovery: the test API server, the real kubernetes client, a UDP echo as the NodePort."""

from __future__ import annotations

import re
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyforward.discovery.errors import PortNotFound
from pyforward.discovery.model import parse_services, pick_port
from tests.harness import ForwarderProcess
from tests.kubeapi import KubeApi, node, service
from tests.test_discovery_cli import clean_env
from tests.udp_peers import UdpEcho, free_udp_port

TCP_NODE_PORT = 31443


def gateway_with_http3(udp_node_port: int) -> dict[str, object]:
    """The gateway Service as Istio lists it with HTTP/3: 443 twice, TCP and UDP."""
    obj = service(ports=(("https", 443, TCP_NODE_PORT), ("http3", 443, udp_node_port)))
    ports = obj["spec"]["ports"]
    ports[1]["protocol"] = "UDP"
    return obj


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    api = KubeApi(tmp_path)
    api.start()
    api.put_node(node("node-b", "127.0.0.1"))
    yield api
    api.stop()


def test_a_udp_route_follows_the_services_udp_port(kube: KubeApi, tmp_path: Path) -> None:
    with UdpEcho() as echo:
        kube.put_service(gateway_with_http3(echo.port))
        config = tmp_path / "pyforward.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                discover = true
                kubeconfig = "{kube.kubeconfig}"
                state_dir = "{tmp_path / "state"}"
                [[route]]
                listen = "127.0.0.1:{free_udp_port()}"
                service_port = "443"
                [[route]]
                listen = "127.0.0.1:0"
                service_port = "443"
                protocol = "udp"
                """
            )
        )
        process = ForwarderProcess(["run", "--config", str(config)], env=clean_env(tmp_path))
        try:
            tcp = process.wait_line(r"event=listen address=127\.0\.0\.1:")
            udp = process.wait_line(r"event=listen address=udp:127\.0\.0\.1:")
            assert tcp.endswith(f"target=127.0.0.1:{TCP_NODE_PORT}")
            assert udp.endswith(f"target=127.0.0.1:{echo.port}")
            match = re.search(r"address=udp:127\.0\.0\.1:(\d+)", udp)
            assert match is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(b"quic-ish", ("127.0.0.1", int(match.group(1))))
                assert client.recv(100) == b"quic-ish"
        finally:
            assert process.stop() == 0


def test_a_port_of_the_other_protocol_is_named_in_the_error() -> None:
    (gateway,) = parse_services([gateway_with_http3(30443)]).objects
    assert pick_port(gateway, "443").protocol == "TCP"
    assert pick_port(gateway, "443/udp").node_port == 30443
    assert pick_port(gateway, "http3/udp").node_port == 30443
    with pytest.raises(PortNotFound, match=r"port http3 \(443/UDP\) is UDP, and a TCP route"):
        pick_port(gateway, "http3")
    with pytest.raises(PortNotFound, match=r"port https \(443/TCP\) is TCP, and a UDP route"):
        pick_port(gateway, "https/udp")
