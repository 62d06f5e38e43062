"""logfmt lines: `key=value` pairs, values quoted only when they must be.

A value can come from outside (a client's address, a Kubernetes object's name, an error
message): whatever it holds, it stays inside its line. Every character that is not printable
(newline, carriage return, escape, U+2028, ...) is written as a backslash escape inside
quotes, so one record is always one line, on a terminal and in the journal, and
`parse_logfmt` gives back the exact value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNNAMED = {"n": "\n", "r": "\r", "t": "\t"}
# A pair: the key, then a quoted value (escapes inside) or a bare one (no space, no quote).
_PAIR = re.compile(r'([\w.-]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"]*))')
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with backslash, quote and every non-printable character escaped: printable,
    so never more than one line."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_escape_char(char) for char in text)


# What a bare value may not hold (besides what is not printable): one search, not a loop.
_NEEDS_QUOTES = re.compile(r'[ ="\\]').search


def value(value: object) -> str:
    """One value as logfmt writes it: bare, or quoted and escaped when it must be."""
    # Exact types first: a close line is ints and strings, written for every connection.
    kind = type(value)
    if kind is int:
        return str(value)  # digits and a sign: never quoted
    if value is None:
        return ""
    if kind is float or isinstance(value, float):
        text = f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    else:
        text = str(value)
    if text == "" or _NEEDS_QUOTES(text) is not None or not text.isprintable():
        return f'"{escape(text)}"'
    return text


def logfmt(fields: Mapping[str, object]) -> str:
    """Render fields as one logfmt line, in the order given."""
    return " ".join([f"{key}={value(item)}" for key, item in fields.items()])


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:  # \xNN, \uNNNN, \UNNNNNNNN
        return chr(int(code[1:], 16))
    return _UNNAMED.get(code, code)


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of a line `logfmt` wrote, values unescaped (`key=` gives ""). Text that is
    not a pair (a syslog prefix, stray words) is skipped."""
    fields: dict[str, str] = {}
    for match in _PAIR.finditer(line):
        key, quoted, bare = match.groups()
        fields[key] = _ESCAPE.sub(_unescape, quoted) if quoted is not None else bare
    return fields
