"""The command line: parse, build settings, call the library. Nothing else lives here."""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

# typer (pinned below 0.28) vendors click; these two need their own wording here.
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption

from pyforward import __version__
from pyforward.cli import check as checking
from pyforward.cli.help import TakesRunOptions, environment_epilog
from pyforward.cli.service import register_service_commands
from pyforward.config.settings import (
    LogLevel,
    LoopName,
    RelayMode,
    Settings,
    build_settings,
    env_name,
    parse_config_text,
)
from pyforward.discovery.options import PresetName
from pyforward.engine.loops import loop_factory
from pyforward.engine.runtime import serve
from pyforward.engine.targets import TargetSource
from pyforward.errors import ConfigError, PyforwardError
from pyforward.obs.closelog import LogConnections
from pyforward.obs.logfmt import logfmt
from pyforward.socat.args import parse_socat_args, summarize, to_flags

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


def read_config_file(path: Path | str, where: str = "--config") -> dict[str, Any]:
    """Read and parse a config file, turning I/O errors into one clear line that names
    where the path came from (`--config` or `PYFORWARD_CONFIG`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: {path} is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{where}: config file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: config file {path} is not UTF-8 text") from None
    return parse_config_text(text, str(path))


def config_from(config: Path | None, env: dict[str, str]) -> tuple[Path | None, str]:
    """The config file to read (`--config`, else `PYFORWARD_CONFIG`) and where it was named."""
    if config is not None:
        return config, "--config"
    if env.get(env_name("config")):
        return Path(env[env_name("config")]), env_name("config")
    return None, ""


def load_config(config: Path | None, env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The config file's data (None without one) and its name for messages."""
    path, where = config_from(config, env)
    if path is None:
        return None, "config file"
    return read_config_file(path, where), str(path)


def load_settings(flags: dict[str, Any], config: Path | None) -> Settings:
    """Flags, then PYFORWARD_* variables, then the config file, then defaults."""
    env = dict(os.environ)
    file_data, file_source = load_config(config, env)
    return build_settings(flags, env, file_data, file_source)


def one_listen(values: list[str] | None) -> str | None:
    """`--listen` names one route's listen address; several routes are `--route` each."""
    if not values:
        return None
    if len(values) > 1:
        given = " ".join(f"--listen {value}" for value in values)
        raise ConfigError(
            f"--listen given {len(values)} times ({given}); it names one route's address: "
            "for several ports give --route LISTEN=TARGET once per port"
        )
    return values[0]


def setup_logging(level: LogLevel) -> None:
    # Under systemd, journald stamps every line already.
    fmt = "%(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("pyforward")
    root.handlers[:] = [handler]
    root.setLevel(level.value.upper())
    root.propagate = False


ListenOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--listen",
        "-l",
        help="[HOST:]PORT to listen on (bare PORT: every interface); once (several: --route).",
    ),
]
TargetOpt = Annotated[
    list[str] | None,
    typer.Option("--target", "-t", help="HOST:PORT to forward to; repeat for failover."),
]
RouteOpt = Annotated[
    list[str] | None,
    typer.Option("--route", "-r", help="[HOST:]PORT=HOST:PORT[,HOST:PORT]; repeatable."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")]

# Kubernetes discovery options, shared by `run` and `discover`.
DiscoverOpt = Annotated[
    bool | None, typer.Option("--discover", help="Find the target from the cluster and follow it.")
]
KubeconfigOpt = Annotated[
    str | None,
    typer.Option(help="Kubeconfig file [$KUBECONFIG, ~/.kube/config, k3s's, in-cluster]."),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(help="NAMESPACE/NAME of the gateway Service [istio-system/istio-ingressgateway]."),
]
ServicePortOpt = Annotated[
    str | None, typer.Option(help="The Service's port, by name or number [https].")
]
PresetOpt = Annotated[
    PresetName | None,
    typer.Option(help="istio (443->https, 80->http2) or traefik (443->websecure, 80->web)."),
]
NodeIpOpt = Annotated[
    str | None, typer.Option(help="Forward to this node address instead of the Ready nodes.")
]
StateDirOpt = Annotated[
    str | None,
    typer.Option(help="Where the last target is kept [$STATE_DIRECTORY or /var/lib/pyforward]."),
]
DiscoverTimeoutOpt = Annotated[
    float | None,
    typer.Option(help="At start, seconds to wait for the API when nothing is saved [60]."),
]


@app.command(epilog=environment_epilog())
def run(
    listen: ListenOpt = None,
    target: TargetOpt = None,
    route: RouteOpt = None,
    config: ConfigOpt = None,
    relay: Annotated[
        RelayMode | None,
        typer.Option(help="Relay path: auto (splice where it works), splice, copy."),
    ] = None,
    loop: Annotated[
        LoopName | None, typer.Option(help="Event loop: auto, uvloop, asyncio.")
    ] = None,
    connect_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for the target to accept [10].")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Close after this many idle seconds; 0 = never [0].")
    ] = None,
    keepalive: Annotated[
        bool | None, typer.Option("--keepalive/--no-keepalive", help="TCP keepalive on both legs.")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="Connection cap; at the cap, stop accepting [0 = none].")
    ] = None,
    backlog: Annotated[
        int | None, typer.Option(help="Listen backlog [the system maximum].")
    ] = None,
    shutdown_timeout: Annotated[
        float | None, typer.Option(help="Seconds connections get to finish on SIGTERM [20].")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(help="Only clients in this network (CIDR) may connect; repeatable."),
    ] = None,
    deny: Annotated[
        list[str] | None,
        typer.Option(help="Clients in this network (CIDR) are refused; repeatable."),
    ] = None,
    max_connections_per_source: Annotated[
        int | None, typer.Option(help="Connections one client address may hold [0 = no cap].")
    ] = None,
    first_byte_timeout: Annotated[
        float | None,
        typer.Option(help="Close a client that sends nothing for this long; 0 = never [0]."),
    ] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help="debug, info, warning, error.")] = None,
    quiet: Annotated[
        bool | None, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = None,
    log_connections: Annotated[
        LogConnections | None,
        typer.Option(
            help="Close lines for all connections, for errors only (not eof), or none; "
            "the rest are counted in an event=closed-summary line every 10 s [all]."
        ),
    ] = None,
    discover: DiscoverOpt = None,
    kubeconfig: KubeconfigOpt = None,
    service: ServiceOpt = None,
    service_port: ServicePortOpt = None,
    preset: PresetOpt = None,
    node_ip: NodeIpOpt = None,
    state_dir: StateDirOpt = None,
    discover_timeout: DiscoverTimeoutOpt = None,
    metrics: Annotated[
        str | None, typer.Option(help="Serve Prometheus metrics on HOST:PORT at /metrics [off].")
    ] = None,
) -> None:
    """Listen and forward every connection to its target."""
    flags = {
        "listen": one_listen(listen),
        "target": target,
        "route": route,
        "relay": relay,
        "loop": loop,
        "connect_timeout": connect_timeout,
        "idle_timeout": idle_timeout,
        "keepalive": keepalive,
        "max_connections": max_connections,
        "backlog": backlog,
        "shutdown_timeout": shutdown_timeout,
        "allow": allow,
        "deny": deny,
        "max_connections_per_source": max_connections_per_source,
        "first_byte_timeout": first_byte_timeout,
        "log_level": log_level,
        "quiet": quiet,
        "log_connections": log_connections,
        "discover": discover,
        "kubeconfig": kubeconfig,
        "service": service,
        "service_port": service_port,
        "preset": preset,
        "node_ip": node_ip,
        "state_dir": state_dir,
        "discover_timeout": discover_timeout,
        "metrics": metrics,
    }
    settings = load_settings(flags, config)
    setup_logging(settings.log_level)
    factory, loop_name = loop_factory(settings.loop)
    targets: TargetSource | None = None
    if settings.discovery is not None:
        # Imported here: static forwarding never loads discovery or kubernetes.
        from pyforward.discovery.runtime import Discovery  # noqa: PLC0415

        targets = Discovery(settings)
    # SIGHUP re-reads the same flags, environment and config file (under discovery too:
    # discovered routes keep their targets, see Discovery.fill).
    reload = functools.partial(load_settings, flags, config)
    with asyncio.Runner(loop_factory=factory) as runner:
        # Signals, reload, systemd's notifications, socket activation: engine/runtime.py.
        runner.run(serve(settings, targets=targets, reload_settings=reload, loop_name=loop_name))


