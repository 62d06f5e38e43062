"""What a socat command line says, parsed: the addresses and the command. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pyforward.config.model import Transport
from pyforward.obs.dump import DumpMode
from pyforward.socat.unix import UnixConnectAddress, UnixListenAddress

DEBUG_VERBOSITY = 4  # socat's -d -d -d -d: debug messages


class Family(StrEnum):
    """The IP version an address keyword names: TCP (any), TCP4, TCP6."""

    ANY = ""
    IPV4 = "4"
    IPV6 = "6"


@dataclass(frozen=True)
class ListenAddress:
    """A `TCP-LISTEN` address. `fork` False means: serve one connection, then exit."""

    family: Family
    port: int
    bind: str | None = None  # host to listen on; None: every interface
    fork: bool = False
    backlog: int | None = None
    max_children: int | None = None  # 0 or None: no limit
    keepalive: bool = False
    reuseaddr: bool = False  # given; pyforward sets it on every listener anyway
    nodelay: bool = False  # given; pyforward sets it on every socket anyway
    transport: Transport = Transport.TCP  # UDP-LISTEN, UDP-RECVFROM: see udp.py
    recvfrom: bool = False  # UDP-RECVFROM rather than UDP-LISTEN
    allow: str | None = None  # range=: the one network whose clients are served
    su: str | None = None  # su=: the user to become once the socket is bound
    ipv6_v6only: bool | None = None  # TCP6-LISTEN's IPV6_V6ONLY; None: not given
    reuseport: bool = False


@dataclass(frozen=True)
class ConnectAddress:
    """A `TCP` (connect) address."""

    family: Family
    host: str
    port: int
    connect_timeout: float | None = None
    keepalive: bool = False
    nodelay: bool = False
    transport: Transport = Transport.TCP  # UDP:HOST:PORT
    retry: Retry | None = None
    sourceport: int | None = None  # sourceport=, sp=: the local port of the connect


@dataclass(frozen=True)
class Retry:
    """forever, retry=N, interval=SECONDS on the target: socat tries the connect again."""

    times: int | None  # None: forever
    interval: float | None = None  # None: socat's 1 s


Listen = ListenAddress | UnixListenAddress
Connect = ConnectAddress | UnixConnectAddress


@dataclass(frozen=True)
class SocatCommand:
    """A parsed socat command line within the supported subset."""

    listen: Listen
    connect: Connect
    idle_timeout: float | None = None  # -T; 0 means none, as in socat
    verbosity: int = 0  # number of -d
    buffer_size: int | None = None  # -b: accepted, not used
    close_delay: float | None = None  # -t: accepted, not used
    dump_text: bool = False  # -v: the bytes to stderr as text
    dump_hex: bool = False  # -x: ... as hex

    @property
    def dump(self) -> DumpMode:
        if self.dump_text:
            return DumpMode.TEXT_HEX if self.dump_hex else DumpMode.TEXT
        return DumpMode.HEX if self.dump_hex else DumpMode.OFF

    @property
    def max_accepts(self) -> int | None:
        """Without `fork`, socat serves one connection and exits."""
        return None if self.listen.fork else 1
