"""pyforward's benchmark: `python bench/run.py [--quick]`.

Measures pyforward beside socat (as deployed, and tuned), HAProxy and no forwarder at
all, prints medians with min, max and ratios to socat, and writes every figure to
bench/results/latest.json and a chart to bench/results/latest.png. It installs nothing;
it says what is missing and how to get it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import tools
from bench.accounting import SetFactory
from bench.chart import draw
from bench.model import PLANS, Plan
from bench.netutil import NGINX_STREAM_MODULE, BenchError
from bench.report import bar_table, table, write_json
from bench.stats import summarize
from bench.subjects import (
    BASELINE,
    SECOND_BASELINE,
    Environment,
    Subject,
    select,
)
from bench.suite import all_metrics, all_scenarios, run_suite
from pyforward.engine.fdlimit import raise_fd_limit

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark pyforward against socat, HAProxy and no forwarder.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="one short round of everything (under a minute)"
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="one tiny round: checks every scenario yields a figure (used by the tests)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per scenario (full run: 3)")
    parser.add_argument(
        "--subjects", help="comma-separated subset, e.g. socat,pyforward-splice (default: all)"
    )
    parser.add_argument(
        "--scenarios", help="comma-separated subset of the scenarios (default: all)"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where latest.json and latest.png go"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def choose_plan(args: argparse.Namespace) -> Plan:
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds is not None:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = choose_plan(args)
    subjects = select(args.subjects.split(",") if args.subjects else None)
    scenarios = all_scenarios(plan)
    if args.scenarios:
        wanted = args.scenarios.split(",")
        known = [s.name for s in scenarios]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise BenchError(f"unknown scenario {', '.join(unknown)} (known: {', '.join(known)})")
        scenarios = [s for s in scenarios if s.name in wanted]

    programs = sorted(
        {tool for scenario in scenarios for tool in scenario.tools}
        | {s.kind for s in subjects if s.kind in ("socat", "haproxy", "nginx")}
        | {s.kind.removesuffix("-sni") for s in subjects if s.kind in ("haproxy-sni", "nginx-sni")}
    )
    needs_pyforward = any(s.kind.startswith("pyforward") for s in subjects)
    problems = tools.problems(programs, chart=True, pyforward=needs_pyforward)
    if any(s.kind == "nginx" for s in subjects) and not NGINX_STREAM_MODULE.exists():
        problems.append(
            f"nginx's stream module {NGINX_STREAM_MODULE} is missing "
            "(Debian/Ubuntu: apt-get install libnginx-mod-stream)"
        )
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        print("bench: nothing was run; install what is missing and run again", file=sys.stderr)
        return 1

    raise_fd_limit()  # a thousand idle connections need more than some defaults allow
    sets = SetFactory()
    meta: dict[str, object] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *(argv or sys.argv[1:])]),
        "plan": plan.__dict__,
        "machine": tools.machine(),
        "tools": tools.versions(programs),
        "accounting": sets.method,
        "load_before": tools.load_average(),
        "baseline": BASELINE,
        "second_baseline": SECOND_BASELINE,
    }
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pyforward-bench-") as workdir:
            env = Environment(Path(workdir), sets)
            figures = run_suite(plan, scenarios, subjects, env, _progress)
    finally:
        sets.close()
    meta["seconds"] = round(time.monotonic() - began, 1)
    meta["load_after"] = tools.load_average()

    metrics = all_metrics(scenarios)
    keys = [s.key for s in subjects]
    summaries = summarize(figures, metrics, keys, BASELINE)
    against_haproxy = summarize(figures, metrics, keys, SECOND_BASELINE)
    print(_heading(meta, plan, subjects))
    print(table(scenarios, subjects, summaries, plan.rounds, against_haproxy))
    print(bar_table(subjects, summaries))
    json_path = args.results / "latest.json"
    chart_path = args.results / "latest.png"
    write_json(
        json_path,
        meta=meta,
        metrics=metrics,
        subjects=subjects,
        figures=figures,
        summaries=summaries,
    )
    draw(chart_path, subjects, summaries, f"{plan.name} run, {meta['started']}")
    print(f"\nwrote {json_path} and {chart_path}")
    return 0


def _heading(meta: dict[str, object], plan: Plan, subjects: list[Subject]) -> str:
    machine = meta["machine"]
    assert isinstance(machine, dict)
    tool_versions = meta["tools"]
    assert isinstance(tool_versions, dict)
    return "\n".join(
        [
            f"pyforward benchmark, {plan.name} run: {meta['command']}",
            f"machine: {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}",
            *(f"  {name}: {version}" for name, version in tool_versions.items()),
            f"load average before: {meta['load_before']}, after: {meta['load_after']}; "
            f"took {meta['seconds']} s; CPU counted by {meta['accounting']}",
            f"subjects: {', '.join(s.label for s in subjects)}",
        ]
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def entry() -> None:
    """Script entry: one line and a non-zero exit on failure, never a traceback."""
    try:
        code = main()
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
