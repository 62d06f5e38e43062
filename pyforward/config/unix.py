"""The settings of a `unix:` listener, and which route settings fit a UNIX socket. Pure.

A UNIX listener's clients are local processes with no IP address: who may connect is the
socket file's mode, owner and group (`unix_mode`, `unix_user`, `unix_group`), as for any
file. The networks of `allow`/`deny` match no one there, so they are refused on such a
route rather than silently ignored. The per-source limit counts a UNIX client by its user
(`uid:N`, the peer credentials the kernel gives with SO_PEERCRED).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyforward.config.addresses import Endpoint, UnixAddress
from pyforward.errors import ConfigError

UNIX_KEYS = ("unix_mode", "unix_user", "unix_group")
_MODE_MAX = 0o7777


def file_mode(value: object) -> int:
    """A file mode in octal (`"0660"`, `"660"`; in TOML also `0o660`)."""
    if isinstance(value, bool):
        raise ValueError("expected an octal file mode such as 0660")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str):
        text = value.strip().removeprefix("0o")
        if not text or not all(char in "01234567" for char in text):
            raise ValueError(f"expected an octal file mode such as 0660, got {value!r}")
        mode = int(text, 8)
    else:
        raise ValueError("expected an octal file mode such as 0660")
    if not 0 <= mode <= _MODE_MAX:
        raise ValueError(f"a file mode is 0-07777, got {oct(mode)}")
    return mode


def owner(value: object) -> str:
    """A user or group: a name, or a number."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a user or group name, or a number")
    text = value.strip()
    if not all(char.isalnum() or char in "._-$" for char in text):
        raise ValueError(f"{text!r} is not a user or group name")
    return text


def check_unix_route(listen: Endpoint, values: Mapping[str, Any], where: str) -> None:
    """Refuse route settings that mean nothing for its listen address."""
    given = [key for key in UNIX_KEYS if values.get(key) is not None]
    if not isinstance(listen, UnixAddress):
        if given:
            raise ConfigError(
                f"{where}: {given[0]} applies to a unix: listen address, not {listen}"
            )
        return
    if listen.abstract and given:
        raise ConfigError(
            f"{where}: {given[0]}: {listen} is an abstract socket, which has no file "
            "to give a mode or owner"
        )
    if values.get("reuseport"):
        raise ConfigError(f"{where}: reuseport applies to TCP listeners, not {listen}")
    if values.get("sni"):
        raise ConfigError(f"{where}: sni routes TCP listeners by TLS server name, not {listen}")
    if values.get("allow") or values.get("deny"):
        raise ConfigError(
            f"{where}: allow/deny match IP networks, and clients of {listen} have none; "
            "restrict who may connect with unix_mode, unix_user and unix_group"
        )
