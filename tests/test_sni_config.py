"""Routes sharing a listen address by TLS server name: what the configuration accepts, and
the one line it says about what it refuses (through the CLI: exit code 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyforward.config.addresses import Address
from pyforward.config.model import Settings
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.errors import ConfigError
from tests.harness import run_cli

TWO_NAMES_AND_A_DEFAULT = """
[[route]]
listen = "127.0.0.1:8443"
sni = ["Jenkins.Dev.Local.Me.", "*.dev.local.me"]
target = "127.0.0.1:9001"
sni_timeout = 2

[[route]]
listen = "127.0.0.1:8443"
sni = "other.example"
target = "127.0.0.1:9002"
proxy_protocol = "v2"

[[route]]
listen = "127.0.0.1:8443"
target = "127.0.0.1:9003"
"""


def from_file(text: str) -> Settings:
    return build_settings({}, {}, parse_config_text(text, "t.toml"), "t.toml")


def test_routes_with_distinct_names_share_an_address() -> None:
    first, second, default = from_file(TWO_NAMES_AND_A_DEFAULT).routes
    assert first.listen == second.listen == default.listen == Address("127.0.0.1", 8443)
    assert first.sni == ("jenkins.dev.local.me", "*.dev.local.me")  # normalised
    assert second.sni == ("other.example",)
    assert default.sni == ()
    assert (first.policy.sni_timeout, default.policy.sni_timeout) == (2.0, 5.0)
    assert second.policy.proxy_protocol == "v2"


def test_the_route_flag_takes_names_before_the_address() -> None:
    flags: dict[str, Any] = {
        "route": [
            "a.example,*.b.example@127.0.0.1:8443=127.0.0.1:9001",
            "127.0.0.1:8443=127.0.0.1:9003",
            "8080=127.0.0.1:9004",
        ]
    }
    named, default, plain = build_settings(flags, {}).routes
    assert named.sni == ("a.example", "*.b.example")
    assert named.listen == default.listen == Address("127.0.0.1", 8443)
    assert named.targets == (Address("127.0.0.1", 9001),)
    assert (default.sni, plain.sni) == ((), ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            TWO_NAMES_AND_A_DEFAULT.replace('"other.example"', '"jenkins.dev.local.me"'),
            "listen 127.0.0.1:8443: jenkins.dev.local.me is claimed by route 1 and route 2 (sni)",
        ),
        (
            TWO_NAMES_AND_A_DEFAULT.replace('sni = "other.example"\n', ""),
            "listen 127.0.0.1:8443: routes 2 and 3 have no sni; only one route",
        ),
        (
            TWO_NAMES_AND_A_DEFAULT.replace('"other.example"', '"bad!name"'),
            "route 2: sni: 'bad!name': 'bad!name' is not a host-name label",
        ),
        (
            TWO_NAMES_AND_A_DEFAULT.replace('"other.example"', "[]"),
            "leave sni out for the address's default route",
        ),
        (
            TWO_NAMES_AND_A_DEFAULT
            + '\n[[route]]\nlisten = "8443"\nsni = "z.example"\ntarget = "127.0.0.1:1"\n',
            "routes overlap: 127.0.0.1:8443 and *:8443",
        ),
        (
            TWO_NAMES_AND_A_DEFAULT.replace(
                'proxy_protocol = "v2"',
                'accept_proxy_protocol = true\nproxy_protocol_from = ["127.0.0.1"]',
            ),
            "routes 1 and 2 differ in accept_proxy_protocol or proxy_protocol_from",
        ),
    ],
)
def test_routes_that_cannot_share_an_address(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_file(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_plain_routes_on_one_address_are_still_refused() -> None:
    flags = {"route": ["127.0.0.1:8443=127.0.0.1:1", "127.0.0.1:8443=127.0.0.1:2"]}
    with pytest.raises(ConfigError, match=r"listen address given twice: 127\.0\.0\.1:8443"):
        build_settings(flags, {})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('"other.example"', '"jenkins.dev.local.me"'),
            "jenkins.dev.local.me is claimed by route 1 and route 2",
        ),
        (('sni = "other.example"\n', ""), "routes 2 and 3 have no sni"),
    ],
)
def test_the_cli_says_one_line_and_exits_2(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    config = tmp_path / "sni.toml"
    config.write_text(TWO_NAMES_AND_A_DEFAULT.replace(*change))
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyforward: error: ") and expected in lines[0]


def test_a_bad_name_in_the_route_flag_is_one_line() -> None:
    result = run_cli("run", "--route", "bad!name@8443=127.0.0.1:1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--route" in lines[0] and "bad!name" in lines[0], result.stderr
