"""The command line: parse, build settings, call the library. Nothing else lives here.

Every start of the CLI imports this module, to parse; a command imports what it calls when it
runs (the `# noqa: PLC0415` imports), so `run` loads the engine and no more: none of the
systemd install code, the socat parser, check, the UDP relay or the workers unless it uses
them (tests/test_startup_imports.py).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# typer (pinned below 0.28) vendors click; these two need their own wording here.
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption

from pyforward import __version__
from pyforward.cli.help import TakesRunOptions, environment_epilog
from pyforward.cli.options import flag_keys, flags_of, run_flags, with_options
from pyforward.cli.service import NameOpt, install_paths, register_service_commands
from pyforward.config.load import config_from, load_settings
from pyforward.config.model import Settings
from pyforward.config.settings import build_settings
from pyforward.errors import ConfigError, PyforwardError
from pyforward.obs.logfmt import logfmt
from pyforward.obs.logsetup import priority_prefix, setup_logging, writes_to_journal

if TYPE_CHECKING:
    from pyforward.engine.server import Forwarder
    from pyforward.engine.targets import TargetSource
    from pyforward.systemd.install import InstallPaths

app = typer.Typer(
    name="pyforward",
    help="Forward TCP ports to a target, zero-copy on Linux.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pyforward {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """pyforward: a TCP forwarder for exposing a Kubernetes ingress on a host's ports."""


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")]
DISCOVER_KEYS = ("kubeconfig", "service", "service_port", "preset", "node_ip")


def _load(flags: dict[str, Any], config: Path | None) -> Settings:
    """The settings of these flags, the process environment and the config file, now."""
    return load_settings(flags, config, dict(os.environ))


@app.command(epilog=environment_epilog())
@with_options(flag_keys(), after="route")
def run(config: ConfigOpt = None, **options: Any) -> None:
    """Listen and forward every connection to its target."""
    import asyncio  # noqa: PLC0415 (the engine's imports: only the commands that serve)

    from pyforward.engine.loops import loop_factory  # noqa: PLC0415
    from pyforward.engine.runtime import serve  # noqa: PLC0415

    flags = flags_of(options)
    settings = _load(flags, config)
    setup_logging(settings.log_level)
    factory, loop_name = loop_factory(settings.loop)
    targets: TargetSource | None = None
    if settings.discovery is not None:
        # Imported here: static forwarding never loads discovery or kubernetes.
        from pyforward.discovery.clusters import discovery_source  # noqa: PLC0415

        targets = discovery_source(settings)  # one Discovery per cluster the routes follow
    # SIGHUP re-reads the same flags, environment and config file (under discovery too:
    # discovered routes keep their targets, see Discovery.fill).
    reload = functools.partial(_load, flags, config)
    count = 1 if settings.workers == 1 else _worker_count(settings)
    with asyncio.Runner(loop_factory=factory) as runner:
        if count > 1:
            # Imported here: one process loads nothing of the workers.
            from pyforward.workers.supervisor import supervise  # noqa: PLC0415

            # The main process of `count` workers: pyforward/workers/supervisor.py.
            runner.run(supervise(settings, count, targets=targets, reload_settings=reload))
            return
        # Signals, reload, systemd's notifications, socket activation: engine/runtime.py.
        runner.run(serve(settings, targets=targets, reload_settings=reload, loop_name=loop_name))


def _worker_count(settings: Settings) -> int:
    """`workers` other than the default 1 resolved (`auto`: one per usable CPU)."""
    from pyforward.workers.plan import worker_count  # noqa: PLC0415 (one process: not loaded)

    return worker_count(settings)


