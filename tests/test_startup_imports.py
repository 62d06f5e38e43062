"""What `pyforward run` loads: a TCP forward imports the engine and nothing else of the program.
The other commands (install, status, uninstall, check, top, discover, pyforward-socat) and the
optional parts (the UDP relay, workers, metrics, discovery) are imported once they are used.

`python -X importtime` lists on stderr every module a process imports, when it imports it,
in the order of the log lines beside it: the check a user makes of a slow start."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from tests.harness import TIMEOUT, Backend, ForwarderProcess, connect, echo, fields
from tests.udp_peers import UdpEcho, free_udp_port

IMPORTTIME = (sys.executable, "-X", "importtime", "-m", "pyforward")

# Packages (and modules) a TCP forward with neither metrics nor discovery never needs.
NOT_FOR_TCP = (
    "pyforward.systemd.install",
    "pyforward.systemd.installation",
    "pyforward.systemd.units",
    "pyforward.systemd.status",
    "pyforward.systemd.systemctl",
    "pyforward.systemd.procnet",
    "pyforward.cli.check",
    "pyforward.cli.top",
    "pyforward.socat",
    "pyforward.datagram",
    "pyforward.workers",
    "pyforward.obs.metrics",
    "pyforward.obs.exporter",
    "pyforward.obs.live",
    "pyforward.discovery.runtime",
    "pyforward.discovery.api",
    "kubernetes",
    "prometheus_client",
    "rich",
)


def imported(lines: list[str]) -> list[str]:
    """The modules of `-X importtime` lines, in the order they were imported."""
    return [
        line.rsplit("|", 1)[1].strip()
        for line in lines
        if line.startswith("import time:") and "imported package" not in line
    ]


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_a_tcp_forward_imports_no_other_command_and_no_optional_part() -> None:
    with Backend(echo) as backend:
        process = ForwarderProcess(
            ["run", "--listen", "127.0.0.1:0", "--target", backend.address], program=IMPORTTIME
        )
        try:
            with connect(process.port) as client:
                client.sendall(b"through")
                assert client.recv(16) == b"through"
            process.closes(1)  # the whole connection path has run: accept to close line
        finally:
            assert process.stop() == 0
    loaded = imported(process.lines)
    assert "pyforward.engine.runtime" in loaded and "pyforward.relay.pump" in loaded
    assert [module for module in loaded if within(module, NOT_FOR_TCP)] == []


def test_a_reload_that_adds_a_udp_route_loads_the_udp_relay_then(tmp_path: Path) -> None:
    config = tmp_path / "pyforward.toml"
    with Backend(echo) as backend, UdpEcho() as udp_echo:
        tcp_route = f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{backend.address}"\n'
        config.write_text(tcp_route)
        process = ForwarderProcess(["run", "--config", str(config)], program=IMPORTTIME)
        try:
            process.wait_line(r"event=listen ")
            udp_port = free_udp_port()
            config.write_text(
                f'{tcp_route}[[route]]\nlisten = "127.0.0.1:{udp_port}"\n'
                f'target = "127.0.0.1:{udp_echo.port}"\nprotocol = "udp"\n'
            )
            process.proc.send_signal(signal.SIGHUP)
            process.wait_line(r"event=reloaded")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(TIMEOUT)
                client.sendto(b"datagram", ("127.0.0.1", udp_port))
                assert client.recv(16) == b"datagram"
            process.proc.send_signal(signal.SIGUSR1)
            counts = fields(process.wait_line(r"event=counts .*listen=udp:"))
            assert (counts["served"], counts["target"]) == ("1", f"127.0.0.1:{udp_echo.port}")
        finally:
            assert process.stop() == 0
    lines = process.lines
    reloading = next(i for i, line in enumerate(lines) if "event=reloading" in line)
    # Not at start: with the first UDP route, on the reload that brought it.
    assert "pyforward.datagram.server" not in imported(lines[:reloading])
    assert "pyforward.datagram.server" in imported(lines[reloading:])
