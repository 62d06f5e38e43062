"""CPU time and memory of a forwarder, counted over all of its processes.

socat forks one process per connection, so a forwarder is a set of processes, not a PID.
Where this user can make a cgroup v2 directory, every subject runs in its own one: the
kernel then counts the CPU of every process that ever ran there, exited forks included,
and lists the live ones. Elsewhere the subject leads its own process group; CPU is the
sum over the live members of their own time plus what their reaped children used
(cutime/cstime), which is how socat's finished forks are counted.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    pss_kib: int
    rss_kib: int
    processes: int


def parse_smaps_rollup(text: str) -> tuple[int, int]:
    """(PSS, RSS) in KiB from the text of /proc/PID/smaps_rollup."""
    pss = rss = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Pss":
            pss = int(rest.split()[0])
        elif key == "Rss":
            rss = int(rest.split()[0])
    return pss, rss


def parse_stat(text: str) -> tuple[int, int]:
    """(process group, CPU ticks of the process and its reaped children) from
    /proc/PID/stat."""
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    pgrp = int(fields[2])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return pgrp, utime + stime + cutime + cstime


def memory_of(pids: list[int]) -> Memory:
    """Summed PSS and RSS of the processes; one that exits meanwhile counts as nothing."""
    pss_total = rss_total = count = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pss, rss = parse_smaps_rollup(text)
        pss_total += pss
        rss_total += rss
        count += 1
    return Memory(pss_total, rss_total, count)


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if it is and this user may write there."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            root = Path(parts[1])
            if os.access(root, os.W_OK):
                return root
    return None


class ProcessSet:
    """The processes of one subject: what it needs to count CPU and memory."""

    method = ""

    def preexec(self) -> None:
        """Runs in the child between fork and exec."""

    def attach(self, pid: int) -> None:
        """Called with the PID of the started child."""

    def pids(self) -> list[int]:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the set holds, once its processes are gone."""


class CgroupSet(ProcessSet):
    method = "cgroup2"

    def __init__(self, path: Path) -> None:
        path.mkdir()
        self.path = path
        # Opened before fork: the child only writes, so it needs no allocation or lookup.
        self._procs_path = str(path / "cgroup.procs")

    def preexec(self) -> None:
        fd = os.open(self._procs_path, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # "0" moves the writing process itself
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(line) for line in text.split()]

    def cpu_seconds(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"{self.path}/cpu.stat has no usage_usec")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class GroupSet(ProcessSet):
    method = "process-group"

    def __init__(self) -> None:
        self.pgid = 0

    def attach(self, pid: int) -> None:
        self.pgid = pid  # the child was started as the leader of a new group

    def _members(self) -> list[tuple[int, int]]:
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            pgrp, ticks = parse_stat(text)
            if pgrp == self.pgid:
                found.append((int(entry.name), ticks))
        return found

    def pids(self) -> list[int]:
        return [pid for pid, _ in self._members()]

    def cpu_seconds(self) -> float:
        return sum(ticks for _, ticks in self._members()) / _TICKS


class SetFactory:
    """Makes one ProcessSet per subject start, in a cgroup where one can be made."""

    def __init__(self, use_cgroup: bool = True) -> None:
        self._base: Path | None = None
        self._count = 0
        root = cgroup2_root() if use_cgroup else None
        if root is not None:
            base = root / f"pyforward-bench.{os.getpid()}"
            try:
                base.mkdir()
                CgroupSet(base / "probe").close()
            except OSError:
                with contextlib.suppress(OSError):
                    base.rmdir()
            else:
                self._base = base
        self.method = CgroupSet.method if self._base is not None else GroupSet.method

    def new(self) -> ProcessSet:
        if self._base is None:
            return GroupSet()
        self._count += 1
        return CgroupSet(self._base / f"s{self._count}")

    def close(self) -> None:
        if self._base is not None:
            with contextlib.suppress(OSError):
                self._base.rmdir()
