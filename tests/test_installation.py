"""Finding this installation, and whether the hardened service user can run it."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from pyforward.errors import StartupError
from pyforward.systemd.installation import (
    HOME_AREAS,
    advice,
    find_entry_point,
    inspect,
    minimal_roots,
    plan_binds,
    read_interpreter,
    running_archive,
    unreadable,
)
from tests.places import ROOT, VOLATILE_AREA

ENTRY_POINT = Path(sys.prefix) / "bin" / "pyforward"


def test_minimal_roots() -> None:
    assert minimal_roots(["/a/b/c", "/a/b", "/a/bc", "/d", "/a/b/c/d"]) == ["/a/b", "/a/bc", "/d"]


def test_pyenv_under_root_is_bound_and_system_paths_are_not() -> None:
    directories = [
        "/root/.pyenv/versions/3.11.7",
        "/root/.pyenv/versions/3.11.7/lib/python3.11",
        "/srv/pyforward/venv",
        "/opt/pyforward",
    ]
    assert plan_binds(directories) == ("/root/.pyenv/versions/3.11.7",)


def test_homebrew_prefix_is_bound_whole() -> None:
    directories = [
        "/home/linuxbrew/.linuxbrew/Cellar/python@3.12/3.12.4/lib/python3.12",
        "/home/linuxbrew/.linuxbrew/opt/openssl@3/lib",
        "/home/alice/venvs/pyforward",
    ]
    assert plan_binds(directories) == ("/home/alice/venvs/pyforward", "/home/linuxbrew/.linuxbrew")


@pytest.mark.parametrize("place", ["/tmp/venv", "/var/tmp/x/venv", "/run/user/1000/venv"])
def test_volatile_places_are_refused_with_the_reason_and_the_fix(place: str) -> None:
    with pytest.raises(StartupError) as info:
        plan_binds([place, "/usr/lib/python3"])
    message = str(info.value)
    assert f"lives in {place}" in message
    assert "python3 -m venv /opt/pyforward && /opt/pyforward/bin/pip install " in message


def test_advice_installs_this_checkout_or_copies_the_archive() -> None:
    # Run from a checkout: pip installs that checkout, never an index name.
    assert f"/opt/pyforward/bin/pip install {ROOT}`" in advice()
    archive = advice(Path("/tmp/x/pyforward.pyz"))
    assert "install -D -m 0644 /tmp/x/pyforward.pyz /opt/pyforward/pyforward.pyz" in archive
    assert f"then run {sys.executable} /opt/pyforward/pyforward.pyz install" in archive


# `pip install NAME` with a bare name (not a path, a wheel file, `.` or `-e .`): an index
# name. `pyforward` on PyPI is another project, and this one is not published under any.
INDEX_INSTALL = re.compile(r"pip3?\s+install\s+(?:-\S+\s+)*pyforward[\w-]*(?=[\s`'\")\]]|$)")


def test_no_install_hint_names_an_index_package() -> None:
    assert INDEX_INSTALL.search("run `pip install pyforward` as root")
    assert INDEX_INSTALL.search("pip install -U pyforward-tcp")
    assert not INDEX_INSTALL.search("pip install /opt/src/pyforward and pip install ./pyforward")
    assert not INDEX_INSTALL.search("python3 pyforward.pyz; pip install -e '.[bench]'")
    texts = [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "pyforward").rglob("*.py"),
        *(ROOT / "pyforward" / "systemd" / "templates").iterdir(),
        *ROOT.glob("*/README.md"),
        *ROOT.glob("tests/*/README.md"),
        *(ROOT / "scripts").iterdir(),
    ]
    found = [
        f"{path.relative_to(ROOT)}: {match.group()}"
        for path in texts
        for match in INDEX_INSTALL.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_read_interpreter_both_forms_pip_writes(tmp_path: Path) -> None:
    plain = script(tmp_path / "a", "#!/opt/venv/bin/python3\nimport sys\n")
    assert read_interpreter(plain) == "/opt/venv/bin/python3"
    long_form = script(
        tmp_path / "b",
        "#!/bin/sh\n'''exec' \"/opt/a very long path/bin/python3\" \"$0\" \"$@\"\n' '''\n",
    )
    assert read_interpreter(long_form) == "/opt/a very long path/bin/python3"
    with pytest.raises(StartupError, match="#! line"):
        read_interpreter(script(tmp_path / "c", "binary"))


def test_entry_point_must_run_this_interpreter(tmp_path: Path) -> None:
    ours = script(tmp_path / "bin" / "pyforward", f"#!{sys.executable}\n")
    other = script(tmp_path / "other" / "pyforward", "#!/usr/bin/false\n")
    # The one being run is another installation's: take the one beside this interpreter.
    assert find_entry_point(str(other), str(tmp_path / "bin")) == ours
    assert find_entry_point(str(ours), str(tmp_path / "nowhere")) == ours
    with pytest.raises(StartupError, match="cannot find this installation's pyforward"):
        find_entry_point(str(other), str(tmp_path / "nowhere"))
    ours.chmod(0o644)
    with pytest.raises(StartupError, match="cannot find"):
        find_entry_point(str(ours), str(tmp_path / "nowhere"))


def test_unreadable_names_the_closed_directory(tmp_path: Path) -> None:
    # Checked from tmp_path down, as for a directory bound into the service (pytest's own
    # parents are closed to other users).
    tmp_path.chmod(0o755)
    closed = tmp_path / "closed"
    target = script(closed / "lib" / "mod.py", "x = 1\n")
    closed.chmod(0o700)
    assert unreadable(str(target), [str(tmp_path)]) == f"cannot enter {closed} (mode drwx------)"
    # Bound into the service itself, the closed parent no longer matters.
    assert unreadable(str(target), [str(closed / "lib")]) is None
    target.chmod(0o600)
    assert unreadable(str(target), [str(closed / "lib")]) == (
        f"cannot read {target} (mode -rw-------)"
    )
    missing = tmp_path / "missing"
    assert unreadable(str(missing), [str(tmp_path)]) == f"{missing} does not exist"


def test_this_installation_is_found_and_exposed() -> None:
    found = inspect(find_entry_point(str(ENTRY_POINT)))
    assert found.entry_point == str(ENTRY_POINT)
    assert (found.archive, found.command) == (False, (str(ENTRY_POINT),))
    assert running_archive() is None
    if VOLATILE_AREA is None:
        assert found.refusals == ()
    else:
        [refusal] = found.refusals
        assert f"under {VOLATILE_AREA}: a service cannot run from there" in refusal
    assert all(any(Path(p).is_relative_to(a) for a in HOME_AREAS) for p in found.bind_paths)
    base = os.path.realpath(sys.base_prefix)
    if any(Path(base).is_relative_to(area) for area in HOME_AREAS):
        assert any(Path(base).is_relative_to(p) for p in found.bind_paths)


def test_an_installation_under_tmp_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "bin" / "pyforward"
    copy.parent.mkdir()
    shutil.copy(ENTRY_POINT, copy)
    found = inspect(copy)
    # Refused with the reason, yet described whole: a dry run still shows its unit.
    assert found.entry_point == str(copy)
    # (From a checkout under /tmp, its venv may be what is named: that lies there too.)
    assert re.match(
        r"this pyforward lives in /tmp\S*, under /tmp: a service cannot run", found.refusals[0]
    )


def test_a_bound_file_needs_reading_only(tmp_path: Path) -> None:
    # An archive under /home is bound into the service by itself: nothing above it matters.
    archive = script(tmp_path / "closed" / "pyforward.pyz", "PK")
    (tmp_path / "closed").chmod(0o700)
    archive.chmod(0o644)
    assert unreadable(str(archive), [str(archive)]) is None
    archive.chmod(0o600)
    assert unreadable(str(archive), [str(archive)]) == f"cannot read {archive} (mode -rw-------)"
