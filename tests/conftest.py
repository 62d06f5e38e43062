from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings

# Registers the discovery keys of the settings schema, as the CLI does on import.
import pyforward.discovery.options  # noqa: F401
from pyforward.engine.fdlimit import raise_fd_limit
from tests.backends import Backend, Starter
from tests.kubeapi import KubeApi
from tests.pyz import Build, build


@pytest.fixture(scope="session", autouse=True)
def _raise_fd_limit() -> None:
    # Tests hold a thousand connections at once; both ends live in this process.
    raise_fd_limit()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    """The test Kubernetes API server (tests/kubeapi.py), started, with no object yet."""
    api = KubeApi(tmp_path)
    api.start()
    yield api
    api.stop()


@pytest.fixture(autouse=True)
def _logging_state() -> Iterator[None]:
    """An in-process `run` or `check` sets up pyforward's logging on the test's captured
    stream, which pytest closes after the test: the loggers are put back, so that a later
    test's records never reach a closed stream."""
    ours, root = logging.getLogger("pyforward"), logging.getLogger()
    saved = ours.handlers[:], ours.level, ours.propagate, root.handlers[:], root.level
    yield
    ours.handlers[:], ours.level, ours.propagate, root.handlers[:], root.level = saved


# The machine running the suite may be busy: judge parsers by their answers, not their speed.
settings.register_profile("default", deadline=None)
settings.load_profile("default")


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """pyforward.pyz built from this checkout by scripts/build-pyz, once per run."""
    return build(tmp_path_factory.mktemp("pyz"))


@pytest_asyncio.fixture
async def started() -> AsyncIterator[Starter]:
    """Start backends by name (`await started("istio", ...)`); all are closed after the test,
    whether it passed or not."""
    made: list[Backend] = []

    async def start(*names: str) -> list[Backend]:
        backends = [Backend(name) for name in names]
        made.extend(backends)
        for backend in backends:
            await backend.start()
        return backends

    yield start
    for backend in made:
        await backend.close()
