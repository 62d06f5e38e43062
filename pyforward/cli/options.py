"""The options of `run`, made from the settings schema, and the commands that take them.

Every flag of a setting comes from its `Option` in `pyforward.config.settings`: its name,
short form, help and the type the CLI parses it into. A command takes them by
`with_options`, and gets them as keyword arguments named by their keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import pyforward.discovery.options  # noqa: F401  (registers the discovery keys in the schema)
from pyforward.config.schema import OPTIONS
from pyforward.errors import ConfigError

Command = TypeVar("Command", bound=Callable[..., Any])


def flag_keys() -> list[str]:
    """The settings given as flags, in the order `run --help` lists them."""
    return [key for key, option in OPTIONS.items() if option.flag is not None]


def option_parameter(key: str) -> inspect.Parameter:
    """The typer parameter of a setting's flag: None when not given."""
    flag = OPTIONS[key].flag
    if flag is None:
        raise ValueError(f"{key} is not given as a flag")
    info = typer.Option(*flag.decls(key), help=flag.help)
    return inspect.Parameter(
        key,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[flag.kind | None, info],
    )


def with_options(keys: Iterable[str], *, after: str | None = None) -> Callable[[Command], Command]:
    """Give a command the flags of `keys`, after its own parameters (or, with `after`,
    its own parameters after that flag). It takes them as `**options`."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [
            param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for param in signature.parameters.values()
            if param.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        generated = [option_parameter(key) for key in keys]
        names = [param.name for param in generated]
        at = names.index(after) + 1 if after is not None else len(generated)
        params = [*generated[:at], *own, *generated[at:]]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return decorate


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


def flags_of(options: dict[str, Any]) -> dict[str, Any]:
    """The settings' flags a command was given, as `build_settings` takes them."""
    flags = {key: options[key] for key in flag_keys() if key in options}
    if "listen" in flags:
        flags["listen"] = one_listen(flags["listen"])
    return flags


def run_flags(ctx: typer.Context, prog: str) -> tuple[dict[str, Any], Path | None]:
    """Parse the arguments a command passes on with `run`'s own options."""
    group = ctx.parent.command if ctx.parent is not None else None
    run_command = getattr(group, "commands", {}).get("run")
    if run_command is None:
        raise RuntimeError("the run command is missing")
    parsed = run_command.make_context(prog, list(ctx.args), parent=ctx.parent)
    flags = dict(parsed.params)
    config = flags.pop("config", None)
    return flags_of(flags), config
