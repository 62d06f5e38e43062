"""Which addresses may be discovered targets: one rule for every way a node address enters.

A Node's InternalIP (from the API), `--node-ip` and a target in the state file all become
addresses pyforward connects outside clients to, so all three pass this one check:

- An IP literal, never a name: a name would be looked up when the forwarder starts, and
  one that does not resolve stops the service (again at every restart, once saved).
- Never an address that names no single peer: unspecified (`0.0.0.0`, `::`; connecting
  there reaches this host), the rest of `0.0.0.0/8` ("this network"), the limited
  broadcast `255.255.255.255`, multicast (`224.0.0.0/4`, `ff00::/8`).
- Never link-local (`169.254.0.0/16`, `fe80::/10`): clusters do not give nodes such
  addresses (the kubelet takes the address of the interface with the default route); an
  IPv6 one cannot be reached without a zone, an interface name the API has no business
  choosing; and `169.254.169.254` is the cloud metadata service, which must never be
  offered to outside clients.
- Loopback (`127.0.0.0/8`, `::1`) is accepted: it can only mean this host, which is where
  a node reporting it runs (a single-node cluster whose kubelet was given
  `--node-ip 127.0.0.1`, or a test cluster); it ranks as this host's node.

An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged by the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")


def check_node_address(value: object) -> str:
    """The address, normalised (`::0:1` -> `::1`); ValueError says why it cannot be a target."""
    if not isinstance(value, str):
        raise ValueError("is not an IP address (not text)")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError("has a zone (an interface name), which a node address never has")
    judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if judged.is_unspecified:
        raise ValueError("is the unspecified address (it would reach this host), never a target")
    if judged.version == 4 and judged in _THIS_NETWORK:
        raise ValueError("is in 0.0.0.0/8 (this network), never a target")
    if judged == _LIMITED_BROADCAST:
        raise ValueError("is the broadcast address, never a target")
    if judged.is_multicast:
        raise ValueError("is a multicast address, never a target")
    if judged.is_link_local:
        raise ValueError("is a link-local address, never a target")
    return str(ip)
