"""The accept gate as a state machine, without a socket: what closes it, what opens it."""

from __future__ import annotations

from pyforward.engine.gate import AcceptGate


def test_without_a_cap_it_admits_any_number() -> None:
    gate = AcceptGate(cap=None)
    assert gate.admits(0)
    assert gate.admits(1_000_000)


def test_the_cap_pauses_at_the_cap_and_resumes_below_it() -> None:
    gate = AcceptGate(cap=2)
    assert gate.admits(0)
    assert gate.admits(1)
    assert not gate.admits(2)  # at the cap: clients wait in the backlog
    assert not gate.admits(3)  # above it (after a reload lowered the cap)
    assert gate.admits(1)  # one connection ended


def test_running_out_of_descriptors_pauses_until_they_are_back() -> None:
    gate = AcceptGate(cap=None)
    gate.out_of_descriptors()
    assert not gate.admits(0)
    gate.descriptors_back()
    assert gate.admits(0)


def test_descriptors_back_does_not_override_the_cap() -> None:
    gate = AcceptGate(cap=1)
    gate.out_of_descriptors()
    gate.descriptors_back()
    assert not gate.admits(1)
    assert gate.admits(0)


def test_under_the_cap_it_stays_paused_while_descriptors_are_short() -> None:
    gate = AcceptGate(cap=5)
    gate.out_of_descriptors()
    assert not gate.admits(1)  # a connection ending frees a slot, not the backoff


def test_closed_for_good_it_never_opens_again() -> None:
    gate = AcceptGate(cap=None)
    gate.close()
    assert not gate.admits(0)
    gate.descriptors_back()
    gate.cap = 10
    assert not gate.admits(0)


def test_a_reload_can_raise_or_lower_the_cap() -> None:
    gate = AcceptGate(cap=1)
    assert not gate.admits(1)
    gate.cap = 2
    assert gate.admits(1)
    gate.cap = None
    assert gate.admits(100)
