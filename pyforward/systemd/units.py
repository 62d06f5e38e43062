"""systemd unit files for pyforward, rendered from the templates shipped in the package.

Pure: a `UnitSpec` in, file names and texts out. What goes into the spec (which entry
point, which directories to expose) is decided by pyforward.systemd.installation; writing the
files and talking to systemd is pyforward.systemd.install.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from dataclasses import dataclass
from importlib import resources

from pyforward.config.addresses import Address, Endpoint, UnixAddress
from pyforward.errors import ConfigError

MARKER = "# Written by `pyforward install`"  # first line of every unit pyforward writes
SOCKET_MARKER = "# Written by `pyforward install --socket-activation`"
WATCHDOG_SEC = 10
STOP_MARGIN_SEC = 10  # TimeoutStopSec= beyond shutdown_timeout, for the final cleanup
# systemd's UNIT_NAME_MAX: 256 bytes with the NUL, so 255 with the suffix.
_LONGEST_SUFFIX = ".service"
NAME_MAX = 255 - len(_LONGEST_SUFFIX)
# A unit name: what systemd allows ([A-Za-z0-9:_.\\-], and `@` for templates), minus `@`,
# `\` (an escape in ExecStart= and paths) and `:` (StateDirectory= reads it as SOURCE:LINK);
# not starting with `-` (systemctl would take it for an option) or `.` (`.` and `..` are no
# StateDirectory=, and a hidden file is no config file).
_UNIT_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")
# Paths written into a unit: no whitespace, quotes, `%` (specifiers), `$` (variables) or
# `:` (BindReadOnlyPaths= separator), so they mean exactly themselves without escaping.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+,=@~-]*")
# A word of a command line that systemd reads as it is (systemd.service(5), "Command lines").
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./+,=@~:-]+")
_OMIT = "\0omit\0"  # marks a template line that renders to nothing
# Control characters, and the separators some readers take for a line break.
_CONTROL = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit files depend on."""

    name: str
    exec_start: str  # absolute path of the pyforward entry point to run (or of its interpreter)
    config_path: str
    listen: tuple[Endpoint, ...]  # the routes' listen addresses, for the .socket unit
    exec_args: tuple[str, ...] = ()  # what goes before `run`: `-I ARCHIVE` for pyforward.pyz
    socket_activation: bool = False
    kubeconfig: str | None = None  # passed to the service as credential "kubeconfig"
    # Routes' own kubeconfigs (other clusters): (credential name, file), e.g. kubeconfig-2.
    route_kubeconfigs: tuple[tuple[str, str], ...] = ()
    read_only_paths: tuple[str, ...] = ()  # installation directories under /home or /root
    shutdown_timeout: float = 20.0
    backlog: int | None = None  # the .socket unit's Backlog=; None: systemd's default
    listen_datagram: tuple[Address, ...] = ()  # the UDP routes' listen addresses
    # SocketMode=, SocketUser=, SocketGroup= for UNIX sockets systemd makes (unix_mode...).
    socket_file: tuple[str, ...] = ()


def check_name(name: str) -> str:
    """A unit name (without `.service`), or a ConfigError saying what is wrong with it."""
    if name.endswith((".service", ".socket")):
        raise ConfigError(f"--name {name!r}: give the name without .service or .socket")
    if len(name) > NAME_MAX:
        raise ConfigError(f"--name: a unit name is at most {NAME_MAX} characters, got {len(name)}")
    if not _UNIT_NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits and _ . - only, starting with a letter, "
            "a digit or _ (it names a systemd unit)"
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


def listen_stream(address: Endpoint) -> str:
    """A ListenStream= value with the meaning pyforward gives a listen address (before
    specifier escaping, which rendering adds)."""
    if isinstance(address, UnixAddress):
        check_path("/" + address.name[1:] if address.abstract else address.name, "listen")
        return address.name  # systemd.socket(5): a path, or @ and an abstract name
    if address.host is None:
        return str(address.port)  # systemd: IPv6 and IPv4 (BindIPv6Only=both), as pyforward
    if address.is_ipv6_literal:
        # systemd.socket(5) puts the zone after the port: [ADDRESS]:PORT%IFNAME.
        host, percent, zone = address.host.partition("%")
        return f"[{host}]:{address.port}{percent}{zone}"
    if not re.fullmatch(r"[0-9.]+", address.host):
        raise ConfigError(
            f"listen {address}: socket activation needs a numeric address "
            "(systemd does not look names up); use the IP address"
        )
    return f"{address.host}:{address.port}"


