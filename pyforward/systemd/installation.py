"""Where this pyforward is installed, and whether the hardened service will be able to run it.

The setup pyforward replaces failed as `203/EXEC` because its unit named a binary that was
not there. The unit pyforward writes names this installation's own entry point, checked to
exist and be executable: the `pyforward` script of a pip installation, or, when pyforward
runs from its single-file build (pyforward.pyz, a zipapp), the interpreter running it and
that file. And because the service runs as an unprivileged dynamic user with
`ProtectHome=` and `PrivateTmp=`, an installation that is there for root can still be
invisible to the service: a venv made from a pyenv interpreter under /root (mode 0700), a
Homebrew Python under /home/linuxbrew. So:

- the installation is asked (in a clean environment, as the service will start it) which
  files it loads and where it lives;
- directories under /root or /home are bound read-only into the service's otherwise empty
  home directories (`ProtectHome=tmpfs` + `BindReadOnlyPaths=`);
- directories under /tmp, /var/tmp, /dev/shm or /run/user are refused: they are private to
  the service, and cleaned or gone at reboot, so a service cannot live there;
- every loaded file must be readable by a user that owns none of it.

Anything that would fail is found before a file is written and reported as the
installation's `refusals`, naming the path and the fix: install refuses, a dry run shows
the files anyway and says why the real install would refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipimport
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pyforward.errors import StartupError

ENTRY_POINT = "pyforward"
# Hidden by ProtectHome=: bound back in read-only when the installation lives there.
HOME_AREAS = ("/root", "/home", "/run/user")
# Private to the service (PrivateTmp=) or gone at reboot: no place for an installation.
VOLATILE_AREAS = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
# Homebrew's prefix is linked together with symlinks throughout: expose it whole.
HOMEBREW_PREFIXES = ("/home/linuxbrew/.linuxbrew",)


def _checkout() -> str:
    """Where to `pip install` this pyforward from: its checkout when it runs from one."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "pyproject.toml").is_file() else "/path/to/pyforward-checkout"


def advice(archive: Path | None = None) -> str:
    """How to put pyforward where a service can run it. Never an index name: `pyforward`
    on PyPI is another project."""
    if archive is not None:
        return (
            f"copy {archive.name} where every user can read it, e.g. "
            f"`install -D -m 0644 {archive} /opt/pyforward/{archive.name}`, then run "
            f"{sys.executable} /opt/pyforward/{archive.name} install"
        )
    return (
        "install pyforward where every user can read it, e.g. "
        f"`python3 -m venv /opt/pyforward && /opt/pyforward/bin/pip install {_checkout()}` "
        "(a checkout of pyforward or a wheel built from one), "
        "then run /opt/pyforward/bin/pyforward install"
    )


# Run by the installation's interpreter with no environment and -I, as the service will
# run it: what does it load, from where? (For an archive, the archive comes first on
# sys.path, as when the interpreter runs it.) The CLI and the engine import the UDP relay
# and the workers only when a configuration uses them: imported here, as a reload may.
_PROBE = """
import json, sys
import pyforward.cli.app, pyforward.engine.runtime, ssl
import pyforward.datagram.server, pyforward.workers.supervisor
try:
    import uvloop
except ImportError:
    pass
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
with open("/proc/self/maps") as maps:
    libs = sorted({line.split()[-1] for line in maps if line.rstrip().split()[-1].startswith("/")})
print(json.dumps({
    "executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
    "path": [p for p in sys.path if p], "package": pyforward.__file__,
    "files": files, "libs": libs,
}))
"""


@dataclass(frozen=True)
class Installation:
    """What the unit needs to know about the installation it runs."""

    entry_point: str  # absolute path: the `pyforward` script, or the archive (pyforward.pyz)
    interpreter: str  # from the script's #! line, or the one running the archive
    bind_paths: tuple[str, ...]  # directories (or the archive) to bind read-only into the service
    archive: bool = False  # entry_point is a zipapp that `interpreter` runs
    refusals: tuple[str, ...] = ()  # why the service could not run it; empty: it can

    @property
    def command(self) -> tuple[str, ...]:
        """What ExecStart= runs, program first, before `run --config ...`."""
        if self.archive:
            # -I: the archive and the interpreter's own library only, whatever PYTHON*
            # variables or user site-packages say: what the install checks looked at.
            return (self.interpreter, "-I", self.entry_point)
        return (self.entry_point,)


def _under(path: str, area: str) -> bool:
    return PurePosixPath(path).is_relative_to(area)


