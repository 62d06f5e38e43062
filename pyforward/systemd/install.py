"""Installing, checking and removing pyforward as a systemd service.

install: validate everything first (settings, entry point, what the service user can
read, ports in use), then write the config and units, daemon-reload, enable, start, and
return only once every listener accepts; otherwise show the unit's state and log lines.
A dry run makes the same checks and shows the same files; what would make the real
install refuse is reported beside them instead of stopping it (`refusals`).
A unit of the same name not written by pyforward (say, the socat unit) is stopped and kept
as a backup that uninstall puts back.

(status lives in pyforward.systemd.status.)

uninstall: stop, disable, remove what install wrote, restore a backup, daemon-reload.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyforward.discovery.options  # noqa: F401  (registers the discovery keys of the settings)
from pyforward.config import file as configfile
from pyforward.config.addresses import Address, Endpoint, UnixAddress
from pyforward.config.load import Layers
from pyforward.config.model import Settings, Transport
from pyforward.config.schema import env_name
from pyforward.config.settings import build_settings
from pyforward.engine.unix_listener import connect_problem
from pyforward.errors import ConfigError, StartupError
from pyforward.socat.unit import settings_from_socat_unit
from pyforward.systemd import installation, systemctl
from pyforward.systemd import procnet as ports
from pyforward.systemd.units import (
    MARKER,
    SOCKET_MARKER,
    UnitSpec,
    check_name,
    check_path,
    render_units,
)

SERVING_TIMEOUT = 15.0  # seconds install waits, after start, for every listener to accept
PROBE_TIMEOUT = 2.0  # seconds for one TCP connection attempt
# First line of the config file install writes (after "# "); uninstall looks for it.
CONFIG_MARKER = "Written by `pyforward install --name {name}`"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class InstallPaths:
    """Where install writes: the config files, and the unit files systemd reads."""

    config_dir: Path = Path("/etc/pyforward")
    unit_dir: Path = Path("/etc/systemd/system")

    @property
    def backup_dir(self) -> Path:
        """Where a replaced unit, or a config file install did not write, is kept."""
        return self.config_dir / "backup"


SYSTEM = InstallPaths()


def config_path(name: str, paths: InstallPaths = SYSTEM) -> Path:
    return paths.config_dir / f"{name}.toml"


def unit_path(unit: str, paths: InstallPaths = SYSTEM) -> Path:
    return paths.unit_dir / unit


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline()
    except OSError:
        return ""


def written_by_pyforward(path: Path) -> bool:
    """Whether a unit file was written by pyforward (its first line says so)."""
    return _first_line(path).startswith((MARKER, SOCKET_MARKER))


def config_written_by_install(name: str, paths: InstallPaths = SYSTEM) -> bool:
    """Whether /etc/pyforward/NAME.toml is the one `install --name NAME` wrote (its first
    line says so): uninstall removes nothing else."""
    return _first_line(config_path(name, paths)).startswith(f"# {CONFIG_MARKER.format(name=name)};")


def require_systemd(command: str) -> None:
    """install and uninstall change the system: root and a running systemd, or one line."""
    if command == "install":
        hint = (
            "`pyforward install --dry-run` shows what it would write, "
            "and `pyforward run` forwards in the foreground"
        )
    else:
        hint = "without it, no pyforward service can have been installed here either"
    if not systemctl.is_root():
        if command != "install":
            hint = "run it as root (sudo)"
        raise StartupError(
            f"pyforward {command} needs root (it changes /etc/systemd/system); {hint}"
        )
    if not systemctl.systemd_running():
        raise StartupError(
            f"pyforward {command} needs a running systemd, and this system was not booted "
            f"with it; {hint}"
        )


# --- install


@dataclass(frozen=True)
class InstallRequest:
    name: str
    layers: Layers  # the `run` flags given, the environment, the --config file's data
    socket_activation: bool = False
    kubeconfig: str | None = None
    paths: InstallPaths = SYSTEM


@dataclass(frozen=True)
class InstallPlan:
    name: str
    settings: Settings
    files: dict[Path, str]  # what to write, config first
    units: tuple[str, ...]  # unit names, socket first
    kubeconfig_note: str = ""  # which kubeconfig the service is handed, and why that one
    refusals: tuple[str, ...] = ()  # why the installation cannot be run as a service
    paths: InstallPaths = SYSTEM
    warnings: tuple[str, ...] = ()  # what the service will do otherwise than asked

    @property
    def service(self) -> str:
        return f"{self.name}.service"


def routes_given(
    flags: Mapping[str, object], env: Mapping[str, str], file_data: Mapping[str, Any] | None
) -> bool:
    """Whether any layer names a route (listen, target or route)."""
    keys = configfile.ROUTE_DEFINING
    return (
        any(flags.get(key) not in (None, [], ()) for key in keys)
        or any(env_name(key) in env for key in keys)
        or any(key in (file_data or {}) for key in keys)
    )


@dataclass(frozen=True)
class CarriedOver:
    """What a replaced socat unit's ExecStart= says, as `run` flags."""

    flags: dict[str, object]
    carried: list[str]
    dropped: list[str]


