"""systemd unit files for pyforward, rendered from the templates shipped in the package.

Pure: a `UnitSpec` in, file names and texts out. What goes into the spec (which entry
point, which directories to expose) is decided by pyforward.installation; writing the
files and talking to systemd is pyforward.service.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from importlib import resources

from pyforward.addresses import Address
from pyforward.errors import ConfigError

MARKER = "# Written by `pyforward install`"  # first line of every unit pyforward writes
SOCKET_MARKER = "# Written by `pyforward install --socket-activation`"
WATCHDOG_SEC = 10
STOP_MARGIN_SEC = 10  # TimeoutStopSec= beyond shutdown_timeout, for the final cleanup
# A unit name: what systemd allows, minus `@` (templates) and `\` escapes.
_UNIT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
# Paths written into a unit: no whitespace, quotes, `%` (specifiers), `$` (variables) or
# `:` (BindReadOnlyPaths= separator), so they mean exactly themselves without escaping.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+,=@~-]*")
_OMIT = "\0omit\0"  # marks a template line that renders to nothing


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit files depend on."""

    name: str
    exec_start: str  # absolute path of the pyforward entry point to run
    config_path: str
    listen: tuple[Address, ...]  # the routes' listen addresses, for the .socket unit
    socket_activation: bool = False
    kubeconfig: str | None = None  # passed to the service as credential "kubeconfig"
    read_only_paths: tuple[str, ...] = ()  # installation directories under /home or /root
    shutdown_timeout: float = 20.0
    backlog: int | None = None  # the .socket unit's Backlog=; None: systemd's default


def check_name(name: str) -> str:
    """A unit name (without `.service`), or a ConfigError saying what is wrong with it."""
    if name.endswith((".service", ".socket")):
        raise ConfigError(f"--name {name!r}: give the name without .service or .socket")
    if not _UNIT_NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits and _ . : - only (it names a systemd unit)"
        )
    return name


def check_path(path: str, what: str) -> str:
    """An absolute path that can go into a unit file as it is."""
    if not _PLAIN_PATH.fullmatch(path):
        raise ConfigError(
            f"{what} {path!r}: a path in a unit file must be absolute and free of spaces, "
            "quotes, % and $; move it to a plainer path"
        )
    return path


def listen_stream(address: Address) -> str:
    """A ListenStream= value with the meaning pyforward gives a listen address."""
    if address.host is None:
        return str(address.port)  # systemd: IPv6 and IPv4 (BindIPv6Only=both), as pyforward
    if address.is_ipv6_literal:
        return f"[{address.host}]:{address.port}"
    if not re.fullmatch(r"[0-9.]+", address.host):
        raise ConfigError(
            f"listen {address}: socket activation needs a numeric address "
            "(systemd does not look names up); use the IP address"
        )
    return f"{address.host}:{address.port}"


def _template(name: str) -> string.Template:
    text = resources.files("pyforward").joinpath("templates", name).read_text(encoding="utf-8")
    return string.Template(text)


def _fill(template_name: str, values: dict[str, str]) -> str:
    text = _template(template_name).substitute(values)
    return "".join(line for line in text.splitlines(keepends=True) if line.rstrip("\n") != _OMIT)


def _lines(*lines: str) -> str:
    return "\n".join(lines) if lines else _OMIT


def render_service(spec: UnitSpec) -> str:
    """The text of NAME.service."""
    socket_unit = f"{spec.name}.socket"
    if spec.socket_activation:
        # systemd binds the ports, so the service needs no capability at all.
        capabilities = _lines("CapabilityBoundingSet=")
        socket_dependency = _lines(f"Requires={socket_unit}", f"After={socket_unit}")
    else:
        capabilities = _lines(
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        )
        socket_dependency = _OMIT
    credential = (
        _lines(f"LoadCredential=kubeconfig:{spec.kubeconfig}") if spec.kubeconfig else _OMIT
    )
    if spec.read_only_paths:
        # Home directories become an empty tmpfs with only the installation bound back in.
        protect_home = "tmpfs"
        bind_paths = _lines(f"BindReadOnlyPaths={' '.join(spec.read_only_paths)}")
    else:
        protect_home, bind_paths = "yes", _OMIT
    return _fill(
        "pyforward.service.in",
        {
            "name": spec.name,
            "config": spec.config_path,
            "exec_start": spec.exec_start,
            "socket_dependency": socket_dependency,
            "watchdog_sec": str(WATCHDOG_SEC),
            "stop_timeout_sec": str(math.ceil(spec.shutdown_timeout) + STOP_MARGIN_SEC),
            "credential": credential,
            "capabilities": capabilities,
            "protect_home": protect_home,
            "bind_paths": bind_paths,
        },
    )


def render_socket(spec: UnitSpec) -> str:
    """The text of NAME.socket: one ListenStream= per route."""
    return _fill(
        "pyforward.socket.in",
        {
            "name": spec.name,
            "listen_streams": _lines(*(f"ListenStream={listen_stream(a)}" for a in spec.listen)),
            "backlog": _lines(f"Backlog={spec.backlog}") if spec.backlog else _OMIT,
        },
    )


def render_units(spec: UnitSpec) -> dict[str, str]:
    """Unit file name -> text, for every unit the spec needs."""
    units = {f"{spec.name}.service": render_service(spec)}
    if spec.socket_activation:
        units[f"{spec.name}.socket"] = render_socket(spec)
    return units
