"""The durable buffer between drivers and uplinks: the source of truth for every sample.

`Store` is the synchronous SQLite ring (also used by the CLI). `Buffer` runs one Store on a single
dedicated thread, so the event loop never blocks on disk and SQLite sees one writer. Drivers hand
batches to `Buffer.put`; the writer task commits them in one transaction per flush interval or
`flush_rows`, and wakes the uplinks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from buffer.store import BufferStatus, Range, SetAside, Store, TrimResult, UplinkStatus, open_or_recover, subtract
from edged.config import BufferConfig
from edged.model import Sample
from edged.plugin import Backoff

__all__ = ["Buffer", "BufferStatus", "Range", "Store", "TrimResult", "UplinkStatus", "subtract"]

T = TypeVar("T")
log = logging.getLogger("edged.buffer")


class Buffer:
    """Async face of the Store. Every database call runs on the one buffer thread."""

    set_aside: tuple[SetAside, ...] = ()  # unusable buffers this one replaced (status, /health)

    def __init__(self, path: Path, config: BufferConfig, *, max_pending: int = 200_000) -> None:
        self.path = path
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-buffer")
        self._store: Store | None = None
        self._pending: list[Sample] = []
        self._max_pending = max_pending
        self._have_pending = asyncio.Event()
        self._head_changed = asyncio.Event()  # replaced on every commit: waiters hold the old one
        self.head = 0
        self.stored = 0
        self.dropped_ingest = 0  # samples lost before reaching disk (pending overflow on a failing disk)
        self.write_errors = 0
        self.alarm: str | None = None  # set while the disk refuses writes
        self.last_trim = TrimResult()
        self._trim_error: str | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("buffer is not open")
        return self._store

    async def __aenter__(self) -> Buffer:
        # a locked buffer is waited for, then BufferUnavailable; an unusable one is set aside and salvaged
        self._store = await self.call(open_or_recover, self.path, synchronous=self.config.synchronous)
        self.head = self._store.head
        self.set_aside = tuple(await self.call(self._store.set_aside_events))
        await self.call(self._ensure_reserve)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pending:
            await self.flush_at_exit()
        if self._store is not None:
            await self.call(self._store.close)
            self._store = None
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ ingest

    def put(self, samples: list[Sample]) -> None:
        """Queue samples for the next flush. Bounded: on a failing disk the oldest pending go first."""
        self._pending.extend(samples)
        over = len(self._pending) - self._max_pending
        if over > 0:
            del self._pending[:over]
            self.dropped_ingest += over
        if len(self._pending) >= self.config.flush_rows:
            self._have_pending.set()

    # A ballast file beside the buffer: on a full disk, deleting the oldest rows needs WAL space too,
    # so the reserve is released first to let the trim itself through, then re-created.
    RESERVE_BYTES = 2 * 1024 * 1024

    @property
    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _ensure_reserve(self) -> bool:
        p = self._reserve_path
        try:
            if p.exists() and p.stat().st_size >= self.RESERVE_BYTES:
                return True
            with open(p, "wb") as fh:
                fh.write(b"\0" * self.RESERVE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            p.unlink(missing_ok=True)  # a partial reserve only wastes space
            return False

    def _space_again(self) -> bool:
        """The full-disk alarm ends when the reserve is back AND as much again is free: a WAL
        truncation alone frees a little, which the next writes use up, and must not flap the alarm."""
        if not self._ensure_reserve():
            return False
        try:
            return self.store.free_bytes() >= 2 * self.RESERVE_BYTES
        except OSError:
            return False

    async def flush_at_exit(self) -> None:
        """The last flush on the way out: a failure is logged with what it costs, never raised."""
        try:
            await self.flush()
        except (sqlite3.Error, OSError) as exc:
            log.error("final flush failed, %d samples not stored: %s", len(self._pending), exc)

    async def flush(self) -> int:
        """Commit pending samples in one transaction; on failure they stay pending."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            _, last = await self.call(self.store.append, batch)
        except (sqlite3.Error, OSError):
            self._pending[:0] = batch
            raise
        self.stored += len(batch)
        self.head = last
        changed, self._head_changed = self._head_changed, asyncio.Event()
        changed.set()
        return len(batch)

    async def run_writer(self) -> None:
        """The single writer: flush every interval (sooner when flush_rows are pending) until cancelled.

        A failing disk (full, read-only) never stops the daemon: it raises an alarm, trims oldest
        data to make room, and retries with backoff while pending samples wait in memory.
        """
        backoff = Backoff(initial=0.2, cap=10.0)
        interval = float(self.config.flush_interval)
        try:
            while True:
                try:
                    async with asyncio.timeout(interval):  # not wait_for: it can swallow a cancel on 3.11
                        await self._have_pending.wait()
                except TimeoutError:
                    pass
                self._have_pending.clear()
                try:
                    await self.flush()
                except (sqlite3.Error, OSError) as exc:
                    self.write_errors += 1
                    if self.alarm is None:
                        log.error("buffer write failed, keeping %d samples pending: %s", len(self._pending), exc)
                    self.alarm = f"buffer write failed: {exc} (dropping the oldest samples to make room)"
                    await self._make_room()
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if self.alarm is not None and await self.call(self._space_again):
                    log.warning("buffer writes recovered; disk space is available again")
                    self.alarm = None
                backoff.reset()
        finally:
            # Shutting down: one last flush so nothing queued is lost (the caller stopped drivers first).
            if self._pending and self._store is not None:
                await asyncio.shield(self.flush_at_exit())

    async def _make_room(self) -> None:
        """On a full disk, drop the oldest 5% so new samples fit (counted per uplink as gaps).

        The WAL is truncated first: deleting needs WAL space too, and a truncated WAL gives file-system
        space back; the freed database pages are then reused by new samples.
        """
        try:
            self._reserve_path.unlink(missing_ok=True)
            await self.call(self.store.checkpoint, "TRUNCATE")
            used = await self.call(self.store.used_bytes)
            res = await self.call(
                self.store.trim, retention_ns=int(self.config.retention * 1e9), max_bytes=max(1, int(used * 0.95))
            )
            await self.call(self.store.checkpoint, "TRUNCATE")
            self.last_trim = res
            if res.deleted:
                log.warning("disk full: dropped the %d oldest samples to make room", res.deleted)
        except (sqlite3.Error, OSError) as exc:
            if self._trim_error != str(exc):
                log.error("could not make room in the buffer: %s", exc)
            self._trim_error = str(exc)

    # ------------------------------------------------------------------ maintenance

    async def run_maintenance(self) -> None:
        """Retention and size cap, then a passive WAL checkpoint, every trim_interval."""
        while True:
            await asyncio.sleep(float(self.config.trim_interval))
            await self.trim_once()

    async def trim_once(self) -> TrimResult:
        total = TrimResult()
        while True:
            try:
                res = await self.call(
                    self.store.trim,
                    retention_ns=int(self.config.retention * 1e9),
                    max_bytes=int(self.config.max_bytes),
                    now_ns=time.time_ns(),
                    min_free=int(self.config.min_free),
                )
                await self.call(self.store.checkpoint)
            except sqlite3.Error as exc:
                if self._trim_error != str(exc):  # once per distinct problem, not every interval
                    log.error("buffer trim failed: %s", exc)
                self._trim_error = str(exc)
                return total
            if self._trim_error is not None:
                log.info("buffer trim works again")
                self._trim_error = None
            if self.alarm is not None and await self.call(self._space_again):
                log.warning("disk space is available again; buffer alarm cleared")
                self.alarm = None
            total = TrimResult(
                total.deleted + res.deleted,
                total.by_age + res.by_age,
                total.by_size + res.by_size,
                total.gaps + res.gaps,
            )
            if res.deleted == 0:
                break
        if total.by_size:
            log.warning("buffer size cap reached: dropped %d oldest samples", total.by_size)
        self.last_trim = total
        return total

    # ------------------------------------------------------------------ readers

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the head passes `seq`; False on timeout."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self.head <= seq:
            changed = self._head_changed
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):  # not wait_for: it can swallow a cancel on 3.11
                    await changed.wait()
            except TimeoutError:
                return False
        return True