def carry_over_replaced_unit(name: str, paths: InstallPaths = SYSTEM) -> CarriedOver | None:
    """Routes from the socat unit install would replace, when the user gave none."""
    path = unit_path(f"{check_name(name)}.service", paths)
    if not path.exists() or written_by_pyforward(path):
        return None
    try:
        return carry_over_unit(path)
    except ConfigError as exc:
        raise ConfigError(
            f"no route given, and {exc}; give --listen and --target (or --from-unit)"
        ) from None


def carry_over_unit(path: Path) -> CarriedOver:
    """What a socat unit file's ExecStart= says, as `run` flags (for --from-unit)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"unit file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a unit file: it is not text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read unit file {path}: {exc.strerror or exc}") from None
    if "\0" in text:
        raise ConfigError(f"{path} is not a unit file: it is not text")
    try:
        flags, carried, dropped = settings_from_socat_unit(text)
    except ConfigError as exc:
        raise ConfigError(f"{path} cannot be carried over: {exc}") from None
    return CarriedOver(flags, carried, dropped)


def kubeconfig_to_hand_over(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The kubeconfig `pyforward discover` would use here, for LoadCredential=: the first
    candidate file that exists (systemd reads it as root, whatever its permissions), and
    the rule that found it ("$KUBECONFIG", "~/.kube/config", "k3s", ...)."""
    # Imported here: static forwarding loads nothing of discovery.
    from pyforward.discovery.kubeconfig import candidate_sources  # noqa: PLC0415

    for source in candidate_sources(None, env):
        if source.path and os.pathsep not in source.path and os.path.isfile(source.path):
            return source.path, source.origin
    return None


def _check_kubeconfig(path: str, given_as: str) -> None:
    """Refuse, at install, a kubeconfig the service would refuse (exec:, auth-provider:)."""
    from pyforward.discovery.kubeconfig import (  # noqa: PLC0415  (loads kubernetes)
        KubeconfigSource,
        check_credentials,
    )

    if os.access(path, os.R_OK):  # one only root can read is checked by the service
        check_credentials(KubeconfigSource(given_as, path))


def _route_kubeconfigs(settings: Settings) -> dict[str, str]:
    """The kubeconfig files of the discovered routes that follow another cluster than the
    top-level one, each with the credential the service is handed it as: `kubeconfig-2`,
    `kubeconfig-3`, ... in route order (the top-level one is `kubeconfig`)."""
    assert settings.discovery is not None
    top = settings.discovery.kubeconfig
    found = [r.kubeconfig for r in settings.routes if not r.targets and r.kubeconfig != top]
    paths = [path for path in dict.fromkeys(found) if path is not None]
    return {path: f"kubeconfig-{number}" for number, path in enumerate(paths, 2)}


