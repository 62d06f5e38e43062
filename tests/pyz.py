"""pyforward.pyz built from this checkout (scripts/build-pyz), and a python3 to run it with."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.places import ROOT

BUILD = ROOT / "scripts" / "build-pyz"


@dataclass(frozen=True)
class Build:
    archive: Path
    log: str  # what build-pyz said


def build(directory: Path) -> Build:
    """Build the archive into `directory` with this venv's python (it has pip)."""
    archive = directory / "pyforward.pyz"
    result = subprocess.run(
        [sys.executable, str(BUILD), "--output", str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Build(archive, result.stderr)


def host_python() -> str:
    """The machine's own python3 (/usr/bin/python3 where it is 3.11 or newer), else the
    interpreter this venv was made from; never the venv's."""
    for candidate in ("/usr/bin/python3", os.path.join(sys.base_prefix, "bin", "python3")):
        result = subprocess.run(
            [candidate, "-I", "-c", "import sys; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.stdout.strip() == "True":
            return candidate
    raise AssertionError("no python3 >= 3.11 outside the venv to run the archive with")
