"""Log lines: logfmt that stays on its line, a level on every line, and on the journal a
syslog priority instead of a time stamp."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.obs.logfmt import logfmt, parse_logfmt
from pyforward.obs.logsetup import (
    LineFormatter,
    direct_handler,
    level_of,
    priority_prefix,
    setup_logging,
    writes_to_journal,
)
from tests.harness import (
    TIMEOUT,
    ForwarderProcess,
    connect_and_read,
    fields,
    forwarder,
    run_cli,
)

# Everything that starts a new line somewhere: in a terminal, in journald, in str.splitlines.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
TS = re.compile(r"^ts=(\S+) level=(\w+) ")


def one_line(text: str) -> bool:
    return not any(char in text for char in LINE_BREAKS) and text.isprintable()


# --- logfmt: any value stays on its line and reads back as it was


@given(st.text(alphabet=st.characters()))
def test_any_value_is_one_line_that_reads_back(value: str) -> None:
    line = logfmt({"event": "close", "msg": value, "client": "127.0.0.1:1"})
    assert one_line(line), line
    assert parse_logfmt(line) == {"event": "close", "msg": value, "client": "127.0.0.1:1"}


@given(st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True), st.text()))
def test_any_fields_read_back(values: dict[str, str]) -> None:
    line = logfmt(values)
    assert one_line(line)
    assert parse_logfmt(line) == values


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\dir", r'"C:\\dir"'),
        ("line\nnext", r'"line\nnext"'),
        ("cr\rlf", r'"cr\rlf"'),
        ("tab\there", r'"tab\there"'),
        ("\x1b[31mred", r'"\x1b[31mred"'),
        ("nel\x85", r'"nel\x85"'),
        ("ls\u2028", r'"ls\u2028"'),
        ("héllo", "héllo"),
    ],
)
def test_values_are_quoted_and_escaped_only_when_they_must_be(value: str, written: str) -> None:
    assert logfmt({"k": value}) == f"k={written}"
    assert parse_logfmt(f"k={written}") == {"k": value}


def test_none_is_an_empty_bare_value() -> None:
    assert logfmt({"max": None, "n": 3}) == "max= n=3"
    assert parse_logfmt("max= n=3") == {"max": "", "n": "3"}


# --- the formatter: level, time stamp, priority


def record(level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("pyforward", level, __file__, 1, message, None, exc_info)


@pytest.mark.parametrize(
    ("level", "name", "priority"),
    [
        (logging.DEBUG, "debug", 7),
        (logging.INFO, "info", 6),
        (logging.WARNING, "warning", 4),
        (logging.ERROR, "error", 3),
        (logging.CRITICAL, "critical", 2),
        (logging.INFO + 5, "info", 6),
        (1, "debug", 7),
    ],
)
def test_every_level_has_its_name_and_priority(level: int, name: str, priority: int) -> None:
    assert level_of(level) == (name, priority)
    plain = LineFormatter(journal=False).format(record(level, "event=x"))
    assert fields(plain)["level"] == name
    assert not plain.startswith("<")
    assert LineFormatter(journal=True).format(record(level, "event=x")) == (
        f"<{priority}>level={name} event=x"
    )
    assert priority_prefix(level, journal=True) == f"<{priority}>"
    assert priority_prefix(level, journal=False) == ""


def test_off_the_journal_lines_start_with_a_zoned_time_stamp() -> None:
    line = LineFormatter(journal=False).format(record(logging.INFO, "event=start a=1"))
    match = TS.match(line)
    assert match, line
    assert line.endswith(" level=info event=start a=1")
    stamp = datetime.datetime.fromisoformat(match.group(1))
    assert stamp.utcoffset() is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", match.group(1))
    assert abs(stamp - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the local time zone (TZ) for the test; the old one is back after it."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_a_time_stamp_says_its_zone(zone: Callable[[str], None]) -> None:
    created = datetime.datetime(2026, 12, 1, 23, 59, 0, 123000, datetime.UTC).timestamp()
    zone("UTC")
    assert LineFormatter(journal=False).timestamp(created) == "2026-12-01T23:59:00.123+00:00"
    zone("EST+5")
    assert LineFormatter(journal=False).timestamp(created) == "2026-12-01T18:59:00.123-05:00"
    zone("IST-5:30")
    assert LineFormatter(journal=False).timestamp(created) == "2026-12-02T05:29:00.123+05:30"


ONE_FORMATTER = LineFormatter(journal=False)


@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4_000_000_000).map(float))
def test_a_time_stamp_is_the_local_time_of_the_record(created: float) -> None:
    """One formatter keeps the last second it formatted: any instant, in any order."""
    expected = datetime.datetime.fromtimestamp(created).astimezone()
    assert ONE_FORMATTER.timestamp(created) == expected.isoformat(timespec="milliseconds")


def test_a_traceback_stays_on_the_line_of_its_record() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as exc:
        line = LineFormatter(journal=True).format(record(logging.ERROR, "event=oops", exc))
    assert one_line(line), line
    assert line.startswith("<3>level=error event=oops traceback=")
    assert "RuntimeError: boom\nsecond line" in parse_logfmt(line)["traceback"]


@given(st.text())
def test_a_message_not_built_by_logfmt_stays_one_line(message: str) -> None:
    for journal in (False, True):
        assert one_line(LineFormatter(journal=journal).format(record(logging.INFO, message)))


# --- which stream is the journal


def test_journal_stream_is_the_device_and_inode_of_stderr() -> None:
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    try:
        with open(write_end, "w", closefd=False) as stream:
            stat = os.fstat(write_end)
            other = os.fstat(other_write)
            assert writes_to_journal(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
            for value in (
                f"{other.st_dev}:{other.st_ino}",  # inherited: stderr went elsewhere
                f"{stat.st_dev}:{stat.st_ino + 1}",
                f"{stat.st_dev + 1}:{stat.st_ino}",
                "",
                "garbage",
                f"{stat.st_dev}",
                f"{stat.st_dev}:{stat.st_ino}:1",
                f" {stat.st_dev}:{stat.st_ino}",
                f"-{stat.st_dev}:{stat.st_ino}",
                f"{stat.st_dev}:{stat.st_ino}\u00b2",
                "\u0661:\u0662",
            ):
                assert not writes_to_journal(stream, {"JOURNAL_STREAM": value}), value
            assert not writes_to_journal(stream, {})
    finally:
        for fd in (read_end, write_end, other_read, other_write):
            os.close(fd)
    # A stream without a descriptor (a test's capture) is never the journal.
    assert not writes_to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:1"})


def test_setup_logging_writes_one_line_per_record_to_the_stream() -> None:
    stream = io.StringIO()
    setup_logging("warning", stream, environ={"JOURNAL_STREAM": "1:1"})
    logging.getLogger("pyforward").info(logfmt({"event": "hidden"}))
    logging.getLogger("pyforward.relay").warning(logfmt({"event": "shown", "msg": "a\nb"}))
    [line] = stream.getvalue().splitlines()
    assert TS.match(line)
    assert parse_logfmt(line)["level"] == "warning"
    assert parse_logfmt(line)["msg"] == "a\nb"


def test_a_librarys_warnings_are_lines_of_the_same_form() -> None:
    stream = io.StringIO()
    setup_logging("debug", stream, environ={})
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection")  # not shown
    try:
        raise OSError("reset")
    except OSError:
        logging.getLogger("asyncio").exception("Exception in callback %s\nhandle", "f()")
    [line] = stream.getvalue().splitlines()
    found = parse_logfmt(line)
    assert (found["level"], found["logger"]) == ("error", "asyncio")
    assert found["msg"] == "Exception in callback f()\nhandle"
    assert found["traceback"].endswith("OSError: reset")


class Writes(io.StringIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _events(text: str) -> list[str]:
    return [parse_logfmt(line)["event"] for line in text.splitlines()]


def test_in_the_event_loop_a_turns_close_lines_are_written_together_in_order() -> None:
    stream = Writes()
    setup_logging("info", stream, environ={})
    log = logging.getLogger("pyforward")
    handler = direct_handler(log)
    assert handler is not None

    def close(event: str, level: int = logging.INFO) -> None:
        handler.write_line(level, logfmt({"event": event}))

    async def turns() -> None:
        close("one")
        close("two")
        assert stream.writes == []  # not before the turn is over
        await asyncio.sleep(0)
        assert [_events(text) for text in stream.writes] == [["one", "two"]]
        # A record through logging is written at once, after what is pending.
        close("three")
        log.info(logfmt({"event": "four"}))
        assert [_events(text) for text in stream.writes[1:]] == [["three", "four"]]
        # So is a warning given directly.
        close("five")
        close("six", logging.WARNING)
        assert [_events(text) for text in stream.writes[2:]] == [["five", "six"]]
        close("seven")

    asyncio.run(turns())
    handler.flush()  # as `logging.shutdown` does at exit: what is still pending is written
    assert _events(stream.getvalue()) == ["one", "two", "three", "four", "five", "six", "seven"]


def test_a_line_given_directly_reads_as_a_logged_one() -> None:
    stream = Writes()
    setup_logging("info", stream, environ={})
    log = logging.getLogger("pyforward")
    handler = direct_handler(log)
    assert handler is not None
    message = logfmt({"event": "close", "client": 'a "b"\nc', "up": 3})
    log.info(message)  # outside the loop: at once
    handler.write_line(logging.INFO, message)
    first, second = (parse_logfmt(line) for line in stream.getvalue().splitlines())
    assert first.pop("ts") and second.pop("ts")
    assert first == second == {"level": "info", "event": "close", "client": 'a "b"\nc', "up": "3"}
    assert len(stream.writes) == 2
    # A child logger's records reach the same handler; not past a handler or a filter of
    # its own (a test's capture, say): then every line goes through logging.
    child = logging.getLogger("pyforward.relay.connection")
    assert direct_handler(child) is handler

    def keep(record: logging.LogRecord) -> bool:
        return True

    child.addFilter(keep)
    try:
        assert direct_handler(child) is None
    finally:
        child.removeFilter(keep)
    log.addHandler(logging.NullHandler())
    assert direct_handler(log) is None


# --- a real `pyforward run`


@pytest.fixture
def refusing_target() -> Iterator[str]:
    """HOST:PORT bound and never listening: a connect to it is refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{holder.getsockname()[1]}"


