"""The Sender against a scripted uplink and a real buffer: the delivery rules without a network."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from edged.config import UplinkBase
from edged.errors import Transient
from edged.model import Batch, Sample, Status
from edged.plugin import Backoff
from peers.delivery import sender_running
from peers.waiting import eventually


class Scripted:
    """An uplink whose `send` runs a script: each call may raise before the batch is accepted."""

    def __init__(self, log: list[Batch], fail: Callable[[Batch], BaseException | None]) -> None:
        self.log = log
        self.fail = fail

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, batch: Batch) -> None:
        exc = self.fail(batch)
        if exc is not None:
            raise exc
        self.log.append(batch)


def _cfg() -> UplinkBase:
    return UplinkBase(name="scripted", type="scripted", batch_size=100)


def _samples(n: int, value: float = 1.0) -> list[Sample]:
    now = time.time_ns()
    return [Sample(f"dev/t{i % 5}", now + i, value + i, Status.GOOD, 100) for i in range(n)]


async def test_a_window_resent_after_a_reconnect_goes_out_as_historical(tmp_path: Path) -> None:
    delivered: list[Batch] = []
    failures = {"left": 1}

    def fail(batch: Batch) -> BaseException | None:
        if not batch.historical and failures["left"]:
            failures["left"] -= 1
            return Transient("the broker went away mid-batch")
        return None

    backoff = Backoff(initial=0.01, cap=0.05)
    async with sender_running(tmp_path, _cfg(), lambda: Scripted(delivered, fail), gateway="gw", backoff=backoff) as (
        buf,
        sender,
    ):
        await eventually(lambda: sender.stats.connects == 1, 10, "the first connect")
        buf.put(_samples(10))
        await buf.flush()
        await eventually(lambda: delivered, 10, "the window re-sent after the reconnect")
        assert sender.stats.connects == 2
        (batch,) = delivered
        assert batch.historical, "minutes-old data must not arrive on the live stream"
        assert len(batch.samples) == 10
        buf.put(_samples(3, value=100.0))
        await eventually(lambda: len(delivered) == 2, 10, "new live data")
        assert not delivered[1].historical
        assert not buf.store.unacked("scripted", buf.head)


async def test_an_acknowledgement_the_buffer_refuses_is_retried_without_a_reconnect(tmp_path: Path) -> None:
    """A lock held by another process (or a full disk) fails `Store.ack`: the Sender keeps the
    connection, retries the write quietly, and the peer sees each batch once, not a burst again."""
    delivered: list[Batch] = []
    backoff = Backoff(initial=0.01, cap=0.05)
    async with sender_running(
        tmp_path, _cfg(), lambda: Scripted(delivered, lambda b: None), gateway="gw", backoff=backoff
    ) as (buf, sender):
        await eventually(lambda: sender.stats.connects == 1, 10, "the first connect")
        await buf.call(lambda: buf.store.db.execute("PRAGMA busy_timeout=20"))
        other = sqlite3.connect(buf.path, isolation_level=None)  # the "backup tool"
        other.execute("PRAGMA busy_timeout=10000")
        try:
            buf.put(_samples(10))
            await buf.flush()  # committed before the lock: only the acknowledgement meets it
            other.execute("BEGIN IMMEDIATE")
            await eventually(
                lambda: sender.stats.ack_errors >= 2 or sender.stats.connects > 1, 10, "the ack to meet the lock"
            )
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        await eventually(lambda: sender.stats.batches == 1, 10, "the acknowledgement recorded")
        assert len(delivered) == 1, "the batch was not sent again"
        assert sender.stats.connects == 1 and sender.stats.errors == 0
        assert not buf.store.unacked("scripted", buf.head)
