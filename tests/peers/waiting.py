"""Polling helpers for tests that watch a process or a peer from the outside."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edged.daemon import Daemon
    from edged.model import Sample


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


async def until(pred: Callable[[], Awaitable[object]], timeout: float, what: str, *, interval: float = 0.05) -> None:
    """`eventually` for an async predicate (one that reads the buffer on its thread, say)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def daemon_samples(daemon: Daemon) -> list[Sample]:
    """Everything an in-process daemon has committed so far (none before its buffer is open)."""
    buf = daemon.buffer
    try:
        store = buf.store
    except RuntimeError:
        return []
    samples, _ = await buf.call(store.read, 1, buf.head, 1_000_000)
    return samples
