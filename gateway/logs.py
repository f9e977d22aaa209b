"""One JSON object per log line. Fields come from `extra=`; never a token or a cookie.

Log records are written through the access log's writer (after the access lines pending
before them), so the output stays in time order whatever the batching."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.accesslog import WRITER, LineWriter

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class WriterHandler(logging.Handler):
    """Writes formatted records through the shared line writer, at once."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.now(self.format(record))
        except Exception:
            self.handleError(record)


def configure(level: int = logging.INFO) -> None:
    handler = WriterHandler(WRITER)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would print request lines with query strings (tokens)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
