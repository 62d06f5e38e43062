"""A systemd unit that runs socat: read its ExecStart, carry it into pyforward. Pure.

The unit's text goes in; socat's arguments, or pyforward settings flags with a summary
of what was carried and what was dropped, come out. Unit syntax as systemd.syntax(7)
and systemd.service(5) describe it: sections, `#`/`;` comments, a trailing backslash
continues a line, an empty `ExecStart=` resets the list, and a command line may start
with the prefixes `-`, `@`, `:`, `+`, `!`, `!!` (with `@`, the second word is argv[0]).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pyforward.errors import ConfigError
from pyforward.socat.args import PROGRAM_NAMES, parse_socat_args, split_command_line
from pyforward.socat.translate import summarize, to_flags

_PREFIX_CHARS = "-@:+!"
# A specifier (%i, %H, ...) or a variable ($VAR, ${VAR}) is filled in by systemd when
# the unit starts, from values this text does not hold; `%%` and `$$` are literals.
_SPECIFIER = re.compile(r"%(.)")
_VARIABLE = re.compile(r"\$(\$|\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*)")


def exec_start_lines(text: str) -> list[str]:
    """The effective `ExecStart=` values of the unit's [Service] section, in order."""
    values: list[str] = []
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep or section != "Service" or key.strip() != "ExecStart":
            continue
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()  # an empty assignment resets the list
    return values


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending: list[str] = []
    for physical in text.splitlines():
        stripped = physical.strip()
        if stripped.startswith(("#", ";")):
            continue  # comments, also between continued lines
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        lines.append(" ".join(pending).strip())
        pending = []
    if pending:
        lines.append(" ".join(pending).strip())
    return [line for line in lines if line]


def socat_argv_from_unit(text: str) -> list[str]:
    """socat's arguments (without the program) from the unit's single ExecStart."""
    values = exec_start_lines(text)
    if not values:
        raise ConfigError("the unit has no ExecStart= in its [Service] section")
    if len(values) > 1:
        raise ConfigError(
            f"the unit has {len(values)} ExecStart= lines; a socat unit runs one command"
        )
    line = values[0]
    prefixes = ""
    while line[:1] and line[0] in _PREFIX_CHARS:
        prefixes += line[0]
        line = line[1:]
    line = _check_expansions(line)
    words = split_command_line(line)
    if ";" in words:
        raise ConfigError("ExecStart= runs several commands (separated by ;); expected one socat")
    if "@" in prefixes:
        words = words[:1] + words[2:]  # the second word is only argv[0]
    if not words:
        raise ConfigError("ExecStart= is empty")
    program = PurePosixPath(words[0]).name
    if program not in PROGRAM_NAMES:
        raise ConfigError(f"ExecStart= runs {words[0]!r}, not socat")
    return words[1:]


def _check_expansions(line: str) -> str:
    for match in _SPECIFIER.finditer(line):
        if match.group(1) != "%":
            raise ConfigError(
                f"ExecStart= uses the specifier %{match.group(1)}, which systemd fills in "
                "at start; write its value into the unit first"
            )
    for match in _VARIABLE.finditer(line):
        if match.group(1) != "$":
            raise ConfigError(
                f"ExecStart= uses the variable ${match.group(1)}, which systemd fills in "
                "at start; write its value into the unit first"
            )
    return line.replace("%%", "%").replace("$$", "$")


def settings_from_socat_unit(text: str) -> tuple[dict[str, object], list[str], list[str]]:
    """From a socat unit's text: pyforward settings flags (config keys: listen, target,
    idle_timeout, ...), what was carried over, and what was dropped and why."""
    command = parse_socat_args(socat_argv_from_unit(text))
    summary = summarize(command, as_service=True)
    return to_flags(command), list(summary.carried), list(summary.dropped)
