"""Small asyncio helpers the core and the plugins share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
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


async def tcp_reachable(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to host:port opens now (closed at once): a probe that costs the
    peer a handshake and nothing else, unlike a full TLS + protocol login."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """`contextlib.aclosing` for any async iterator: a generator (what a driver's `samples()`
    usually is) is closed here, at once, rather than by the garbage collector later."""
    try:
        yield stream
    finally:
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
