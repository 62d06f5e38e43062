"""UDP peers for tests: dnsmasq answering locally, DNS queries in wire format, an echo server.

dnsmasq runs with `--no-resolv --no-hosts`: it answers `example.test` itself and has no
upstream to forward anything to, so no query leaves the machine.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TIMEOUT, ForwarderProcess

DNS_NAME = "example.test"
DNS_ADDRESS = "127.0.0.5"
_UDP_LISTEN = re.compile(r"event=listen address=udp:(\S+):(\d+)")


def free_udp_port() -> int:
    """A port free on 127.0.0.1 for UDP and for TCP (dnsmasq binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def dns_query(query_id: int, name: str = DNS_NAME) -> bytes:
    """An A query for `name` (RFC 1035 4.1), recursion desired."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def dns_answer(reply: bytes) -> tuple[int, list[str]]:
    """The id of a reply and the IPv4 addresses of its A answers."""
    query_id, _flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    pos = 12
    for _ in range(questions):
        pos = _skip_name(reply, pos) + 4
    found = []
    for _ in range(answers):
        pos = _skip_name(reply, pos)
        kind, _cls, _ttl, length = struct.unpack("!HHIH", reply[pos : pos + 10])
        pos += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += length
    return query_id, found


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        pos += 1 + length


def ask(port: int, query_id: int, host: str = "127.0.0.1", timeout: float = 5.0) -> list[str]:
    """One query through `port`, its reply's addresses (the reply's id must match)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(dns_query(query_id), (host, port))
        reply_id, addresses = dns_answer(sock.recv(4096))
    assert reply_id == query_id
    return addresses


@contextlib.contextmanager
def dnsmasq(tmp_path: Path) -> Iterator[int]:
    """dnsmasq on 127.0.0.1:PORT answering example.test with 127.0.0.5; yields PORT."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq)")
    port = free_udp_port()
    proc = subprocess.Popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--address=/{DNS_NAME}/{DNS_ADDRESS}",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--log-facility=-",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--user=" + _user(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_answers(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _user() -> str:
    import pwd  # noqa: PLC0415

    return pwd.getpwuid(__import__("os").getuid()).pw_name


def _wait_answers(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"dnsmasq exited ({proc.returncode}): {err}")
        with contextlib.suppress(OSError):
            if ask(port, 1, timeout=0.2) == [DNS_ADDRESS]:
                return
    raise AssertionError("dnsmasq did not answer")


class UdpEcho:
    """A threaded UDP server on 127.0.0.1:0 sending every datagram back as it came."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.peers: set[tuple[str, int]] = set()  # (host, port) of each sender
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.add((str(peer[0]), int(peer[1])))
            with contextlib.suppress(OSError):
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sock.close()

    def __enter__(self) -> UdpEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def udp_port(process: ForwarderProcess) -> int:
    """The port of the forwarder's (first) UDP listener, from its `event=listen` line."""
    match = _UDP_LISTEN.search(process.wait_line(_UDP_LISTEN.pattern))
    assert match is not None
    return int(match.group(2))


def dig_answers(port: int, timeout: float) -> list[str]:
    """What dig (a real resolver client) gets for DNS_NAME from 127.0.0.1:`port`."""
    answer = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), DNS_NAME, "+short", "+tries=1", "+time=5"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return answer.stdout.split()
