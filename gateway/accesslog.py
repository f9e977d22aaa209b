"""The per-request JSON log line, written without the logging module's per-record cost.

`logging` spends tens of microseconds per record (a LogRecord, caller lookup, handler
locks, a write per line); on the request path that is as much as the proxying itself.
Lines here are serialised with the C JSON encoder and written in batches (at most every
0.2 s or 64 KiB), each a complete JSON object on its own line, in the same shape as the
other log lines. Never a token, cookie, query string, secret or body: callers pass only
the fields named in app.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 65_536


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.enabled = True
        self.sink: Callable[[dict[str, Any]], None] | None = None  # tests observe entries here
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def record(self, entry: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(entry)
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = _encode(
            {
                "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
                "level": "info",
                "logger": "clerk_gateway.access",
                "msg": "request",
                **entry,
            }
        )
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

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        stream = self.stream or sys.stdout
        stream.write("\n".join(self._lines) + "\n")
        stream.flush()
        self._lines = []
        self._size = 0
