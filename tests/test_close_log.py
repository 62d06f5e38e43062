"""`log_connections`: which connections get a close line, and the summary of the rest."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.settings import build_settings
from pyforward.engine import server
from pyforward.errors import ConfigError
from pyforward.obs.closelog import CloseSummary, LogConnections, close_line, logs_close
from pyforward.obs.logfmt import logfmt, parse_logfmt
from pyforward.obs.reasons import CloseReason, Side
from tests.harness import (
    Backend,
    ForwarderProcess,
    connect,
    connect_and_read,
    echo,
    fields,
)
from tests.inprocess import running


def test_which_reasons_get_a_line_in_each_mode() -> None:
    reasons = [CloseReason(r) for r in ("eof", "reset", "refused", "idle-timeout", "error")]
    assert [logs_close(LogConnections.ALL, r) for r in reasons] == [True] * 5
    assert [logs_close(LogConnections.ERRORS, r) for r in reasons] == [False] + [True] * 4
    assert [logs_close(LogConnections.NONE, r) for r in reasons] == [False] * 5


@given(
    st.fixed_dictionaries(
        {
            "connection_id": st.integers(1, 1 << 31),
            "client": st.text(),
            "listen": st.text(),
            "target": st.text(),
            "up": st.integers(0, 1 << 40),
            "down": st.integers(0, 1 << 40),
            "seconds": st.floats(0, 1e6),
            "relay": st.sampled_from(["splice", "copy", "-"]),
            "reason": st.sampled_from(list(CloseReason)),
            "reset_by": st.sampled_from([None, *Side]),
            "error": st.text(),
            "msg": st.text(),
        }
    )
)
def test_a_close_line_is_the_logfmt_line_of_its_fields(given: dict[str, Any]) -> None:
    fields: dict[str, object] = {
        "event": "close",
        "id": given["connection_id"],
        **{key: given[key] for key in ("client", "listen", "target", "up", "down")},
        "dur": round(given["seconds"], 6),
        "relay": given["relay"],
        "reason": given["reason"],
    }
    fields.update((key, given[key]) for key in ("reset_by", "error", "msg") if given[key])
    line = close_line(**given)
    assert line == logfmt(fields)
    assert parse_logfmt(line)["client"] == given["client"]


def test_the_summary_counts_per_listener_in_reason_order_and_starts_afresh() -> None:
    summary = CloseSummary()
    for reason in ("reset", "eof", "eof", "refused"):
        summary.count("127.0.0.1:443", CloseReason(reason))
    summary.count("[::1]:80", CloseReason.EOF)
    assert summary.take() == [
        {
            "event": "closed-summary",
            "listen": "127.0.0.1:443",
            "closed_eof": 2,
            "closed_reset": 1,
            "closed_refused": 1,
        },
        {"event": "closed-summary", "listen": "[::1]:80", "closed_eof": 1},
    ]
    assert summary.take() == []


def test_log_connections_from_each_layer_per_route() -> None:
    route = {"listen": "80", "target": ["127.0.0.1:1"]}
    assert build_settings(route, {}).routes[0].log_connections is LogConnections.ALL
    from_flag = build_settings({**route, "log_connections": LogConnections.NONE}, {})
    assert from_flag.routes[0].log_connections is LogConnections.NONE
    from_env = build_settings(route, {"PYFORWARD_LOG_CONNECTIONS": "errors"})
    assert from_env.routes[0].log_connections is LogConnections.ERRORS
    file_data = {
        "log_connections": "errors",
        "route": [
            {"listen": "80", "target": "127.0.0.1:1"},
            {"listen": "81", "target": "127.0.0.1:1", "log_connections": "all"},
        ],
    }
    from_file = build_settings({}, {}, file_data)
    assert [r.log_connections for r in from_file.routes] == [
        LogConnections.ERRORS,
        LogConnections.ALL,
    ]
    with pytest.raises(ConfigError, match="PYFORWARD_LOG_CONNECTIONS: expected one of all, errors"):
        build_settings(route, {"PYFORWARD_LOG_CONNECTIONS": "some"})


def refusing_port() -> socket.socket:
    holder = socket.socket()  # bound, never listening: connects to it are refused
    holder.bind(("127.0.0.1", 0))
    return holder


def test_errors_mode_logs_only_failed_connections_and_counts_the_clean_ones(
    tmp_path: Path,
) -> None:
    config = tmp_path / "pyforward.toml"
    with Backend(echo) as backend, refusing_port() as refusing:
        config.write_text(
            'log_connections = "errors"\n'
            f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{backend.address}"\n'
            f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "127.0.0.1:{refusing.getsockname()[1]}"\n'
            f'[[route]]\nlisten = "127.0.0.1:0"\ntarget = "{backend.address}"\n'
            'log_connections = "all"\n'
        )
        process = ForwarderProcess(["run", "--config", str(config)])
        try:
            (_, quiet), (_, failing), (_, verbose) = process.listen_addresses(3)
            for _ in range(20):
                with connect(quiet) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
            for _ in range(3):
                _, error = connect_and_read(failing)
                assert isinstance(error, ConnectionResetError)
            for _ in range(2):
                with connect(verbose) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
            closes = process.closes(5)
        finally:
            assert process.stop() == 0
    assert sorted((c["listen"], c["reason"]) for c in closes) == sorted(
        [(f"127.0.0.1:{failing}", "refused")] * 3 + [(f"127.0.0.1:{verbose}", "eof")] * 2
    )
    assert len(process.close_lines) == 5
    # The clean closes left out are counted, once the forwarder stops at the latest.
    [summary] = [fields(line) for line in process.lines if "event=closed-summary" in line]
    del summary["ts"]
    assert summary == {
        "level": "info",
        "event": "closed-summary",
        "listen": f"127.0.0.1:{quiet}",
        "closed_eof": "20",
    }
    stopped = fields(process.wait_line("event=stopped"))
    assert (stopped["closed_eof"], stopped["closed_refused"]) == ("22", "3")


def summed(lines: list[str]) -> dict[tuple[str, str], int]:
    """The counts of every closed-summary line, added up per listener and reason."""
    totals: Counter[tuple[str, str]] = Counter()
    for line in lines:
        if "event=closed-summary" in line:
            found = fields(line)
            for key, value in found.items():
                if key.startswith("closed_"):
                    totals[found["listen"], key] += int(value)
    return dict(totals)


def test_none_mode_logs_the_counts_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "SUMMARY_INTERVAL", 0.2)
    with Backend(echo) as backend, refusing_port() as refusing:
        settings = build_settings(
            {
                "route": [
                    f"127.0.0.1:0={backend.address}",
                    f"127.0.0.1:0=127.0.0.1:{refusing.getsockname()[1]}",
                ],
                "log_connections": LogConnections.NONE,
            },
            {},
        )
        with running(settings) as (forwarder, logs):
            clean, failing = forwarder.listeners
            for _ in range(5):
                with connect(clean.sock.getsockname()[1]) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
            _, error = connect_and_read(failing.sock.getsockname()[1])
            assert isinstance(error, ConnectionResetError)
            expected = {(clean.label, "closed_eof"): 5, (failing.label, "closed_refused"): 1}
            # While the forwarder runs: the timer logs them, not the shutdown.
            logs.wait_for(lambda lines: summed(lines) == expected, f"summaries of {expected}")
    assert not [line for line in logs.lines if "event=close " in line]
    assert summed(logs.lines) == expected  # nothing counted twice, no line left after
