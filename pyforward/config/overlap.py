"""Routes whose listen addresses would take the same socket. Pure: addresses in, a reason out.

Two routes on one port overlap when one of them listens on a wildcard that covers the
other's address: `*` (every interface, IPv4 and IPv6, one dual-stack socket), `0.0.0.0`
(every IPv4 address) or `[::]` (every IPv6 address; a named IPv6 address is bound
IPv6-only, so `0.0.0.0` and `[::]` do not overlap). The second bind would fail with
"port in use" while the port's holder is pyforward itself; this says what is wrong instead.
Host names are left to the bind: what they resolve to is not known here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pyforward.config.addresses import Address


def _covers(wide: Address, narrow: Address) -> str | None:
    """What `wide` listens on, if that includes `narrow`'s address; else None."""
    if wide.host is None:
        return "every interface, IPv4 and IPv6"
    try:
        wide_ip = ipaddress.ip_address(wide.host)
        narrow_ip = ipaddress.ip_address((narrow.host or "").split("%", 1)[0])
    except ValueError:
        return None
    if not wide_ip.is_unspecified or wide_ip.version != narrow_ip.version:
        return None
    return f"every IPv{wide_ip.version} address"


def overlapping_listens(listens: Sequence[Address]) -> str | None:
    """Why two of these listen addresses overlap, or None when none do."""
    for index, first in enumerate(listens):
        for second in listens[index + 1 :]:
            if first.port != second.port or first == second:
                continue
            for wide, narrow in ((first, second), (second, first)):
                covered = _covers(wide, narrow)
                if covered is not None:
                    return (
                        f"routes overlap: {first} and {second} both listen on port "
                        f"{first.port}, and {wide} is {covered}, which includes {narrow}; "
                        "keep one of them, or give addresses that do not overlap"
                    )
    return None
