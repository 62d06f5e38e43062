"""UNIX stream listeners: the socket file's mode and owner, a stale file replaced, and the
file removed again on close.

A socket file outlives the process that bound it. At start, a file left by a process that
is gone is replaced; one that still accepts connections belongs to a live server and is
refused, as is a path that is not a socket at all (a typo must never delete a file). The
mode and owner are set between bind() and listen(): until listen() every connect is
refused, so no client can slip in under the umask's mode. On close, the file is removed
only if it is still the one this process made (same device and inode): a newer server
that took the path over keeps its socket.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass

from pyforward.config.addresses import UnixAddress
from pyforward.errors import StartupError

_PROBE_TIMEOUT = 1.0  # seconds a connect to an existing socket file may take


@dataclass(frozen=True)
class UnixFile:
    """A socket file this process made: removed by `remove` only while still the same one."""

    path: str
    device: int
    inode: int

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == (self.device, self.inode):
                os.unlink(self.path)


@dataclass(frozen=True)
class UnixOwnership:
    mode: int | None = None
    user: str | None = None
    group: str | None = None


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StartupError(f"unix_user {user!r}: no such user") from None


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f"unix_group {group!r}: no such group") from None


def clear_stale(address: UnixAddress) -> None:
    """Remove a socket file nothing listens on; refuse a live socket and a non-socket."""
    if clear_stale_check(address):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.name)


def clear_stale_check(address: UnixAddress) -> bool:
    """Whether a stale socket file is in the way (True), none is (False); a StartupError
    for a live socket or a file that is no socket."""
    path = address.name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(
            f"cannot listen on {address}: {path} exists and is not a socket; "
            "pyforward replaces only a stale socket file"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nothing listens: stale
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise StartupError(
                    f"cannot listen on {address}: {path} is a socket that cannot be tested "
                    f"({exc.strerror or exc}); remove it if nothing uses it"
                ) from None
        else:
            raise StartupError(
                f"cannot listen on {address}: a server is listening on {path} already "
                f"(see who: ss -xlp src {path})"
            )
    return True


def open_unix_listener(
    address: UnixAddress, ownership: UnixOwnership, backlog: int
) -> tuple[socket.socket, UnixFile | None]:
    """A bound, listening, non-blocking UNIX socket, and its file (None: abstract)."""
    if not address.abstract:
        clear_stale(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made: UnixFile | None = None
    try:
        sock.bind(address.sockaddr)
        if not address.abstract:
            info = os.lstat(address.name)
            made = UnixFile(address.name, info.st_dev, info.st_ino)
            _own(address, ownership)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if made is not None:
            made.remove()
        raise StartupError(unix_bind_error(address, exc)) from None
    except BaseException:
        sock.close()
        if made is not None:
            made.remove()
        raise
    return sock, made


def _own(address: UnixAddress, ownership: UnixOwnership) -> None:
    uid = -1 if ownership.user is None else _uid(ownership.user)
    gid = -1 if ownership.group is None else _gid(ownership.group)
    if uid != -1 or gid != -1:
        os.chown(address.name, uid, gid)
    if ownership.mode is not None:
        os.chmod(address.name, ownership.mode)


def unix_bind_error(address: UnixAddress, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {address}: the name is in use (see who: ss -xlp)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot listen on {address}: permission denied "
            f"({exc.strerror}; the directory, or the owner asked for with unix_user/unix_group)"
        )
    if exc.errno == errno.ENOENT:
        return (
            f"cannot listen on {address}: the directory {os.path.dirname(address.name)} is missing"
        )
    return f"cannot listen on {address}: {exc.strerror or exc}"


def peer_source(client: socket.socket) -> tuple[str, str]:
    """A UNIX client's source (`uid:N`, for per-source limits) and its close line label."""
    try:
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "unix", "unix"
    pid, uid, _ = struct.unpack("3i", creds)
    return f"uid:{uid}", f"unix:pid:{pid},uid:{uid}"


def connect_problem(address: UnixAddress, timeout: float) -> str | None:
    """Why a connect to `address` fails now (an errno name), or None when it is accepted."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(address.sockaddr)
        except TimeoutError:
            return "ETIMEDOUT"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return None


def listen_problem(address: UnixAddress) -> str | None:
    """Why `run` could not listen on `address` now, or None (what `open_unix_listener`
    checks before it binds)."""
    if address.abstract:
        return None if connect_problem(address, _PROBE_TIMEOUT) else f"{address} is in use"
    try:
        clear_stale_check(address)
    except StartupError as exc:
        return str(exc)
    directory = os.path.dirname(address.name) or "/"
    if not os.path.isdir(directory):
        return f"cannot listen on {address}: the directory {directory} is missing"
    return None
