"""socat command lines: parse the subset a TCP forward uses, refuse the rest. Pure.

The grammar follows socat's documentation (ADDRESS SPECIFICATIONS in socat(1)) and its
lexer (nestlex.c):

    socat [OPTIONS] ADDRESS ADDRESS
    ADDRESS = TYPE { ":" PARAM } { "," OPTION [ "=" VALUE ] }

Keywords and option names are case-insensitive. Inside a word, `\\` escapes the next
character (with C escapes: `\\n`, `\\t`, ...), `"..."` and `'...'` quote (the quotes are
dropped), and `(...)`, `[...]`, `{...}` nest (the brackets are kept): `:` and `,` are not
special inside any of them, so `TCP:[::1]:80` has two parameters. A value runs to the
next `,`, so it may hold `:` and `=`.

The subset: `TCP-LISTEN` (also `TCP4-LISTEN`, `TCP6-LISTEN`, `TCP-L`, ...) first, then
`TCP` (also `TCP4`, `TCP6`, `TCP-CONNECT`, ...), with the options a forward needs. What
the relay does better by design is accepted and reported as dropped (`-b`, `-t`);
everything else is refused with a `ConfigError` naming the part, never guessed at.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath

from pyforward.errors import ConfigError
from pyforward.socat import udp
from pyforward.socat.addresses import CONNECT_PARSERS, LISTEN_PARSERS, refuse_type
from pyforward.socat.lexer import split_address
from pyforward.socat.model import SocatCommand
from pyforward.socat.values import parse_seconds, parse_whole

PROGRAM_NAMES = frozenset({"socat", "pyforward-socat"})


# --- command-line options

_OPTIONS_WITH_VALUE = ("-T", "-t", "-b")
_REFUSED_OPTIONS = {
    "-r": "pyforward writes its dump (-v, -x) to stderr, not to a file",
    "-R": "pyforward writes its dump (-v, -x) to stderr, not to a file",
    "-u": "pyforward relays both directions",
    "-U": "pyforward relays both directions",
    "-s": "pyforward stops on every configuration error",
    "-g": "pyforward checks every option",
    "-D": "pyforward does not list file descriptors",
    "-L": "use systemd or a lock of your own",
    "-W": "use systemd or a lock of your own",
    "-4": "TCP-LISTEN listens on IPv4 and IPv6; name the version with TCP4-LISTEN or TCP6-LISTEN",
    "-6": "TCP-LISTEN listens on IPv4 and IPv6; name the version with TCP4-LISTEN or TCP6-LISTEN",
    "-lf": "pyforward logs to stderr (under systemd, the journal); "
    "to keep a file, set StandardError=append:FILE in the unit",
    "-ly": "pyforward logs to stderr (under systemd, the journal, which feeds syslog)",
    "-lm": "pyforward logs to stderr (under systemd, the journal, which feeds syslog)",
    "-lp": "pyforward names itself in its log lines",
    "-lu": "pyforward's timestamps come from its log format or the journal",
    "-lh": "pyforward's log lines come from one host; the journal records it",
}


def _is_option(word: str) -> bool:
    """A socat option (`-d`, `-T30`), not the STDIO address `-` (`-,echo=0`, `-!!...`)."""
    return word.startswith("-") and word[1:2] not in ("", ",", ":", "!")


def parse_socat_args(argv: Sequence[str]) -> SocatCommand:
    """Parse socat's arguments (without the program name) into a `SocatCommand`."""
    verbosity = 0
    idle_timeout: float | None = None
    close_delay: float | None = None
    buffer_size: int | None = None
    dumps: set[str] = set()
    index = 0
    # As in socat, options come first; the first word not starting with "-" (or a
    # lone "-", which is the STDIO address, also with options: "-,echo=0") begins the
    # addresses.
    while index < len(argv) and _is_option(argv[index]):
        arg = argv[index]
        index += 1
        if re.fullmatch(r"-d+", arg):
            verbosity += len(arg) - 1
            continue
        if arg[:2] in _OPTIONS_WITH_VALUE:
            # socat takes the value glued on (-T30) or as the next word (-T 30).
            flag, value = arg[:2], arg[2:]
            if not value:
                if index >= len(argv):
                    raise ConfigError(f"socat option {flag} needs a value, e.g. {flag} 30")
                value = argv[index]
                index += 1
            if flag == "-T":
                idle_timeout = parse_seconds(value, "-T")
            elif flag == "-t":
                close_delay = parse_seconds(value, "-t")
            else:
                buffer_size = parse_whole(value, "-b", minimum=1)
            continue
        if arg == "-ls":
            continue  # log to stderr: what pyforward does anyway
        if arg in ("-v", "-x"):
            dumps.add(arg)
            continue
        refused = arg[:3] if arg[:3] in _REFUSED_OPTIONS else arg[:2]
        if refused in _REFUSED_OPTIONS:
            raise ConfigError(
                f"socat option {refused} is not supported: {_REFUSED_OPTIONS[refused]}"
            )
        raise ConfigError(
            f"unknown socat option {arg!r}: pyforward-socat takes -d, -T SECONDS, "
            "-t SECONDS, -b SIZE, -ls, -v, -x"
        )
    addresses = list(argv[index:])
    if len(addresses) != 2:
        count = f"{len(addresses)} address{'es' if len(addresses) != 1 else ''}"
        raise ConfigError(
            f"socat takes two addresses, got {count}: e.g. "
            "TCP-LISTEN:443,fork,reuseaddr TCP:10.0.0.5:32653"
        )
    first, second = (split_address(text) for text in addresses)
    if udp.is_udp(first) or udp.is_udp(second):
        listen, connect = udp.parse_udp_pair(first, second)
        return SocatCommand(listen, connect, idle_timeout, verbosity, buffer_size, close_delay)
    for raw in (first, second):
        lowered = raw.keyword.lower()
        if lowered not in LISTEN_PARSERS and lowered not in CONNECT_PARSERS:
            raise refuse_type(raw)
    if first.keyword.lower() not in LISTEN_PARSERS:
        raise ConfigError(
            "the first address must be TCP-LISTEN or UNIX-LISTEN (pyforward listens, then "
            f"connects to the target for each client), got {first.keyword.upper()}"
        )
    if second.keyword.lower() not in CONNECT_PARSERS:
        raise ConfigError(
            "the second address must be TCP:HOST:PORT or UNIX-CONNECT:PATH (the target), "
            f"got {second.keyword.upper()}"
        )
    return SocatCommand(
        listen=LISTEN_PARSERS[first.keyword.lower()](first),
        connect=CONNECT_PARSERS[second.keyword.lower()](second),
        idle_timeout=idle_timeout,
        verbosity=verbosity,
        buffer_size=buffer_size,
        close_delay=close_delay,
        dump_text="-v" in dumps,
        dump_hex="-x" in dumps,
    )


def split_command_line(text: str) -> list[str]:
    """Split a shell-style command line into words (quotes and backslashes as in sh)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ConfigError(f"cannot split the command line: {exc}") from None


def parse_socat_line(text: str) -> SocatCommand:
    """Parse a whole command line as text; a leading `socat` (any path) is skipped."""
    words = split_command_line(text)
    if words and PurePosixPath(words[0]).name in PROGRAM_NAMES:
        words = words[1:]
    return parse_socat_args(words)
