"""`python -m tests.soak [--quick]`: run the soak and fault suite, print its table.

Exits 0 when every scenario met its criteria, 1 when one did not, 2 on bad arguments.
As root (with util-linux's `unshare` and iproute2's `ip`) it runs in a network namespace of
its own, so the hundreds of thousands of loopback connections it makes neither disturb nor
are disturbed by anything else on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from tests.soak.report import details, table
from tests.soak.scenarios import FULL, QUICK, SCENARIOS, run_scenario

LOOPS = ("uvloop", "asyncio")
RELAYS = ("splice", "copy")
_IN_NETNS = "PYFORWARD_SOAK_NETNS"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description="pyforward's soak and fault suite."
    )
    parser.add_argument("--quick", action="store_true", help="small counts: about a minute")
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="repeatable [all]"
    )
    parser.add_argument("--loop", action="append", choices=LOOPS, help="repeatable [both]")
    parser.add_argument("--relay", action="append", choices=RELAYS, help="repeatable [both]")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep every log (kept anyway on failure)"
    )
    parser.add_argument(
        "--no-netns", action="store_true", help="use the machine's own network namespace"
    )
    return parser


def machine() -> str:
    """One line naming the machine, for the record."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    try:
        uv = f", uvloop {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        uv = ""
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Linux {platform.release()}, "
        f"CPython {platform.python_version()}{uv}"
    )


def _enter_netns(argv: list[str]) -> None:
    """Run this command again inside a new network namespace, with loopback up."""
    inner = shlex.join([sys.executable, "-m", "tests.soak", *argv])
    command = ["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && exec {inner}"]
    os.environ[_IN_NETNS] = "1"
    os.execvp(command[0], command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    can_netns = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
    if not args.no_netns and can_netns and not os.environ.get(_IN_NETNS):
        _enter_netns(argv)
    scale = QUICK if args.quick else FULL
    names = args.scenario or list(SCENARIOS)
    loops, relays = args.loop or list(LOOPS), args.relay or list(RELAYS)
    workdir = Path(tempfile.mkdtemp(prefix="pyforward-soak-"))
    where = "a network namespace of its own" if os.environ.get(_IN_NETNS) else "the host's"
    print(f"machine: {machine()}", flush=True)
    print(f"command: python -m tests.soak {shlex.join(argv)} (network: {where})", flush=True)
    started = time.monotonic()
    outcomes = []
    for name in names:
        for loop in loops:
            for relay in relays:
                outcome = run_scenario(name, loop, relay, scale, workdir)
                outcomes.append(outcome)
                verdict = "pass" if outcome.passed else "FAIL: " + "; ".join(outcome.failures)
                print(
                    f"  {name} {loop} {relay}: {outcome.seconds:.1f}s, {verdict}",
                    file=sys.stderr,
                    flush=True,
                )
    print()
    print(table(outcomes))
    print()
    print(details(outcomes))
    failed = [o for o in outcomes if not o.passed]
    print(
        f"\n{len(outcomes) - len(failed)}/{len(outcomes)} passed in "
        f"{time.monotonic() - started:.0f}s"
    )
    if failed or args.keep_logs:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        code = main()
    except subprocess.CalledProcessError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
