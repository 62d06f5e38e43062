"""Writing a config file equivalent to flags, environment and a config file together.

`pyforward install` takes the same flags as `pyforward run`, but the service runs with
only `--config FILE` and a clean environment. `merge` folds the three layers into one
file's data with the same meaning (same precedence rules as pyforward.config.settings); `to_toml`
renders it. Both are pure, and generic over the schema (`OPTIONS`), so a key added there
is carried over without a change here.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

from pyforward.config.schema import OPTIONS, env_name, file_value_of_env
from pyforward.errors import ConfigError

ROUTE_DEFINING = ("listen", "target", "route")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _plain(value: object) -> object:
    """A flag value as a TOML-able value: enums and paths become strings."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _split(value: object, *, commas: bool) -> list[str]:
    if isinstance(value, str):
        text = value.replace(",", " ") if commas else value
        return text.split()
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    raise ConfigError(f"expected a string or a list of strings, got {value!r}")


def _route_tables(layer: Mapping[str, object]) -> list[dict[str, object]]:
    tables: list[dict[str, object]] = []
    if layer.get("listen") is not None:
        targets = _split(layer.get("target") or [], commas=True)
        tables.append({"listen": str(layer["listen"]), "target": targets})
    for item in _split(layer.get("route") or [], commas=False):
        listen, _, targets_text = item.partition("=")
        tables.append({"listen": listen, "target": targets_text.split(",")})
    return tables


def merge(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One config file's data meaning what the three layers mean together.

    `flags` and `env` are what `build_settings` takes; call this only once those layers
    have been validated by it.
    """
    data: dict[str, Any] = copy.deepcopy(dict(file_data or {}))
    given_flags = {k: v for k, v in flags.items() if v not in (None, [], ())}
    env_layer = {
        key: file_value_of_env(key, env[env_name(key)]) for key in OPTIONS if env_name(key) in env
    }
    # Routes come whole from the first layer that names any.
    for layer in (given_flags, env_layer):
        if any(key in layer for key in ROUTE_DEFINING):
            for key in ROUTE_DEFINING:
                data.pop(key, None)
            data["route"] = _route_tables(layer)
            break
    # Everything else: the environment over the file, flags over both. A per-route key set
    # this way overrides every route, so it leaves the route tables too.
    for layer in (env_layer, given_flags):
        for key, value in layer.items():
            if key in ROUTE_DEFINING:
                continue
            data[key] = _plain(value)
            if OPTIONS[key].per_route:
                for table in data.get("route") or []:
                    table.pop(key, None)
    return data


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    """Comment text: TOML allows no control character in a comment but a tab."""
    return "".join(
        f"\\x{ord(char):02x}" if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F else char
        for char in text
    )


def _key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key: a key is never TOML syntax."""
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")


def to_toml(data: Mapping[str, Any], header: str = "") -> str:
    """TOML text for config data: scalars, lists, tables and arrays of tables."""
    lines = [f"# {_comment(line)}".rstrip() for line in header.splitlines()]
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((f"[{_key(key)}]", value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.extend((f"[[{_key(key)}]]", table) for table in value)
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for heading, table in tables:
        lines.append("")
        lines.append(heading)
        lines.extend(f"{_key(key)} = {_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"
