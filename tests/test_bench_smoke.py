"""The benchmark runs end to end: every scenario yields a figure for every subject.

One tiny round (`bench/run.py --smoke`), so the suite cannot rot; no figure is judged
against a bar here, only that it was measured and is a plausible number.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.subjects import SUBJECTS

SUBJECTS_BY_KEY = {subject.key: subject for subject in SUBJECTS}

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
PROGRAMS = ("socat", "haproxy", "iperf3", "wrk", "nginx", "dnsmasq", "curl")
# Figures that may honestly be zero; every other one must be positive.
MAY_BE_ZERO = {
    "connrate.errors",
    "https.errors",
    "throughput.retries",
    "latency.cpu",
    "connrate.cpu",
    "udp-throughput.lost",
}
# A slope over the smoke run's 30 extra idle connections (about 60 KiB) is within a page or
# two of allocator noise, so it may come out zero or below; the full run's 900 give the figure.
NOISY_AT_SMOKE_SCALE = {"memory.pss_per_idle"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    assert not missing, f"the benchmark needs {missing}: apt-get install them (see .ci/run)"
    results = tmp_path_factory.mktemp("results")
    done = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((results / "latest.json").read_text())
    return done.stdout, document, results


def test_every_scenario_yields_a_figure_for_every_subject(
    smoke_run: tuple[str, dict[str, Any], Path],
) -> None:
    _, document, _ = smoke_run
    subjects = [s["key"] for s in document["subjects"]]
    wanted = {"none", "socat", "socat-b256k", "haproxy", "haproxy-default", "nginx-stream"}
    assert wanted | {"pyforward-splice", "pyforward-workers"} <= set(subjects)
    figures = {(f["metric"], f["subject"]): f for f in document["figures"]}
    scenarios = {f["scenario"] for f in document["figures"]}
    expected_scenarios = {"throughput", "connrate", "latency", "memory-idle"}
    assert (
        expected_scenarios | {"memory-stream", "startup", "udp-dns", "udp-throughput"} <= scenarios
    )
    # Every UDP forwarder yields the UDP figures; HAProxy forwards no plain UDP.
    for subject in ("none", "socat", "nginx-stream", "pyforward-splice", "pyforward-workers"):
        for key in ("udp-dns.rate", "udp-throughput.rate", "udp-throughput.lost"):
            assert (key, subject) in figures, f"no {key} for {subject}"
    assert ("udp-dns.rate", "haproxy") not in figures
    for metric in document["metrics"]:
        for subject in subjects:
            no_udp = metric["key"].startswith("udp-") and not SUBJECTS_BY_KEY[subject].forwards_udp
            if (metric["forwarder_only"] and subject == "none") or no_udp:
                assert (metric["key"], subject) not in figures
                continue
            figure = figures.get((metric["key"], subject))
            assert figure is not None, f"no {metric['key']} for {subject}"
            assert figure["unit"] == metric["unit"]
            value = figure["value"]
            assert math.isfinite(value), (metric["key"], subject, value)
            if metric["key"] not in MAY_BE_ZERO | NOISY_AT_SMOKE_SCALE:
                assert value > 0, (metric["key"], subject, value)


def test_socat_forks_count_and_pyforward_stays_one_process(
    smoke_run: tuple[str, dict[str, Any], Path],
) -> None:
    _, document, _ = smoke_run
    large = document["meta"]["plan"]["idle_counts"][1]
    processes = {
        f["subject"]: f["value"] for f in document["figures"] if f["metric"] == "memory.processes"
    }
    # socat forks one process per connection; its memory is summed over all of them.
    assert processes["socat"] >= large
    assert processes["pyforward-splice"] == 1
    assert processes["haproxy"] == 1
    # A main process and a worker per usable CPU; nginx's master and a worker per core.
    assert processes["pyforward-workers"] == 1 + len(os.sched_getaffinity(0))
    assert processes["nginx-stream"] >= 2


def test_table_chart_and_versions_are_written(
    smoke_run: tuple[str, dict[str, Any], Path],
) -> None:
    stdout, document, results = smoke_run
    for label in ("no forwarder", "socat as deployed", "HAProxy splice-auto"):
        assert label in stdout
    assert "vs socat" in stdout
    assert "vs HAProxy" in stdout and "the no-forwarder row is the ceiling" in stdout
    assert "pyforward against its bars" in stdout
    socat_rate = [
        s for s in document["summary"] if s["metric"] == "connrate.rate" and s["subject"] == "socat"
    ]
    assert socat_rate
    assert socat_rate[0]["ratio"] == pytest.approx(1.0)
    for program in PROGRAMS:
        assert document["meta"]["tools"][program] not in ("", "unknown")
    assert (results / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_missing_programs_are_named_with_how_to_get_them(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("socat", "haproxy", "iperf3"):  # no wrk, no nginx, no curl
        found = shutil.which(program)
        assert found is not None
        (bin_dir / program).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--results", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "missing programs: curl, dnsmasq, nginx, openssl, wrk" in done.stderr
    assert "apt-get install curl dnsmasq nginx-light openssl wrk" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()
