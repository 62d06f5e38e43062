"""Splicing connections give their pipes back to a bounded pool: what does not fit is
closed, so a burst of busy connections leaves no descriptor behind it."""

from __future__ import annotations

import os
import socket

import pytest

from pyforward.obs.stats import Stats
from pyforward.relay.directions import SpliceDirection
from pyforward.relay.pipes import PipePool, splice_available

pytestmark = pytest.mark.skipif(not splice_available(), reason="splice(2) is Linux's")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pipes_beyond_the_pool_s_capacity_are_closed_when_given_back() -> None:
    pool = PipePool(capacity=1)
    pairs = [socket.socketpair() for _ in range(3)]
    outs = [socket.socketpair() for _ in range(3)]
    for sock in [s for pair in pairs + outs for s in pair]:
        sock.setblocking(False)
    baseline = open_fds()
    directions = [
        SpliceDirection(pair[1], out[0], Stats(), pool)
        for pair, out in zip(pairs, outs, strict=True)
    ]
    for pair in pairs:
        pair[0].sendall(b"x" * 1000)
    # Every direction holds a pipe at once (three busy connections), then gives it back.
    for direction in directions:
        assert direction.fill() == 1000
    assert open_fds() == baseline + 6
    for direction in directions:
        direction.flush()
    for out in outs:
        assert out[1].recv(2000) == b"x" * 1000
    assert len(pool.free) == 1
    assert open_fds() == baseline + 2  # the one pipe the pool keeps
    pool.close()
    assert open_fds() == baseline
    for sock in [s for pair in pairs + outs for s in pair]:
        sock.close()
