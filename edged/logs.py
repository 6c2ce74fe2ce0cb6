"""Structured logging: key=value text on a terminal, JSON lines for collectors, journald fields
under systemd (through systemd-python when installed). Extra fields come from `extra={...}`."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **{
                k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                for k, v in _fields(record).items()
            },
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _journal_handler() -> logging.Handler | None:
    try:
        journal = importlib.import_module("systemd.journal")  # optional extra: edged[systemd]
    except ImportError:
        return None

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                extra = {k.upper(): str(v) for k, v in _fields(record).items()}
                journal.send(
                    record.getMessage(),
                    PRIORITY=str({10: 7, 20: 6, 30: 4, 40: 3, 50: 2}.get(record.levelno, 6)),
                    LOGGER=record.name,
                    SYSLOG_IDENTIFIER="edged",
                    **extra,
                )
            except Exception:
                self.handleError(record)

    return Handler()


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once at start-up (and again on reload)."""
    handler: logging.Handler | None = None
    if fmt == "journal" or (fmt == "auto" and os.environ.get("JOURNAL_STREAM")):
        handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("asyncua", "pymodbus", "aiomqtt", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
