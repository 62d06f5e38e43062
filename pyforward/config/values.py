"""The schema's value converters: each takes a raw value (text from the environment, or a
TOML value) and returns the typed value or raises ValueError with a message for the user.
Pure."""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum

from pyforward.config.access import AccessList, parse_network
from pyforward.config.addresses import parse_listen, parse_listen_endpoint, parse_target_endpoint
from pyforward.config.sni import host_names, split_route_names
from pyforward.errors import ConfigError


def _seconds(value: object) -> float:
    """A finite number of seconds, of either sign (the callers say which they take)."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("s")
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
    else:
        raise ValueError("expected a number of seconds")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a number of seconds, got {_shown(value)}")
    return seconds


def duration(value: object) -> float:
    """Seconds, 0 or more (0 turns a timeout off)."""
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError(f"expected a non-negative number of seconds, got {_shown(value)}")
    return seconds


def positive_duration(value: object) -> float:
    """Seconds, more than 0: a timeout that cannot be off. -1 and 0 get the same answer."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError(f"expected more than 0 seconds, got {_shown(value)}")
    return seconds


def _shown(value: object) -> str:
    """A value as the user wrote it: numbers plain, text quoted."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"expected a whole number, got {value!r}")
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError("expected a whole number")
    if value < 0:
        raise ValueError(f"expected a non-negative whole number, got {value}")
    return value


def whole_positive(value: object) -> int:
    number = positive_int(value)
    if number == 0:
        raise ValueError("expected a whole number of 1 or more, got 0")
    return number


def workers_value(value: object) -> int | None:
    """A number of worker processes (1 or more), or `auto` (None): one per usable CPU."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        count = positive_int(value)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {_shown(value)}") from None
    if count < 1:
        raise ValueError(f"expected at least 1 process (or auto), got {count}")
    return count


def port_or_none(value: object) -> int:
    """A port number 1-65535, or 0: any."""
    port = positive_int(value)
    if port > 65535:
        raise ValueError(f"a port is 1-65535 (0: any), got {port}")
    return port


def retries(value: object) -> int | None:
    """A count of retries, or `forever` (None)."""
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError(f"expected a whole number or forever, got {_shown(value)}") from None


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def choice(enum: type[StrEnum]) -> Callable[[object], StrEnum]:
    def convert(value: object) -> StrEnum:
        if isinstance(value, str):
            try:
                return enum(value.strip().lower())
            except ValueError:
                pass
        choices = ", ".join(member.value for member in enum)
        raise ValueError(f"expected one of {choices}, got {value!r}")

    return convert


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _string_list(value: object) -> list[str]:
    """A list of strings; in the environment, separated by commas or whitespace."""
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("expected a string or a list of strings")


def route_list(value: object) -> list[str]:
    """Routes; in the environment separated by whitespace (a route's targets take commas)."""
    routes = value.split() if isinstance(value, str) else _string_list(value)
    for item in routes:
        names, rest = split_route_names(item)
        listen_text, sep, target_text = rest.partition("=")
        if not sep:
            raise ValueError(
                f"invalid route {item!r}: expected LISTEN=TARGET or NAME[,NAME]@LISTEN=TARGET, "
                "e.g. 443=10.0.0.5:32653 or jenkins.example.com@443=10.0.0.5:32653"
            )
        if names:
            host_names(names)
        _checked(parse_listen_endpoint, listen_text)
        for text in target_text.split(","):
            _checked(parse_target_endpoint, text)
    return routes


def _checked(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def listen_text(value: object) -> str:
    """A listen address, checked; kept as written (a config file is written from it)."""
    text = string(value)
    _checked(parse_listen_endpoint, text)
    return text


def metrics_text(value: object) -> str:
    """The metrics listener's address: a host is required, so it is reachable only where
    the user says (a bare port would be every interface)."""
    text = string(value)
    _checked(parse_listen, text)
    if parse_listen(text).host is None:
        raise ValueError(
            f"{text!r} is every interface; give HOST:PORT, e.g. 127.0.0.1:{text.strip()}"
        )
    return text


def target_list(value: object) -> list[str]:
    """One target or several, checked; an empty list forwards nowhere."""
    targets = _string_list(value)
    if not targets:
        raise ValueError("no target given (an empty list); give at least one HOST:PORT")
    for text in targets:
        _checked(parse_target_endpoint, text)
    return targets


def network_list(value: object) -> list[str]:
    """Addresses or CIDR networks, checked."""
    networks = _string_list(value)
    for text in networks:
        try:
            parse_network(text)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return networks


def trusted_networks(value: object) -> AccessList:
    """The peers whose PROXY header is believed: addresses or CIDR networks, checked."""
    return AccessList(allow=tuple(parse_network(text) for text in network_list(value)))
