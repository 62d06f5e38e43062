from __future__ import annotations

import resource

import pytest
from hypothesis import settings


@pytest.fixture(scope="session", autouse=True)
def _raise_fd_limit() -> None:
    # Tests hold a thousand connections at once; both ends live in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The machine running the suite may be busy: judge parsers by their answers, not their speed.
settings.register_profile("default", deadline=None)
settings.load_profile("default")
