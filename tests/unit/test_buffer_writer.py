"""The buffer writer against a real SQLite file that another process has locked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from buffer import Buffer
from edged.config import BufferConfig
from edged.model import Sample, Status
from peers.waiting import eventually


def _samples(n: int) -> list[Sample]:
    now = time.time_ns()
    return [Sample(f"dev/t{i % 3}", now + i, float(i), Status.GOOD, 100) for i in range(n)]


async def test_a_lock_held_elsewhere_delays_writes_and_deletes_nothing(tmp_path: Path) -> None:
    """A backup tool holding the write lock past the busy timeout makes flushes fail; that is not a
    full disk, so nothing is trimmed to "make room", and the samples wait and are stored after."""
    buf = Buffer(tmp_path / "buffer.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
    async with buf, asyncio.TaskGroup() as tg:
        writer = tg.create_task(buf.run_writer(), name="writer")
        buf.put(_samples(1000))
        await buf.flush()
        await buf.call(lambda: buf.store.db.execute("PRAGMA busy_timeout=20"))
        other = sqlite3.connect(buf.path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            buf.put(_samples(50))
            await eventually(lambda: buf.write_errors >= 2, 10, "flushes to meet the lock")
            assert buf.alarm is not None and "lock" in buf.alarm
        finally:
            other.execute("ROLLBACK")
            other.close()
        await eventually(lambda: buf.stored == 1050, 15, "the waiting samples stored")
        await eventually(lambda: buf.alarm is None, 15, "the alarm cleared")
        count = await buf.call(lambda: buf.store.db.execute("SELECT count(*) FROM samples").fetchone()[0])
        assert count == 1050, "nothing was deleted for a lock"
        writer.cancel()
