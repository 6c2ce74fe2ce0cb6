"""Polling helpers for tests that watch a process or a peer from the outside."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float, what: str, *, interval: float = 0.1) -> None:
    """Poll `pred` until it is truthy. A file not written yet, half-written JSON or a missing key
    count as "not yet": the process under test is running concurrently."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


async def eventually(pred: Callable[[], object], timeout: float, what: str, *, interval: float = 0.02) -> None:
    """The asyncio twin of `wait_until`, for tests whose peers run on the same event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
