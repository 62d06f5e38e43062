"""Help text shared by the commands that take `run`'s options (install, check)."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

from pyforward.config.schema import OPTIONS, env_name


def environment_epilog() -> str:
    """The variables `run` reads, one per option, from the schema itself."""
    names = ", ".join(env_name(key) for key in OPTIONS)
    return (
        "Environment: every option has a variable, PYFORWARD_ and the option's name in "
        "capitals with _ for -; a flag wins over its variable, a variable over the config "
        f"file: {env_name('config')}, {names}. Unknown PYFORWARD_ variables are ignored."
    )


class TakesRunOptions(TyperCommand):
    """A command that passes `run`'s options on: its help lists them too."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        group = ctx.parent.command if ctx.parent is not None else None
        run = getattr(group, "commands", {}).get("run")
        if run is None:
            return
        own = {name for param in self.get_params(ctx) for name in param.opts}
        records = [
            record
            for param in run.get_params(ctx)
            if not set(param.opts) & own and (record := param.get_help_record(ctx)) is not None
        ]
        with formatter.section("Options of run (see pyforward run --help)"):
            formatter.write_dl(records)