def plan_install(
    request: InstallRequest, find_installation: Callable[[], installation.Installation]
) -> InstallPlan:
    """Everything install will write, checked; writes nothing."""
    name = check_name(request.name)
    layers = request.layers
    settings = layers.settings()
    for route in settings.routes:
        if isinstance(route.listen, Address) and route.listen.port == 0:
            raise ConfigError(
                f"listen {route.listen}: a service needs a fixed port, not 0 (any free port)"
            )
    merged = configfile.merge(layers.flags, layers.env, layers.file_data)
    if build_settings({}, {}, merged) != settings:
        raise StartupError(
            "cannot write these settings as one config file; give them in a --config file"
        )
    kubeconfig, kubeconfig_source = request.kubeconfig, "--kubeconfig"
    origin, why = "--kubeconfig", "given with install --kubeconfig"
    route_kubeconfigs: dict[str, str] = {}
    if settings.discovery is not None:
        from pyforward.discovery.kubeconfig import CREDENTIALS_PREFIX  # noqa: PLC0415

        route_kubeconfigs = _route_kubeconfigs(settings)
        # The service's user cannot read a root-only kubeconfig such as k3s's: systemd hands
        # it over as a credential, where discovery looks ($CREDENTIALS_DIRECTORY/kubeconfig),
        # so the config file names no kubeconfig of its own.
        if kubeconfig is None and settings.discovery.kubeconfig:
            kubeconfig, kubeconfig_source = settings.discovery.kubeconfig, "kubeconfig"
            origin, why = "kubeconfig setting", "the kubeconfig of these settings"
        if kubeconfig is None and (first := kubeconfig_to_hand_over(layers.env)) is not None:
            # Often root's own (~/.kube/config): said aloud, since the service acts with it.
            kubeconfig, origin = first
            kubeconfig_source = "the kubeconfig discovery would use"
            why = (
                f"found as {origin}, the first kubeconfig `pyforward discover` would use "
                "here; give --kubeconfig FILE to hand over another"
            )
        merged.pop("kubeconfig", None)
        # Another cluster's kubeconfig is handed over as a credential of its own, which the
        # route names; a route naming the top-level one follows the top-level credential.
        for table in merged.get("route") or []:
            path = table.pop("kubeconfig", None)
            if path is not None and path in route_kubeconfigs:
                table["kubeconfig"] = f"{CREDENTIALS_PREFIX}{route_kubeconfigs[path]}"
    note = ""
    if kubeconfig is not None:
        check_path(kubeconfig, kubeconfig_source)
        if settings.discovery is not None:
            _check_kubeconfig(kubeconfig, origin)
            note = (
                f"the service is handed kubeconfig {kubeconfig} ({why}), as its credential "
                "'kubeconfig' (LoadCredential=, read by systemd as root)"
            )
    for path, credential in route_kubeconfigs.items():
        check_path(path, "a route's kubeconfig")
        _check_kubeconfig(path, "kubeconfig of a route")
        note += f"{'; ' if note else ''}routes of kubeconfig {path} are handed it as credential "
        note += f"'{credential}'"
    paths = request.paths
    config = config_path(name, paths)
    header = (
        f"{CONFIG_MARKER.format(name=name)}; {name}.service runs with it.\n"
        f"After editing: `systemctl reload {name}` applies new targets and timeouts,\n"
        f"`systemctl restart {name}` new listeners."
    )
    found = find_installation()
    check_path(found.entry_point, "the pyforward entry point")
    if found.archive:
        check_path(found.interpreter, "the interpreter running pyforward")
    for path in found.bind_paths:
        check_path(path, "installation directory")
    spec = UnitSpec(
        name=name,
        exec_start=found.command[0],
        exec_args=found.command[1:],
        config_path=str(config),
        # One ListenStream= per address: routes sharing one (by server name) share its socket.
        listen=tuple(
            dict.fromkeys(r.listen for r in settings.routes if r.protocol is Transport.TCP)
        ),
        listen_datagram=tuple(
            r.listen
            for r in settings.routes
            if r.protocol is Transport.UDP and isinstance(r.listen, Address)
        ),
        socket_activation=request.socket_activation,
        kubeconfig=kubeconfig,
        route_kubeconfigs=tuple((name, path) for path, name in route_kubeconfigs.items()),
        read_only_paths=found.bind_paths,
        shutdown_timeout=settings.shutdown_timeout,
        backlog=settings.backlog,
        socket_file=socket_file_lines(settings),
    )
    units = render_units(spec)
    files = {config: configfile.to_toml(merged, header)}
    files.update({unit_path(unit, paths): text for unit, text in units.items()})
    order = sorted(units, key=lambda unit: not unit.endswith(".socket"))
    return InstallPlan(
        name,
        settings,
        files,
        tuple(order),
        note,
        found.refusals,
        paths,
        warnings=_socket_activation_warnings(settings, request.socket_activation),
    )


