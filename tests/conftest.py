from __future__ import annotations

import resource

import pytest


@pytest.fixture(scope="session", autouse=True)
def _raise_fd_limit() -> None:
    # Tests hold a thousand connections at once; both ends live in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
