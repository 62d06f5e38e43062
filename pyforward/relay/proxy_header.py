"""The PROXY protocol header a route sends its target before any byte of the client's.

A target-side stage: once the target accepted, it builds the header (v1 or v2, with the
pure builders of `protocols/proxy.py`) from the client's address and port and the address
the client connected to, and writes it whole before the pump or the client's early bytes
(`SendToTarget`), so on either relay path it is the first thing the target reads.

The addresses are the accepted socket's own (`getpeername`, `getsockname`): on a dual-stack
listener an IPv4 client is `::ffff:a.b.c.d` there, and the builders send it as IPv4.
"""

from __future__ import annotations

from collections.abc import Callable

from pyforward.config.policy import ProxyProtocol
from pyforward.obs.reasons import CloseReason, Side
from pyforward.protocols.proxy import build_v1, build_v2
from pyforward.relay.stages import SendToTarget, StageHost

Builder = Callable[[tuple[str, int] | None, tuple[str, int] | None], bytes]

BUILDERS: dict[ProxyProtocol, Builder] = {
    ProxyProtocol.V1: build_v1,
    ProxyProtocol.V2: build_v2,
}


class SendProxyHeader(SendToTarget):
    """Write the PROXY header of the client's connection to the target."""

    def __init__(self, version: ProxyProtocol) -> None:
        super().__init__(b"")
        self.build = BUILDERS[version]

    def start(self, host: StageHost) -> None:
        self.host = host
        try:
            client = host.client.getpeername()
            destination = host.client.getsockname()
        except OSError:
            # The client is gone already (reset before its connection got this far).
            host.close(CloseReason.RESET, reset=True, reset_by=Side.CLIENT)
            return
        self.data = memoryview(self.build(client[:2], destination[:2]))
        super().start(host)