def _socket_activation_warnings(settings: Settings, socket_activation: bool) -> tuple[str, ...]:
    """With workers, systemd passes one socket per UDP address, which one worker serves (a
    client's flow must stay in one process): said at install, as the service says at start."""
    udp = [str(r.listen) for r in settings.routes if r.protocol is Transport.UDP]
    if not (socket_activation and udp and settings.workers != 1):
        return ()
    return (
        f"UDP route {', '.join(udp)}: under socket activation systemd passes one socket, "
        "served by worker 0 alone; without --socket-activation each worker gets its own",
    )


def render_plan(plan: InstallPlan) -> str:
    """What --dry-run prints: each file under a `==> PATH <==` line."""
    return "\n".join(f"==> {path} <==\n{text}" for path, text in plan.files.items())


def foreign_units(plan: InstallPlan) -> list[Path]:
    """Unit files install would replace that pyforward did not write."""
    files = [unit_path(unit, plan.paths) for unit in plan.units]
    return [path for path in files if path.exists() and not written_by_pyforward(path)]


def foreign_config(name: str, paths: InstallPaths = SYSTEM) -> Path | None:
    """/etc/pyforward/NAME.toml when it exists and install did not write it."""
    config = config_path(name, paths)
    return config if config.exists() and not config_written_by_install(name, paths) else None


def keep_foreign_config(name: str, echo: Echo, paths: InstallPaths = SYSTEM) -> None:
    """Move a config file install did not write out of the way, for uninstall to restore:
    install writes an equivalent one, without the comments its writer may have kept."""
    config = foreign_config(name, paths)
    if config is None:
        return
    kept = paths.backup_dir / config.name
    paths.backup_dir.mkdir(parents=True, exist_ok=True)
    config.replace(kept)
    echo(f"{config} was not written by pyforward install: kept it as {kept}")


def _pids_of(unit: str) -> set[int]:
    props = systemctl.show(unit, ("MainPID", "ActiveState"))
    pids = {int(props["MainPID"])} if props["MainPID"].isdigit() else set()
    if unit.endswith(".socket") and props["ActiveState"] == "active":
        pids.add(1)  # systemd itself holds the sockets of an active .socket unit
    return pids - {0}


