"""The systemd commands, `install`, `status` and `uninstall`: parse, then call pyforward.service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pyforward import installation, service, service_status
from pyforward.settings import env_name
from pyforward.units import check_name

NameOpt = Annotated[
    str,
    typer.Option(
        "--name",
        "-n",
        help="Name of the systemd unit (NAME.service): letters, digits, _ . - (not first).",
        # Checked as it enters, before any file is read or any command is run with it.
        callback=check_name,
    ),
]


def find_installation() -> installation.Installation:
    """This installation, checked for what the hardened service can reach."""
    return installation.inspect(installation.find_entry_point())


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def _run_flags(ctx: typer.Context) -> tuple[dict[str, Any], Path | None]:
    """Parse the arguments install did not know with `run`'s own options."""
    group = ctx.parent.command if ctx.parent is not None else None
    run_command = getattr(group, "commands", {}).get("run")
    if run_command is None:
        raise RuntimeError("the run command is missing")
    parsed = run_command.make_context("pyforward install", list(ctx.args), parent=ctx.parent)
    flags = dict(parsed.params)
    config = flags.pop("config", None)
    return flags, config


def install(
    ctx: typer.Context,
    name: NameOpt = "pyforward",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the files it would write; change nothing.")
    ] = False,
    socket_activation: Annotated[
        bool,
        typer.Option(
            "--socket-activation",
            help="Let systemd hold the listening sockets (NAME.socket): restarts refuse "
            "no connection, and low ports need no capability.",
        ),
    ] = False,
    from_unit: Annotated[
        str | None,
        typer.Option(
            "--from-unit",
            help="A socat unit file whose ExecStart= gives the routes (any path to socat, any "
            "option order); flags given as well win. Says what it carried and what it dropped.",
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            help="Kubeconfig for --discover, handed to the service as credential 'kubeconfig' "
            "(systemd reads it as root; the file keeps its permissions) [with --discover: the "
            "one `pyforward discover` would use]."
        ),
    ] = None,
) -> None:
    """Install pyforward as a systemd service and start it; return once it accepts.

    Takes every option of `pyforward run` (see pyforward run --help) and writes them to
    /etc/pyforward/NAME.toml. A unit of the same name not written by pyforward (such as
    k3s-ingress-forward's socat) is stopped and kept; `pyforward uninstall` restores it.
    Given no route, install takes the routes from that socat unit's ExecStart=.
    """
    from pyforward.cli import read_config_file  # noqa: PLC0415  (cli imports this module)

    flags, config = _run_flags(ctx)
    env = dict(os.environ)
    if config is None and env.get(env_name("config")):
        config = Path(env[env_name("config")])
    if not dry_run:
        service.require_systemd("install")
    file_data = read_config_file(config) if config is not None else None
    found, source = None, ""
    if from_unit is not None:
        found, source = service.carry_over_unit(Path(from_unit)), from_unit
    elif not service.routes_given(flags, env, file_data):
        # Replacing a socat unit: its ExecStart= says where to listen and forward.
        found, source = service.carry_over_replaced_unit(name), f"{name}.service"
    if found is not None:
        given = {k: v for k, v in flags.items() if v not in (None, [], ())}
        flags = {**flags, **found.flags, **given}
        for item in found.carried:
            _echo_err(f"from {source}: {item}")
        for item in found.dropped:
            _echo_err(f"from {source}, not carried over: {item}")
    request = service.InstallRequest(
        name=name,
        flags=flags,
        env=env,
        file_data=file_data,
        file_source=str(config) if config else "config file",
        socket_activation=socket_activation,
        kubeconfig=kubeconfig,
    )
    plan = service.plan_install(request, find_installation)
    if plan.kubeconfig_note:
        _echo_err(plan.kubeconfig_note)
    if dry_run:
        for unit_file in service.foreign_units(plan):
            _echo_err(
                f"would stop {unit_file.name} (not written by pyforward) and keep it as "
                f"{service.BACKUP_DIR / unit_file.name} for uninstall to restore"
            )
        config = service.foreign_config(plan.name)
        if config is not None:
            _echo_err(
                f"would keep {config} (not written by pyforward install) as "
                f"{service.BACKUP_DIR / config.name} for uninstall to restore"
            )
        typer.echo(service.render_plan(plan), nl=False)
        return
    service.install(plan, typer.echo)


def status(
    name: NameOpt = "pyforward",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the service: unit state, listeners, targets, a connection end to end.

    Exit status 0: all is well; 1: forwarding works, with warnings; 2: forwarding is down.
    """
    report = service_status.status(name)
    typer.echo(report.to_json() if as_json else report.to_text())
    sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def uninstall(name: NameOpt = "pyforward") -> None:
    """Stop, disable and remove the service, its config, and restore a replaced unit."""
    service.uninstall(name, typer.echo)


def register_service_commands(app: typer.Typer) -> None:
    """Add install, status and uninstall to the CLI."""
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        install
    )
    app.command()(status)
    app.command()(uninstall)
