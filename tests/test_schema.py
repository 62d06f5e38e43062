"""The settings schema is the one source: the CLI's options, the Route's policy and the
configuration reference (docs/configuration.md, with the discovery keys in
docs/kubernetes.md) all agree with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer.main

from pyforward.cli.app import app
from pyforward.config.model import Route
from pyforward.config.policy import Policy
from pyforward.config.schema import OPTIONS, RouteField, env_name, flag_name
from pyforward.config.settings import build_settings

ROOT = Path(__file__).resolve().parent.parent
# The README and the pages of docs/ (the configuration reference, the discovery keys).
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def run_command() -> Any:
    group = typer.main.get_command(app)
    return group.commands["run"]  # type: ignore[attr-defined]


def shown_flag(param: object) -> str:
    """A click option's names as the docs write them: `--long`, `-s` (or `--x/--no-x`)."""
    opts = sorted(param.opts, key=lambda name: not name.startswith("--"))  # type: ignore[attr-defined]
    secondary = param.secondary_opts  # type: ignore[attr-defined]
    if secondary:
        return f"`{opts[0]}/{secondary[0]}`"
    return ", ".join(f"`{name}`" for name in opts)


def readme_rows() -> dict[str, dict[str, str]]:
    """Every row of the documentation's key tables, by key: flag, variable, default."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in "\n".join(d.read_text(encoding="utf-8") for d in DOCS).splitlines():
        if line.startswith("| key | flag |"):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            continue
        if header is None or not line.startswith("|"):
            header = None
            continue
        if line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=False))
        key = row["key"].strip("`")
        assert key not in rows, f"{key} is in the documentation twice"
        rows[key] = row
    return rows


def test_run_takes_every_option_of_the_schema_as_its_flag() -> None:
    params = {param.name: param for param in run_command().params}
    flagged = {key for key, option in OPTIONS.items() if option.flag is not None}
    assert set(params) == flagged | {"config"}
    for key in flagged:
        flag = OPTIONS[key].flag
        assert flag is not None
        assert params[key].opts[0] == flag_name(key)
        assert params[key].help == flag.help


def test_the_readme_reference_is_the_schema() -> None:
    rows = readme_rows()
    params = {param.name: param for param in run_command().params}
    # Every key, and nothing else.
    assert set(rows) == set(OPTIONS) | {"config"}
    for key, row in rows.items():
        assert row["flag"] == shown_flag(params[key]), key
        assert row["variable"] == f"`{env_name(key)}`", key
        default = OPTIONS[key].shown_default() if key in OPTIONS else ""
        assert row["default"] == default, key
        if key in OPTIONS and OPTIONS[key].per_route:
            assert row["meaning"].startswith("per route"), key


def test_a_routes_policy_has_a_field_for_each_policy_option() -> None:
    policy = {key for key, option in OPTIONS.items() if option.route_field is RouteField.POLICY}
    assert {field.name for field in fields(Policy)} == policy
    on_route = {key for key, option in OPTIONS.items() if option.route_field is RouteField.ROUTE}
    assert on_route <= {field.name for field in fields(Route)}
    # Every per-route option goes somewhere in the Route, and only those do.
    per_route = {key for key, option in OPTIONS.items() if option.per_route}
    assert per_route == {key for key, option in OPTIONS.items() if option.route_field is not None}


def test_the_route_carries_the_policy_its_connections_get() -> None:
    settings = build_settings(
        {"listen": "443", "target": ["10.0.0.5:1"], "idle_timeout": 30.0, "keepalive": True},
        {"PYFORWARD_FIRST_BYTE_TIMEOUT": "0"},
    )
    (route,) = settings.routes
    assert route.policy == Policy(10.0, 30.0, True, None)
    assert route.idle_timeout == 30.0 and route.first_byte_timeout is None


def fresh_modules(code: str) -> list[str]:
    """The pyforward modules a fresh interpreter has loaded after `code`."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    return [name for name in out.split() if name.startswith("pyforward")]


def test_the_settings_load_nothing_of_discovery() -> None:
    loaded = fresh_modules("import pyforward.config.settings, pyforward.config.load")
    assert [name for name in loaded if name.startswith("pyforward.discovery")] == []


def test_the_service_commands_import_without_the_cli_app() -> None:
    # No import cycle: install/status/check load through config, not through cli.app.
    for module in ("pyforward.cli.service", "pyforward.cli.check", "pyforward.systemd.status"):
        assert "pyforward.cli.app" not in fresh_modules(f"import {module}"), module
