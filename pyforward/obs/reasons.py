"""Why a connection ended: the one closed list, used by the close line, the counters and
the README's table (a test keeps the table and this enum the same).

The values are what the logs say (`reason=eof`); they never change once released, since
log queries and alerts match on them. A new reason is one member here and one row there.
"""

from __future__ import annotations

from enum import StrEnum


class CloseReason(StrEnum):
    EOF = "eof"  # both sides finished sending (each half-closed or closed), nothing lost
    RESET = "reset"  # one side reset the connection; the reset was passed on to the other
    IDLE_TIMEOUT = "idle-timeout"  # no byte in either direction for idle_timeout seconds
    CONNECT_TIMEOUT = "connect-timeout"  # the target did not accept within connect_timeout
    REFUSED = "refused"  # every target refused the connection
    UNREACHABLE = "unreachable"  # no route to the target, or the network is down
    SHUTDOWN = "shutdown"  # the forwarder stopped before the connection finished
    DENIED = "denied"  # the client's address is not allowed (allow/deny lists)
    SOURCE_LIMIT = "source-limit"  # the client's address already has its connections open
    FIRST_BYTE_TIMEOUT = "first-byte-timeout"  # the client sent nothing in first_byte_timeout
    BAD_PROXY_HEADER = "bad-proxy-header"  # a trusted peer's PROXY header missing or invalid
    NO_ROUTE = "no-route"  # the TLS server name selects no route and the address has no default
    NOT_TLS = "not-tls"  # a client of an sni address did not start TLS, and there is no default
    BAD_TLS_HELLO = "bad-tls-hello"  # a client of an sni address sent a malformed hello
    SNI_TIMEOUT = "sni-timeout"  # no complete ClientHello within sni_timeout
    ERROR = "error"  # any other failure; the close line's `error=` names it
    FLOW_LIMIT = "flow-limit"  # UDP: the route holds udp_max_flows assured flows already
    FLOW_EVICTED = "flow-evicted"  # UDP: a flow closed to make room for a new client's


class Side(StrEnum):
    """One end of a forwarded connection, as the close line's `reset_by=` names it."""

    CLIENT = "client"
    TARGET = "target"