@app.command()
@with_options(DISCOVER_KEYS)
def discover(
    listen: Annotated[
        list[str] | None,
        typer.Option(
            "--listen", "-l", help="Host port to check for conflicts [the preset's, 443]."
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    **options: Any,
) -> None:
    """Show what the cluster says the forwarder should forward to, and why."""
    import json  # noqa: PLC0415 (--json only)

    from pyforward.discovery import report  # noqa: PLC0415  (loads kubernetes)

    flags = {"discover": True, **flags_of({**options, "listen": listen})}
    try:
        settings = _load(flags, config)
        # Each cluster the routes follow (their kubeconfig, node_ip) is asked on its own.
        found = report.inspect_clusters(settings)
    except PyforwardError as exc:
        if not as_json:
            raise
        # Scripts read stdout: the failure is JSON there too, and the exit status says it.
        typer.echo(json.dumps({"error": str(exc), "kind": type(exc).__name__}, indent=2))
        raise typer.Exit(exc.exit_code) from None
    typer.echo(report.clusters_json(found) if as_json else report.clusters_text(found))
    error = next((each.error for each in found if each.error is not None), None)
    if error is not None:
        if as_json:
            raise typer.Exit(error.exit_code)
        raise error


@app.command(
    cls=TakesRunOptions,
    epilog=environment_epilog(),
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def check(ctx: typer.Context) -> None:
    """Check a configuration as run would, then try what it names: is each listen address
    free (or held by this configuration's forwarder), does each target resolve and accept
    a connection, does the Kubernetes API answer. One line per finding.

    Takes --config FILE or the options of run. Exit status 0: all is well; 1: warnings
    (run would start, but something does not answer); 2: errors (run would refuse).
    """
    from pyforward.cli import check as checking  # noqa: PLC0415 (loaded on use)

    args = list(ctx.args)
    try:
        flags, config = run_flags(ctx, "pyforward check")
    except ConfigError as exc:
        findings = [checking.Finding(checking.Level.ERROR, "config", str(exc))]
    else:
        env = dict(os.environ)
        path, _ = config_from(config, env)
        invocation = checking.Invocation(config=path, run_args=tuple(args))
        findings = checking.check(functools.partial(_load, flags, config), invocation)
    for finding in findings:
        typer.echo(finding.line())
    typer.echo(checking.summary(findings))
    raise typer.Exit(checking.exit_code(findings))


SOCAT_HELP = """\
Usage: pyforward-socat [OPTIONS] LISTEN-ADDRESS[,OPTIONS] TARGET-ADDRESS[,OPTIONS]
       (the same as: pyforward socat ...)

Runs pyforward from a socat command line, so a socat unit switches by its binary alone.
  options:  -d (repeatable; -dddd logs at debug)  -T SECONDS (idle timeout)
            -t SECONDS, -b SIZE (accepted; pyforward half-closes without delay and
            sizes its own buffers)  -ls
  listen:   TCP-LISTEN:PORT, TCP4-LISTEN, TCP6-LISTEN (TCP-L, ...) with fork, reuseaddr,
            bind=ADDRESS, backlog=N, max-children=N, keepalive, nodelay, range=NETWORK,
            su=USER, ipv6-v6only (TCP6)
            UNIX-LISTEN:PATH, ABSTRACT-LISTEN:NAME with fork, mode=, user=, group=,
            backlog=N, max-children=N, unlink-early, unlink-close, su=USER
  target:   TCP:HOST:PORT, TCP4, TCP6 (TCP-CONNECT, ...) with connect-timeout=SECONDS,
            keepalive, nodelay; UNIX-CONNECT:PATH (UNIX-CLIENT, UNIX, ABSTRACT-CONNECT)
            (forever, retry=, interval=, sourceport= are read and reported)
  UDP:      UDP-LISTEN, UDP4-LISTEN, UDP6-LISTEN, UDP-RECVFROM (and 4, 6) with fork,
            reuseaddr, bind=ADDRESS, to UDP, UDP4, UDP6; -T is a flow's idle timeout
Without fork, one connection is served (UDP: one peer), then pyforward exits, as socat does.
Anything else is refused with the reason."""


@app.command(
    context_settings={
        # socat's words (-d -d, -T 30, TCP-LISTEN:...) pass through untouched.
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
        "help_option_names": [],
    },
)
def socat(
    args: Annotated[list[str] | None, typer.Argument(help="socat's arguments.")] = None,
) -> None:
    """Run from a socat command line: TCP-LISTEN:PORT,fork TCP:HOST:PORT (see -h)."""
    words = args or []
    if words[:1] in (["-h"], ["-?"], ["--help"]):
        typer.echo(SOCAT_HELP)
        return
    if words[:1] == ["-V"]:
        typer.echo(f"pyforward {__version__} (socat command line)")
        return
    import asyncio  # noqa: PLC0415 (the socat parser and the engine: loaded on use)

    from pyforward.engine.loops import loop_factory  # noqa: PLC0415
    from pyforward.engine.runtime import serve  # noqa: PLC0415
    from pyforward.socat.args import parse_socat_args  # noqa: PLC0415
    from pyforward.socat.translate import summarize, to_flags  # noqa: PLC0415

    command = parse_socat_args(words)
    settings = build_settings(to_flags(command), dict(os.environ))
    setup_logging(settings.log_level)
    for item in summarize(command).dropped:
        logging.getLogger("pyforward").info(logfmt({"event": "socat-ignored", "what": item}))
    factory, loop_name = loop_factory(settings.loop)
    # SIGHUP reads the same command line and the environment again.
    flags = to_flags(command)

    def reload() -> Settings:
        return build_settings(flags, dict(os.environ))

    with asyncio.Runner(loop_factory=factory) as runner:
        # The same runtime as `run`: signals, reload, systemd's notifications.
        runner.run(
            serve(
                settings,
                reload_settings=reload,
                loop_name=loop_name,
                max_accepts=command.max_accepts,
                on_ready=_become(command.listen.su),
            )
        )


def _become(user: str | None) -> Callable[[Forwarder], None] | None:
    """socat's su=: once the listeners are bound, before the first accept."""
    if user is None:
        return None
    from pyforward.engine.privileges import become  # noqa: PLC0415 (su= only)

    return lambda _forwarder: become(user)


register_service_commands(app)  # install, status, uninstall


@app.command()
def top(
    ctx: typer.Context,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="The HOST:PORT a pyforward serves metrics on [PYFORWARD_METRICS, else "
            "`metrics` of --config, else of the installed service's config]."
        ),
    ] = None,
    config: ConfigOpt = None,
    name: NameOpt = "pyforward",
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[
        bool,
        typer.Option("--once", help="Print one view (rates over one interval) and exit."),
    ] = False,
) -> None:
    """A live view of a running pyforward: each route's open connections, connections and
    bytes per second each way, targets up or down. q or Ctrl-C quits."""
    from pyforward.cli.top import metrics_address, run_top  # noqa: PLC0415 (rich)

    address = metrics_address(metrics, config, dict(os.environ), name, install_paths(ctx))
    run_top(address, interval, 1 if once else None)


def main(argv: list[str] | None = None, *, paths: InstallPaths | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code. `paths`:
    where install, status and uninstall find their files (the system's by default)."""
    try:
        code = app(args=argv, prog_name="pyforward", standalone_mode=False, obj=paths)
    except NoArgsIsHelpError as exc:  # `pyforward` alone: the usual help, as --help prints it
        typer.echo(exc.format_message())
        sys.exit(2)
    except NoSuchOption as exc:
        _fail(exc.message + _suggestion(exc.option_name, exc.possibilities or ()), 2)
    except typer.TyperException as exc:  # usage errors: unknown flag, bad value, ...
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except PyforwardError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def socat_main() -> None:
    """Entry point of `pyforward-socat`."""
    main(["socat", *sys.argv[1:]])


def _suggestion(name: str, known: Sequence[str]) -> str:
    import difflib  # noqa: PLC0415 (a mistyped flag only)

    # click suggests anything 60% alike (--foo: --loop); only a near miss helps.
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _fail(message: str, code: int) -> None:
    first = " ".join(message.split())
    # On the journal at error priority, so `journalctl -p err` shows why a start failed.
    prefix = priority_prefix(logging.ERROR, writes_to_journal(sys.stderr, os.environ))
    print(f"{prefix}pyforward: error: {first}", file=sys.stderr)
    sys.exit(code)
