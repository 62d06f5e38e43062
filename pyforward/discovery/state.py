"""The last discovered target, kept in a small JSON file so a restart can serve at once.

One file per Service in the state directory (systemd's StateDirectory=, else
/var/lib/pyforward). Written atomically (temporary file, then rename); a file that cannot
be read or parsed is reported and ignored, never fatal.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyforward.addresses import Address, parse_target
from pyforward.discovery.options import ServiceRef
from pyforward.errors import ConfigError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedRoute:
    listen: str  # the listen address as written, e.g. "*:443"
    service_port: str
    node_port: int
    targets: tuple[Address, ...]


@dataclass(frozen=True)
class SavedState:
    service: ServiceRef
    saved_at: float  # seconds since the epoch
    routes: tuple[SavedRoute, ...]

    def targets_for(self, listen: str, service_port: str) -> tuple[Address, ...] | None:
        for route in self.routes:
            if route.listen == listen and route.service_port == service_port:
                return route.targets
        return None


def state_path(state_dir: str | Path, service: ServiceRef) -> Path:
    """The state file of one Service."""
    return Path(state_dir) / f"discovery-{service.namespace}-{service.name}.json"


def encode(state: SavedState) -> str:
    """The file's text."""
    data = {
        "version": FORMAT_VERSION,
        "service": str(state.service),
        "saved_at": round(state.saved_at, 3),
        "routes": [
            {
                "listen": route.listen,
                "service_port": route.service_port,
                "node_port": route.node_port,
                "targets": [str(target) for target in route.targets],
            }
            for route in state.routes
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def decode(text: str) -> SavedState:
    """Parse the file's text; ValueError says what is wrong with it."""
    data: Any = json.loads(text)
    if not isinstance(data, Mapping) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} state file")
    namespace, _, name = str(data.get("service", "")).partition("/")
    routes = []
    for item in data.get("routes") or []:
        try:
            targets = tuple(parse_target(text) for text in item["targets"])
            routes.append(
                SavedRoute(
                    str(item["listen"]), str(item["service_port"]), int(item["node_port"]), targets
                )
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise ValueError(f"bad route entry: {exc}") from None
    return SavedState(ServiceRef(namespace, name), float(data.get("saved_at", 0)), tuple(routes))


def load(path: Path) -> SavedState | None:
    """The saved state, or None when there is none. OSError/ValueError for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return decode(text)


def save(path: Path, state: SavedState) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".discovery-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(encode(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
