"""Becoming another user once the listeners are bound (socat's `su=`).

The order is the one that leaves nothing behind: supplementary groups, then the group, then
the user (once the user is changed, the groups could no longer be). A process that is not
root cannot change user at all: that is an error, never a silent no-op.
"""

from __future__ import annotations

import logging
import os
import pwd

from pyforward.errors import StartupError
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward")


def become(user: str) -> None:
    """Switch this process to `user` (a name or uid) for good: its uid, gid and groups."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"su={user}: no such user") from None
    if os.geteuid() == entry.pw_uid:
        return
    try:
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise StartupError(
            f"su={user}: only root can become another user (pyforward runs as uid {os.geteuid()})"
        ) from None
    log.info(
        logfmt({"event": "su", "user": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid})
    )
