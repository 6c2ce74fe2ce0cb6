"""Small asyncio helpers the core and the plugins share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def honour_cancel(aw: Awaitable[T]) -> T:
    """Await a library call that may swallow a cancellation, and re-raise one it swallowed.

    On Python 3.11 `asyncio.wait_for` (used inside aiomqtt 2.x for connect, subscribe and publish)
    returns the inner result when the inner awaitable finishes in the same loop iteration as the
    outer task is cancelled: the CancelledError is lost, but the task's `cancelling()` count stays
    raised. A task that carries on after that waits forever in its next await (the Sparkplug sender
    sat in `Buffer.wait_beyond` with `cancelling() == 2`). Wrapping such calls at the plugin
    boundary turns the lost cancellation back into a CancelledError.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        result = await aw
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError() from exc
        raise
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError()
    return result
