"""`pyforward socat` and `pyforward-socat`: socat's words in, real bytes through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from forwarder_process import DEADLINE, Forwarder, console_script, echo_server, exchange

from pyforward.cli import main

TESTS = Path(__file__).parent


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
        "TCP-LISTEN:PORT[,OPTIONS] TCP:HOST:PORT[,OPTIONS]\n"
    )


def test_socat_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["socat", "-h"], capsys)
    assert code == 0
    assert out.startswith("Usage: pyforward-socat [OPTIONS] TCP-LISTEN:PORT")
    assert "Without fork, one connection is served" in out


def test_refusal_from_the_console_script_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [str(console_script("pyforward-socat")), "OPENSSL-LISTEN:443,fork", "TCP:127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "pyforward: error: OPENSSL-LISTEN is not supported: pyforward forwards TCP; "
        "TLS passes through untouched\n"
    )
    assert result.stdout == ""


def test_fork_forwards_every_connection_over_loopback() -> None:
    with echo_server() as (host, backend):
        forwarder = Forwarder(
            ["TCP-LISTEN:0,fork,reuseaddr,bind=127.0.0.1", f"TCP:{host}:{backend}"]
        )
        try:
            port = forwarder.listen_port()
            payload = os.urandom(1 << 20)
            for _ in range(3):
                assert exchange("127.0.0.1", port, payload) == payload
            assert forwarder.process.poll() is None  # fork: still serving
            assert forwarder.stop() == 0
        finally:
            forwarder.kill()
    assert any("event=stopped accepted=3" in line for line in forwarder.lines), forwarder.lines


def test_without_fork_one_connection_is_forwarded_then_the_process_exits() -> None:
    with echo_server() as (host, backend):
        forwarder = Forwarder(["-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1", f"TCP:{host}:{backend}"])
        try:
            port = forwarder.listen_port()
            assert exchange("127.0.0.1", port, b"only one\n") == b"only one\n"
            assert forwarder.wait() == 0  # no signal: it ends by itself, as socat does
        finally:
            forwarder.kill()
    assert any("event=listen-closed" in line for line in forwarder.lines), forwarder.lines
    assert any("event=stopped accepted=1" in line for line in forwarder.lines), forwarder.lines


def _netns_command() -> list[str]:
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        pytest.fail("the seed end-to-end test needs unshare (util-linux) and ip (iproute2)")
    # As root, a plain network namespace; otherwise one owned by a new user namespace,
    # where binding port 443 is allowed too.
    extra = [] if os.geteuid() == 0 else ["--map-root-user"]
    return [unshare, "--net", *extra, "--", sys.executable, str(TESTS / "seed_in_netns.py")]


@pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's")
def test_seed_command_line_forwards_in_a_network_namespace() -> None:
    result = subprocess.run(
        _netns_command(), capture_output=True, text=True, timeout=DEADLINE * 2, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok port=443 bytes=2097152 code=0"), result.stdout
