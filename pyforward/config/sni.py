"""Routes that share one listen address, told apart by the TLS server name. Pure.

A route's `sni` lists the host names (exact, or `*.` wildcards) whose connections it takes.
Several routes may listen on one address when each names its own: at most one of them has no
`sni` and is that address's default (what no name selects, a hello without a name, a client
that does not speak TLS). Two routes claiming one name there, or two defaults, is a
configuration error; so is a disagreement on what the address's clients start with
(`accept_proxy_protocol`, `proxy_protocol_from`), which is read before any name is known.

On the command line a route's names come before its listen address: `NAME[,NAME]@LISTEN=TARGET`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyforward.config.addresses import Address
from pyforward.errors import ConfigError
from pyforward.protocols.hostnames import HostNameError, check_pattern, conflicts

if TYPE_CHECKING:
    from pyforward.config.model import Route


def host_names(value: object) -> tuple[str, ...]:
    """A route's `sni`: host names or wildcards, checked and normalised (lower case, no
    trailing dot); in the environment and on the command line separated by commas."""
    if isinstance(value, str):
        names = [item for item in value.replace(",", " ").split() if item]
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        names = list(value)
    else:
        raise ValueError("expected a host name or a list of host names")
    if isinstance(value, list | tuple) and not names:
        raise ValueError("an empty list: leave sni out for the address's default route")
    try:
        return tuple(dict.fromkeys(check_pattern(name) for name in names))
    except HostNameError as exc:
        raise ValueError(str(exc)) from None


def split_route_names(item: str) -> tuple[str, str]:
    """`NAMES@LISTEN=TARGET` into (`NAMES`, `LISTEN=TARGET`); no `@`: no names."""
    listen_part = item.partition("=")[0]
    if "@" not in listen_part:
        return "", item
    names, _, rest = item.partition("@")
    return names, rest


def shared_listens(routes: Sequence[Route]) -> set[Address]:
    """The listen addresses several routes share, each route with names of its own; raises
    ConfigError (one line naming the routes) when they cannot share it."""
    by_address: dict[Address, list[int]] = {}
    for index, route in enumerate(routes, 1):
        listen = route.listen
        if isinstance(listen, Address) and listen.port != 0:
            by_address.setdefault(listen, []).append(index)
    shared: set[Address] = set()
    for address, indices in by_address.items():
        if len(indices) < 2:
            continue
        group = [(index, routes[index - 1]) for index in indices]
        defaults = [index for index, route in group if not route.sni]
        if len(defaults) == len(group):
            raise ConfigError(f"listen address given twice: {address}")
        if len(defaults) > 1:
            raise ConfigError(
                f"listen {address}: routes {_both(defaults)} have no sni; only one route of a "
                "shared address may be its default (give the others sni names)"
            )
        found = conflicts((f"route {index}", route.sni) for index, route in group if route.sni)
        if found:
            raise ConfigError(f"listen {address}: {found[0]} (sni); give each name to one route")
        first_index, first = group[0]
        for index, route in group[1:]:
            mine, theirs = route.policy, first.policy
            if (mine.accept_proxy_protocol, mine.proxy_protocol_from) != (
                theirs.accept_proxy_protocol,
                theirs.proxy_protocol_from,
            ):
                raise ConfigError(
                    f"listen {address}: routes {first_index} and {index} differ in "
                    "accept_proxy_protocol or proxy_protocol_from; a PROXY header is read "
                    "before the server name chooses the route, so they must agree"
                )
        shared.add(address)
    return shared


def _both(indices: Sequence[int]) -> str:
    return " and ".join(str(index) for index in indices)
