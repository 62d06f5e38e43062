"""`pyforward top`: a live view of a running forwarder, from its metrics endpoint.

Scrapes /metrics once per interval (what `status --metrics` reads), and redraws the view of
`obs/top_view.py` from the last two scrapes. Imported only by the `top` command: rich and
prometheus_client stay off `run`'s path.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live

from pyforward.config.addresses import Address, parse_listen
from pyforward.config.load import config_from, read_config_file
from pyforward.config.schema import OPTIONS, env_name
from pyforward.errors import ConfigError
from pyforward.obs.live import LiveState, ScrapeError, read_live
from pyforward.obs.top_view import Frame, render
from pyforward.systemd.install import InstallPaths, config_path

QUIT_KEYS = ("q", "Q")


def metrics_address(
    flag: str | None,
    config: Path | None,
    env: Mapping[str, str],
    name: str,
    paths: InstallPaths,
) -> Address:
    """Where to scrape: `--metrics`, else `PYFORWARD_METRICS`, else the `metrics` key of the
    config file (`--config` or `PYFORWARD_CONFIG`), else that of the installed service NAME.
    A bad value is one ConfigError naming where it came from."""
    variable = env_name("metrics")
    candidates: list[tuple[object, str]] = [(flag, "--metrics"), (env.get(variable), variable)]
    path, where = config_from(config, env)
    if path is not None:
        candidates.append((read_config_file(path, where).get("metrics"), f"{path}: metrics"))
    else:
        installed = config_path(name, paths)
        if installed.is_file():
            data = read_config_file(installed, "the service's config")
            candidates.append((data.get("metrics"), f"{installed}: metrics"))
    for value, source in candidates:
        if value in (None, ""):
            continue
        try:
            # The key's own check, as `run` makes it: a host is required.
            return parse_listen(OPTIONS["metrics"].convert(value))
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    raise ConfigError(
        "no metrics address: give --metrics HOST:PORT (the forwarder's own `--metrics`), "
        f"or set {variable}, or `metrics` in the config file"
    )


def first_scrape(address: Address) -> LiveState:
    """The first scrape; nothing answering is the command's one-line error."""
    try:
        return read_live(address)
    except ScrapeError as exc:
        raise ScrapeError(
            f"--metrics {address}: no pyforward answers there ({exc}); "
            f"is one running with --metrics {address}?"
        ) from None


def watch(
    address: Address,
    interval: float,
    iterations: int | None,
    console: Console,
    keys: TextIO | None,
) -> None:
    """Redraw every `interval` seconds until `iterations` frames were drawn (None: until q,
    Ctrl-C, or end of input on `keys`). While the forwarder does not answer, the last good
    figures stay on screen with the reason, and the scrapes go on."""
    current = first_scrape(address)
    taken = time.monotonic()
    drawn = 0
    interactive = keys is not None
    frame = Frame(str(address), current, now=time.time(), interactive=interactive)
    # Not on a terminal (a pipe, a script's capture), frames are printed one after another.
    live = Live(render(frame), console=console, auto_refresh=False, transient=False)
    due = taken + interval
    with live if console.is_terminal else contextlib.nullcontext():
        while iterations is None or drawn < iterations:
            if _wait_for_quit(keys, due):
                return
            # The next one an interval on, answer or not (never at once after a failure).
            due = max(due + interval, time.monotonic())
            try:
                latest = read_live(address)
            except ScrapeError as exc:
                frame = Frame(
                    str(address),
                    current,
                    now=time.time(),
                    problem=str(exc),
                    interactive=interactive,
                )
            else:
                now = time.monotonic()
                frame = Frame(
                    str(address), latest, current, now - taken, time.time(), None, interactive
                )
                current, taken = latest, now
            drawn += 1
            if console.is_terminal:
                live.update(render(frame), refresh=True)
            else:
                console.print(render(frame))


def _wait_for_quit(keys: TextIO | None, deadline: float) -> bool:
    """Wait until `deadline` (monotonic); True if q was pressed, or `keys` ended, first."""
    while (remaining := deadline - time.monotonic()) > 0:
        if keys is None:
            time.sleep(remaining)
            return False
        readable, _, _ = select.select([keys], [], [], remaining)
        if readable:
            typed = os.read(keys.fileno(), 64).decode(errors="replace")
            if not typed or any(key in typed for key in QUIT_KEYS):
                return True
    return False


@contextlib.contextmanager
def single_keys(stream: TextIO) -> Iterator[TextIO | None]:
    """`stream`, with keys delivered as they are typed (no Enter needed) while the block
    runs, when it is a terminal; None otherwise (nothing to read quit keys from)."""
    if not stream.isatty():
        yield None
        return
    saved = termios.tcgetattr(stream.fileno())
    try:
        tty.setcbreak(stream.fileno())
        yield stream
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)


def run_top(address: Address, interval: float, iterations: int | None) -> None:
    """`pyforward top`: on the terminal of stdin and stdout, until q or Ctrl-C."""
    console = Console(highlight=False)
    with single_keys(sys.stdin) as keys, contextlib.suppress(KeyboardInterrupt):
        watch(address, interval, iterations, console, keys)
