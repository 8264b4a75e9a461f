"""Log output for ``node-daemon`` and ``idra``: plain text lines or one JSON object a line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import TextIO

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


# Fields a record may carry (``log.info(..., extra={"node_id": ...})``), kept as keys.
FIELDS = ("event", "node_id", "region", "verdict", "done", "total")
# Libraries whose debug lines drown ours; quiet unless asked (``quiet_libraries``).
LIBRARIES = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer", "hpack")


def _entry(created: float, level: str, logger: str, message: str) -> dict:
    return {
        "time": dt.datetime.fromtimestamp(created, dt.UTC).isoformat(),
        "level": level,
        "logger": logger,
        "message": message,
    }


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` per record, plus its ``FIELDS`` and
    ``error`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name,
                       record.getMessage())  # fmt: skip
        entry |= {key: getattr(record, key) for key in FIELDS if hasattr(record, key)}
        if record.exc_info and record.exc_info[0]:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry)


def json_logging() -> bool:
    """The root logger writes JSON (``--log-format json``)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def line(message: str, *, level: str = "info", logger: str = "idra", **fields: object) -> str:
    """A line printed outside logging (the error line, a start banner): the plain
    message, or with ``--log-format json`` one JSON object like a log record's."""
    if not json_logging():
        return message
    return json.dumps(_entry(time.time(), level, logger, message) | fields)


def quiet_libraries(level: int = logging.WARNING) -> None:
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.getLogger().level))


def setup_logging(
    fmt: str = "text", level: str = "info", stream: TextIO | None = None, name: str = "%(name)s"
) -> None:
    """Configure the root logger (replacing its handlers); quiet the libraries' logs."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_libraries()
