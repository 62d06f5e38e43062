"""The programs the suite runs: are they here, and which versions are they."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.subjects import child_env


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # the Debian package that brings it
    version_argv: tuple[str, ...]


TOOLS = {
    tool.name: tool
    for tool in (
        Tool("socat", "socat", ("socat", "-V")),
        Tool("haproxy", "haproxy", ("haproxy", "-v")),
        Tool("iperf3", "iperf3", ("iperf3", "--version")),
        Tool("wrk", "wrk", ("wrk", "-v")),
        Tool("nginx", "nginx-light", ("nginx", "-v")),
        Tool("curl", "curl", ("curl", "--version")),
        Tool("dnsmasq", "dnsmasq", ("dnsmasq", "--version")),
        Tool("openssl", "openssl", ("openssl", "version")),
    )
}


def missing_programs(names: list[str]) -> list[Tool]:
    """The tools named that are not on PATH."""
    return [TOOLS[name] for name in names if shutil.which(name) is None]


def version_of(tool: Tool) -> str:
    """The line of a tool's version output that names its version."""
    try:
        done = subprocess.run(
            tool.version_argv, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    for line in lines:
        if "version" in line.lower() and not line.startswith("-"):  # not wrk's usage text
            return line
    return lines[0] if lines else "unknown"


def pyforward_runtime() -> tuple[str | None, str]:
    """(versions, problem): pyforward and uvloop as the subjects will import them."""
    code = "import pyforward, uvloop; print(pyforward.__version__, uvloop.__version__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, last
    pyforward_version, uvloop_version = done.stdout.split()
    return f"pyforward {pyforward_version}, uvloop {uvloop_version}", ""


def problems(programs: list[str], chart: bool, pyforward: bool) -> list[str]:
    """What is missing, each with how to get it; empty when the run can go ahead."""
    found = []
    absent = missing_programs(programs)
    if absent:
        names = ", ".join(t.name for t in absent)
        packages = " ".join(t.package for t in absent)
        found.append(f"missing programs: {names} (Debian/Ubuntu: apt-get install {packages})")
    if chart and importlib.util.find_spec("matplotlib") is None:
        found.append(
            f"matplotlib is not installed for {sys.executable} (pip install -e '.[bench]')"
        )
    if pyforward:
        versions, problem = pyforward_runtime()
        if versions is None:
            found.append(
                f"pyforward does not import under {sys.executable}: {problem} "
                "(run with the project's environment: pip install -e . or scripts/test's .venv)"
            )
    return found


def machine() -> dict[str, object]:
    """What the figures came from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def versions(programs: list[str]) -> dict[str, str]:
    """The version line of each program, and of pyforward and uvloop."""
    found = {name: version_of(TOOLS[name]) for name in programs}
    found["pyforward"] = pyforward_runtime()[0] or "unavailable"
    return found


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: a busy machine makes noisy figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
