"""The systemd commands, `install`, `status` and `uninstall`: parse, then call pyforward.systemd.

Registered on every start of the CLI, so this module imports only what their options need:
each command imports pyforward.systemd when it runs (`run` loads none of it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pyforward.cli.help import TakesRunOptions
from pyforward.cli.options import run_flags
from pyforward.config.load import load_layers
from pyforward.errors import ConfigError

if TYPE_CHECKING:
    from pyforward.systemd.install import InstallPaths
    from pyforward.systemd.installation import Installation

NAME_DEFAULT = "pyforward"


def check_name(name: str) -> str:
    """--name checked as systemd.units checks a unit name (imported once a command runs)."""
    from pyforward.systemd.units import check_name as check  # noqa: PLC0415 (loaded on use)

    return check(name)


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


def install_paths(ctx: typer.Context) -> InstallPaths:
    """Where install writes: the system's directories, unless the caller of the CLI gave
    others as the context object (`main(argv, paths=...)`)."""
    from pyforward.systemd.install import SYSTEM, InstallPaths  # noqa: PLC0415 (loaded on use)

    return ctx.obj if isinstance(ctx.obj, InstallPaths) else SYSTEM


def find_installation() -> Installation:
    """This installation, checked for what the hardened service can reach."""
    from pyforward.systemd import installation  # noqa: PLC0415 (loaded on use)

    return installation.this_installation()


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def install(
    ctx: typer.Context,
    name: NameOpt = "pyforward",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Make every check, print the files it would write, change nothing; "
            "exit 1 (after the files) when install would refuse.",
        ),
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

    Takes the options of `pyforward run` (listed below) and writes them to
    /etc/pyforward/NAME.toml. A unit of the same name not written by pyforward (such as
    k3s-ingress-forward's socat) is stopped and kept; `pyforward uninstall` restores it.
    Given no route, install takes the routes from that socat unit's ExecStart=.
    """
    from pyforward.systemd import install as service  # noqa: PLC0415 (loaded on use)

    flags, config = run_flags(ctx, "pyforward install")
    env = dict(os.environ)
    if not dry_run:
        service.require_systemd("install")
    paths = install_paths(ctx)
    layers = load_layers(flags, config, env)
    found, source = None, ""
    if from_unit is not None:
        found, source = service.carry_over_unit(Path(from_unit)), from_unit
    elif not service.routes_given(flags, env, layers.file_data):
        # Replacing a socat unit: its ExecStart= says where to listen and forward.
        found, source = service.carry_over_replaced_unit(name, paths), f"{name}.service"
        unit_file = service.unit_path(f"{name}.service", paths)
        if found is None and name != NAME_DEFAULT and not unit_file.exists():
            raise ConfigError(
                f"no route given, and there is no unit {unit_file} to take routes from; "
                "give --listen and --target, --route, --config FILE, or --from-unit FILE"
            )
    if found is not None:
        given = {k: v for k, v in flags.items() if v not in (None, [], ())}
        layers = replace(layers, flags={**flags, **found.flags, **given})
        for item in found.carried:
            _echo_err(f"from {source}: {item}")
        for item in found.dropped:
            _echo_err(f"from {source}, not carried over: {item}")
    request = service.InstallRequest(
        name=name,
        layers=layers,
        socket_activation=socket_activation,
        kubeconfig=kubeconfig,
        paths=paths,
    )
    plan = service.plan_install(request, find_installation)
    if plan.kubeconfig_note:
        _echo_err(plan.kubeconfig_note)
    for warning in plan.warnings:
        _echo_err(f"warning: {warning}")
    if dry_run:
        for unit_file in service.foreign_units(plan):
            _echo_err(
                f"would stop {unit_file.name} (not written by pyforward) and keep it as "
                f"{paths.backup_dir / unit_file.name} for uninstall to restore"
            )
        config = service.foreign_config(plan.name, paths)
        if config is not None:
            _echo_err(
                f"would keep {config} (not written by pyforward install) as "
                f"{paths.backup_dir / config.name} for uninstall to restore"
            )
        typer.echo(service.render_plan(plan), nl=False)
        sys.stdout.flush()
        refusals = service.refusals(plan)
        for refusal in refusals:
            _echo_err(f"pyforward: error: install (without --dry-run) would refuse: {refusal}")
        if refusals:
            # The code install itself would exit with: a valid configuration that cannot be
            # put into effect here. Bad input stays exit 2, with nothing printed.
            raise typer.Exit(1)
        return
    service.install(plan, typer.echo)


def status(
    ctx: typer.Context,
    name: NameOpt = "pyforward",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Ask the pyforward serving metrics at HOST:PORT (any `run --metrics`, "
            "in the foreground too) instead of the service."
        ),
    ] = None,
) -> None:
    """Check the service: unit state, listeners, targets, a connection end to end.

    Exit status 0: all is well; 1: forwarding works, with warnings; 2: forwarding is down.
    """
    if metrics is not None:
        from pyforward.config.addresses import parse_listen  # noqa: PLC0415
        from pyforward.obs.live_status import live_status  # noqa: PLC0415 (prometheus_client)

        try:
            address = parse_listen(metrics)
        except ConfigError as exc:
            typer.echo(f"pyforward: error: --metrics: {exc}", err=True)
            raise typer.Exit(2) from None
        report = live_status(address)
    else:
        from pyforward.systemd import status as service_status  # noqa: PLC0415 (loaded on use)

        report = service_status.status(name, install_paths(ctx))
    typer.echo(report.to_json() if as_json else report.to_text())
    sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def uninstall(ctx: typer.Context, name: NameOpt = "pyforward") -> None:
    """Stop, disable and remove the service, its config, and restore a replaced unit."""
    from pyforward.systemd import install as service  # noqa: PLC0415 (loaded on use)

    service.uninstall(name, typer.echo, install_paths(ctx))


def register_service_commands(app: typer.Typer) -> None:
    """Add install, status and uninstall to the CLI."""
    app.command(
        cls=TakesRunOptions,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(install)
    app.command()(status)
    app.command()(uninstall)
