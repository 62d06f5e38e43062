"""A real systemd, booted as PID 1 in namespaces made for one test run, and a small network.

Three network namespaces stand for three machines: `client`, `host` (where systemd runs and
pyforward is installed) and `node` (where the backend listens). Two veth pairs join them:
client <-> host and host <-> node. No namespace has a default route, so traffic can only go
to addresses of these namespaces, and the client can reach the node only through the host.

systemd runs in its own PID, mount, UTS, IPC and cgroup namespaces, chrooted into a small
root: the host's /usr read-only, a tiny /etc, and the directories of the Python
installation under test bind-mounted read-only at the same paths (so an ExecStart= path
rendered outside the box stays true inside it). Parent directories keep their modes, so a
0700 /root stays closed to an unprivileged service user, as on the real machine.

Everything is undone in `close()` (called from a `finally`): systemd powered off or killed,
cgroup directories removed, namespaces deleted, the root directory removed. The mounts
live only in the box's mount namespace and vanish with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REQUIRE_ENV = "PYFORWARD_REQUIRE_PRIVILEGED"
CLONE_NEWNET = 0x40000000

CLIENT_ADDRESS = "10.231.1.2"
HOST_CLIENT_SIDE = "10.231.1.1"
HOST_NODE_SIDE = "10.231.2.1"
NODE_ADDRESS = "10.231.2.2"

_ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "shadow": "root:*:19000:0:99999:7:::\n",
    "gshadow": "root:*::\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "hostname": "pyforward-box\n",
}

_INNER = r"""
set -euo pipefail
R="$1"; shift
# systemd's own mount namespacing (ProtectSystem= and kin) needs / to be a mount point.
mount --bind "$R" "$R"
mount --bind /usr "$R/usr"
mount -o remount,bind,ro "$R/usr"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755 dev "$R/dev"
for dev in null zero full random urandom tty; do
    touch "$R/dev/$dev"
    mount --bind "/dev/$dev" "$R/dev/$dev"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=0755 run "$R/run"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=0755 var "$R/var"
# The installation under test, at the same paths (after the tmpfs mounts, which would hide it).
for path in "$@"; do
    mkdir -p "$R$path"
    mount --bind "$path" "$R$path"
    mount -o remount,bind,ro "$R$path"
done
exec chroot "$R" /usr/bin/env -i container=pyforward-test \
    /lib/systemd/systemd --system --unit=multi-user.target --show-status=no
