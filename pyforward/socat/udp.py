"""socat's UDP addresses: `UDP-LISTEN`, `UDP-RECVFROM` (and their 4/6 forms) first, a
`UDP` target second. Pure; the lexer and value checks are lexer.py's and values.py's.

What they mean in socat (socat(1)) and what pyforward makes of them:

- `UDP-LISTEN:P` (socat: wait for a first datagram, then serve that peer alone): one flow,
  the first client's; pyforward exits when it ends.
- `UDP-LISTEN:P,fork` (socat: a child process per peer): a UDP route, a flow per client
  address, all in one process.
- `UDP-RECVFROM:P,fork` (socat: a child per arriving datagram, answering its sender): the
  same route; a peer's later datagrams share its flow instead of a new child each, so the
  target sees one source port per peer.
- `UDP-RECVFROM:P` (socat: one datagram and its answers, then exit): one flow, then exit.
- `-T N` (socat: a child ends after N idle seconds; without it, never): `udp_idle_timeout`
  N; without it the default, 120 s.

`reuseaddr` is accepted (one socket serves every peer, no child rebinds the port) and
`bind=` names the listening address, as for TCP.
"""

from __future__ import annotations

from dataclasses import replace

from pyforward.config.model import Transport
from pyforward.errors import ConfigError
from pyforward.socat.addresses import CONNECT_TYPES, LISTEN_TYPES, parse_tcp_connect, refuse_type
from pyforward.socat.lexer import RawAddress
from pyforward.socat.model import ConnectAddress, Family, ListenAddress
from pyforward.socat.values import (
    check_bind,
    check_params,
    is_on,
    needs_value,
    parse_bind,
    parse_port,
)

UDP_LISTEN_TYPES = {
    "udp-listen": (Family.ANY, False),
    "udp-l": (Family.ANY, False),
    "udp4-listen": (Family.IPV4, False),
    "udp4-l": (Family.IPV4, False),
    "udp6-listen": (Family.IPV6, False),
    "udp6-l": (Family.IPV6, False),
    "udp-recvfrom": (Family.ANY, True),
    "udp4-recvfrom": (Family.IPV4, True),
    "udp6-recvfrom": (Family.IPV6, True),
}
UDP_CONNECT_TYPES = {
    "udp": Family.ANY,
    "udp-connect": Family.ANY,
    "udp4": Family.IPV4,
    "udp4-connect": Family.IPV4,
    "udp6": Family.IPV6,
    "udp6-connect": Family.IPV6,
}
_LISTEN_OPTIONS = ("fork", "reuseaddr", "bind")


def is_udp(raw: RawAddress) -> bool:
    lowered = raw.keyword.lower()
    return lowered in UDP_LISTEN_TYPES or lowered in UDP_CONNECT_TYPES


def parse_udp_pair(first: RawAddress, second: RawAddress) -> tuple[ListenAddress, ConnectAddress]:
    """A UDP listener and its UDP target; any other pairing with a UDP address is refused."""
    for raw in (first, second):
        lowered = raw.keyword.lower()
        if not is_udp(raw) and lowered not in LISTEN_TYPES and lowered not in CONNECT_TYPES:
            raise refuse_type(raw)
    listen_kind = UDP_LISTEN_TYPES.get(first.keyword.lower())
    if listen_kind is None:
        raise ConfigError(
            f"the first address must be UDP-LISTEN or UDP-RECVFROM to forward to "
            f"{second.keyword.upper()} (pyforward listens, then sends each client's "
            f"datagrams on), got {first.keyword.upper()}"
        )
    target_family = UDP_CONNECT_TYPES.get(second.keyword.lower())
    if target_family is None:
        raise ConfigError(
            f"{first.keyword.upper()} forwards datagrams to a UDP target "
            f"(UDP:HOST:PORT), got {second.keyword.upper()}"
        )
    family, recvfrom = listen_kind
    return _parse_listen(first, family, recvfrom), _parse_target(second, target_family)


def _parse_listen(raw: RawAddress, family: Family, recvfrom: bool) -> ListenAddress:
    where = f"address {raw.text!r}"
    check_params(raw, ["PORT"])
    address = ListenAddress(
        family=family,
        port=parse_port(raw.params[0], where, minimum=0),
        transport=Transport.UDP,
        recvfrom=recvfrom,
    )
    for name, value in raw.options:
        option = name.lower().replace("so-reuseaddr", "reuseaddr")
        if option not in _LISTEN_OPTIONS:
            raise ConfigError(
                f"{where}: option {name!r} is not supported on {raw.keyword.upper()}; "
                f"pyforward-socat takes {', '.join(_LISTEN_OPTIONS)}"
            )
        if option == "fork":
            address = replace(address, fork=is_on(name, value, where))
        elif option == "reuseaddr":
            address = replace(address, reuseaddr=is_on(name, value, where))
        else:
            host = parse_bind(needs_value(name, value, where, "127.0.0.1"), where)
            address = replace(address, bind=host)
    check_bind(address, where, raw.keyword)
    return address


def _parse_target(raw: RawAddress, family: Family) -> ConnectAddress:
    if raw.options:
        name = raw.options[0][0]
        raise ConfigError(
            f"address {raw.text!r}: option {name!r} is not supported on {raw.keyword.upper()}"
        )
    tcp_form = RawAddress(raw.text, raw.keyword, raw.params, ())
    return replace(parse_tcp_connect(tcp_form, family), transport=Transport.UDP)


def listen_keyword(listen: ListenAddress) -> str:
    return f"UDP{listen.family.value}-{'RECVFROM' if listen.recvfrom else 'LISTEN'}"


def connect_keyword(family: Family) -> str:
    return f"UDP{family.value}"


def udp_summary(
    listen: ListenAddress, idle_timeout: float | None, *, as_service: bool
) -> list[str]:
    """What the UDP forms carry (their lines of `summarize`)."""
    carried = []
    peers = "every peer (one flow per client address)"
    if listen.fork:
        carried.append(f"fork: {peers}, all in one process")
    elif not as_service:
        carried.append("no fork: the first peer's flow is served, then pyforward exits")
    if listen.recvfrom:
        carried.append(
            "UDP-RECVFROM: a peer's datagrams share one flow (socat: a child per datagram)"
        )
    if listen.reuseaddr:
        carried.append("reuseaddr: one socket serves every peer; no child rebinds the port")
    if not idle_timeout:
        carried.append("a UDP flow idle 120 s closes (udp_idle_timeout; socat keeps it forever)")
    return carried
