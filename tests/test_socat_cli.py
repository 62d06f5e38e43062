"""`pyforward socat` and `pyforward-socat`: socat's words in, real bytes through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyforward.cli.app import main
from tests.harness import TIMEOUT, Backend, ForwarderProcess, echo, pattern_bytes
from tests.seed_in_netns import exchange, pyforward_socat

ROOT = Path(__file__).parent.parent


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_socat_words_pass_through_the_cli_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    # -d, -T and the addresses reach the socat parser; the CLI does not read them itself.
    code, _, err = run_main(
        ["socat", "-d", "-d", "-T", "5", "-b8192", "TCP-LISTEN:0,FORK", "BOGUS:1"], capsys
    )
    assert code == 2
    assert err == (
        "pyforward: error: unknown address type 'BOGUS' in 'BOGUS:1': pyforward-socat takes "
        "TCP-LISTEN:PORT or UNIX-LISTEN:PATH [,OPTIONS], then TCP:HOST:PORT or "
        "UNIX-CONNECT:PATH [,OPTIONS]\n"
    )


def test_socat_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["socat", "-h"], capsys)
    assert code == 0
    assert out.startswith("Usage: pyforward-socat [OPTIONS] LISTEN-ADDRESS")
    assert "Without fork, one connection is served" in out
    assert "UDP-LISTEN, UDP4-LISTEN, UDP6-LISTEN, UDP-RECVFROM" in out


def test_refusal_from_the_console_script_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [*pyforward_socat(), "OPENSSL-LISTEN:443,fork", "TCP:127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "pyforward: error: OPENSSL-LISTEN is not supported: pyforward forwards TCP; "
        "TLS passes through untouched\n"
    )
    assert result.stdout == ""


def test_fork_forwards_every_connection_over_loopback() -> None:
    payload = pattern_bytes(1, 1 << 20)
    with Backend(echo) as backend:
        forwarder = ForwarderProcess(
            ["TCP-LISTEN:0,fork,reuseaddr,bind=127.0.0.1", f"TCP:{backend.address}"],
            program=pyforward_socat(),
        )
        try:
            port = forwarder.port
            for _ in range(3):
                assert exchange("127.0.0.1", port, payload) == payload
            assert forwarder.proc.poll() is None  # fork: still serving
        finally:
            code = forwarder.stop()
    assert code == 0
    assert backend.accepted == 3
    forwarder.wait_line(r"event=stopped accepted=3 ")


def test_without_fork_one_connection_is_forwarded_then_the_process_exits() -> None:
    with Backend(echo) as backend:
        forwarder = ForwarderProcess(
            ["-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1", f"TCP:{backend.address}"],
            program=pyforward_socat(),
        )
        try:
            port = forwarder.port
            assert exchange("127.0.0.1", port, b"only one\n") == b"only one\n"
            # No signal: it ends by itself once that connection is over, as socat does.
            forwarder.wait_line(r"event=stopped accepted=1 ")
            assert forwarder.proc.wait(TIMEOUT) == 0
        finally:
            forwarder.stop()
    forwarder.wait_line(r"event=listen-closed address=127\.0\.0\.1:\d+ served=1")


@pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's")
def test_seed_command_line_forwards_in_a_network_namespace() -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.fail("this test needs unshare (util-linux) and ip (iproute2)")
    # As root, a plain network namespace; otherwise one owned by a new user namespace,
    # in which binding port 443 is allowed too.
    extra = [] if os.geteuid() == 0 else ["--map-root-user"]
    result = subprocess.run(
        [unshare, "--net", *extra, "--", sys.executable, "-m", "tests.seed_in_netns"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok port=443 bytes=2097152 code=0\n", result.stderr