def minimal_roots(paths: Iterable[str]) -> list[str]:
    """The given directories without those inside another one of them."""
    roots: list[str] = []
    for path in sorted(set(paths), key=lambda p: (len(PurePosixPath(p).parts), p)):
        if not any(_under(path, root) for root in roots):
            roots.append(path)
    return sorted(roots)


def volatile(root: str, archive: Path | None = None) -> str | None:
    """Why a service cannot run from `root`, when it lies in a volatile area; else None."""
    for area in VOLATILE_AREAS:
        if _under(root, area):
            return (
                f"this pyforward lives in {root}, under {area}: a service cannot run "
                f"from there (systemd gives each service its own empty {area}, and it "
                f"does not survive a reboot); {advice(archive)}"
            )
    return None


def plan_binds(directories: Iterable[str]) -> tuple[str, ...]:
    """Which of the installation's directories to bind into the service; a StartupError
    when one lives where a service cannot."""
    roots = minimal_roots(directories)
    for root in roots:
        if (problem := volatile(root)) is not None:
            raise StartupError(problem)
    return _binds(roots)


def _binds(roots: Iterable[str]) -> tuple[str, ...]:
    binds: list[str] = []
    for root in roots:
        brew = next((p for p in HOMEBREW_PREFIXES if _under(root, p)), None)
        if brew is not None:
            binds.append(brew)
        elif any(_under(root, area) for area in HOME_AREAS):
            binds.append(root)
    return tuple(minimal_roots(binds))


