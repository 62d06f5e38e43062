"""The last discovered target, kept in a small JSON file so a restart can serve at once.

One file per cluster in the state directory (systemd's StateDirectory=, else
/var/lib/pyforward), named after the top-level Service; each route is saved with the
Service it follows. The top-level cluster's file has the name it always had; a cluster of
a route's own `kubeconfig`/`node_ip` adds a key of those to the name. A version 1 file
names no Service per route: its routes followed the file's Service. Version 2 is written
only when some route follows another Service, so a file of one Service stays readable by
an older pyforward.

Written atomically (temporary file, then rename); a file that cannot be read or used is
reported and ignored, never fatal: decoding checks every field, and a saved target passes
the checks a discovered one did (`BadStateFile` is the only error).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyforward.config.addresses import Address, parse_target
from pyforward.discovery.nodeaddress import check_node_address
from pyforward.discovery.options import ServiceRef, parse_service_ref
from pyforward.errors import ConfigError

FORMAT_VERSION = 2  # routes following different Services
VERSIONS = (1, 2)


@dataclass(frozen=True)
class SavedRoute:
    listen: str  # the listen address as written, e.g. "*:443"
    service_port: str
    node_port: int
    targets: tuple[Address, ...]
    service: ServiceRef  # the Service the route follows (version 1: the file's)


@dataclass(frozen=True)
class SavedState:
    service: ServiceRef
    saved_at: float  # seconds since the epoch
    routes: tuple[SavedRoute, ...]

    def route_for(self, listen: str, service_port: str, service: ServiceRef) -> SavedRoute | None:
        """The route saved for this listen address, Service and Service port, if any."""
        for route in self.routes:
            if (route.listen, route.service_port, route.service) == (listen, service_port, service):
                return route
        return None


def state_path(state_dir: str | Path, service: ServiceRef, cluster: str | None = None) -> Path:
    """The state file of a process whose top-level Service is `service`: of its top-level
    cluster, or (`cluster`, `followed.Cluster.key`) of another."""
    suffix = f".cluster-{cluster}" if cluster else ""
    return Path(state_dir) / f"discovery-{service.namespace}-{service.name}{suffix}.json"


def encode(state: SavedState) -> str:
    """The file's text."""
    several = any(route.service != state.service for route in state.routes)
    data = {
        "version": FORMAT_VERSION if several else 1,
        "service": str(state.service),
        "saved_at": round(state.saved_at, 3),
        "routes": [
            {
                "listen": route.listen,
                "service": str(route.service),
                "service_port": route.service_port,
                "node_port": route.node_port,
                "targets": [str(target) for target in route.targets],
            }
            for route in state.routes
        ],
    }
    return json.dumps(data, indent=2) + "\n"


class BadStateFile(ValueError):
    """The state file cannot be used; the message says what is wrong with it."""


# Far more than any cluster's targets need; a bigger file is not one pyforward wrote.
MAX_FILE_BYTES = 8 << 20
# Seconds since the epoch that time.gmtime and a human both understand (up to year 9999).
_LATEST_TIME = 253402300799


# What a field must be, as an error names it.
_KINDS: dict[type | tuple[type, ...], str] = {
    str: "text",
    int: "an integer",
    list: "a list",
    (int, float): "a number",
}


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    # bool is an int to Python: `true` is no port, no time.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadStateFile(f"{where}{key}: {_shown(value)} is not {_KINDS.get(kind, 'valid')}")
    return value


def _shown(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _target(value: object, node_port: int, where: str) -> Address:
    """A saved target, held to the rules a live one passed: an IP literal node address
    (check_node_address) and the route's nodePort."""
    if not isinstance(value, str):
        raise BadStateFile(f"{where}target {_shown(value)} is not text")
    try:
        target = parse_target(value)
        host = check_node_address(target.host)  # None (no host) is refused as not text
    except (ConfigError, ValueError) as exc:
        raise BadStateFile(f"{where}target {_shown(value)}: {exc}") from None
    if target.port != node_port:
        raise BadStateFile(f"{where}target {_shown(value)} is not on nodePort {node_port}")
    return Address(host, target.port)


def _service(text: str, where: str) -> ServiceRef:
    try:
        return parse_service_ref(text)
    except ValueError as exc:
        raise BadStateFile(f"{where}service: {exc}") from None


def _route(item: object, number: int, service: ServiceRef) -> SavedRoute:
    """A saved route; `service` is the file's, for a route that names none (version 1)."""
    where = f"routes[{number}]."
    if not isinstance(item, Mapping):
        raise BadStateFile(f"routes[{number}]: {_shown(item)} is not an object")
    node_port = _field(item, "node_port", int, where)
    if not 1 <= node_port <= 65535:
        raise BadStateFile(f"{where}node_port: {node_port} is not a port number (1-65535)")
    targets = _field(item, "targets", list, where)
    if not targets:
        raise BadStateFile(f"{where}targets: empty")
    return SavedRoute(
        _field(item, "listen", str, where),
        _field(item, "service_port", str, where),
        node_port,
        tuple(_target(value, node_port, where) for value in targets),
        _service(_field(item, "service", str, where), where) if "service" in item else service,
    )


def decode(text: str) -> SavedState:
    """Parse the file's text; whatever it holds, BadStateFile is the only error."""
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BadStateFile(f"not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise BadStateFile("not a state file: not a JSON object")
    version = data.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise BadStateFile(f"not a version 1 or 2 state file (version {_shown(version)})")
    service = _service(_field(data, "service", str, ""), "")
    saved_at = _field(data, "saved_at", (int, float), "")
    if not 0 <= saved_at <= _LATEST_TIME:  # NaN and the infinities fail this too
        raise BadStateFile(f"saved_at: {_shown(saved_at)} is not a time")
    routes = _field(data, "routes", list, "")
    return SavedState(
        service,
        float(saved_at),
        tuple(_route(item, n, service) for n, item in enumerate(routes)),
    )


def load(path: Path) -> SavedState | None:
    """The saved state, or None when there is none. BadStateFile for a file that cannot be
    read or used."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadStateFile(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BadStateFile(f"larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadStateFile(f"not UTF-8 text: {exc}") from None
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
