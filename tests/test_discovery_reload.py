"""SIGHUP under --discover: what is not discovered is reloaded (an access list here), the
discovered route keeps its targets and keeps following the cluster; a change to what is
discovered is refused and the running configuration stays."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from tests.backends import Backend, Client, reached
from tests.kubeapi import KubeApi, node, service
from tests.test_discovery_cli import ROOT, clean_env


def config_text(kube: KubeApi, tmp_path: Path, route_extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        discover = true
        kubeconfig = "{kube.kubeconfig}"
        state_dir = "{tmp_path / "state"}"
        [[route]]
        listen = "127.0.0.1:0"
        service_port = "https"
        """
    ) + textwrap.dedent(route_extra)


class Log:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.lines: list[str] = []

    async def wait_for(self, text: str, timeout: float = 15.0) -> str:
        """The next line holding `text` (lines before it are kept)."""
        while True:
            line = (await asyncio.wait_for(self.stream.readline(), timeout)).decode()
            assert line, "".join(self.lines)
            self.lines.append(line)
            if text in line:
                return line


async def refused(port: int, source: str) -> bool:
    try:
        client = await Client.connect(port, source=source)
    except (ConnectionError, asyncio.IncompleteReadError):
        return True
    await client.close()
    return False


@pytest.mark.asyncio
async def test_sighup_under_discovery_applies_a_deny_and_keeps_following(
    kube: KubeApi, tmp_path: Path
) -> None:
    old, new = Backend("old"), Backend("new")
    await old.start()
    await new.start()
    kube.put_node(node("node-a", "127.0.0.1"))
    kube.put_service(service(ports=(("https", 443, old.port),)))
    config = tmp_path / "pyforward.toml"
    config.write_text(config_text(kube, tmp_path))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyforward",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(tmp_path),
        cwd=ROOT,
    )
    assert process.stderr is not None
    log = Log(process.stderr)
    try:
        line = await log.wait_for("event=listen ")
        port = int(line.split("address=127.0.0.1:")[1].split()[0])
        before = await Client.connect(port, source="127.0.0.2")
        assert before.greeting == "old"

        config.write_text(config_text(kube, tmp_path, 'deny = ["127.0.0.2"]\n'))
        process.send_signal(signal.SIGHUP)
        await log.wait_for("event=reloaded")
        assert await refused(port, "127.0.0.2"), "the deny added by the reload is ignored"
        assert await reached(port) == "old"  # 127.0.0.1 is still allowed
        assert await before.ask("still there?") == "old:still there?"

        # The discovered route keeps following the cluster after the reload.
        kube.put_service(service(ports=(("https", 443, new.port),)))
        await log.wait_for("event=target-change")
        assert await reached(port) == "new"
        assert await refused(port, "127.0.0.2")

        # What is discovered cannot change by reload: refused whole, the rest stays.
        config.write_text(
            config_text(kube, tmp_path, 'service_port = "http2"\n').replace(
                'service_port = "https"\n', ""
            )
        )
        process.send_signal(signal.SIGHUP)
        failed = await log.wait_for("event=reload-failed")
        assert "needs a restart" in failed
        assert await refused(port, "127.0.0.2")
        assert await reached(port) == "new"
        assert await before.ask("and now?") == "old:and now?"
        await before.close()

        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        assert await process.wait() == 0, rest.decode()
        assert "Traceback" not in "".join(log.lines) + rest.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    await old.close()
    await new.close()
