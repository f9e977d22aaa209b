"""Log lines an operator can follow: access lines and every other line through one writer,
in time order, never torn, each one JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from gateway.accesslog import (
    KEPT_LENGTH,
    MAX_USER_AGENT,
    PIPE_BUF,
    STRINGS_KEPT,
    WRITER,
    AccessLog,
    LineWriter,
)
from gateway.logs import JsonFormatter, WriterHandler, configure
from gateway.server import _run_logged

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def access_line(log: AccessLog, path: str = "/x", **fields: Any) -> None:
    values: dict[str, Any] = {
        "method": "GET",
        "path": path,
        "route": '"default"',
        "access": "protected",
        "decision": "allow",
        "status": 200,
        "reason": None,
        "user_id": "user_1",
        "duration_s": 0.0012,
        "upstream_status": 200,
        "upstream_s": 0.001,
        "client": "203.0.113.9",
        "host": b"app.example.com",
        "user_agent": b"curl/8.5.0",
        "request_id": b"5f3a9c1e2b7d00000001",
        "traceparent": TRACEPARENT,
    }
    values.update(fields)
    log.request(*values.values())


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("test_logs")
    log.propagate = False
    return log


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_access_log_and_other_lines_share_one_writer() -> None:
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        configure()
        (handler,) = root.handlers
    finally:
        root.handlers[:], root.level = before
    assert isinstance(handler, WriterHandler)
    assert handler.writer is WRITER
    assert AccessLog().writer is WRITER


async def test_a_warning_after_an_access_line_is_written_after_it(logger: logging.Logger) -> None:
    """Access lines wait in a batch (0.2 s); a warning is written at once, and so writes the
    batch before it: the output is in the order things happened."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    handler = WriterHandler(writer)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    access = AccessLog(writer)
    access_line(access, "/first")
    assert stream.getvalue() == ""  # batched, on the running loop's timer
    logger.warning("upstream slow", extra={"upstream": "default"})
    access_line(access, "/second")
    await asyncio.sleep(0.3)  # the batch's timer
    lines = entries(stream)
    assert [(e["msg"], e.get("path")) for e in lines] == [
        ("request", "/first"),
        ("upstream slow", None),
        ("request", "/second"),
    ]
    assert [e["level"] for e in lines] == ["info", "warning", "info"]
    stamps = [e["ts"] for e in lines]
    assert stamps == sorted(stamps)


def test_an_access_line_names_client_host_agent_request_and_trace() -> None:
    stream = io.StringIO()
    access = AccessLog(LineWriter(stream))
    access_line(access)  # the common line (the f-string)
    access_line(access, reason="session-token-missing", status=401, upstream_s=None)  # the other
    access.flush()
    for entry in entries(stream):
        assert entry["client"] == "203.0.113.9"
        assert entry["host"] == "app.example.com"
        assert entry["user_agent"] == "curl/8.5.0"
        assert entry["request_id"] == "5f3a9c1e2b7d00000001"
        assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_what_a_client_sends_is_escaped_and_bounded() -> None:
    stream = io.StringIO()
    access = AccessLog(LineWriter(stream))
    agent = b'Mozilla/5.0 "quoted" \\ caf\xe9 \x01' + b"x" * 1000
    host = b'evil"host\\'
    access_line(access, host=host, user_agent=agent, client='unknown"')
    access_line(access, host=host, user_agent=None, status=403, reason="route-denied")
    access.flush()
    first, second = entries(stream)
    assert first["host"] == second["host"] == 'evil"host\\'
    assert first["user_agent"] == agent[:MAX_USER_AGENT].decode("latin-1")
    assert first["client"] == 'unknown"'
    assert second["user_agent"] is None


def test_a_batch_is_written_in_whole_lines_no_larger_than_pipe_buf() -> None:
    """Workers share stdout: a write of at most PIPE_BUF bytes is never interleaved."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    writer = LineWriter(Recording())
    lines = [f'{{"n":{i},"pad":"{"p" * (i % 300)}"}}' for i in range(500)]
    for line in lines:
        writer.later(line)  # no loop running: each is written at once ...
    writes.clear()
    for line in lines:
        writer._lines.append(line)  # ... so fill a batch the way a busy loop does
    writer.flush()
    assert len(writes) > 1
    assert all(len(w) <= PIPE_BUF and w.endswith("\n") for w in writes)
    assert "".join(writes).splitlines() == lines


def test_remembered_client_values_stay_bounded() -> None:
    """Host and User-Agent are remembered in JSON form, but never long ones, nor too many:
    a client sending thousands of distinct 4 KiB User-Agents makes the process hold none."""
    access = AccessLog(LineWriter(io.StringIO()))
    for i in range(100):
        access_line(access, user_agent=b"%d" % i + b"x" * 4000)
    remembered = access._strings.known
    assert max(len(k or b"") for k in remembered) <= KEPT_LENGTH
    for i in range(STRINGS_KEPT + 100):
        access_line(access, user_agent=b"agent/%d" % i)
    assert len(remembered) == STRINGS_KEPT
    access.flush()


def test_a_crash_outside_a_request_is_a_json_line_with_its_traceback() -> None:
    """What asyncio.run would print as text: one JSON line, exit status 1."""

    async def broken() -> int:
        raise RuntimeError("a bug at start-up")

    stream = io.StringIO()
    root = logging.getLogger()
    before = root.handlers[:], root.level
    handler = WriterHandler(LineWriter(stream))
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    try:
        assert _run_logged(broken()) == 1
    finally:
        root.handlers[:], root.level = before
    (entry,) = entries(stream)
    assert (entry["level"], entry["msg"], entry["error"]) == ("critical", "crashed", "RuntimeError")
    assert "a bug at start-up" in entry["traceback"]
