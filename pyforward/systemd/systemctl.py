"""A thin layer over systemctl and journalctl; everything that talks to systemd goes here."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyforward.errors import StartupError

UNIT_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "Result",
    "MainPID",
    "ExecMainCode",
    "ExecMainStatus",
    "NRestarts",
    "StatusText",
    "FragmentPath",
    "ActiveEnterTimestamp",
)
_TIMEOUT = 120.0  # seconds; `systemctl start` waits for READY=1 or the unit's own timeout


def systemd_running() -> bool:
    """Whether systemd is the init system here (sd_booted(3))."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str  # stdout and stderr together, stripped


def command(verb: str, units: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    """`systemctl VERB OPTIONS -- UNITS`: after `--`, no unit name is read as an option."""
    return ["systemctl", verb, *options, *(["--", *units] if units else [])]


def run(verb: str, *units: str, options: Sequence[str] = (), timeout: float = _TIMEOUT) -> Outcome:
    """Run `systemctl VERB OPTIONS -- UNITS`; never raises for a non-zero exit."""
    return _run(command(verb, units, options), timeout)


def _run(argv: Sequence[str], timeout: float) -> Outcome:
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )
    except FileNotFoundError:
        raise StartupError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        return Outcome(False, f"{' '.join(argv)} did not finish within {timeout:g} s")
    return Outcome(result.returncode == 0, (result.stdout + result.stderr).strip())


def must(verb: str, *units: str) -> str:
    """Run systemctl; a failure becomes a StartupError naming the command."""
    outcome = run(verb, *units)
    if not outcome.ok:
        words = " ".join(command(verb, units)[1:])
        raise StartupError(f"systemctl {words} failed: {outcome.output or 'no output'}")
    return outcome.output


def show(unit: str, properties: Sequence[str] = UNIT_PROPERTIES) -> dict[str, str]:
    """Properties of a unit (empty strings for those systemd did not give)."""
    outcome = run("show", unit, options=("--property=" + ",".join(properties),))
    values = {name: "" for name in properties}
    for line in outcome.output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in values:
            values[key] = value
    return values


def journal_tail(unit: str, lines: int = 15) -> list[str]:
    """The unit's last log lines, oldest first (empty when journalctl cannot say)."""
    outcome = _run(
        # `--unit=NAME` in one word: a name is never read as an option.
        ["journalctl", f"--unit={unit}", "--lines", str(lines), "--no-pager", "--output", "short"],
        30.0,
    )
    if not outcome.ok:
        return []
    return [line for line in outcome.output.splitlines() if not line.startswith("-- ")]


def unit_summary(unit: str, props: Mapping[str, str]) -> str:
    """One line on a unit: its name, then `unit_state`."""
    return f"{unit}: {unit_state(props)}"


def unit_state(props: Mapping[str, str]) -> str:
    """State, enablement, main pid, restarts, and the last exit when it failed."""
    if props.get("LoadState") == "not-found":
        return "not installed"
    parts = [f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"]
    parts.append(props.get("UnitFileState") or "?")
    if props.get("MainPID", "0") not in ("", "0"):
        parts.append(f"pid {props['MainPID']}")
    restarts = props.get("NRestarts", "0")
    if restarts not in ("", "0"):
        parts.append(f"{restarts} restart{'s' if restarts != '1' else ''}")
    if props.get("Result") not in ("", "success", None):
        parts.append(f"result {props['Result']}")
    if props.get("ActiveState") != "active" and props.get("ExecMainStatus", "0") not in ("", "0"):
        parts.append(f"last exit status {props['ExecMainStatus']}")
    return ", ".join(parts)
