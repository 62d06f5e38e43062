"""Start-up: from exec to the first accepted connection, with a static target."""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.backends import echo_server
from bench.model import Metric, Plan
from bench.subjects import Running


class Startup:
    name = "startup"
    title = "start-up, exec to accepting (static target)"
    tools: tuple[str, ...] = ()
    metrics = (Metric("startup.accepting", "exec to accepting", "ms", "lower", True),)

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[int]:
        return echo_server(workdir)

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        # The runner polls with a connect every half millisecond from the moment it execs
        # the subject (subjects.running), so the figure is already taken.
        if not subject.subject.forwarder:
            return {}
        return {"startup.accepting": (subject.accepting - subject.started) * 1000}