def _lines_of_a_refused_connection(process: ForwarderProcess) -> list[str]:
    port = process.listen_addresses()[0][1]
    assert connect_and_read(port)[0] == b""  # reset: the target refused
    process.wait_line("event=close ")
    process.wait_line("event=target-down ")
    assert process.stop() == 0
    return [line for line in process.lines if line]


def test_under_systemd_lines_carry_their_priority_and_no_time(refusing_target: str) -> None:
    """stderr is the pipe JOURNAL_STREAM names: what journald parses, line by line."""
    args = ("--listen", "127.0.0.1:0", "--target", refusing_target, "--log-level", "debug")
    with forwarder(*args, journal=True) as process:
        lines = _lines_of_a_refused_connection(process)
    for line in lines:
        match = re.fullmatch(r"<(\d)>(level=\w+ event=\S+.*)", line)
        assert match, line
        priority, rest = match.groups()
        assert level_of(getattr(logging, parse_logfmt(rest)["level"].upper()))[1] == int(priority)
        assert "ts" not in parse_logfmt(rest)
    by_event = {parse_logfmt(line)["event"]: line for line in lines}
    assert by_event["start"].startswith("<6>level=info event=start ")
    assert by_event["target-down"].startswith("<4>level=warning event=target-down ")
    assert by_event["close"].startswith("<6>level=info event=close ")
    assert by_event["stopped"].startswith("<6>level=info event=stopped ")


