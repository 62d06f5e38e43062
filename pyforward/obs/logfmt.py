"""logfmt lines: `key=value` pairs, values quoted only when they must be."""

from __future__ import annotations

from collections.abc import Mapping


def _value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or not text.isprintable():
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def logfmt(fields: Mapping[str, object]) -> str:
    """Render fields as one logfmt line, in the order given."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())
