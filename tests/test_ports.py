"""Reading who listens where from /proc, exactly."""

from __future__ import annotations

import os
import socket

from pyforward.config.addresses import parse_listen
from pyforward.engine.listeners import is_listener_for
from pyforward.systemd.procnet import (
    ListeningSocket,
    exactly,
    listening_sockets,
    overlaps,
    owners,
    parse_proc_net_tcp,
)

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
"""
ZERO6 = "0" * 32


def tcp6_line(local: str, inode: int) -> str:
    """One /proc/net/tcp6 row in the kernel's layout: sl, local, remote, state, ..., inode."""
    return f"   0: {local} {ZERO6}:0000 0A 00000000:00000000 00:00000000 00000000 0 0 {inode} 1"


PROC_NET_TCP6 = "\n".join(
    [
        "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid inode",
        tcp6_line(f"{ZERO6}:115C", 4444),
        tcp6_line("00000000000000000000000001000000:2382", 5555),
        tcp6_line("0000000000000000FFFF00000100007F:1F91", 6666),
    ]
)


def test_parse() -> None:
    assert parse_proc_net_tcp(PROC_NET_TCP) == [
        ListeningSocket("127.0.0.1", 8080, 1111),
        ListeningSocket("0.0.0.0", 443, 2222),
    ]
    assert parse_proc_net_tcp(PROC_NET_TCP6) == [
        ListeningSocket("::", 4444, 4444),
        ListeningSocket("::1", 9090, 5555),
        ListeningSocket("127.0.0.1", 8081, 6666),
    ]


def test_exact_and_overlapping_listeners() -> None:
    wildcard = ListeningSocket("::", 443, 1)
    loopback = ListeningSocket("127.0.0.1", 443, 2)
    other_port = ListeningSocket("::", 4430, 3)
    every = parse_listen("443")
    local = parse_listen("127.0.0.1:443")
    assert exactly(every, [], wildcard)
    assert not exactly(every, [], loopback)
    assert not exactly(every, [], other_port)  # ":443" is not ":4430"
    assert exactly(local, ["127.0.0.1"], loopback)
    assert overlaps(local, ["127.0.0.1"], wildcard)
    assert overlaps(every, [], loopback)
    assert not overlaps(local, ["127.0.0.1"], ListeningSocket("10.0.0.1", 443, 4))


def test_finds_a_real_listener_and_its_owner() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        mine = [s for s in listening_sockets() if s.port == port and s.host == "127.0.0.1"]
        assert len(mine) == 1
        assert os.getpid() in owners({mine[0].inode})[mine[0].inode]
    assert not [s for s in listening_sockets() if s.port == port and s.host == "127.0.0.1"]


def test_a_listener_is_matched_by_address_not_by_spelling() -> None:
    assert is_listener_for(443, ["0:0::1"], "::1", 443)
    assert is_listener_for(443, ["fe80::1%eth0"], "fe80::1", 443)
    assert not is_listener_for(443, ["127.0.0.1"], "127.0.0.2", 443)
    assert is_listener_for(443, None, "::", 443)
    assert not is_listener_for(443, None, "127.0.0.1", 443)  # one host is not every interface
    assert not is_listener_for(443, ["127.0.0.1"], "127.0.0.1", 4430)
