"""No orphan worker: the kernel signals a worker when the main process dies, whatever
killed it (SIGKILL included), through prctl(2)'s PR_SET_PDEATHSIG."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, signum: signal.Signals = signal.SIGTERM) -> bool:
    """Ask for `signum` when the parent dies; False when `parent` is already gone (the
    request came too late: the worker must exit by itself)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "prctl(PR_SET_PDEATHSIG)")
    # The parent may have died between fork and prctl: then no signal ever comes, and the
    # worker has been re-parented (to init or a subreaper).
    return os.getppid() == parent
