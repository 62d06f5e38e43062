"""Who may connect: allow and deny lists of networks. Pure: strings in, decisions out.

The rule, checked at accept before any connection to a target is made (for a trusted load
balancer's connection, once its PROXY header has named the client): a client in a
`deny` network is refused; otherwise, when an `allow` list is given, a client outside
every allowed network is refused; everyone else is let in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from pyforward.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4 clients of a dual-stack socket


def parse_network(text: str, what: str = "network") -> Network:
    """A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`192.0.2.7`).

    Read the way a client's address is: an IPv4-mapped address or network (`::ffff:a.b.c.d`,
    `::ffff:0:0/96` and anything inside it) is the IPv4 network it maps, exactly
    (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). An IPv4 client of a dual-stack listener is seen
    as IPv4, so a mapped rule written any other way would match no one."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            f"invalid {what} {text!r}: expected an address or CIDR such as 10.0.0.0/8"
        ) from None
    return unmapped(network)


def unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 network as the IPv4 network it maps; any other as it is."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        low_32_bits = int(network.network_address) & 0xFFFF_FFFF
        return ipaddress.IPv4Network((low_32_bits, network.prefixlen - _MAPPED.prefixlen))
    return network


@dataclass(frozen=True)
class AccessList:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str], deny: Iterable[str]) -> AccessList:
        return cls(
            tuple(parse_network(item, "allow network") for item in allow),
            tuple(parse_network(item, "deny network") for item in deny),
        )

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, host: str) -> bool:
        """Whether a client at `host` (as `getpeername` gives it) may connect."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # not an IP client (never on a TCP listener): refuse
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client of a dual-stack listener
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)
