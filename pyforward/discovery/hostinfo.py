"""Who this host is, for preferring its own node: names, and a test for local addresses."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Mapping

from pyforward.discovery.model import HostIdentity
from pyforward.discovery.nodeaddress import check_node_address


def host_names(env: Mapping[str, str]) -> frozenset[str]:
    """This host's name, short and full, and the node name k3s would give it."""
    names = {socket.gethostname()}
    names |= {name.split(".", 1)[0] for name in names}
    for variable in ("NODE_NAME", "K3S_NODE_NAME"):
        if env.get(variable):
            names.add(env[variable])
    return frozenset(name for name in names if name)


def is_local_address(address: str) -> bool:
    """True when `address` belongs to this host: binding to it succeeds only then.

    Binding also succeeds for addresses that belong to no host (0.0.0.0, broadcast,
    multicast): those are never node addresses, so never this host's."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        check_node_address(address)
    except ValueError:
        return False
    with contextlib.closing(socket.socket(family, socket.SOCK_DGRAM)) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def this_host(env: Mapping[str, str] | None = None) -> HostIdentity:
    """The identity of the host pyforward runs on."""
    return HostIdentity(host_names(os.environ if env is None else env), is_local_address)
