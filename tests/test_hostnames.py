"""SNI routing's host-name rules: case, trailing dots, one-label wildcards, specificity,
and names claimed twice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.protocols.hostnames import (
    Conflict,
    HostNameError,
    HostRouter,
    check_pattern,
    conflicts,
    matches,
    normalize,
)


def _router() -> HostRouter[str]:
    return HostRouter(
        [
            (["jenkins.dev.local.me"], "jenkins"),
            (["*.dev.local.me", "dev.local.me."], "istio"),
            (["*.other.example"], "traefik"),
        ],
        default="default",
    )


@pytest.mark.parametrize(
    ("name", "route"),
    [
        ("jenkins.dev.local.me", "jenkins"),
        ("JENKINS.Dev.Local.ME", "jenkins"),
        ("jenkins.dev.local.me.", "jenkins"),  # the exact name wins over the wildcard
        ("grafana.dev.local.me", "istio"),
        ("dev.local.me", "istio"),
        ("a.b.dev.local.me", "default"),  # '*' is one label, not several
        ("x.other.example", "traefik"),
        ("other.example", "default"),
        (".other.example", "default"),  # an empty label is not a label
        ("unknown.test", "default"),
    ],
)
def test_lookup(name: str, route: str) -> None:
    assert _router().lookup(name) == route


def test_no_name_and_no_default() -> None:
    assert _router().lookup(None) == "default"
    router: HostRouter[str] = HostRouter([(["a.example"], "a")])
    assert router.lookup("b.example") is None
    assert router.lookup(None) is None


def test_two_routes_claiming_one_name() -> None:
    claims = [
        ("route 1", ["A.example", "*.example"]),
        ("route 2", ["a.example."]),
        ("route 3", ["*.EXAMPLE", "b.example", "b.example"]),
    ]
    assert conflicts(claims) == [
        Conflict("a.example", ("route 1", "route 2")),
        Conflict("*.example", ("route 1", "route 3")),
    ]
    assert str(conflicts(claims)[0]) == "a.example is claimed by route 1 and route 2"
    with pytest.raises(HostNameError, match=r"a\.example is claimed by route 1 and route 2"):
        HostRouter([(["a.example"], 1), (["A.EXAMPLE."], 2)])
    # An exact name inside a wildcard is no conflict: it is more specific.
    assert conflicts([("r1", ["*.example"]), ("r2", ["a.example"])]) == []


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".",
        "*",
        "*.",
        "a.*.example",
        "*a.example",
        "a*.example",
        "**.example",
        "a..example",
        "-a.example",
        "a-.example",
        "a b.example",
        "é.example",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4) + ".x",
    ],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(HostNameError):
        check_pattern(pattern)


def test_valid_patterns() -> None:
    assert check_pattern("Jenkins.Dev.Local.Me.") == "jenkins.dev.local.me"
    assert check_pattern("*.xn--bcher-kva.example") == "*.xn--bcher-kva.example"
    assert check_pattern("_acme.example") == "_acme.example"
    assert check_pattern("localhost") == "localhost"
    assert normalize("A.B.") == "a.b"


labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


@given(labels, domains, st.booleans(), st.booleans())
def test_a_wildcard_covers_exactly_one_label(
    head: str, domain: str, upper: bool, dot: bool
) -> None:
    name = f"{head}.{domain}"
    shown = (name.upper() if upper else name) + ("." if dot else "")
    assert matches(check_pattern(f"*.{domain}"), shown)
    assert not matches(check_pattern(f"*.{domain}"), domain)
    assert not matches(check_pattern(f"*.{domain}"), f"x.{name}")
    router = HostRouter([([f"*.{domain}"], "wild"), ([name], "exact")])
    assert router.lookup(shown) == "exact"
    assert router.lookup(f"other{head}.{domain}") == "wild"


@given(st.text(max_size=300))
def test_any_pattern_is_accepted_or_refused_with_the_module_error(pattern: str) -> None:
    try:
        name = check_pattern(pattern)
    except HostNameError:
        return
    assert name == normalize(pattern) and name.isascii() and len(name) <= 253
    assert check_pattern(name) == name  # normalised once is normalised


@given(st.text(max_size=300))
def test_any_server_name_looks_up_without_an_error(server_name: str) -> None:
    router = HostRouter([(["a.example"], "a"), (["*.b.example"], "b")], default="d")
    assert router.lookup(server_name) in {"a", "b", "d"}
