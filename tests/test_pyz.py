"""The single-file build: scripts/build-pyz makes pyforward.pyz, which a bare python3 runs
(the machine's own, without this venv's site-packages), discovery included."""

from __future__ import annotations

import re
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.harness import Backend, ForwarderProcess, connect, echo, fields, recv_all
from tests.kubeapi import KubeApi, node, service
from tests.places import REFUSAL
from tests.pyz import Build, host_python
from tests.test_units import split_dry_run


@pytest.fixture(scope="module")
def python() -> str:
    return host_python()


def test_the_archive_holds_no_compiled_code_and_says_what_it_left_out(pyz: Build) -> None:
    names = zipfile.ZipFile(pyz.archive).namelist()
    assert "__main__.py" in names
    assert "pyforward/systemd/templates/pyforward.service.in" in names
    assert any(name.startswith("kubernetes/client/") for name in names)
    assert not [name for name in names if name.endswith((".so", ".pyd"))]
    assert not [name for name in names if name.startswith("uvloop")]
    # Each dependency whose extensions were dropped is named, with why it works without.
    assert re.search(r"left out yaml/_yaml\.\S+\.so of pyyaml \(", pyz.log)
    assert f"wrote {pyz.archive}" in pyz.log


def test_a_bare_python3_forwards_through_the_archive(pyz: Build, python: str) -> None:
    with Backend(echo) as backend:
        process = ForwarderProcess(
            ["run", "--listen", "127.0.0.1:0", "--target", backend.address],
            program=(python, "-I", str(pyz.archive)),
        )
        try:
            start = fields(process.wait_line("event=start"))
            client = connect(process.port)
            client.sendall(b"through the archive" * 1000)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"through the archive" * 1000
            client.close()
            assert process.closes(1)[0]["reason"] == "eof"
        finally:
            assert process.stop() == 0
    assert start["version"]


def test_discovery_from_the_archive_with_no_site_packages_at_all(
    pyz: Build, python: str, tmp_path: Path
) -> None:
    """-S: nothing but the archive and the standard library. The kubernetes client and its
    dependencies come from the archive; uvloop is not there, so the loop is asyncio."""
    kube = KubeApi(tmp_path)
    kube.start()
    try:
        with Backend(echo) as backend:
            kube.put_service(service(ports=(("https", 443, backend.port),)))
            kube.put_node(node("here", "127.0.0.1"))
            process = ForwarderProcess(
                [
                    "run",
                    "--discover",
                    "--listen",
                    "127.0.0.1:0",
                    "--kubeconfig",
                    str(kube.kubeconfig),
                    "--state-dir",
                    str(tmp_path / "state"),
                    "--discover-timeout",
                    "20",
                ],
                program=(python, "-I", "-S", str(pyz.archive)),
                env={"NODE_NAME": "here"},
            )
            try:
                assert fields(process.wait_line("event=start"))["loop"] == "asyncio"
                client = connect(process.port)
                client.sendall(b"discovered")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b"discovered"
                client.close()
                assert process.closes(1)[0]["target"] == f"127.0.0.1:{backend.port}"
            finally:
                assert process.stop() == 0
    finally:
        kube.stop()


def test_install_dry_run_from_the_archive_runs_it_with_its_interpreter(
    pyz: Build, python: str
) -> None:
    result = subprocess.run(
        [python, "-I", str(pyz.archive), "install", "--dry-run", "--route", "443=10.0.0.5:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    service_unit = split_dry_run(result.stdout)["pyforward.service"]
    assert (
        f"ExecStart={python} -I {pyz.archive} run --config /etc/pyforward/pyforward.toml\n"
        in service_unit
    )
    # Built under /tmp, the archive cannot be a service's: the dry run says so, and how to
    # place it (exit 1, as install itself).
    assert result.returncode == 1
    [refusal] = result.stderr.splitlines()
    assert refusal.startswith(REFUSAL)
    assert f"this pyforward lives in {pyz.archive}, under /tmp" in refusal
    assert f"install -D -m 0644 {pyz.archive} /opt/pyforward/pyforward.pyz" in refusal
