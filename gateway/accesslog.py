"""The per-request JSON log line, and the one writer every log line goes through.

`logging` spends tens of microseconds per record (a LogRecord, caller lookup, handler
locks, a write per line); on the request path that is as much as the proxying itself. An
access line here is one %-format of values that are JSON-safe by construction (methods and
normalised paths cannot hold a quote or a backslash; labels are escaped once) or escaped
only when they need it, and lines are written in batches (at most every 0.2 s or 64 KiB).
Other log lines go through the same writer, which writes everything pending first, so the
output stays in time order. Never a token, cookie, query string, secret or body.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 65_536
# POSIX: a write of at most PIPE_BUF bytes to a pipe is never interleaved with another's.
# Workers share stdout (a pipe under a container runtime): a batch goes out in writes of
# whole lines no larger than this, so no line is ever torn by another process's.
PIPE_BUF = 4096


class LineWriter:
    """Lines to stdout (or a stream), batched; `now()` writes at once, after the batch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def later(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def now(self, line: str) -> None:
        self._lines.append(line)
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._size = 0
        stream = self.stream or sys.stdout
        # lines are ASCII (JSON escapes the rest): characters are bytes
        if len(lines) == 1 or sum(map(len, lines)) + len(lines) <= PIPE_BUF:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
            return
        start, size = 0, 0
        for end, line in enumerate(lines):
            if size and size + len(line) + 1 > PIPE_BUF:
                stream.write("\n".join(lines[start:end]) + "\n")
                stream.flush()
                start, size = end, 0
            size += len(line) + 1
        stream.write("\n".join(lines[start:]) + "\n")
        stream.flush()


WRITER = LineWriter()


class Clock:
    """`ts` values: the seconds part formatted once per second."""

    __slots__ = ("_second", "_stamp")

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"


def quoted(value: str | None) -> str:
    """A JSON string (or null), escaping only when the value needs it."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def number(value: float | int | None) -> str:
    return "null" if value is None else str(value)


MAX_USER_AGENT = 512  # characters of a client-sent value logged: enough for any real one
STRINGS_KEPT = 4096  # client-given values (host, user agent, address) kept in JSON form
KEPT_LENGTH = 256  # longer values are not remembered: 4096 of them stay under 2 MiB


class Strings:
    """What a client sends, as a JSON string for the log line, remembered per value: the
    same Host, User-Agent and address come again and again, and a dict hit costs less than
    decoding and checking them. Bounded in count and in size: a client sending thousands
    of distinct 16 KiB User-Agents must not make the process hold them."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[bytes | str | None, str] = {None: "null"}

    def json(self, value: bytes | str | None) -> str:
        found = self.known.get(value)
        if found is None:
            assert value is not None  # None is in the table from the start
            text = value[:MAX_USER_AGENT].decode("latin-1") if isinstance(value, bytes) else value
            found = quoted(text[:MAX_USER_AGENT])
            if len(self.known) < STRINGS_KEPT and len(value) <= KEPT_LENGTH:
                self.known[value] = found
        return found


# ".mmmZ" for each millisecond of a second; "000".."999" for the decimals of a duration
_MILLIS = tuple(f".{i:03d}Z" for i in range(1000))
_THOUSANDTHS = tuple(f"{i:03d}" for i in range(1000))


class AccessLog:
    def __init__(self, writer: LineWriter | None = None) -> None:
        self.writer = writer or WRITER
        self.enabled = True
        self.sink: Any = None  # tests observe entries here (a callable taking a dict)
        self._clock = Clock()
        self._second = -1
        self._stamp = ""
        self._strings = Strings()
        self._users: dict[str | None, str] = {None: "null"}

    def request(
        self,
        method: str,
        path: str | None,
        route: str,
        access: str,
        decision: str,
        status: int,
        reason: str | None,
        user_id: str | None,
        duration_s: float,
        upstream_status: int | None,
        upstream_s: float | None,
        client: str,
        host: bytes,
        user_agent: bytes | None,
        request_id: bytes,
        traceparent: bytes,
        tail: str = "",
    ) -> None:
        """One request's line: one f-string. `route` is a JSON string already
        (labels are escaped once); `tail` more `,"key":value` pairs, JSON already; `path` is a
        normalised path, which holds no character JSON would escape; nor does the request id
        (correlation.py admits none) or the traceparent (hex; b"": no trace). `client`,
        `host` and `user_agent` come from the client, and are escaped when they need it."""
        if self.sink is not None:
            self.sink(
                {
                    "method": method,
                    "host": host.decode("latin-1"),
                    "path": path,
                    "route": json.loads(route),
                    "access": access,
                    "decision": decision,
                    "status": status,
                    "reason": reason,
                    "user_id": user_id,
                    "duration_ms": round(duration_s * 1000, 3),
                    "upstream_status": upstream_status,
                    "upstream_ms": None if upstream_s is None else round(upstream_s * 1000, 3),
                    "client": client,
                    "user_agent": None if user_agent is None else user_agent.decode("latin-1"),
                    "request_id": request_id.decode("ascii"),
                    "trace_id": traceparent[3:35].decode("ascii") if traceparent else None,
                    **(json.loads("{" + tail[1:] + "}") if tail else {}),
                }
            )
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # client-sent values and user ids in JSON form: a dict hit each
        strings = self._strings
        known = strings.known
        host_json = known.get(host) or strings.json(host)
        client_json = known.get(client) or strings.json(client)
        agent_json = known.get(user_agent) or strings.json(user_agent)
        user_json = self._users.get(user_id)
        if user_json is None:
            user_json = quoted(user_id)
            if len(self._users) >= STRINGS_KEPT:
                self._users.clear()  # verified ids, but many users: kept for the busy ones
            self._users[user_id] = user_json
        trace = f'"{traceparent[3:35].decode("ascii")}"' if traceparent else "null"
        # durations in whole microseconds, printed as milliseconds with three decimals:
        # integer arithmetic and a table, where a float format spec costs a microsecond
        duration = int(duration_s * 1e6 + 0.5)
        if upstream_s is None:
            upstream_ms = "null"
        else:
            taken = int(upstream_s * 1e6 + 0.5)
            upstream_ms = f"{taken // 1000}.{_THOUSANDTHS[taken % 1000]}"
        path_json = "null" if path is None else f'"{path}"'
        reason_json = "null" if reason is None else f'"{reason}"'
        # one f-string: compiled once, no format parsing per call
        self.writer.later(
            f'{{"ts":"{self._stamp}{_MILLIS[int((now - second) * 1000)]}","level":"info",'
            f'"logger":"clerk_gateway.access","msg":"request","method":"{method}",'
            f'"host":{host_json},"path":{path_json},'
            f'"route":{route},"access":"{access}","decision":"{decision}","status":{status},'
            f'"reason":{reason_json},"user_id":{user_json},'
            f'"duration_ms":{duration // 1000}.{_THOUSANDTHS[duration % 1000]},'
            f'"upstream_status":{"null" if upstream_status is None else upstream_status},'
            f'"upstream_ms":{upstream_ms},"client":{client_json},"user_agent":{agent_json},'
            f'"request_id":"{request_id.decode("ascii")}","trace_id":{trace}{tail}}}'
        )

    def record(self, entry: dict[str, Any]) -> None:
        """A line with the given fields (events that are not a forwarded request)."""
        if self.sink is not None:
            self.sink(entry)
        if not self.enabled:
            return
        self.writer.later(
            _encode(
                {
                    "ts": self._clock.stamp(time.time()),
                    "level": "info",
                    "logger": "clerk_gateway.access",
                    "msg": "request",
                    **entry,
                }
            )
        )

    @property
    def stream(self) -> TextIO | None:
        return self.writer.stream

    @stream.setter
    def stream(self, stream: TextIO) -> None:
        """Access lines to a stream of their own (tests capture them so)."""
        self.writer = LineWriter(stream)

    def flush(self) -> None:
        self.writer.flush()
