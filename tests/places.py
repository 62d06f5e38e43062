"""Where this test run's pyforward lives, and so what `pyforward install` says of it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyforward.systemd.installation import VOLATILE_AREAS

ROOT = Path(__file__).resolve().parent.parent
REFUSAL = "pyforward: error: install (without --dry-run) would refuse: "


def _volatile_area() -> str | None:
    places = {sys.prefix, os.path.realpath(sys.prefix), str(ROOT)}
    for area in VOLATILE_AREAS:
        if any(Path(place).is_relative_to(area) for place in places):
            return area
    return None


# The area (/tmp, ...) this checkout or its venv lies in, where a service cannot run from:
# install refuses it, and a dry run shows the files, says so, and exits 1. None elsewhere.
VOLATILE_AREA = _volatile_area()
