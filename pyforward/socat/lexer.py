"""socat's lexer, after its nestlex(): ends, hard and soft quotes, nesting, escapes;
and an address split into its keyword, parameters and options. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from pyforward.errors import ConfigError

_NESTS = {"(": ")", "[": "]", "{": "}"}
_C_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_DUAL = "!!"  # socat's separator of a dual (read!!write) address


def _lex(
    text: str,
    pos: int,
    ends: tuple[str, ...],
    *,
    where: str,
    quotes: bool = True,
    nests: bool = True,
    drop_quotes: bool = True,
) -> tuple[str, int]:
    """Read one word from `text[pos:]` up to an unquoted, unnested end; return it and
    the position of the end (or len(text)). As in socat, only the outermost quotes are
    dropped; quotes inside brackets or other quotes are kept."""
    out: list[str] = []
    while pos < len(text):
        if text.startswith(ends, pos):
            return "".join(out), pos
        char = text[pos]
        closer: str | None = None
        inner_quotes = inner_nests = True
        if quotes and char == "'":  # hard quote: no nesting inside, only escapes
            closer, inner_quotes, inner_nests = "'", False, False
        elif quotes and char == '"':
            closer = '"'
        elif nests and char in _NESTS:
            closer = _NESTS[char]
        if closer is not None:
            inner, end = _lex(
                text,
                pos + 1,
                (closer,),
                where=where,
                quotes=inner_quotes,
                nests=inner_nests,
                drop_quotes=False,
            )
            if end >= len(text):
                raise ConfigError(f"{where}: {char} is never closed (expected {closer})")
            keep = char in _NESTS or not drop_quotes
            out.append(f"{char}{inner}{closer}" if keep else inner)
            pos = end + 1
            continue
        if char == "\\":
            if pos + 1 >= len(text):
                raise ConfigError(f"{where}: ends in a lone backslash")
            escaped = text[pos + 1]
            out.append(_C_ESCAPES.get(escaped, escaped))
            pos += 2
            continue
        out.append(char)
        pos += 1
    return "".join(out), pos


@dataclass(frozen=True)
class RawAddress:
    text: str  # as given, for messages
    keyword: str  # as given
    params: tuple[str, ...]
    options: tuple[tuple[str, str | None], ...]  # (name as given, value or None)


def split_address(text: str) -> RawAddress:
    where = f"address {text!r}"
    if not text:
        raise ConfigError("empty address: expected TYPE:PARAMS, e.g. TCP-LISTEN:443")
    keyword, pos = _lex(text, 0, (":", ",", _DUAL), where=where)
    params: list[str] = []
    while text.startswith(":", pos):
        param, pos = _lex(text, pos + 1, (":", ",", _DUAL), where=where)
        params.append(param)
    options: list[tuple[str, str | None]] = []
    while pos < len(text) and not text.startswith(_DUAL, pos):
        # pos is at a ",": empty options (",,") are skipped, as socat does.
        pos += 1
        if pos >= len(text) or text.startswith((",", _DUAL), pos):
            continue
        name, pos = _lex(text, pos, (",", "=", _DUAL), where=where)
        value: str | None = None
        if text.startswith("=", pos):
            value, pos = _lex(text, pos + 1, (",", _DUAL), where=where)
        options.append((name, value))
    if text.startswith(_DUAL, pos):
        raise ConfigError(
            f"{where}: dual addresses (READ!!WRITE) are not supported: "
            "pyforward relays one connection both ways"
        )
    return RawAddress(text, keyword, tuple(params), tuple(options))
