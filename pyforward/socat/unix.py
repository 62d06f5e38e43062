"""socat's UNIX stream addresses: `UNIX-LISTEN`, `UNIX-CONNECT`, `UNIX-CLIENT`, `UNIX` and
their abstract twins (`ABSTRACT-LISTEN`, `ABSTRACT-CONNECT`, `ABSTRACT-CLIENT`). Pure.

Read into pyforward's `unix:/path` and `unix:@name` addresses. What socat does on a
UNIX-LISTEN that pyforward does its own way is reported, never silently changed:
`unlink-early` (socat removes whatever is at the path; pyforward replaces only a stale
socket, and refuses one a server listens on), `unlink-close` (pyforward always removes the
file it made; socat does so by default too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyforward.config.addresses import UNIX_PREFIX, parse_unix
from pyforward.config.unix import file_mode, owner
from pyforward.errors import ConfigError

if TYPE_CHECKING:
    from pyforward.socat.model import Retry

UNIX_LISTEN_TYPES = {
    "unix-listen": False,
    "unix-l": False,
    "abstract-listen": True,
}
# UNIX-CLIENT and UNIX connect a stream socket (socat would also try a datagram socket
# when the stream connect fails with EPROTOTYPE; a stream forward never needs it).
UNIX_CONNECT_TYPES = {
    "unix-connect": False,
    "unix-client": False,
    "unix": False,
    "local": False,
    "abstract-connect": True,
    "abstract-client": True,
    "abstract": True,
}
UNIX_LISTEN_OPTIONS = (
    "fork",
    "backlog",
    "max-children",
    "mode",
    "user",
    "group",
    "unlink-early",
    "unlink-close",
    "su",
)
UNIX_OPTION_ALIASES = {"perm": "mode", "owner": "user", "unlink": "unlink-early"}


@dataclass(frozen=True)
class UnixListenAddress:
    """A `UNIX-LISTEN` (or `ABSTRACT-LISTEN`) address."""

    name: str  # a path, or @ and an abstract name, as pyforward's unix: address holds it
    fork: bool = False
    backlog: int | None = None
    max_children: int | None = None
    mode: int | None = None
    user: str | None = None
    group: str | None = None
    unlink_early: bool = False
    unlink_close: bool | None = None  # None: not given (socat's default: on)
    su: str | None = None

    @property
    def abstract(self) -> bool:
        return self.name.startswith("@")


@dataclass(frozen=True)
class UnixConnectAddress:
    """A `UNIX-CONNECT` (`UNIX-CLIENT`, `UNIX`, `ABSTRACT-CONNECT`, ...) address."""

    name: str
    connect_timeout: float | None = None
    retry: Retry | None = None


def unix_name(param: str, abstract: bool, where: str) -> str:
    """The address's parameter as pyforward's unix: name, checked."""
    if not param:
        raise ConfigError(f"{where}: the socket path is empty")
    if abstract:
        name = "@" + param
    else:
        if not param.startswith("/"):
            raise ConfigError(
                f"{where}: give the socket's absolute path ({param!r} is relative to a "
                "working directory a service does not have)"
            )
        name = param
    try:
        parse_unix(UNIX_PREFIX + name, "socket address")
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(f"{where}: {message.split(': ', 1)[-1]}") from None
    return name


def listen_mode(text: str, where: str) -> int:
    try:
        return file_mode(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: mode={text}: {exc}") from None


def owner_name(name: str, text: str, where: str) -> str:
    try:
        return owner(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {name}={text}: {exc}") from None


def keyword_of_listen(address: UnixListenAddress) -> str:
    return "ABSTRACT-LISTEN" if address.abstract else "UNIX-LISTEN"


def keyword_of_connect(address: UnixConnectAddress) -> str:
    return "ABSTRACT-CONNECT" if address.name.startswith("@") else "UNIX-CONNECT"


def socat_param(name: str) -> str:
    """The address parameter socat takes for a unix: name."""
    return name[1:] if name.startswith("@") else name
