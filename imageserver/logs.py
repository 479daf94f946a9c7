"""Structured logs: one JSON object per line on stderr, with any `extra=` fields."""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.http_exceptions import BadHttpMessage

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str]) -> None:
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ClientErrorsAreNotOurs(logging.Filter):
    """aiohttp logs a request line it cannot parse at ERROR with a traceback, yet it is the
    client's mistake and has been answered 400: anyone could fill our error logs (and page
    whoever alerts on them). Such records become one DEBUG line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = "malformed request refused with 400: %s", (error.message,)
            record.exc_info = record.exc_text = None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup(level: str, **static: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    handler.addFilter(ClientErrorsAreNotOurs())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