@app.command()
def discover(
    kubeconfig: KubeconfigOpt = None,
    service: ServiceOpt = None,
    service_port: ServicePortOpt = None,
    preset: PresetOpt = None,
    node_ip: NodeIpOpt = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(
            "--listen", "-l", help="Host port to check for conflicts [the preset's, 443]."
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show what the cluster says the forwarder should forward to, and why."""
    from pyforward.discovery import report  # noqa: PLC0415  (loads kubernetes)

    flags = {
        "discover": True,
        "kubeconfig": kubeconfig,
        "service": service,
        "service_port": service_port,
        "preset": preset,
        "node_ip": node_ip,
        "listen": one_listen(listen),
    }
    try:
        settings = load_settings(flags, config)
        found = report.inspect(settings)
    except PyforwardError as exc:
        if not as_json:
            raise
        # Scripts read stdout: the failure is JSON there too, and the exit status says it.
        typer.echo(json.dumps({"error": str(exc), "kind": type(exc).__name__}, indent=2))
        raise typer.Exit(exc.exit_code) from None
    typer.echo(report.as_json(found) if as_json else report.as_text(found))
    if found.error is not None:
        if as_json:
            raise typer.Exit(found.error.exit_code)
        raise found.error


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
    args = list(ctx.args)
    try:
        flags, config = run_flags(ctx, "pyforward check")
    except ConfigError as exc:
        findings = [checking.Finding(checking.Level.ERROR, "config", str(exc))]
    else:
        env = dict(os.environ)
        path, _ = config_from(config, env)
        invocation = checking.Invocation(config=path, run_args=tuple(args))
        findings = checking.check(functools.partial(load_settings, flags, config), invocation)
    for finding in findings:
        typer.echo(finding.line())
    typer.echo(checking.summary(findings))
    raise typer.Exit(checking.exit_code(findings))


def run_flags(ctx: typer.Context, prog: str) -> tuple[dict[str, Any], Path | None]:
    """Parse the arguments a command passes on with `run`'s own options."""
    group = ctx.parent.command if ctx.parent is not None else None
    run_command = getattr(group, "commands", {}).get("run")
    if run_command is None:
        raise RuntimeError("the run command is missing")
    parsed = run_command.make_context(prog, list(ctx.args), parent=ctx.parent)
    flags = dict(parsed.params)
    config = flags.pop("config", None)
    flags["listen"] = one_listen(flags.get("listen"))
    return flags, config


SOCAT_HELP = """\
Usage: pyforward-socat [OPTIONS] TCP-LISTEN:PORT[,OPTIONS] TCP:HOST:PORT[,OPTIONS]
       (the same as: pyforward socat ...)

Runs pyforward from a socat command line, so a socat unit switches by its binary alone.
  options:  -d (repeatable; -dddd logs at debug)  -T SECONDS (idle timeout)
            -t SECONDS, -b SIZE (accepted; pyforward half-closes without delay and
            sizes its own buffers)  -ls
  listen:   TCP-LISTEN, TCP4-LISTEN, TCP6-LISTEN (TCP-L, ...) with fork, reuseaddr,
            bind=ADDRESS, backlog=N, max-children=N, keepalive, nodelay
  target:   TCP, TCP4, TCP6 (TCP-CONNECT, ...) with connect-timeout=SECONDS,
            keepalive, nodelay
Without fork, one connection is served, then pyforward exits, as socat does.
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
            )
        )


register_service_commands(app)  # install, status, uninstall


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code."""
    try:
        code = app(args=argv, prog_name="pyforward", standalone_mode=False)
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
    # click suggests anything 60% alike (--foo: --loop); only a near miss helps.
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _fail(message: str, code: int) -> None:
    first = " ".join(message.split())
    print(f"pyforward: error: {first}", file=sys.stderr)
    sys.exit(code)