"""


class CannotRun(Exception):
    """This machine cannot host the box (not root, a tool missing, no namespaces)."""


def require_or_skip(reason: str) -> None:
    """Skip the calling test, or fail it where CI demands that privileged tests run."""
    import pytest  # noqa: PLC0415  (only tests call this)

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the systemd box cannot run: {reason}")
    pytest.skip(f"systemd box cannot run here: {reason}")


def check_can_run() -> None:
    """Raise CannotRun with the reason when this machine cannot host the box."""
    if os.geteuid() != 0:
        raise CannotRun("needs root")
    for tool in ("unshare", "nsenter", "ip", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise CannotRun(f"{tool} is not installed")
    if not Path("/lib/systemd/systemd").exists():
        raise CannotRun("systemd is not installed")
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--net", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise CannotRun(f"cannot make namespaces: {probe.stderr.strip()}")


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


# --- network namespaces


_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class NetNs:
    """A network namespace this run made, by name."""

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def tcp_socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket created inside this namespace (it stays there wherever it is used)."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            # setns() changes only the calling thread's namespace; this thread ends right away.
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                finally:
                    os.close(fd)
                result.append(socket.socket(family, socket.SOCK_STREAM))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        item = result[0]
        if isinstance(item, BaseException):
            raise item
        return item

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
        """A connected client socket from inside this namespace."""
        sock = self.tcp_socket()
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, address: tuple[str, int]) -> socket.socket:
        sock = self.tcp_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        return sock


class Network:
    """client <-> host <-> node, each in its own namespace, no default routes."""

    def __init__(self, tag: str) -> None:
        self.client = NetNs(f"{tag}-client")
        self.host = NetNs(f"{tag}-host")
        self.node = NetNs(f"{tag}-node")
        self._made: list[NetNs] = []

    def up(self) -> None:
        for ns in (self.client, self.host, self.node):
            _run(["ip", "netns", "add", ns.name])
            self._made.append(ns)
            _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        # Each pair is made inside the host namespace with one end moved out at once, so
        # no interface ever appears in the namespace the tests run in.
        for peer, host_ip, peer_ip, link in (
            (self.client, HOST_CLIENT_SIDE, CLIENT_ADDRESS, "c"),
            (self.node, HOST_NODE_SIDE, NODE_ADDRESS, "n"),
        ):
            host_if, peer_if = f"to-{link}", "eth0"
            _run(
                [
                    *("ip", "-n", self.host.name, "link", "add", host_if, "type", "veth"),
                    *("peer", "name", peer_if, "netns", peer.name),
                ]
            )
            _run(["ip", "-n", self.host.name, "addr", "add", f"{host_ip}/24", "dev", host_if])
            _run(["ip", "-n", peer.name, "addr", "add", f"{peer_ip}/24", "dev", peer_if])
            _run(["ip", "-n", self.host.name, "link", "set", host_if, "up"])
            _run(["ip", "-n", peer.name, "link", "set", peer_if, "up"])

    def down(self) -> None:
        while self._made:
            ns = self._made.pop()
            _run(["ip", "netns", "del", ns.name], check=False)


# --- the box


VOLATILE = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
COPY_ENV = "PYFORWARD_BOX_COPY_VENV"  # 1: test a copy of the venv even where it need not
# Test tools the copied venv leaves out: the service needs only pyforward's own dependencies.
_DEV_ONLY = ("__editable__*", "pyforward*", "mypy*", "hypothesis*", "_pytest", "pytest*", "ruff*")


@dataclass(frozen=True)
class Installation:
    """The pyforward to install in the box, and the directories it lives in."""

    entry_point: str
    roots: tuple[str, ...]  # bound into the box at the same paths
    made: str | None = None  # a directory made for the test, removed afterwards


def _roots(candidates: set[Path]) -> tuple[str, ...]:
    roots: list[Path] = []
    for path in sorted(candidates, key=lambda p: len(p.parts)):
        if path.is_relative_to("/usr") or any(path.is_relative_to(r) for r in roots):
            continue
        roots.append(path)
    return tuple(str(root) for root in roots)


def installation_under_test(tag: str) -> Installation:
    """This test run's venv, where a service can run from it; otherwise a copy of it.

    pyforward refuses to install a service from /tmp and the like (the service would not
    see it, and it does not survive a reboot). Where the checkout and its venv live there,
    a venv is made outside, from the same interpreter, with the same packages copied in.
    """
    project = Path(__file__).resolve().parent.parent
    base = {Path(sys.base_prefix).resolve(), Path(os.path.realpath(sys.executable)).parent.parent}
    here = _roots({project, Path(sys.prefix).resolve(), *base})
    volatile = any(Path(root).is_relative_to(area) for root in here for area in VOLATILE)
    if not volatile and os.environ.get(COPY_ENV) != "1":
        return Installation(str(Path(sys.prefix) / "bin" / "pyforward"), here)
    venv = Path(f"/var/lib/{tag}-venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    for source in {Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()}:
        shutil.copytree(source, site, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_DEV_ONLY))
    shutil.copytree(project / "pyforward", site / "pyforward")
    entry = venv / "bin" / "pyforward"
    entry.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom pyforward.cli.app import main\nsys.exit(main())\n"
    )
    entry.chmod(0o755)
    return Installation(str(entry), _roots({venv, *base}), str(venv))


class SystemdBox:
    """systemd as PID 1 of its own namespaces, in the network namespace `netns`."""

    def __init__(self, netns: NetNs, tag: str, installation: Installation) -> None:
        self.netns = netns
        self.tag = tag
        self.pyforward = installation.entry_point
        self.bind_paths = list(installation.roots)
        self.root = Path(tempfile.mkdtemp(prefix=f"{tag}-root-"))
        self.log_path = Path(tempfile.mkstemp(prefix=f"{tag}-", suffix=".log")[1])
        self.cgroups: list[Path] = []
        self.launcher: subprocess.Popen[bytes] | None = None
        self.pid = 0

    # -- lifecycle

    def boot(self, timeout: float = 30.0) -> None:
        self._make_root()
        self._make_cgroups()
        joins = "; ".join(f"echo $$ > {cg}/cgroup.procs" for cg in self.cgroups)
        # sh joins the cgroups, then becomes nsenter, then unshare, whose child becomes
        # bash running _INNER, which ends by exec-ing systemd.
        script = (
            f'{joins}; inner="$1"; shift; exec nsenter --net={self.netns.path} unshare --pid'
            ' --fork --mount --uts --ipc --cgroup --propagation private bash -c "$inner" bash "$@"'
        )
        with self.log_path.open("wb") as log:
            self.launcher = subprocess.Popen(
                ["sh", "-c", script, "sh", _INNER, str(self.root), *self.bind_paths],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        self.pid = self._wait_for_pid1(deadline)
        private = Path(f"/proc/{self.pid}/root/run/systemd/private")
        while not private.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"systemd did not come up; log: {self.log_tail()}")
            time.sleep(0.02)
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout)
        if state.stdout.strip() not in {"running", "degraded"}:
            raise RuntimeError(f"systemd state {state.stdout.strip()!r}; {self.log_tail()}")

    def close(self) -> None:
        """Power off (or kill) systemd and remove everything the box made."""
        try:
            if self.launcher is not None and self.launcher.poll() is None:
                if self.pid:
                    # SIGRTMIN+4 asks systemd to start poweroff.target (no D-Bus, no logind).
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGRTMIN + 4)
                try:
                    self.launcher.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    # Killing PID 1 of a PID namespace kills every process in it.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid or self.launcher.pid, signal.SIGKILL)
                    self.launcher.wait(timeout=10)
        finally:
            for base in self.cgroups:
                _remove_cgroup(base)
            shutil.rmtree(self.root, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    # -- running things inside

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the box (all of systemd's namespaces, its root and cwd)."""
        prefix = ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
        inner_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        inner_env.update(env or {})
        result = subprocess.run(
            [*prefix, "env", "-i", *(f"{k}={v}" for k, v in inner_env.items()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """A path inside the box, as seen from outside (through PID 1's root)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def wait_for(self, what: str, predicate: object, timeout: float = 20.0) -> None:
        """Wait until `predicate()` is true, checking often; fail naming `what`."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- internals

    def _make_root(self) -> None:
        root = self.root
        root.chmod(0o755)
        for name in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "var"):
            (root / name).mkdir()
        (root / "etc/systemd/system").mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
            (root / link).symlink_to(target)
        if Path("/usr/lib64").exists():
            (root / "lib64").symlink_to("usr/lib64")
        for name, text in _ETC_FILES.items():
            (root / "etc" / name).write_text(text)
        (root / "etc/shadow").chmod(0o600)
        (root / "etc/gshadow").chmod(0o600)
        shutil.copy("/etc/os-release", root / "etc/os-release")
        # A fresh machine-id: an empty one makes systemd treat the boot as the first boot.
        machine_id = _run(["systemd-id128", "new"]).stdout.strip()
        (root / "etc/machine-id").write_text(machine_id + "\n")
        for path in self.bind_paths:
            (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            # Parents keep the host's modes: a 0700 /root must stay closed inside too.
            for parent in Path(path).parents:
                if parent != Path("/"):
                    (root / str(parent).lstrip("/")).chmod(parent.stat().st_mode & 0o7777)

    def _make_cgroups(self) -> None:
        name = self.tag
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            bases = [Path("/sys/fs/cgroup") / name]
        else:
            bases = [Path("/sys/fs/cgroup/unified") / name]
            if Path("/sys/fs/cgroup/systemd").is_dir():
                bases.append(Path("/sys/fs/cgroup/systemd") / name)
        for base in bases:
            base.mkdir()
            self.cgroups.append(base)

    def _wait_for_pid1(self, deadline: float) -> int:
        assert self.launcher is not None
        children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    pid = int(pids[0])
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                            return pid
            if time.monotonic() > deadline:
                raise TimeoutError(f"systemd did not start; log: {self.log_tail()}")
            time.sleep(0.01)

    def _check_alive(self) -> None:
        assert self.launcher is not None
        if self.launcher.poll() is not None:
            raise RuntimeError(f"the box exited ({self.launcher.returncode}): {self.log_tail()}")


def _remove_cgroup(base: Path) -> None:
    """Remove a cgroup directory tree, deepest first (cgroup dirs go with rmdir only)."""
    if not base.exists():
        return
    for _ in range(50):
        for dirpath, _dirnames, _files in sorted(
            os.walk(base), key=lambda item: -len(Path(item[0]).parts)
        ):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not base.exists():
            return
        time.sleep(0.05)  # the last processes of the box may still be exiting


@contextlib.contextmanager
def lab() -> Iterator[tuple[Network, SystemdBox]]:
    """A network and a booted box in its host namespace; everything undone on exit."""
    check_can_run()
    tag = f"pyf{os.getpid()}{secrets.token_hex(2)}"
    network = Network(tag)
    box: SystemdBox | None = None
    installation: Installation | None = None
    try:
        installation = installation_under_test(tag)
        network.up()
        box = SystemdBox(network.host, tag, installation)
        box.boot()
        yield network, box
    finally:
        try:
            if box is not None:
                box.close()
        finally:
            network.down()
            if installation is not None and installation.made:
                shutil.rmtree(installation.made, ignore_errors=True)
