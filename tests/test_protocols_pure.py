"""The wire-format modules stay pure: no I/O, no event loop, nothing of pyforward's above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyforward.protocols

PACKAGE = Path(pyforward.protocols.__file__).parent
FORBIDDEN = {"socket", "asyncio", "selectors", "ssl", "select", "os", "threading", "uvloop"}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_imports_nothing_that_does_io(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            if name.startswith("pyforward"):
                assert name.startswith("pyforward.protocols"), f"{path.name} imports {name}"
