"""The STATUS= text: what `pyforward status` reads back is what the service wrote."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyforward.systemd.status_text import MAX_ROUTES, StatusText, format_status, parse_status


def test_one_route_reads_as_systemctl_status_shows_it() -> None:
    routes = [("[::]:443", ["10.0.0.5:32653"])]
    line = format_status(routes, 1, {})
    assert line == "forwarding [::]:443 -> 10.0.0.5:32653; 1 active connection"
    assert parse_status(line) == StatusText((("[::]:443", ("10.0.0.5:32653",)),), 1, {})


def test_many_routes_are_summarised_and_notes_come_last() -> None:
    many = [(f"[::]:{port}", ["10.0.0.5:1"]) for port in range(6)]
    line = format_status(many, 0, {"discovery": "degraded: API unreachable"})
    assert line.endswith("and 2 more; 0 active connections; discovery degraded: API unreachable")
    said = parse_status(line)
    assert said is not None
    assert said.more == 2
    assert len(said.routes) == MAX_ROUTES
    assert said.notes == {"discovery": "degraded: API unreachable"}


def test_a_note_with_a_separator_in_it_cannot_swallow_the_next() -> None:
    line = format_status([("[::]:443", [])], 3, {"discovery": "degraded: a; b", "reload": "failed"})
    said = parse_status(line)
    assert said is not None
    assert said.notes == {"discovery": "degraded: a, b", "reload": "failed"}
    assert said.active == 3


def test_what_is_no_status_line_reads_as_none() -> None:
    assert parse_status("starting") is None
    assert parse_status("") is None
    assert parse_status("forwarding nonsense") is None


_label = st.from_regex(r"[\[\]0-9a-f:.*]{1,20}", fullmatch=True)
_note = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(
    routes=st.lists(st.tuples(_label, st.lists(_label, max_size=3)), min_size=1, max_size=8),
    active=st.integers(0, 10**6),
    notes=st.dictionaries(st.from_regex(r"[a-z]{1,10}", fullmatch=True), _note, max_size=3),
)
def test_round_trip(
    routes: list[tuple[str, list[str]]], active: int, notes: dict[str, str]
) -> None:
    said = parse_status(format_status(routes, active, notes))
    assert said is not None
    shown = routes[:MAX_ROUTES]
    assert said.routes == tuple((listen, tuple(targets)) for listen, targets in shown)
    assert said.more == len(routes) - len(shown)
    assert said.active == active
    assert said.notes == {key: text.replace(";", ",") for key, text in notes.items()}