def ports_taken(plan: InstallPlan) -> list[str]:
    """One line per port another program holds that the service needs (e.g. k3s ServiceLB);
    the units being replaced and pyforward's own service do not count."""
    ours: set[int] = set()
    if systemctl.systemd_running():  # a dry run may run where there is no systemd
        ours = _pids_of(plan.service) | _pids_of(f"{plan.name}.socket")
    listening = ports.listening_sockets()
    held = ports.owners({sock.inode for sock in listening})
    taken = []
    for route in plan.settings.routes:
        if not isinstance(route.listen, Address):
            continue  # a stale socket file is replaced, a live one refused, at start
        hosts = ports.numeric_hosts(route.listen)
        for sock in listening:
            pids = set(held.get(sock.inode, []))
            if ports.overlaps(route.listen, hosts, sock) and pids and not pids & ours:
                who = ", ".join(f"pid {p} ({ports.process_name(p)})" for p in sorted(pids))
                taken.append(
                    f"cannot listen on {route.listen}: {sock.label} is already held by {who}; "
                    f"stop it or choose another port (see: ss -ltnp 'sport = :{sock.port}')"
                )
                break
    return taken


def refusals(plan: InstallPlan) -> list[str]:
    """Everything that makes install refuse this plan, checked before anything changes:
    the installation (where it lives, what its user can read), then the ports."""
    return [*plan.refusals, *ports_taken(plan)]


def _backup(unit_file: Path, echo: Echo, backup_dir: Path) -> None:
    unit = unit_file.name
    state = {
        "enabled": systemctl.run("is-enabled", unit).output == "enabled",
        "active": systemctl.run("is-active", unit).output == "active",
    }
    systemctl.run("stop", unit)
    systemctl.run("disable", unit)
    backup_dir.mkdir(parents=True, exist_ok=True)
    (backup_dir / f"{unit}.state.json").write_text(json.dumps(state) + "\n")
    unit_file.replace(backup_dir / unit)
    echo(f"{unit} was not written by pyforward: stopped it, kept it as {backup_dir / unit}")


def install(plan: InstallPlan, echo: Echo, timeout: float = SERVING_TIMEOUT) -> None:
    """Write, enable and start; return once every listener accepts, else StartupError."""
    require_systemd("install")
    # Before anything changes: an installation the service cannot run, a port held by
    # anything but the units being replaced.
    if found := refusals(plan):
        raise StartupError(found[0])
    # Stop what runs under these names: their ports are about to change hands.
    for unit_file in foreign_units(plan):
        _backup(unit_file, echo, plan.paths.backup_dir)
    keep_foreign_config(plan.name, echo, plan.paths)
    stale_socket = unit_path(f"{plan.name}.socket", plan.paths)
    owned = [
        u
        for u in (f"{plan.name}.socket", plan.service)
        if written_by_pyforward(unit_path(u, plan.paths))
    ]
    if owned:
        systemctl.run("stop", *owned)
    if stale_socket.name not in plan.units and written_by_pyforward(stale_socket):
        systemctl.run("disable", stale_socket.name)
        stale_socket.unlink()
    for path, text in plan.files.items():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)  # the dynamic service user reads the config
        echo(f"wrote {path}")
    systemctl.must("daemon-reload")
    systemctl.must("enable", *plan.units)
    for unit in plan.units:
        outcome = systemctl.run("start", unit)
        if not outcome.ok:
            raise _not_serving(plan, echo, f"{unit} failed to start")
    _wait_serving(plan, echo, timeout)


def socket_file_lines(settings: Settings) -> tuple[str, ...]:
    """SocketMode=, SocketUser=, SocketGroup= of the .socket unit: systemd makes the UNIX
    socket files then, and one unit has one of each, so the routes must agree."""
    wanted = {
        (route.unix_mode, route.unix_user, route.unix_group)
        for route in settings.routes
        if isinstance(route.listen, UnixAddress) and not route.listen.abstract
    }
    if not wanted:
        return ()
    if len(wanted) > 1:
        raise ConfigError(
            "socket activation: the unix: listeners ask for different unix_mode, unix_user "
            "or unix_group; one .socket unit gives all its files the same"
        )
    mode, user, group = wanted.pop()
    lines = [] if mode is None else [f"SocketMode={mode:04o}"]
    lines += [] if user is None else [f"SocketUser={user}"]
    return (*lines, *([] if group is None else [f"SocketGroup={group}"]))


