"""Who may connect: allow and deny lists of networks. Pure: strings in, decisions out.

The rule, checked at accept before any connection to a target is made: a client in a
`deny` network is refused; otherwise, when an `allow` list is given, a client outside
every allowed network is refused; everyone else is let in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from pyforward.addresses import client_host
from pyforward.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str, what: str = "network") -> Network:
    """A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`192.0.2.7`)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            f"invalid {what} {text!r}: expected an address or CIDR such as 10.0.0.0/8"
        ) from None


@dataclass(frozen=True)
class AccessList:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str], deny: Iterable[str]) -> AccessList:
        return cls(
            tuple(parse_network(item, "--allow network") for item in allow),
            tuple(parse_network(item, "--deny network") for item in deny),
        )

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, host: str) -> bool:
        """Whether a client at `host` (as `getpeername` gives it) may connect."""
        try:
            address = ipaddress.ip_address(client_host(host).split("%", 1)[0])
        except ValueError:
            return False  # not an IP client (never on a TCP listener): refuse
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)
