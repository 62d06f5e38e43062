"""The config file install writes means what the flags, environment and file meant."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.file import merge, to_toml
from pyforward.config.model import Settings
from pyforward.config.settings import build_settings, parse_config_text


def written(flags: dict[str, object], env: dict[str, str], file_data: Any = None) -> Settings:
    """Settings read back from the file written for these layers."""
    text = to_toml(merge(flags, env, file_data), header="a header\nof two lines")
    return build_settings({}, {}, parse_config_text(text, "written"))


CASES: dict[str, tuple[dict[str, object], dict[str, str], dict[str, Any] | None]] = {
    "flags": (
        {"listen": "443", "target": ["10.0.0.5:32653", "10.0.0.6:32653"], "keepalive": True},
        {},
        None,
    ),
    "route flags": ({"route": ["443=10.0.0.5:1", "127.0.0.1:80=10.0.0.5:2"]}, {}, None),
    "environment": (
        {},
        {
            "PYFORWARD_ROUTE": "443=10.0.0.5:1,10.0.0.6:1 80=10.0.0.5:2",
            "PYFORWARD_CONNECT_TIMEOUT": "3s",
            "PYFORWARD_QUIET": "yes",
            "PYFORWARD_RELAY": "copy",
        },
        None,
    ),
    "flags over environment over file": (
        {"connect_timeout": 2.5, "relay": "splice"},
        {"PYFORWARD_MAX_CONNECTIONS": "100", "PYFORWARD_RELAY": "copy"},
        {
            "connect_timeout": 7.0,
            "shutdown_timeout": 5,
            "route": [
                {"listen": "443", "target": ["10.0.0.5:1"], "connect_timeout": 9.0},
                {"listen": "80", "target": ["10.0.0.5:2"], "idle_timeout": 60},
            ],
        },
    ),
    "access lists and per-source cap": (
        {"allow": ["10.0.0.0/8", "192.168.0.0/16"], "max_connections_per_source": 20},
        {"PYFORWARD_DENY": "10.9.0.0/16, 10.8.0.0/16", "PYFORWARD_FIRST_BYTE_TIMEOUT": "5"},
        {"route": [{"listen": "443", "target": ["10.0.0.5:1"], "allow": ["172.16.0.0/12"]}]},
    ),
    "flag routes replace file routes, file options stay": (
        {"listen": "8443", "target": ["10.0.0.9:1"]},
        {},
        {"listen": "443", "target": ["10.0.0.5:1"], "idle_timeout": 30, "backlog": 128},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_file_means_the_same(case: str) -> None:
    flags, env, file_data = CASES[case]
    assert written(flags, env, file_data) == build_settings(flags, env, file_data)


def test_per_route_flag_overrides_route_tables() -> None:
    file_data = {"route": [{"listen": "443", "target": ["10.0.0.5:1"], "connect_timeout": 9.0}]}
    settings = written({"connect_timeout": 1.5}, {}, file_data)
    assert [route.connect_timeout for route in settings.routes] == [1.5]


def test_header_is_comments() -> None:
    text = to_toml({"relay": "copy"}, header="written by install\n\nsecond")
    assert text.splitlines()[:3] == ["# written by install", "#", "# second"]


@given(st.text(max_size=40))
def test_any_string_survives(text: str) -> None:
    assert tomllib.loads(to_toml({"key": text, "list": [text]})) == {"key": text, "list": [text]}


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_any_key_survives(key: str, table: str, text: str) -> None:
    data = {key: text, table: {key: [text]}, "route": [{key: text}]}
    assert tomllib.loads(to_toml(data, header=f"header {text}")) == data
