"""A UNIX socket target: downloads through the forwarder from nginx on a UNIX socket (the
`TCP-LISTEN ... UNIX-CONNECT:` forward, as for docker.sock), with the forwarder's CPU."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from bench.backends import nginx_unix_files
from bench.model import Metric, Plan
from bench.netutil import HOST, BenchError
from bench.subjects import Running

_SIZES = {"smoke": 16 << 20, "quick": 256 << 20, "full": 1 << 30}
_DOWNLOADS = {"smoke": 1, "quick": 2, "full": 3}


class UnixTarget:
    name = "unix_target"
    title = "downloads from nginx on a UNIX socket (curl, one connection at a time)"
    tools = ("nginx", "curl")
    metrics = (
        Metric("unix_target.download", "download through the forwarder", "Gbit/s", "higher"),
        Metric("unix_target.cpu_per_gb", "forwarder CPU per GB", "s/GB", "lower", True),
    )

    def __init__(self, plan: Plan) -> None:
        self.size = _SIZES.get(plan.name, _SIZES["quick"])
        self.downloads = _DOWNLOADS.get(plan.name, 1)

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[str]:
        return nginx_unix_files(workdir, self.size)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        if subject.unix is not None:  # no forwarder: curl talks to the socket itself
            argv = ["curl", "--unix-socket", subject.unix, "http://localhost/blob"]
        else:
            argv = ["curl", f"http://{HOST}:{subject.port}/blob"]
        cpu_before = subject.cpu_seconds()
        moved = 0
        seconds = 0.0
        for _ in range(self.downloads):
            size, took = _download(argv)
            if size != self.size:
                raise BenchError(f"{subject.subject.label}: downloaded {size} of {self.size} bytes")
            moved += size
            seconds += took
        cpu = subject.cpu_seconds() - cpu_before
        values = {"unix_target.download": moved * 8 / seconds / 1e9}
        if subject.subject.forwarder:
            values["unix_target.cpu_per_gb"] = cpu / (moved / 1e9)
        return values


def _download(argv: list[str]) -> tuple[int, float]:
    done = subprocess.run(
        [*argv, "--silent", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"curl failed ({done.returncode}): {done.stderr.strip()}")
    size, took = done.stdout.split()
    return int(size), float(took)