def _listen_problem(listen: Endpoint) -> str | None:
    if isinstance(listen, UnixAddress):
        return connect_problem(listen, PROBE_TIMEOUT)
    return ports.can_connect(ports.probe_host(listen), listen.port, PROBE_TIMEOUT)


def _wait_serving(plan: InstallPlan, echo: Echo, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for route in plan.settings.routes:
        while (problem := _listen_problem(route.listen)) is not None:
            state = systemctl.show(plan.service, ("ActiveState",))["ActiveState"]
            if time.monotonic() > deadline or state in {"failed", "inactive"}:
                raise _not_serving(
                    plan, echo, f"{route.listen} does not accept connections ({problem})"
                )
            time.sleep(0.1)
        targets = ", ".join(str(t) for t in route.targets) or "what discovery finds"
        echo(f"{plan.service} accepts on {route.listen}, forwarding to {targets}")
    echo(f"check it any time with: pyforward status --name {plan.name}")


def _not_serving(plan: InstallPlan, echo: Echo, why: str) -> StartupError:
    props = systemctl.show(plan.service)
    echo(systemctl.unit_summary(plan.service, props))
    for line in systemctl.journal_tail(plan.service):
        echo(f"  {line}")
    return StartupError(
        f"{plan.service} is not serving: {why}; see `journalctl -u {plan.service}`; "
        f"`pyforward uninstall --name {plan.name}` removes it"
    )


# --- uninstall


def uninstall(name: str, echo: Echo, paths: InstallPaths = SYSTEM) -> None:
    """Stop, disable and remove what install wrote; put a backed-up unit back."""
    name = check_name(name)
    require_systemd("uninstall")
    units = [f"{name}.socket", f"{name}.service"]
    files = [unit_path(unit, paths) for unit in units]
    foreign = [path for path in files if path.exists() and not written_by_pyforward(path)]
    if foreign:
        raise StartupError(f"{foreign[0]} was not written by pyforward; leaving it alone")
    ours = [path for path in files if path.exists()]
    backup_dir = paths.backup_dir
    backups = [backup_dir / unit for unit in units if (backup_dir / unit).exists()]
    config = config_path(name, paths)
    config_ours = config_written_by_install(name, paths)
    config_backup = backup_dir / config.name
    if config.exists() and not config_ours:
        echo(f"{config} was not written by `pyforward install --name {name}`; leaving it alone")
    if not ours and not backups and not config_ours:
        echo(f"{name} is not installed; nothing to remove")
        return
    if ours:
        present = [path.name for path in ours]
        systemctl.run("stop", *present)
        systemctl.run("disable", *present)
        # The state directory of a DynamicUser service (/var/lib/private/NAME).
        systemctl.run("clean", f"{name}.service", options=("--what=state",))
    for path in [*ours, *([config] if config_ours else [])]:
        path.unlink()
        echo(f"removed {path}")
    if ours or backups:
        systemctl.must("daemon-reload")
        for unit in units:
            systemctl.run("reset-failed", unit)
    for backup in backups:
        _restore(backup, echo, paths)
    if config_backup.exists() and not config.exists():
        config_backup.replace(config)
        echo(f"restored {config}")
    for directory in (backup_dir, paths.config_dir):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def _restore(backup: Path, echo: Echo, paths: InstallPaths) -> None:
    unit = backup.name
    state_file = paths.backup_dir / f"{unit}.state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    backup.replace(unit_path(unit, paths))
    state_file.unlink(missing_ok=True)
    systemctl.must("daemon-reload")
    echo(f"restored {unit_path(unit, paths)}")
    if state.get("enabled"):
        systemctl.run("enable", unit)
    if state.get("active"):
        outcome = systemctl.run("start", unit)
        echo(f"started {unit}" if outcome.ok else f"{unit} did not start: {outcome.output}")
