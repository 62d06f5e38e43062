"""The scenarios: each has a backend, the metrics it yields, and one measurement."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from bench.model import Metric, Plan
from bench.subjects import Running, Target


class Scenario(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def metrics(self) -> tuple[Metric, ...]: ...

    @property
    def tools(self) -> tuple[str, ...]:
        """Programs it runs, beyond the subjects."""
        ...

    def backend(self, workdir: Path) -> contextlib.AbstractContextManager[Target]:
        """Start the backend every subject forwards to; yields its port (or the path of
        its UNIX socket)."""
        ...

    def measure(self, subject: Running, plan: Plan) -> dict[str, float]:
        """One round against one freshly started subject: metric key -> value."""
        ...
