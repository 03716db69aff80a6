"""JSON logs for every filescan process: one object per line, only whitelisted fields.

Extra fields are copied only when named in :data:`LOG_FIELDS`, so a secret passed to a log call
by accident is not printed. httpx's own request lines are silenced: they carry URLs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any

LOG_FIELDS = (
    "source", "guid", "event_id", "filescan", "job", "phase", "verdict", "outcome", "result", "status",
    "latency_ms", "detail",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; only whitelisted extra fields, so nothing leaks by accident."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in LOG_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: int | str | None = None, *, keep_existing: bool = False) -> None:
    """JSON lines on stderr for our loggers and the libraries'; uvicorn's access log off (it prints
    query strings, and so tokens). The level defaults to ``FILESCAN_LOG_LEVEL`` or INFO.

    ``keep_existing`` leaves a host process's logging alone (the scanner run in-process by tests).
    """
    # httpx logs every request's full URL at INFO (signed URLs carry secrets in the query string).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if keep_existing and logging.getLogger().handlers:
        return
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    if level is None:
        level = os.environ.get("FILESCAN_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "kopf"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)
