"""The durable buffer between drivers and uplinks: the source of truth for every sample.

`Store` is the synchronous SQLite ring (also used by the CLI). `Buffer` runs one Store on a single
dedicated thread, so the event loop never blocks on disk and SQLite sees one writer. Drivers hand
batches to `Buffer.put`; the writer task commits them in one transaction per flush interval or
`flush_rows`, and wakes the uplinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from buffer.store import (
    BufferStatus,
    Range,
    SetAside,
    Store,
    TrimResult,
    UplinkStatus,
    open_or_recover,
    subtract,
    wal_pages,
)
from edged.model import Sample
from edged.plugin import Backoff

__all__ = [
    "Buffer",
    "BufferSettings",
    "BufferStatus",
    "Range",
    "Store",
    "TrimResult",
    "UplinkStatus",
    "default_min_free",
    "estimate_cap",
    "subtract",
    "warn_small_cap",
]

T = TypeVar("T")
log = logging.getLogger("edged.buffer")

MiB = 1024**2


class BufferSettings(Protocol):
    """What the buffer reads of its configuration (edged.config.BufferConfig is one): the buffer
    package depends on no config loader, so a tool or a test can pass any object with these."""

    @property
    def retention(self) -> float: ...  # seconds
    @property
    def max_bytes(self) -> int: ...
    @property
    def flush_interval(self) -> float: ...  # seconds
    @property
    def flush_rows(self) -> int: ...
    @property
    def synchronous(self) -> str: ...  # "normal" | "full"
    @property
    def trim_interval(self) -> float: ...  # seconds
    @property
    def min_free(self) -> int | None: ...  # None: derived from the file system


def default_min_free(fs_bytes: int) -> int:
    """min_free when the config leaves it out: 5 % of the file system, at least 1 MiB (logs and
    the status file need some), at most 64 MiB. A fixed 64 MiB made the cap 0 on a small one."""
    return min(64 * MiB, max(1 * MiB, fs_bytes // 20))


def resolve_min_free(config: BufferSettings, fs_bytes: int) -> int:
    """The configured min_free, or the default for a file system of `fs_bytes`."""
    return default_min_free(fs_bytes) if config.min_free is None else int(config.min_free)


def warn_small_cap(logger: logging.Logger, path: Path, cap: int, config: BufferSettings, min_free: int) -> bool:
    """Warn when the file system holds far less of the buffer (`cap`) than max_bytes promises."""
    if cap >= int(config.max_bytes) // 2:
        return False
    logger.warning(
        "buffer %s: its file system holds only about %.1f MiB of samples (keeping min_free %.1f MiB free),"
        " far below max_bytes %.1f MiB: beyond that the oldest samples are dropped, counted per uplink",
        path,
        max(0, cap) / MiB,
        min_free / MiB,
        int(config.max_bytes) / MiB,
    )
    return True


def estimate_cap(config: BufferSettings, path: Path) -> tuple[int, int]:
    """(samples the buffer at `path` can hold, min_free) from its file system, without opening it:
    for `edged check-config`. Counts what the files already take, less WAL headroom and reserve."""
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # not created yet: the file system it will be on
    st = os.statvfs(probe)
    fs = st.f_blocks * st.f_frsize
    min_free = resolve_min_free(config, fs)
    headroom = 2 * wal_pages(fs, 4096) * 4096  # 4096: SQLite's default page size
    ours = 0
    for suffix in ("", "-wal", ".reserve"):
        with contextlib.suppress(OSError):
            ours += Path(f"{path}{suffix}").stat().st_size
    cap = ours + st.f_bavail * st.f_frsize - min_free - 3 * headroom  # the WAL's and the reserve's
    return min(int(config.max_bytes), cap), min_free


def _add(a: TrimResult, b: TrimResult) -> TrimResult:
    return TrimResult(a.deleted + b.deleted, a.by_age + b.by_age, a.by_size + b.by_size, a.gaps + b.gaps)


def _locked(exc: BaseException) -> bool:
    """SQLITE_BUSY/LOCKED after the busy timeout: a lock held elsewhere, never a reason to delete."""
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED")


class Buffer:
    """Async face of the Store. Every database call runs on the one buffer thread."""

    set_aside: tuple[SetAside, ...] = ()  # unusable buffers this one replaced (status, /health)

    def __init__(self, path: Path, config: BufferSettings, *, max_pending: int = 200_000) -> None:
        self.path = path
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-buffer")
        self._store: Store | None = None
        self._pending: list[Sample] = []
        self._max_pending = max_pending
        self._have_pending = asyncio.Event()
        self._head_changed = asyncio.Event()  # replaced on every commit: waiters hold the old one
        self._flushing = asyncio.Lock()  # one flush at a time, so a flush waits for the one before
        self.head = 0
        self.stored = 0
        self.dropped_ingest = 0  # samples lost before reaching disk (pending overflow on a failing disk)
        self.write_errors = 0
        self.alarm: str | None = None  # set while the disk refuses writes
        self.last_trim = TrimResult()
        self._trim_error: str | None = None
        self._size_drops = 0  # by the writer's trims since maintenance last logged them
        self.min_free = 0  # resolved against the file system on open
        self.reserve_bytes = 0

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
        await self.call(self._fit_to_fs)
        return self

    def _fit_to_fs(self) -> None:
        """Size the WAL, min_free and the reserve to the file system, and say so when it cannot
        hold anything near max_bytes (on a small one the file system, not max_bytes, is the cap)."""
        fs = self.store.fs_bytes()
        self.store.fit_wal(fs)
        self.min_free = resolve_min_free(self.config, fs)
        self.reserve_bytes = 2 * self.store.wal_headroom()  # see the reserve's comment
        self._ensure_reserve()
        room = self.store.space().room(2**62, self._keep_free())
        warn_small_cap(log, self.path, self.store.used_bytes() + room, self.config, self.min_free)

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

    # A ballast file beside the buffer, twice the WAL's working size: when the file system is full
    # anyway (another process filled it, or the WAL was truncated), releasing it lets the checkpoint
    # (which may still have to extend the file by what the WAL holds), the WAL's growth to its
    # working size and the trim through. Its space is accounted as taken while it is
    # missing (`_keep_free`), so the buffer never grows into it and re-creating it never takes space
    # the WAL needs; it comes back only when the file system has room for it and the WAL both.

    @property
    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _reserve_missing(self) -> int:
        try:
            return max(0, self.reserve_bytes - self._reserve_path.stat().st_size)
        except FileNotFoundError:
            return self.reserve_bytes

    def _keep_free(self) -> int:
        """File-system space the buffer must not grow into: min_free and the missing reserve."""
        return self.min_free + self._reserve_missing()

    def _ensure_reserve(self) -> bool:
        missing = self._reserve_missing()
        if not missing:
            return True
        sp = self.store.space()
        if sp.fs_free < missing + max(0, sp.wal_headroom - sp.wal) + sp.margin(2**62, 0):
            return False  # not into space the WAL needs: that would fail the next write (issue 12)
        p = self._reserve_path
        try:
            with open(p, "wb") as fh:
                fh.write(b"\0" * self.reserve_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            p.unlink(missing_ok=True)  # a partial reserve only wastes space
            return False

    def _keep_room(self) -> tuple[TrimResult, bool]:
        """After a flush: trim the oldest when the room left is below the margin (just enough, see
        `Store._size_boundary`), put the reserve back when there is clearly space for it, and say
        whether the buffer has its margin (which clears the full-disk alarm)."""
        total = TrimResult()
        max_bytes = int(self.config.max_bytes)
        sp = self.store.space()  # a few pragmas and a statvfs: cheap enough for every flush
        for _ in range(50):  # each pass deletes about the estimate; a few passes at most
            keep = self._keep_free()
            if sp.room(max_bytes, keep) >= sp.margin(max_bytes, keep):
                break
            res = self.store.trim(retention_ns=int(self.config.retention * 1e9), max_bytes=max_bytes, min_free=keep)
            total = _add(total, res)
            sp = self.store.space()
            if not res.deleted:
                break
        if self._reserve_missing() and self._ensure_reserve():
            sp = self.store.space()
        keep = self._keep_free()
        return total, sp.room(max_bytes, keep) >= sp.margin(max_bytes, keep) // 2

    async def flush_at_exit(self) -> None:
        """The last flush on the way out: a failure is logged with what it costs, never raised."""
        try:
            await self.flush()
        except (sqlite3.Error, OSError) as exc:
            log.error("final flush failed, %d samples not stored: %s", len(self._pending), exc)

    async def flush(self) -> int:
        """Commit pending samples in one transaction; on failure they stay pending. Returns once
        all that was put before the call is committed, also while another flush (the writer's)
        holds part of it: "flush, then read" must see every sample put before."""
        async with self._flushing:
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
                    n = await self.flush()
                except (sqlite3.Error, OSError) as exc:
                    self.write_errors += 1
                    if self.alarm is None:
                        log.error("buffer write failed, keeping %d samples pending: %s", len(self._pending), exc)
                    if _locked(exc):  # another process (a backup, an sqlite3 shell): space is not the problem
                        self.alarm = f"buffer write failed: {exc} (another process holds a lock; samples wait)"
                    else:
                        self.alarm = f"buffer write failed: {exc} (dropping the oldest samples to make room)"
                        await self._make_room()
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if n or self.alarm is not None:
                    await self._after_flush()
        finally:
            # Shutting down: one last flush so nothing queued is lost (the caller stopped drivers first).
            if self._pending and self._store is not None:
                await asyncio.shield(self.flush_at_exit())

    async def _after_flush(self) -> None:
        """Keep the margin after every successful flush, so the disk does not fill between trims;
        the alarm clears as soon as a write succeeded and the margin is there."""
        try:
            res, ok = await self.call(self._keep_room)
        except (sqlite3.Error, OSError) as exc:
            self._note_trim_error(exc)
            return
        self._record_trim(res)
        if ok and self.alarm is not None:
            log.warning("buffer writes recovered; disk space is available again (alarm cleared)")
            self.alarm = None

    async def _make_room(self) -> None:
        """A write failed (disk full): release the reserve, checkpoint so the WAL restarts inside
        its own file, and trim just enough of the oldest for new rows to reuse their pages
        (counted per uplink as gaps). Free pages inside the file already are room: nothing is
        deleted for a shortage only the file system can end, and no TRUNCATE gives the WAL's space
        away to be fought over again."""

        def run() -> TrimResult:
            self._reserve_path.unlink(missing_ok=True)
            with contextlib.suppress(sqlite3.Error):  # may not finish on a full disk; the trim still can
                self.store.checkpoint("PASSIVE")
            res, _ = self._keep_room()
            return res

        try:
            res = await self.call(run)
        except (sqlite3.Error, OSError) as exc:
            self._note_trim_error(exc)
            return
        if self._record_trim(res):
            log.warning("disk full: dropped the %d oldest samples to make room", res.deleted)

    def _record_trim(self, res: TrimResult) -> bool:
        """Count what a trim dropped for the size cap; True when it deleted anything."""
        self._size_drops += res.by_size
        if res.deleted:
            self.last_trim = res
        return bool(res.deleted)

    def _note_trim_error(self, exc: Exception) -> None:
        if self._trim_error != str(exc):  # once per distinct problem, not every flush
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
                    lambda: self.store.trim(
                        retention_ns=int(self.config.retention * 1e9),
                        max_bytes=int(self.config.max_bytes),
                        now_ns=time.time_ns(),
                        min_free=self._keep_free(),  # on the buffer thread: it stats the reserve
                    )
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
            total = _add(total, res)
            if res.deleted == 0:
                break
        dropped, self._size_drops = self._size_drops + total.by_size, 0
        if dropped:
            log.warning("buffer full: dropped the %d oldest samples (counted per uplink as gaps)", dropped)
        if total.deleted:
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
