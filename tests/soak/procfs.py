"""What /proc says about a process: descriptors, memory, CPU time, TCP states.

The parsers take text and return values; the readers beside them only fetch the text.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CLOSE_WAIT = "CLOSE_WAIT"
# The `st` column of /proc/net/tcp (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": CLOSE_WAIT,
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
    "0C": "NEW_SYN_RECV",
}
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int  # 0 for sockets no descriptor holds (TIME_WAIT, not yet accepted)


@dataclass(frozen=True)
class Usage:
    """One reading of a process's resources."""

    fds: Counter[str]  # open descriptors by kind: socket, pipe, anon_inode:[eventpoll], ...
    rss: int  # bytes resident now
    peak_rss: int  # the kernel's high-water mark of resident bytes (VmHWM)
    cpu: float  # user + system seconds since the process started

    @property
    def fd_count(self) -> int:
        return sum(self.fds.values())

    def fds_except_pipes(self) -> Counter[str]:
        return Counter({kind: n for kind, n in self.fds.items() if kind != "pipe"})


def fd_kind(link: str) -> str:
    """The kind of descriptor a /proc/PID/fd link names: `socket:[123]` -> `socket`."""
    for kind in ("socket", "pipe"):
        if link.startswith(f"{kind}:["):
            return kind
    if link.startswith("anon_inode:"):
        return link
    return "file"


def status_bytes(status: str, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), in bytes."""
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            number, unit = value.split()
            assert unit == "kB", line
            return int(number) * 1024
    raise ValueError(f"no {key} in /proc status")


def cpu_seconds(stat: str, ticks: int = _TICKS) -> float:
    """User plus system CPU seconds from /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / ticks


def tcp_table(text: str) -> list[TcpSocket]:
    """The sockets of a /proc/net/tcp or tcp6 table."""
    found = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
        found.append(
            TcpSocket(
                local_port=int(local.rpartition(":")[2], 16),
                remote_port=int(remote.rpartition(":")[2], 16),
                state=TCP_STATES.get(state, state),
                inode=int(inode),
            )
        )
    return found


# --- readers


def fd_links(pid: int) -> list[str]:
    """Where each open descriptor of `pid` points."""
    links = []
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            links.append(os.readlink(f"{fd_dir}/{name}"))
    return links


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def usage(pid: int) -> Usage:
    """Descriptors, memory and CPU of `pid` now."""
    status = Path(f"/proc/{pid}/status").read_text()
    return Usage(
        fds=Counter(fd_kind(link) for link in fd_links(pid)),
        rss=status_bytes(status, "VmRSS"),
        peak_rss=status_bytes(status, "VmHWM"),
        cpu=cpu_seconds(Path(f"/proc/{pid}/stat").read_text()),
    )


def cpu_of(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """Every TCP socket in the network namespace of `pid`."""
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):  # no IPv6
            found += tcp_table(Path(f"/proc/{pid}/net/{table}").read_text())
    return found


def owned_sockets(pid: int) -> list[TcpSocket]:
    """The TCP sockets `pid` holds a descriptor for."""
    inodes = {int(link[8:-1]) for link in fd_links(pid) if link.startswith("socket:[")}
    return [sock for sock in tcp_sockets(pid) if sock.inode in inodes]
