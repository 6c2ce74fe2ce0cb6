"""The one-line machine description every bench prints first (figures mean little without it)."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path


def machine(*extra: str) -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{nproc} cores, {model}", f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}",
             f"{platform.system()} {platform.release()}", *extra]  # fmt: skip
    return ", ".join(parts)