def read_interpreter(script: Path) -> str:
    """The interpreter a console script runs with, from its first lines."""
    try:
        with script.open("rb") as handle:
            head = handle.read(1024).decode("utf-8", "replace").splitlines()
    except OSError as exc:
        raise StartupError(f"cannot read {script}: {exc.strerror}") from None
    if not head or not head[0].startswith("#!"):
        raise StartupError(f"{script} is not a script with a #! line")
    interpreter = head[0][2:].strip().split()[0] if head[0][2:].strip() else ""
    if interpreter == "/bin/sh" and len(head) > 1 and head[1].startswith("'''exec' "):
        # pip's form for interpreter paths too long or odd for a #! line.
        interpreter = head[1].split("'''exec' ", 1)[1].split('" "$0"')[0].strip().strip('"')
    return interpreter


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_entry_point(argv0: str | None = None, scripts_dir: str | None = None) -> Path:
    """This installation's own `pyforward` script: the one being run, else the one beside
    this interpreter. Never one found elsewhere on $PATH, which may be another install."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    scripts = sysconfig.get_path("scripts") if scripts_dir is None else scripts_dir
    candidates: list[Path] = []
    if Path(argv0).name == ENTRY_POINT:
        found = argv0 if "/" in argv0 else shutil.which(argv0)
        if found:
            candidates.append(Path(os.path.abspath(found)))
    candidates.append(Path(scripts) / ENTRY_POINT)
    own = os.path.realpath(sys.executable)
    for candidate in candidates:
        if not _is_executable(candidate):
            continue
        interpreter = read_interpreter(candidate)
        if interpreter and os.path.realpath(interpreter) == own:
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise StartupError(
        f"cannot find this installation's {ENTRY_POINT} script (looked at {looked}); "
        "reinstall the package so that its `pyforward` command exists"
    )


def symlink_hops(path: str) -> list[str]:
    """`path` and every path its symlinks lead through, ending with the real file."""
    hops = [os.path.abspath(path)]
    for _ in range(40):
        current = hops[-1]
        if not os.path.islink(current):
            break
        hops.append(os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current))))
    real = os.path.realpath(path)
    if hops[-1] != real:
        hops.append(real)
    return hops


def running_archive() -> Path | None:
    """The archive (pyforward.pyz) this pyforward is imported from; None when it is not."""
    loader = __spec__.loader if __spec__ is not None else None
    if isinstance(loader, zipimport.zipimporter):
        return Path(os.path.abspath(loader.archive))
    return None


def probe(interpreter: str, archive: Path | None = None) -> dict[str, object]:
    """Ask the interpreter, started as the service will start it, what it loads."""
    code = (
        _PROBE if archive is None else f"import sys; sys.path.insert(0, {str(archive)!r})\n{_PROBE}"
    )
    try:
        result = subprocess.run(
            [interpreter, "-I", "-c", code],
            env={},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        raise StartupError(f"cannot run {interpreter}: {exc.strerror}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StartupError(
            f"{interpreter} cannot import pyforward in a clean environment, as the service "
            f"would start it ({last}); {advice(archive)}"
        )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def unreadable(path: str, bind_roots: Sequence[str], *, execute: bool = False) -> str | None:
    """Why a user owning nothing could not read (or run) `path` in the service; None if it can.

    Directories above a bound root are made by systemd in the tmpfs and need no check."""
    start = next((root for root in bind_roots if _under(path, root)), "/")
    parts = PurePosixPath(path).relative_to(start).parts
    directory = PurePosixPath(start)
    # A bound file (an archive) is itself the root: nothing to enter.
    checks = [(directory, stat.S_IXOTH, "enter")] if parts else []
    for part in parts[:-1]:
        directory = directory / part
        checks.append((directory, stat.S_IXOTH, "enter"))
    need = stat.S_IROTH | (stat.S_IXOTH if execute else 0)
    checks.append((PurePosixPath(path), need, "run" if execute else "read"))
    for item, bits, verb in checks:
        try:
            mode = os.stat(item).st_mode
        except OSError:
            return f"{item} does not exist"
        if mode & bits != bits:
            return f"cannot {verb} {item} (mode {stat.filemode(mode)})"
    return None


def this_installation() -> Installation:
    """The installation running now: the archive it was imported from, else its script."""
    archive = running_archive()
    if archive is not None:
        return inspect(archive, interpreter=sys.executable)
    return inspect(find_entry_point())


def inspect(entry_point: Path, interpreter: str | None = None) -> Installation:
    """Check that the service will be able to start `entry_point` and say how to expose it:
    a `pyforward` script, or, given the interpreter that runs it, an archive.

    What would stop the service (a volatile place, a file its user cannot read) comes back
    as the installation's refusals; what leaves nothing to show (no interpreter, one that
    cannot import pyforward) is a StartupError."""
    archive = entry_point if interpreter is not None else None
    interpreter = read_interpreter(entry_point) if interpreter is None else interpreter
    if not interpreter or not _is_executable(Path(interpreter)):
        raise StartupError(
            f"{entry_point} names the interpreter {interpreter or '(none)'!r}, "
            "which is not an executable file; reinstall pyforward"
        )
    info = probe(interpreter, archive)
    entry_hops = symlink_hops(str(entry_point))
    interpreter_hops = symlink_hops(interpreter)

    def outside_archive(paths: Iterable[str]) -> list[str]:
        # A module loaded from the archive is a name inside it, not a file: the archive.
        if archive is None:
            return list(paths)
        real = os.path.realpath(archive)
        return [real if _under(p, real) or _under(p, str(archive)) else p for p in paths]

    search_path = outside_archive(
        os.path.realpath(p) for p in _strings(info["path"]) if os.path.exists(p)
    )
    files = outside_archive(_strings(info["files"]) + _strings(info["libs"])) + search_path
    package = outside_archive([os.path.realpath(str(info["package"]))])[0]
    directories = [
        str(info["prefix"]),
        str(info["base_prefix"]),
        package if archive is not None else os.path.dirname(package),
        # An archive is bound itself (never its whole directory): a file in someone's home.
        *(entry_hops if archive is not None else (os.path.dirname(p) for p in entry_hops)),
        *(os.path.dirname(p) for p in interpreter_hops),
        *search_path,
        *(os.path.dirname(p) for p in files if not _under(p, "/usr") and p not in entry_hops),
    ]
    roots = minimal_roots(d for d in directories if not _under(d, "/usr"))
    refusals = [problem for root in roots if (problem := volatile(root, archive)) is not None]
    binds = _binds(root for root in roots if volatile(root) is None)
    if refusals:
        # Its own place rules it out; what its user could read there is beside the point.
        return Installation(
            str(entry_point), interpreter, binds, archive is not None, (refusals[0],)
        )
    problems: list[str] = []
    # The archive is read by the interpreter, not run: it needs no execute bit.
    for path, execute in [(entry_hops[-1], archive is None), (interpreter_hops[-1], True)]:
        problem = unreadable(path, binds, execute=execute)
        if problem:
            problems.append(problem)
    for path in entry_hops[:-1] + interpreter_hops[:-1] + files:
        problem = unreadable(path, binds)
        if problem and problem not in problems:
            problems.append(problem)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        refusals.append(
            f"the service runs as an unprivileged user, which {problems[0]}{more}; make the "
            f"installation readable to all (chmod -R o+rX on its directories) or {advice(archive)}"
        )
    return Installation(str(entry_point), interpreter, binds, archive is not None, tuple(refusals))
