"""Parsing and printing of `HOST:PORT` addresses. Pure: no sockets, no name lookups.

Accepted forms: `HOST:PORT`, `[IPV6]:PORT` (with an optional zone, `[IPV6%IFNAME]:PORT`)
and, for listeners only, a bare `PORT` (or `:PORT`), meaning every interface, IPv4 and IPv6.

Every host that parses is safe to write into a unit file or a log line as it is: a name is
RFC 1123, an address is numeric, and a zone is an interface name (see `_check_zone`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import cast

from pyforward.errors import ConfigError

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
IFNAMSIZ = 16  # Linux: an interface name is at most 15 bytes and a NUL
_IFINDEX_MAX = 2**31 - 1


@dataclass(frozen=True, order=True)
class Address:
    """A host and a port. `host` is None for a listener on every interface."""

    host: str | None
    port: int

    @property
    def is_ipv6_literal(self) -> bool:
        return self.host is not None and ":" in self.host

    def __str__(self) -> str:
        if self.host is None:
            return f"*:{self.port}"
        return host_port(self.host, self.port)


def parse_listen(text: str) -> Address:
    """Parse a listen address: `PORT`, `:PORT`, `HOST:PORT` or `[IPV6]:PORT`. Port 0 picks one."""
    return _parse(text, what="listen address", allow_bare_port=True, min_port=0)


def parse_target(text: str) -> Address:
    """Parse a target address: `HOST:PORT` or `[IPV6]:PORT`, port 1-65535."""
    return _parse(text, what="target address", allow_bare_port=False, min_port=1)


def _parse(text: str, *, what: str, allow_bare_port: bool, min_port: int) -> Address:
    raw = text.strip()
    if not raw:
        raise ConfigError(f"empty {what}")
    if "://" in raw:
        raise ConfigError(
            f"invalid {what} {text!r}: a URL is not an address; give HOST:PORT "
            "(pyforward forwards TCP, whatever protocol runs over it)"
        )
    host: str | None
    if raw.startswith("["):
        close = raw.find("]")
        if close == -1 or not raw[close + 1 :].startswith(":"):
            raise ConfigError(f"invalid {what} {text!r}: expected [IPV6]:PORT")
        host = raw[1:close]
        port_text = raw[close + 2 :]
        address, percent, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ConfigError(
                f"invalid {what} {text!r}: {address!r} is not an IPv6 address"
            ) from None
        if percent:
            _check_zone(zone, text, what)
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
        if ":" in host:
            raise ConfigError(f"invalid {what} {text!r}: write an IPv6 address as [ADDRESS]:PORT")
        if host == "":
            if not allow_bare_port:
                raise ConfigError(f"invalid {what} {text!r}: expected HOST:PORT")
            host = None
        else:
            _check_host(host, text, what)
    else:
        if not allow_bare_port:
            raise ConfigError(f"invalid {what} {text!r}: expected HOST:PORT")
        host, port_text = None, raw
    return Address(host, _parse_port(port_text, text, what, min_port))


def _check_host(host: str, text: str, what: str) -> None:
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if host.replace(".", "").isdigit() or not _HOSTNAME.fullmatch(host):
        raise ConfigError(f"invalid {what} {text!r}: {host!r} is not a host name or IP address")


def _check_zone(zone: str, text: str, what: str) -> None:
    """A zone names an interface (`eth0`) or gives its index (`2`). Names as systemd checks
    them (ifname_valid): 1-15 printable ASCII characters without `:` (the kernel's alias
    syntax), `/` (a path separator in sysfs) or `%` (the kernel reads `%d` as a pattern),
    and neither `.` nor `..`. The Linux kernel refuses whitespace and `/` and `:` too; what
    it would still take beyond this (control characters, bytes above ASCII) no tool can
    name safely, and a zone reaches unit files and log lines."""
    if zone.isascii() and zone.isdigit():
        if not 1 <= int(zone) <= _IFINDEX_MAX:
            raise ConfigError(f"invalid {what} {text!r}: interface index {zone} is out of range")
        return
    if not zone:
        problem = "the zone after % is empty"
    elif zone in {".", ".."} or not all("!" <= char <= "~" and char not in ":/%" for char in zone):
        problem = f"zone {zone!r} is not an interface name (printable ASCII, no : / %)"
    elif len(zone) >= IFNAMSIZ:
        problem = f"zone {zone!r} is longer than an interface name ({IFNAMSIZ - 1} characters)"
    else:
        return
    raise ConfigError(f"invalid {what} {text!r}: {problem}")


def _parse_port(port_text: str, text: str, what: str, min_port: int) -> int:
    try:
        return port_number(port_text, min_port)
    except PortError as exc:
        raise ConfigError(f"invalid {what} {text!r}: {exc}") from None


class PortError(ValueError):
    """Text that is no port; the message says why, for the caller to place in its own."""

    def __init__(self, problem: str, *, not_a_number: bool = False) -> None:
        super().__init__(problem)
        self.not_a_number = not_a_number


def port_number(text: str, minimum: int = 1) -> int:
    """The port `text` names (a decimal number, `minimum`-65535), or a PortError."""
    if not text:
        raise PortError("the port is empty")
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit():
        raise PortError(f"port {text!r} is not a number", not_a_number=True)
    port = int(text)
    if not minimum <= port <= 65535:
        raise PortError(f"port must be {minimum}-65535, got {port}")
    return port


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_host(host: str) -> str:
    """The address a user would recognise: an IPv4 client on a dual-stack socket as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def format_peer(sockaddr: tuple[object, ...] | str) -> str:
    """Format a socket address tuple (`getpeername`) as HOST:PORT, unmapping IPv4."""
    if isinstance(sockaddr, str):
        return sockaddr
    host = client_host(str(sockaddr[0]))
    return host_port(host, cast(int, sockaddr[1]))


