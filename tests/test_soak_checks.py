"""The soak suite's own checkers (tests/soak): they must catch what they are there for."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.soak import pattern, procfs
from tests.soak.report import Latency, Outcome, counts, row, size


def test_pattern_catches_a_flipped_byte_a_shift_and_a_repeat() -> None:
    data = pattern.chunk(7, 1000, 4096)
    assert pattern.matches(7, 1000, data)
    flipped = bytearray(data)
    flipped[2048] ^= 1
    assert not pattern.matches(7, 1000, bytes(flipped))
    assert not pattern.matches(7, 1001, data)  # right bytes, wrong place
    assert not pattern.matches(8, 1000, data)  # another stream's bytes
    repeated = data[:2048] + data[:2048]
    assert not pattern.matches(7, 1000, repeated)


def test_pattern_checks_across_the_end_of_its_block() -> None:
    size = pattern.BLOCK_SIZE + 12345
    first = pattern.chunk(3, 0, pattern.BLOCK_SIZE)
    rest = pattern.chunk(3, pattern.BLOCK_SIZE, size - pattern.BLOCK_SIZE)
    assert pattern.matches(3, 0, first + rest)
    assert not pattern.matches(3, 0, first + rest[:-1] + b"?")


def test_stream_header_round_trip_and_garbage() -> None:
    assert pattern.parse_header(pattern.header(42, 10, 20)) == (42, 10, 20)
    with pytest.raises(ValueError, match="not a soak stream header"):
        pattern.parse_header(b"GET / HTTP/1.1\r\nHost: x\r\n"[: pattern.HEADER.size])
    with pytest.raises(ValueError, match="24 bytes"):
        pattern.parse_header(b"SOAK")


def test_tcp_table_finds_a_listening_socket_of_this_process_by_inode() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        inode = os.stat(f"/proc/self/fd/{server.fileno()}").st_ino
        mine = [s for s in procfs.tcp_sockets(os.getpid()) if s.local_port == port]
        assert [(s.state, s.inode) for s in mine] == [("LISTEN", inode)]
        assert procfs.fd_kind(os.readlink(f"/proc/self/fd/{server.fileno()}")) == "socket"
        assert any(s.local_port == port for s in procfs.owned_sockets(os.getpid()))


def test_cpu_seconds_reads_past_a_command_name_with_parentheses() -> None:
    stat = "1234 (evil) (name) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0"
    assert procfs.cpu_seconds(stat, ticks=100) == 3.0
    assert procfs.cpu_seconds(Path("/proc/self/stat").read_text()) > 0


def test_status_bytes_and_usage_of_this_process() -> None:
    assert procfs.status_bytes("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS") == 2 << 20
    usage = procfs.usage(os.getpid())
    assert usage.rss > 0 and usage.peak_rss >= usage.rss
    assert usage.fd_count == len(os.listdir("/proc/self/fd")) - 1  # less the listing's own


def outcome(**changes: object) -> Outcome:
    base: dict[str, object] = {
        "scenario": "churn",
        "loop": "uvloop",
        "relay": "splice",
        "connections": 200_000,
        "verified": 3 << 30,
        "errors": {},
        "closes": {"eof": 199_990, "reset": 10},
        "fds": (14, 80, 16),
        "pooled_pipe_fds": 2,
        "rss": (37 << 20, 38 << 20, 38 << 20),
        "cpu": 41.25,
        "seconds": 90.0,
    }
    return Outcome(**{**base, **changes})  # type: ignore[arg-type]


def test_table_row_shows_pooled_pipes_apart_and_the_verdict() -> None:
    cells = row(outcome())
    assert cells[3:] == (
        "200,000",
        "3.00 GiB",
        "-",
        "eof=199,990 reset=10",
        "14/80/14+2p",
        "37.0/38.0/38.0",
        "41.2",
        "pass",
    )
    assert row(outcome(failures=("RSS grew",)))[-1] == "FAIL"


def test_counts_and_sizes_read_well() -> None:
    assert counts({"reset": 3, "eof-short": 5, "timeout": 0}) == "eof-short=5 reset=3"
    assert counts({}) == "-"
    assert [size(n) for n in (512, 2048, 5 << 20)] == ["512 B", "2.00 KiB", "5.00 MiB"]


def test_latency_takes_nearest_ranks_and_the_slowest() -> None:
    seconds = [0.001 * n for n in range(1, 201)]  # 1 ms .. 200 ms
    latency = Latency.of(list(reversed(seconds)))
    assert (latency.median, latency.p99, latency.slowest) == (0.1, 0.198, 0.2)
    assert str(latency) == "median 100.0 ms, p99 198.0 ms, slowest 200.0 ms"
    assert Latency.of([0.5]) == Latency(0.5, 0.5, 0.5)
    assert Latency.of([]) == Latency(0.0, 0.0, 0.0)
