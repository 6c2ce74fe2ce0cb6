"""The Sender against a scripted uplink and a real buffer: the delivery rules without a network."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest

from buffer import Store
from edged.config import UplinkBase
from edged.delivery import POISON_TRIES
from edged.errors import Partial, Permanent, Transient
from edged.flow import LinkEstimate
from edged.model import Batch, Sample, Status
from edged.plugin import Backoff
from peers.delivery import sender_running
from peers.waiting import eventually


class Scripted:
    """An uplink whose `send` runs a script: each call may raise before the batch is accepted,
    or wait for `gate`; `closed` makes `is_closed()` report a dead idle connection."""

    def __init__(
        self,
        log: list[Batch],
        fail: Callable[[Batch], BaseException | None],
        *,
        gate: asyncio.Event | None = None,
        closed: list[bool] | None = None,
    ) -> None:
        self.log = log
        self.fail = fail
        self.gate = gate
        self.closed = closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, batch: Batch) -> None:
        if self.gate is not None:
            await self.gate.wait()
        exc = self.fail(batch)
        if exc is not None:
            raise exc
        self.log.append(batch)

    def is_closed(self) -> bool:
        return bool(self.closed and self.closed[0])


def _cfg(**kw: Any) -> UplinkBase:
    return UplinkBase(name="scripted", type="scripted", batch_size=100, **kw)


def _prefill(tmp_path: Path, n: int) -> tuple[int, int]:
    """A backlog in the buffer before the Sender first connects (the uplink then owes all of it)."""
    with Store(tmp_path / "buffer.db") as store:
        return store.append(_samples(n))


FAST = Backoff(initial=0.01, cap=0.05)


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


async def test_live_goes_first_and_the_backlog_takes_its_share(tmp_path: Path) -> None:
    """backfill_share 0.5: while live data waits, live and historical batches alternate; once live
    is drained the backlog takes every batch. Each stream is in seq order."""
    lo, hi = _prefill(tmp_path, 1000)  # 10 historical batches
    delivered: list[Batch] = []
    gate = asyncio.Event()
    async with sender_running(
        tmp_path, _cfg(), lambda: Scripted(delivered, lambda b: None, gate=gate), gateway="gw", backoff=FAST
    ) as (buf, sender):
        await eventually(lambda: sender.stats.connects == 1, 10, "the connect")
        buf.put(_samples(500, value=5000.0))  # 5 live batches, committed while the first send waits
        await buf.flush()
        gate.set()
        await eventually(lambda: len(delivered) == 15, 10, "every batch")
    kinds = "".join("H" if b.historical else "L" for b in delivered)
    assert kinds == "H" + "LH" * 5 + "HHHH"
    for historical in (True, False):
        seqs = [s.seq for b in delivered if b.historical is historical for s in b.samples]
        assert seqs == sorted(seqs)
    assert [s.seq for b in delivered if b.historical for s in b.samples] == list(range(lo, hi + 1))


@pytest.mark.parametrize("on_reject", ["skip", "halt"])
async def test_a_refused_batch_is_skipped_or_halts(tmp_path: Path, on_reject: str) -> None:
    delivered: list[Batch] = []
    refusals = [0]

    def fail(batch: Batch) -> BaseException | None:
        if batch.samples and batch.samples[0].value == 666.0 and refusals[0] < 3:
            refusals[0] += 1
            return Permanent("the peer's schema refuses it")
        return None

    async with sender_running(
        tmp_path, _cfg(on_reject=on_reject), lambda: Scripted(delivered, fail), gateway="gw", backoff=FAST
    ) as (buf, sender):
        await eventually(lambda: sender.stats.connects == 1, 10, "the connect")
        buf.put(_samples(10, value=666.0))
        await buf.flush()
        if on_reject == "skip":
            await eventually(lambda: sender.stats.rejected == 10, 10, "the refusal counted")
            assert refusals[0] == 1 and delivered == [] and sender.stats.connects == 1
            assert not buf.store.unacked("scripted", buf.head), "skipped: acknowledged, not owed"
        else:
            # halted: the same window is offered again after each reconnect until the peer takes it
            await eventually(lambda: len(delivered) == 1, 10, "the window accepted on the 4th try")
            assert refusals[0] == 3 and sender.stats.rejected == 0 and sender.stats.connects == 4
            assert len(delivered[0].samples) == 10
        assert sender.stats.sent_live + sender.stats.sent_historical == len(delivered) * 10


async def test_a_partial_acceptance_counts_what_was_accepted(tmp_path: Path) -> None:
    delivered: list[Batch] = []

    def fail(batch: Batch) -> BaseException | None:
        return Partial("two unknown tags", accepted=range(2, len(batch.samples)), rejected=[0, 1])

    async with sender_running(tmp_path, _cfg(), lambda: Scripted(delivered, fail), gateway="gw", backoff=FAST) as (
        buf,
        sender,
    ):
        await eventually(lambda: sender.stats.connects == 1, 10, "the connect")
        buf.put(_samples(10))
        await buf.flush()
        await eventually(lambda: sender.stats.batches == 1, 10, "the batch settled")
        assert sender.stats.rejected == 2 and sender.stats.sent_live == 8
        assert not buf.store.unacked("scripted", buf.head)


async def test_a_window_that_crashes_the_plugin_is_skipped_after_the_poison_limit(tmp_path: Path) -> None:
    delivered: list[Batch] = []
    crashes = [0]

    def fail(batch: Batch) -> BaseException | None:
        if any(s.value == 13.0 for s in batch.samples):
            crashes[0] += 1
            return ValueError("a plugin bug triggered by this record")
        return None

    async with sender_running(tmp_path, _cfg(), lambda: Scripted(delivered, fail), gateway="gw", backoff=FAST) as (
        buf,
        sender,
    ):
        await eventually(lambda: sender.stats.connects == 1, 10, "the connect")
        buf.put(_samples(1, value=13.0))
        await buf.flush()
        await eventually(lambda: sender.stats.rejected == 1, 10, "the poisoned window skipped")
        assert crashes[0] == POISON_TRIES
        buf.put(_samples(3, value=1.0))
        await eventually(lambda: len(delivered) == 1, 10, "the next batch flows")
        assert not buf.store.unacked("scripted", buf.head)


async def test_gap_records_go_out_before_samples(tmp_path: Path) -> None:
    hour = 3600 * 10**9
    with Store(tmp_path / "buffer.db") as store:
        store.register_uplink("scripted")
        old = [Sample("dev/t", time.time_ns() - 2 * hour + i, float(i), Status.GOOD, 100) for i in range(50)]
        lo, hi = store.append(old)
        store.append(_samples(20, value=100.0))
        assert store.trim(retention_ns=hour, max_bytes=10**12).deleted == 50  # never sent: owed as a gap
    delivered: list[Batch] = []
    async with sender_running(
        tmp_path, _cfg(), lambda: Scripted(delivered, lambda b: None), gateway="gw", backoff=FAST
    ):
        await eventually(lambda: len(delivered) == 2, 10, "the gap record, then the samples")
    gap_batch, samples_batch = delivered
    assert gap_batch.samples == [] and [(g.lo_seq, g.hi_seq, g.count) for g in gap_batch.gaps] == [(lo, hi, 50)]
    assert len(samples_batch.samples) == 20 and samples_batch.historical


async def test_a_connection_that_dies_while_idle_is_replaced_before_data_waits(tmp_path: Path) -> None:
    delivered: list[Batch] = []
    closed = [False]
    async with sender_running(
        tmp_path, _cfg(), lambda: Scripted(delivered, lambda b: None, closed=closed), gateway="gw", backoff=FAST
    ) as (_buf, sender):
        await eventually(lambda: sender.stats.connects == 1, 10, "the connect")
        closed[0] = True
        await eventually(lambda: sender.stats.connects >= 2, 10, "a reconnect with no data waiting")
        closed[0] = False
        assert sender.stats.last_error is not None and "idle" in sender.stats.last_error


async def test_backoff_resets_only_once_the_peer_acknowledged_something(tmp_path: Path) -> None:
    delivered: list[Batch] = []
    failing = [True]

    def fail(batch: Batch) -> BaseException | None:
        return Transient("connected, but every publish fails") if failing[0] else None

    backoff = Backoff(initial=0.01, cap=0.05)
    async with sender_running(tmp_path, _cfg(), lambda: Scripted(delivered, fail), gateway="gw", backoff=backoff) as (
        buf,
        sender,
    ):
        buf.put(_samples(5))
        await buf.flush()
        await eventually(lambda: sender.stats.connects >= 4, 10, "several connects that deliver nothing")
        assert backoff.attempt >= 3, "a connect alone is no proof of health"
        failing[0] = False
        await eventually(lambda: len(delivered) == 1, 10, "the delivery")
        await eventually(lambda: backoff.attempt == 0, 10, "the reset after the acknowledgement")


class _PortConfig(UplinkBase):
    port: int = 0

    def peer_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", self.port)


class _TcpUplink(Scripted):
    """Connects a real TCP socket first, like a broker client: refused while the peer is down."""

    def __init__(self, port: int, log: list[Batch], *, login_ok: bool = True, closed: list[bool]) -> None:
        super().__init__(log, lambda b: None, closed=closed)
        self.port, self.login_ok = port, login_ok

    async def __aenter__(self) -> Self:
        try:
            _, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            raise Transient(f"connection refused: {exc}") from exc
        if not self.login_ok:
            self.writer.close()
            raise Transient("the broker is up but refuses the login for now")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()


async def _listen(port: int = 0) -> asyncio.Server:
    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    return await asyncio.start_server(serve, "127.0.0.1", port)


async def test_a_peer_back_after_a_long_outage_is_reconnected_within_about_a_second(tmp_path: Path) -> None:
    """The backoff has grown long (15-30 s here); the peer's port is probed about once a second
    while it is unreachable, so the reconnect follows its return instead of the backoff."""
    server = await _listen()
    port = server.sockets[0].getsockname()[1]
    closed = [False]
    delivered: list[Batch] = []
    slow = Backoff(initial=30.0, cap=60.0)
    cfg = _PortConfig(name="scripted", type="scripted", port=port)
    async with sender_running(
        tmp_path, cfg, lambda: _TcpUplink(port, delivered, closed=closed), gateway="gw", backoff=slow
    ) as (buf, sender):
        await eventually(lambda: sender.stats.connects == 1, 10, "the first connect")
        server.close()
        await server.wait_closed()
        closed[0] = True  # the connection dies with the peer: the backoff starts at 15-30 s
        await eventually(lambda: sender.stats.state == "backoff", 10, "the sender to notice")
        closed[0] = False
        server = await _listen(port)
        try:
            await eventually(lambda: sender.stats.connects == 2, 10, "a reconnect long before the backoff ends")
            assert sender.stats.probed_reconnects == 1
            buf.put(_samples(3))
            await eventually(lambda: len(delivered) == 1, 10, "delivery after the return")
        finally:
            server.close()


async def test_a_peer_that_answers_but_fails_the_login_gets_the_plain_backoff(tmp_path: Path) -> None:
    server = await _listen()
    port = server.sockets[0].getsockname()[1]
    cfg = _PortConfig(name="scripted", type="scripted", port=port)
    try:
        async with sender_running(
            tmp_path, cfg, lambda: _TcpUplink(port, [], login_ok=False, closed=[False]), gateway="gw",
            backoff=Backoff(initial=30.0, cap=60.0),
        ) as (_buf, sender):  # fmt: skip
            await eventually(lambda: sender.stats.errors == 1, 10, "the refused login")
            await asyncio.sleep(2.5)  # an observation window: nothing may happen in it
            assert sender.stats.errors == 1 and sender.stats.probed_reconnects == 0, "no hammering of a busy peer"
    finally:
        server.close()


# ----------------------------------------------------------------------------------------- the window


class Held:
    """A Windowed uplink whose every send waits until the test answers it: acks in any order."""

    def __init__(self, window: int, pending: dict[tuple[int, int], asyncio.Future[None]], log: list[Batch]) -> None:
        self._window = window
        self.pending = pending
        self.log = log

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for f in self.pending.values():
            f.cancel()
        self.pending.clear()

    def window(self) -> int:
        return self._window

    async def send(self, batch: Batch) -> None:
        self.log.append(batch)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[(batch.lo_seq, batch.hi_seq)] = fut
        await fut


class WideOpen(LinkEstimate):
    """The link estimate of a link already measured as fast: the window is bounded by its slots."""

    def budget(self, floor: int) -> int:
        return 10**9


async def test_a_window_keeps_batches_in_flight_acks_in_any_order_and_resends_only_what_was_owed(
    tmp_path: Path,
) -> None:
    lo, _ = _prefill(tmp_path, 1000)
    pending: dict[tuple[int, int], asyncio.Future[None]] = {}
    sent: list[Batch] = []
    cfg = _cfg(max_inflight=4, linger=0.0)
    async with sender_running(tmp_path, cfg, lambda: Held(4, pending, sent), gateway="gw", backoff=FAST) as (
        buf,
        sender,
    ):
        sender.link = WideOpen()
        # the backlog is historical: it leaves one of the 4 slots to live data
        await eventually(lambda: len(pending) == 3, 10, "three historical batches in flight")
        first, second, third = sorted(pending)
        assert first[0] == lo and second[0] == first[1] + 1 and third[0] == second[1] + 1
        pending.pop(third).set_result(None)  # the last one acknowledged first
        await eventually(lambda: buf.store.acked("scripted") == [third], 10, "the third ack recorded alone")
        await eventually(lambda: len(pending) == 3, 10, "the freed slot refilled")
        fourth = max(pending)
        assert fourth[0] == third[1] + 1, "the next batch starts after what is in flight, not at the hole"
        # live data takes the slot historical leaves free
        buf.put(_samples(5, value=500.0))
        await eventually(lambda: len(pending) == 4, 10, "a live batch beside a full historical window")
        live = max(pending)
        assert not sent[-1].historical and live[0] == buf.head - 4
        pending.pop(second).set_result(None)
        await eventually(lambda: buf.store.acked("scripted") == [(second[0], third[1])], 10, "the second ack")
        owed = {first, fourth, live}
        pending[first].set_exception(Transient("the connection dropped"))
        await eventually(lambda: sender.stats.connects == 2, 10, "the reconnect")
        await eventually(lambda: len(pending) >= 3, 10, "the re-sent windows")
        resent = sent[-len(pending) :]
        assert {(b.lo_seq, b.hi_seq) for b in resent[:3]} == owed, "each unacknowledged window, same bounds"
        assert all(b.historical for b in resent[:3]), "re-sent windows are no longer live"
        assert resent[0].lo_seq == first[0], "oldest first"

        def answer_all() -> bool:
            for k in [k for k, f in pending.items() if not f.done()]:
                pending.pop(k).set_result(None)
            return not buf.store.unacked("scripted", buf.head)

        await eventually(answer_all, 10, "all acknowledged")
        assert sum(1 for b in sent if (b.lo_seq, b.hi_seq) == second) == 1, "an acknowledged window is not re-sent"
    assert sender.stats.peak_in_flight == 4


async def test_halt_on_reject_sends_one_batch_at_a_time(tmp_path: Path) -> None:
    _prefill(tmp_path, 500)
    pending: dict[tuple[int, int], asyncio.Future[None]] = {}
    sent: list[Batch] = []
    cfg = _cfg(max_inflight=8, on_reject="halt")
    async with sender_running(tmp_path, cfg, lambda: Held(8, pending, sent), gateway="gw", backoff=FAST) as (
        _buf,
        sender,
    ):
        sender.link = WideOpen()
        for n in range(1, 4):
            await eventually(lambda n=n: len(sent) == n, 10, f"batch {n}")
            assert len(pending) == 1, "never a second batch before the first is answered"
            pending.popitem()[1].set_result(None)
    assert sender.stats.window == 1