# --- UNIX stream sockets: `unix:/path` (a file) and `unix:@name` (Linux's abstract namespace)

UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes; a path needs its NUL, an abstract name its leading NUL.
UNIX_PATH_MAX = 108


@dataclass(frozen=True, order=True)
class UnixAddress:
    """A UNIX stream socket: a path, or an abstract name (`name` starting with `@`)."""

    name: str

    @property
    def abstract(self) -> bool:
        return self.name.startswith("@")

    @property
    def sockaddr(self) -> str:
        """What bind() and connect() take: an abstract name starts with a NUL byte."""
        return "\0" + self.name[1:] if self.abstract else self.name

    def __str__(self) -> str:
        return UNIX_PREFIX + self.name


Endpoint = Address | UnixAddress


def parse_unix(text: str, what: str) -> UnixAddress:
    """Parse `unix:/absolute/path` or `unix:@abstract-name`."""
    name = text.strip()[len(UNIX_PREFIX) :]
    where = f"invalid {what} {text!r}"
    if not name or name == "@":
        raise ConfigError(f"{where}: give unix:/PATH or unix:@NAME")
    if not name.startswith(("/", "@")):
        raise ConfigError(f"{where}: a UNIX socket path must be absolute (unix:/run/x.sock)")
    if "\0" in name or not name.isprintable():
        raise ConfigError(f"{where}: the path holds a control character")
    size = len(name.encode())
    limit = UNIX_PATH_MAX - 1
    if size > limit:
        raise ConfigError(f"{where}: {size} bytes is longer than a UNIX socket path ({limit})")
    if not name.startswith("@") and name.endswith("/"):
        raise ConfigError(f"{where}: the path names a directory")
    return UnixAddress(name)


def is_unix(text: str) -> bool:
    return text.strip().lower().startswith(UNIX_PREFIX)


def parse_listen_endpoint(text: str) -> Endpoint:
    """A route's listen address: `parse_listen`'s forms, or `unix:/PATH`, `unix:@NAME`."""
    return parse_unix(text, "listen address") if is_unix(text) else parse_listen(text)


def parse_target_endpoint(text: str) -> Endpoint:
    """A route's target: `parse_target`'s forms, or `unix:/PATH`, `unix:@NAME`."""
    return parse_unix(text, "target address") if is_unix(text) else parse_target(text)
