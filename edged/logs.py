"""Structured logging: key=value text on a terminal, JSON lines for collectors, journald fields
under systemd (through systemd-python when installed). Extra fields come from `extra={...}`."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import time
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD}


# C0/C1 control characters (newline, CR, NUL, ESC...), Unicode line/paragraph separators and bidi
# overrides: a device, a command's id, user or tag, a peer's error text can carry them, and one
# newline lets a stranger write a fake log line (ESC: rewrite the operator's terminal).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape(text: str) -> str:
    """`text` on one line with no control character: each is shown as a backslash escape."""
    return _CONTROL.sub(_escape_one, text)


class TextFormatter(logging.Formatter):
    """One line per record, everything from outside escaped; a traceback follows, indented, so a
    line starting at column 0 is always a record of ours."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extras = " ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname.lower():<7} {escape(record.name)}: {escape(record.getMessage())}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "".join(f"\n  {escape(tb)}" for tb in self.formatException(record.exc_info).splitlines())
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


def _journal_key(name: str) -> str:
    """A journal field name: upper-case letters, digits and _, not starting with _ or a digit."""
    key = re.sub(r"[^A-Z0-9_]", "_", name.upper()).lstrip("_")
    return key if key and not key[0].isdigit() else f"X_{key}"


def _journal_handler() -> logging.Handler | None:
    try:
        journal = importlib.import_module("systemd.journal")  # optional extra: edged[systemd]
    except ImportError:
        return None

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                extra = {_journal_key(k): escape(str(v)) for k, v in _fields(record).items()}
                journal.send(
                    escape(record.getMessage()),
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
