"""Failures on the way to a target, expected or not: the client is reset with a reason in
the log, its `max_connections` slot and its descriptors are released, and the forwarder
keeps accepting.

The forwarder runs in this process, so targets that no flag or config file would let
through (a port above 65535, a zone no interface has) can be handed to it directly, as
discovery hands over the targets it builds from the cluster's answers.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence

import pytest

from pyforward.config.settings import build_settings
from pyforward.engine.server import Forwarder
from pyforward.relay import dial, pump
from pyforward.relay.connection import ResolvedTarget
from tests.harness import Backend, connect, connect_and_read, echo, fields
from tests.inprocess import LogLines, on_loop, running

# The broadcast address of 127.0.0.0/8: a connect to it fails inside connect() itself
# (ENETUNREACH, no packet sent), so hundreds of such targets fail within one call.
FAILS_AT_ONCE = "127.255.255.255"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def refusing_ports(count: int) -> Iterator[list[int]]:
    """Ports on 127.0.0.1 bound and never listening: a connect to one is refused."""
    holders = []
    try:
        for _ in range(count):
            holder = socket.socket()
            holder.bind(("127.0.0.1", 0))
            holders.append(holder)
        yield [holder.getsockname()[1] for holder in holders]
    finally:
        for holder in holders:
            holder.close()


def ipv4(host: str, port: int) -> ResolvedTarget:
    return ResolvedTarget(socket.AF_INET, (host, port), f"{host}:{port}")


@contextlib.contextmanager
def capped_forwarder(first_target: str) -> Iterator[tuple[Forwarder, LogLines, int]]:
    """A forwarder on 127.0.0.1 with `max_connections` 1: a slot that leaks stops it."""
    settings = build_settings(
        {"listen": "127.0.0.1:0", "target": [first_target], "max_connections": 1}, {}
    )
    with running(settings) as (forwarder, logs):
        yield forwarder, logs, forwarder.listeners[0].sock.getsockname()[1]


def set_targets(forwarder: Forwarder, targets: Sequence[ResolvedTarget]) -> None:
    route = forwarder.listeners[0].route_id
    on_loop(forwarder, lambda: forwarder.set_targets(route, targets))


def assert_reset_with(port: int, logs: LogLines, count: int) -> dict[str, str]:
    """A client is reset (neither left hanging nor closed as if complete), and logs its
    close line; the `count`-th close line's fields."""
    data, error = connect_and_read(port, b"request", timeout=10)
    assert data == b""
    assert isinstance(error, ConnectionResetError)
    return fields(logs.wait("event=close ", count)[count - 1])


def assert_served(forwarder: Forwarder, port: int, backend: Backend) -> None:
    set_targets(forwarder, [ipv4("127.0.0.1", backend.port)])
    with connect(port, timeout=10) as client:
        client.sendall(b"still serving")
        assert client.recv(100) == b"still serving"


def test_hundreds_of_targets_failing_at_once_reset_the_client_and_free_its_slot() -> None:
    with (
        refusing_ports(100) as ports,
        Backend(echo) as backend,
        capped_forwarder(f"127.0.0.1:{ports[0]}") as (forwarder, logs, port),
    ):
        # 600 targets that fail inside connect(), then 100 that refuse a moment later.
        dead = [ipv4(FAILS_AT_ONCE, 1000 + i) for i in range(600)]
        set_targets(forwarder, dead + [ipv4("127.0.0.1", p) for p in ports])
        baseline = fd_count()
        first = assert_reset_with(port, logs, 1)
        assert (first["reason"], first["error"]) == ("refused", "ECONNREFUSED")
        # With the slot still held, this client would wait in the backlog for good.
        second = assert_reset_with(port, logs, 2)
        assert second["reason"] == "refused"
        assert fd_count() == baseline
        assert_served(forwarder, port, backend)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        # A nodePort of 70000: connect() raises OverflowError.
        (ResolvedTarget(socket.AF_INET, ("127.0.0.1", 70000), "127.0.0.1:70000"), "OverflowError"),
        # A node address with a zone no interface has: connect() raises gaierror.
        (
            ResolvedTarget(socket.AF_INET6, ("fe80::1%bogus0", 443, 0, 0), "[fe80::1%bogus0]:443"),
            "EAI_NONAME",
        ),
    ],
    ids=["port-out-of-range", "unknown-zone"],
)
def test_a_target_connect_cannot_take_resets_the_client_with_the_reason(
    target: ResolvedTarget, error: str
) -> None:
    with (
        refusing_ports(1) as ports,
        Backend(echo) as backend,
        capped_forwarder(f"127.0.0.1:{ports[0]}") as (forwarder, logs, port),
    ):
        set_targets(forwarder, [target])
        baseline = fd_count()
        for count in (1, 2):  # the second finds the slot free
            close = assert_reset_with(port, logs, count)
            assert (close["reason"], close["error"], close["target"]) == (
                "error",
                error,
                target.label,
            )
            assert close["msg"]
        assert fd_count() == baseline
        assert_served(forwarder, port, backend)


def test_a_target_connect_cannot_take_is_passed_over_for_the_next() -> None:
    with (
        Backend(echo) as backend,
        capped_forwarder(backend.address) as (forwarder, logs, port),
    ):
        bad = ResolvedTarget(socket.AF_INET, ("127.0.0.1", 70000), "127.0.0.1:70000")
        set_targets(forwarder, [bad, ipv4("127.0.0.1", backend.port)])
        with connect(port, timeout=10) as client:
            client.sendall(b"over the bad one")
            assert client.recv(100) == b"over the bad one"
        [failover] = logs.wait("event=failover")
        assert "reason=error" in failover
        assert f"next=127.0.0.1:{backend.port}" in failover


@pytest.mark.parametrize(
    ("broken_class", "broken_step"),
    # Called from the accept path; called from the event loop once the target accepted.
    [(dial.Dial, "start"), (pump.Pump, "__init__")],
)
def test_an_error_nothing_expected_still_frees_the_slot_and_the_descriptors(
    monkeypatch: pytest.MonkeyPatch, broken_class: type, broken_step: str
) -> None:
    """The safety net: whatever escapes a connection closes that connection alone."""

    def broken(self: object, *args: object) -> None:
        raise RuntimeError("injected fault")

    # A target that completes handshakes in its backlog and never accepts: unlike a
    # Backend, it holds no descriptor of this process for a connection.
    with (
        socket.create_server(("127.0.0.1", 0)) as never_accepts,
        Backend(echo) as backend,
        capped_forwarder(f"127.0.0.1:{never_accepts.getsockname()[1]}") as (forwarder, logs, port),
    ):
        monkeypatch.setattr(broken_class, broken_step, broken)
        baseline = fd_count()
        for count in (1, 2):
            close = assert_reset_with(port, logs, count)
            assert (close["reason"], close["error"]) == ("error", "RuntimeError")
        assert "injected fault" in logs.wait("event=connection-error")[0]
        assert fd_count() == baseline
        monkeypatch.undo()
        assert_served(forwarder, port, backend)
