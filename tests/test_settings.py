from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.addresses import Address
from pyforward.config.model import RelayMode, Settings
from pyforward.config.schema import OPTIONS, env_name, flag_name
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.errors import ConfigError

FILE = """
relay = "copy"
connect_timeout = 3
idle_timeout = 30

[[route]]
listen = "443"
target = "10.0.0.5:32653"

[[route]]
listen = "127.0.0.1:80"
target = ["10.0.0.5:31380", "10.0.0.6:31380"]
idle_timeout = 0
keepalive = true
"""


def settings(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, text: str = FILE
) -> Settings:
    return build_settings(flags or {}, env or {}, parse_config_text(text, "test.toml"), "test.toml")


def test_config_file_routes_with_per_route_keys_over_the_top_level() -> None:
    result = settings()
    https, http = result.routes
    assert https.listen == Address(None, 443)
    assert https.targets == (Address("10.0.0.5", 32653),)
    assert (https.connect_timeout, https.idle_timeout, https.keepalive) == (3.0, 30.0, False)
    assert http.listen == Address("127.0.0.1", 80)
    assert http.targets == (Address("10.0.0.5", 31380), Address("10.0.0.6", 31380))
    assert (http.idle_timeout, http.keepalive) == (None, True)
    assert result.relay is RelayMode.COPY


def test_precedence_flag_over_environment_over_file_over_default() -> None:
    assert settings().shutdown_timeout == 20.0  # default
    assert settings().relay is RelayMode.COPY  # file
    assert settings(env={"PYFORWARD_RELAY": "splice"}).relay is RelayMode.SPLICE
    both = settings({"relay": RelayMode.AUTO}, {"PYFORWARD_RELAY": "splice"})
    assert both.relay is RelayMode.AUTO
    # A per-route key given as a flag or variable overrides every route's own value.
    assert {r.idle_timeout for r in settings({"idle_timeout": 7.0}).routes} == {7.0}
    assert {r.idle_timeout for r in settings(env={"PYFORWARD_IDLE_TIMEOUT": "9"}).routes} == {9.0}


def test_routes_come_whole_from_the_first_layer_that_has_any() -> None:
    from_flags = settings({"listen": "8443", "target": ["127.0.0.1:9443"]})
    assert [str(r.listen) for r in from_flags.routes] == ["*:8443"]
    from_env = settings(env={"PYFORWARD_ROUTE": "80=a:1 443=b:2,c:3"})
    assert [(str(r.listen), len(r.targets)) for r in from_env.routes] == [("*:80", 1), ("*:443", 2)]
    repeated = settings({"route": ["80=a:1", "[::1]:443=b:2"]})
    assert [str(r.listen) for r in repeated.routes] == ["*:80", "[::1]:443"]


def test_naming_rule_ties_keys_flags_and_variables() -> None:
    for key in OPTIONS:
        assert flag_name(key) == "--" + key.replace("_", "-")
        assert env_name(key) == "PYFORWARD_" + key.upper()


def test_quiet_means_warnings_only() -> None:
    assert settings({"quiet": True}).log_level.value == "warning"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"listen": "80", "target": ["a:1"], "connect_timeout": 0.0}, {}, "more than 0"),
        ({"listen": "80", "target": ["a:1"], "backlog": 0}, {}, "--backlog: must be 1-65535"),
        ({"listen": "80", "target": ["a:1"], "backlog": 99999999999}, {}, "got 99999999999"),
        ({"route": ["80=a:1", "80=b:2"]}, {}, "given twice: *:80"),
        ({"target": ["a:1"]}, {}, "needs a listen address"),
        ({}, {"PYFORWARD_KEEPALIVE": "sometimes"}, "PYFORWARD_KEEPALIVE: expected true or false"),
        ({}, {"PYFORWARD_LOOP": "trio"}, "expected one of auto, uvloop, asyncio"),
        ({}, {"PYFORWARD_SHUTDOWN_TIMEOUT": "nan"}, "PYFORWARD_SHUTDOWN_TIMEOUT"),
    ],
)
def test_invalid_values_name_where_they_came_from(
    flags: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(flags, env)
    assert message in str(info.value)


def test_unknown_keys_suggest_the_known_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'max_conections' \(did you mean 'max_connections'"
    ):
        parse_config_text("max_conections = 5", "f.toml")


def test_unknown_environment_variables_are_left_alone() -> None:
    # The environment is shared with other tools: only the schema's names are read.
    assert settings(env={"PYFORWARD_SOMETHING_ELSE": "x"}).routes


toml_values = st.one_of(
    st.integers(-5, 70000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.booleans(),
    st.lists(st.text(max_size=12), max_size=3),
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


@given(st.dictionaries(st.sampled_from([*OPTIONS, "bogus"]), toml_values, max_size=6))
def test_any_config_table_gives_settings_or_a_config_error(table: dict[str, object]) -> None:
    text = "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
    with contextlib.suppress(ConfigError):
        build_settings({}, {}, parse_config_text(text, "f.toml"), "f.toml")


@given(st.text(max_size=80))
def test_any_config_text_gives_data_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config_text(text, "f.toml")