def test_an_inherited_journal_stream_changes_nothing(refusing_target: str) -> None:
    """JOURNAL_STREAM left over from a parent whose stderr was the journal: this stderr is
    another pipe, so the lines are the plain ones, stamped with their time."""
    read_end, write_end = os.pipe()
    try:
        stat = os.fstat(write_end)
        env = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        args = ("--listen", "127.0.0.1:0", "--target", refusing_target)
        with forwarder(*args, env=env) as process:
            lines = _lines_of_a_refused_connection(process)
    finally:
        os.close(read_end)
        os.close(write_end)
    for line in lines:
        assert TS.match(line), line
        assert datetime.datetime.fromisoformat(parse_logfmt(line)["ts"]).utcoffset() is not None
    warning = next(line for line in lines if "event=target-down" in line)
    assert fields(warning)["level"] == "warning"


def test_a_failed_start_is_an_error_on_the_journal() -> None:
    """The one line that says why `run` cannot start goes to the journal at error priority."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        args = ("run", "-l", f"127.0.0.1:{taken.getsockname()[1]}", "-t", "127.0.0.1:1")
        read_end, write_end = os.pipe()
        stat = os.fstat(write_end)
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        try:
            code = subprocess.run(
                [sys.executable, "-m", "pyforward", *args],
                stderr=write_end,
                stdout=subprocess.DEVNULL,
                env=env,
                timeout=TIMEOUT,
                check=False,
            ).returncode
        finally:
            os.close(write_end)
        with open(read_end, encoding="utf-8") as stream:
            journal = stream.read()
        plain = run_cli(*args)
    assert code == plain.returncode != 0
    assert journal == "<3>" + plain.stderr, journal
    assert plain.stderr.startswith("pyforward: error: ")