def command_line(program: str, *args: str) -> str:
    """An ExecStart= value running `program` with `args`, quoted as systemd.service(5)
    reads it (before specifier escaping, which rendering adds): a word that is not plain is
    double-quoted with `\\` and `"` escaped, and `$` in an argument is doubled so that no
    variable is expanded (systemd expands none in the program's path, and refuses quotes
    and backslashes there)."""
    if not program.startswith("/") or any(char in program for char in "\"'\\"):
        raise ConfigError(
            f"cannot run {program!r} from a unit: the program needs an absolute path "
            "without quotes or backslashes"
        )
    words = [_quoted(program)]
    words.extend(_quoted(arg.replace("$", "$$")) for arg in args)
    return " ".join(words)


def _quoted(word: str) -> str:
    if _PLAIN_WORD.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_value(text: str, where: str) -> str:
    """`text` as it must appear in a unit file to mean itself: `%` doubled (systemd expands
    specifiers in nearly every setting, and in none does a literal `%%` mean anything else).
    A control character is refused: a newline would begin a setting of its own. Values are
    checked where they enter; this is the last line of defence, at the point of writing."""
    for char in text:
        if unicodedata.category(char) in _CONTROL:
            raise ConfigError(
                f"refusing to write {text!r} into {where}: it holds the control character {char!r}"
            )
    return text.replace("%", "%%")


def _template(name: str) -> string.Template:
    text = (resources.files("pyforward.systemd") / "templates" / name).read_text(encoding="utf-8")
    return string.Template(text)


def _fill(template_name: str, where: str, values: dict[str, str | tuple[str, ...]]) -> str:
    """The template with every value escaped by `unit_value`; a tuple fills one line per
    item, or none when empty."""
    filled = {}
    for key, value in values.items():
        lines = (value,) if isinstance(value, str) else value
        filled[key] = "\n".join(unit_value(line, where) for line in lines) if lines else _OMIT
    text = _template(template_name).substitute(filled)
    return "".join(line for line in text.splitlines(keepends=True) if line.rstrip("\n") != _OMIT)


def render_service(spec: UnitSpec) -> str:
    """The text of NAME.service."""
    socket_unit = f"{spec.name}.socket"
    socket_dependency: tuple[str, ...] = ()
    if spec.socket_activation:
        # systemd binds the ports, so the service needs no capability at all.
        capabilities: tuple[str, ...] = ("CapabilityBoundingSet=",)
        socket_dependency = (f"Requires={socket_unit}", f"After={socket_unit}")
    else:
        capabilities = (
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        )
    credential: tuple[str, ...] = (
        (f"LoadCredential=kubeconfig:{spec.kubeconfig}",) if spec.kubeconfig else ()
    )
    credential += tuple(f"LoadCredential={name}:{path}" for name, path in spec.route_kubeconfigs)
    bind_paths: tuple[str, ...] = ()
    protect_home = "yes"
    if spec.read_only_paths:
        # Home directories become an empty tmpfs with only the installation bound back in.
        protect_home = "tmpfs"
        bind_paths = (f"BindReadOnlyPaths={' '.join(spec.read_only_paths)}",)
    return _fill(
        "pyforward.service.in",
        f"{spec.name}.service",
        {
            "name": spec.name,
            "config": spec.config_path,
            "command": command_line(
                spec.exec_start, *spec.exec_args, "run", "--config", spec.config_path
            ),
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
    """The text of NAME.socket: one ListenStream= per TCP route, ListenDatagram= per UDP one."""
    return _fill(
        "pyforward.socket.in",
        f"{spec.name}.socket",
        {
            "name": spec.name,
            "listen_streams": (
                *(f"ListenStream={listen_stream(a)}" for a in spec.listen),
                *(f"ListenDatagram={listen_stream(a)}" for a in spec.listen_datagram),
                *spec.socket_file,
            ),
            "backlog": (f"Backlog={spec.backlog}",) if spec.backlog else (),
        },
    )


def render_units(spec: UnitSpec) -> dict[str, str]:
    """Unit file name -> text, for every unit the spec needs."""
    units = {f"{spec.name}.service": render_service(spec)}
    if spec.socket_activation:
        units[f"{spec.name}.socket"] = render_socket(spec)
    return units
