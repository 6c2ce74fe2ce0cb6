"""Live-first store-and-forward: one Sender per uplink reads the buffer and acknowledges into it.

On every (re)connect the sender notes the buffer head H. Samples above H are the live stream, sent
as soon as they are committed. Everything at or below H that the uplink never acknowledged is the
backlog, sent oldest-first as historical batches that take at most `backfill_share` of the batches
while live data is waiting (all of them when it is not). Each acknowledged window is recorded in the
buffer in one transaction, so a crash or a lost connection resumes exactly at what is still owed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from buffer import Buffer
from buffer.store import Range, subtract
from edged.aio import tcp_reachable
from edged.config import UplinkBase, tag_matcher
from edged.errors import Partial, Permanent, RetryAfter, Transient
from edged.flow import LinkEstimate, Stamp
from edged.model import Batch, Gap, Sample
from edged.plugin import Backoff, ClosedAware, Counted, Tally, Uplink, Windowed


class Halted(Transient):
    """The peer refused a batch for good and the uplink has `on_reject = "halt"`: keep it owed."""


PROBE_EVERY_S = 1.0  # while a peer is unreachable, check about this often whether it is back
POISON_TRIES = 3  # a window that crashes the plugin this many times in a row is skipped
POLL_S = 0.02  # while the window is full, how often waiting work looks for new live data
UplinkFactory = Callable[[], AbstractAsyncContextManager[Uplink]]


@dataclass(slots=True)
class SenderStats:
    state: str = "starting"  # starting | connecting | connected | backoff | stopped
    connects: int = 0
    sent_live: int = 0
    sent_historical: int = 0
    batches: int = 0
    rejected: int = 0
    gaps_sent: int = 0
    errors: int = 0
    probed_reconnects: int = 0  # reconnects started early because a probe found the peer back
    ack_errors: int = 0  # acknowledgements that could not be recorded at once (disk full, locked)
    last_error: str | None = None
    last_ack_ns: int | None = None
    live_lag_s: float = 0.0  # age of the newest live sample at its acknowledgement
    window: int = 1  # batches this connection may have in flight (max_inflight and the peer's limit)
    in_flight: int = 0  # batches sent, not yet acknowledged
    peak_in_flight: int = 0
    rtt_ms: float | None = None  # the shortest round trip lately, send to acknowledgement
    rate: float = 0.0  # the best delivery rate lately, samples/s


@dataclass(slots=True)
class _InFlight:
    lo: int
    hi: int
    samples: int
    historical: bool


class _PayloadBytes:
    """Payload bytes per sample on this uplink's wire, from its `payload_bytes` counter (Counted),
    so batches and the window can be bounded in bytes; None for an uplink that does not count."""

    def __init__(self) -> None:
        self._uplink: Counted | None = None
        self._samples = 0
        self.per_sample: float | None = None

    def attach(self, uplink: object) -> None:
        self._uplink = uplink if isinstance(uplink, Counted) else None
        self._samples = 0

    def submitted(self, samples: int) -> None:
        self._samples += samples

    def update(self) -> None:
        if self._uplink is None or self._samples == 0:
            return
        written = self._uplink.counters().get("payload_bytes")
        if written:
            self.per_sample = max(0.01, written / self._samples)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a session's TaskGroup, unwrapped for the supervisor."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Sender:
    """Delivers one uplink's share of the buffer, retrying the peer with capped jittered backoff."""

    def __init__(
        self,
        buffer: Buffer,
        config: UplinkBase,
        factory: UplinkFactory,
        *,
        gateway_id: str,
        log: logging.Logger,
        backoff: Backoff | None = None,
    ) -> None:
        self.buffer = buffer
        self.config = config
        self.name = config.name
        self.factory = factory
        self.gateway_id = gateway_id
        self.log = log
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self.stats = SenderStats()
        self._retry: list[Range] = []  # the batches in flight when a session failed: re-sent first
        self._inflight: dict[int, _InFlight] = {}  # by lo seq
        self._inflight_samples = 0
        self._hist_inflight = 0  # historical batches among them
        self._acked = asyncio.Event()
        self._bytes = _PayloadBytes()
        self.link = LinkEstimate()
        self._poison: tuple[int, int, int] | None = None  # (lo, hi, tries): a window that crashed the plugin
        self._keep = tag_matcher(config.tags) if config.tags else None  # None: no filtering work
        self._ratio = config.backfill_share / (1.0 - config.backfill_share)
        self._range: tuple[int, int] | None = None  # a bounded replay: only this seq range, then return
        self.tally = Tally()  # the plugin's own counters over its reconnects (status, metrics)

    async def run(self) -> None:
        """Connect, deliver until the peer fails, back off, repeat; until cancelled.

        Optional uplink capabilities (edged.plugin): ClosedAware (checked while idle, so a dead
        connection is replaced before data waits on it) and Counted (the plugin's own figures,
        shown in status and metrics).
        """
        await self.buffer.call(self.buffer.store.register_uplink, self.name, self.config.start_from)
        await self._supervise(attempts=None)

    async def replay(self, lo: int, hi: int, *, attempts: int = 8) -> None:
        """Deliver what is owed in lo..hi and return once nothing in it is owed: `edged replay`
        with no daemon running. The same code as `run`, so Partial, Permanent, `on_reject`, gap
        records, poisoned windows and the same-window resend behave exactly as in the daemon; it
        raises Transient after `attempts` sessions in a row that acknowledged nothing, and at once
        when a rejected batch halts the uplink (`on_reject = "halt"`: the daemon would retry it)."""
        self._range = (lo, hi)
        await self._supervise(attempts=attempts)

    async def _supervise(self, *, attempts: int | None) -> None:
        failures = 0
        while True:
            self.stats.state = "connecting"
            failure: BaseException = Transient("the uplink closed")
            acked_before = self.stats.batches
            try:
                async with self.factory() as uplink:
                    self.tally.attach(uplink)
                    self.stats.state = "connected"
                    self.stats.connects += 1
                    self.log.info("uplink connected", extra={"uplink": self.name})
                    await self._deliver(uplink)
                    return  # only a bounded replay returns: its range is delivered
            except (Transient, Permanent, OSError, TimeoutError) as exc:
                failure = exc
            except Exception as exc:  # a plugin bug must not stop the other uplinks
                self.log.exception("uplink %s failed unexpectedly", self.name, extra={"uplink": self.name})
                failure = exc
            self.tally.detach()
            self._failed(failure)
            failures = 0 if self.stats.batches > acked_before else failures + 1
            if attempts is not None and isinstance(failure, Halted):
                raise Transient(f"uplink {self.name}: {failure}") from failure
            if attempts is not None and failures >= attempts:
                raise Transient(f"uplink {self.name}: nothing delivered in {attempts} attempts: {failure}") from failure
            self.stats.state = "backoff"
            await self._wait_before_retry(self._delay_after(failure), failure)

    async def _wait_before_retry(self, delay: float, failure: BaseException) -> None:
        """Sleep out the backoff, but reconnect within about a second of the peer coming back.

        The backoff grows to `cap` during a long outage, so a broker back after 3 minutes could
        wait another 30 s for us. When the failure left the peer unreachable (no TCP connection
        at all), its port is probed about once a second, jittered, while waiting: a handshake, not
        a TLS + protocol login, and a gateway fleet does not probe in step. A peer that answers
        but refuses or fails the login (bad credentials, an overloaded broker) gets the plain
        backoff; a reconnect the probe triggered that fails again keeps growing the backoff.
        """
        endpoint = self.config.peer_address()
        if endpoint is None or delay <= PROBE_EVERY_S or isinstance(failure, Permanent | RetryAfter):
            await asyncio.sleep(delay)
            return
        if await tcp_reachable(*endpoint):  # up, but the connect failed: not ours to hurry
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, PROBE_EVERY_S * self.backoff.rng.uniform(0.75, 1.25)))
            if loop.time() < deadline and await tcp_reachable(*endpoint):
                self.stats.probed_reconnects += 1
                self.log.info(
                    "uplink %s: %s:%d answers again, reconnecting now",
                    self.name,
                    *endpoint,
                    extra={"uplink": self.name},
                )
                return

    def _delay_after(self, exc: BaseException) -> float:
        """Backoff before reconnecting: at least what the peer asked for; a refused connect (bad
        credentials, untrusted certificate) waits the cap, since retrying soon cannot help."""
        delay = self.backoff.next_delay()
        if isinstance(exc, RetryAfter):
            delay = max(delay, exc.delay)
        elif isinstance(exc, Permanent):
            delay = max(delay, self.backoff.cap)
        return delay

    def _failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        msg = f"{type(exc).__name__}: {exc}"
        if msg != self.stats.last_error:
            self.log.warning("uplink %s down: %s", self.name, msg, extra={"uplink": self.name})
        self.stats.last_error = msg

    async def _deliver(self, uplink: Uplink) -> None:
        """One session: feed the window until the peer fails (or a bounded replay is done).

        Each batch's send runs as a task of this session's TaskGroup and records its own ack, so
        acks land in any order. When the session ends, whatever was still in flight becomes the
        retry list: re-sent first on the next connection, each with the same bounds."""
        try:
            async with asyncio.TaskGroup() as tg:
                await self._feed(uplink, tg)
        except BaseExceptionGroup as group:
            raise _first(group) from None
        finally:
            self._retry = sorted([(p.lo, p.hi) for p in self._inflight.values()] + self._retry)
            self._inflight.clear()
            self._inflight_samples = self._hist_inflight = 0
            self.stats.in_flight = 0

    def _slots(self, uplink: Uplink) -> int:
        """Batches in flight at once. `on_reject = "halt"` sends one at a time: nothing after a
        refused batch may have gone out when the refusal comes back."""
        if isinstance(uplink, Windowed) and self.config.on_reject != "halt":
            return max(1, min(self.config.max_inflight, uplink.window()))
        return 1

    async def _feed(self, uplink: Uplink, tg: asyncio.TaskGroup) -> None:
        buf, store = self.buffer, self.buffer.store
        live_pos = buf.head  # live after this; anything owed at or below it is backlog
        since = None
        if self._range is not None:  # a bounded replay: all of it is backlog, nothing is live
            since, live_pos = self._range
        slots = self._slots(uplink)
        self.stats.window = slots
        self._bytes.attach(uplink)
        while self._retry:
            # The same windows first, with the same bounds: a peer that deduplicates by batch
            # (HTTP Idempotency-Key from gateway, lo, hi) recognises one even if it did arrive.
            # They are older than the new live position, so they go out as historical even if
            # they were live when first sent: a receiver must not take old values for current ones.
            while len(self._inflight) >= slots:
                await self._wait_ack(None)
            lo, hi = self._retry[0]
            owed = await buf.call(store.unacked, self.name, hi, limit=1, from_seq=lo)
            if owed and owed[0][0] == lo:
                samples, _ = await buf.call(store.read, lo, hi, hi - lo + 1)
                self._submit(tg, uplink, samples, lo, hi, historical=True)
            self._retry.pop(0)
        credit = 0.0
        while True:
            gaps = await buf.call(store.pending_gaps, self.name)
            if gaps:
                while self._inflight:  # gap records go out on their own, after what is in flight
                    await self._wait_ack(None)
                await self._send_gaps(uplink, gaps)
                continue
            hole = await self._next_hole(live_pos, since)
            have_live = since is None and buf.head > live_pos
            live_room = len(self._inflight) < slots
            hist_room = len(self._inflight) < max(1, slots - 1) and self._bulk_allowed()
            # historical leaves a slot free, so a live batch never waits for the window
            if have_live and live_room and (hole is None or credit < 1.0 or not hist_room):
                if self._inflight and self.config.linger > 0 and buf.head - live_pos < self._count():
                    # the link is busy anyway: let the next polls join this batch
                    await buf.wait_beyond(live_pos + self._count() - 1, timeout=float(self.config.linger))
                samples, covered = await buf.call(store.read, live_pos + 1, buf.head, self._count())
                self._submit(tg, uplink, samples, live_pos + 1, covered, historical=False)
                live_pos = covered
                credit += self._ratio if hole is not None else 0.0
            elif hole is not None and hist_room:
                lo, hi = hole
                samples, covered = await buf.call(store.read, lo, hi, self._count())
                self._submit(tg, uplink, samples, lo, covered, historical=True)
                credit = max(0.0, credit - 1.0)
            elif hole is not None or have_live:
                await self._wait_ack(POLL_S)  # work waits for room in the window
            elif since is not None:
                if not self._inflight:
                    return  # the replayed range is delivered
                await self._wait_ack(None)
            else:
                await buf.wait_beyond(live_pos, timeout=1.0)
                if not self._inflight and isinstance(uplink, ClosedAware) and uplink.is_closed():
                    # an idle connection that died: reconnect now, not when the next sample comes
                    raise Transient("connection lost while idle")

    async def _next_hole(self, live_pos: int, since: int | None) -> Range | None:
        """The oldest owed range at or below the live position that is not in flight already."""
        inflight = sorted((p.lo, p.hi) for p in self._inflight.values() if p.lo <= live_pos)
        # each batch in flight lies inside one owed range, so one more range than batches will do
        holes = await self.buffer.call(
            self.buffer.store.unacked, self.name, live_pos, limit=len(inflight) + 1, from_seq=since
        )
        for lo, hi in holes:
            free = subtract(lo, hi, inflight)
            if free:
                return free[0]
        return None

    def _count(self) -> int:
        """Samples to read for the next batch: `batch_size`, fewer where `batch_bytes` binds."""
        per = self._bytes.per_sample
        size = self.config.batch_size
        return size if per is None else max(1, min(size, int(self.config.batch_bytes / per)))

    def _bulk_allowed(self) -> bool:
        """Another historical batch fits: the link's bandwidth x delay (edged.flow), and
        `max_inflight_bytes` (one batch always may go when nothing is in flight)."""
        if not self._inflight:
            return True
        per = self._bytes.per_sample
        if per is not None and self._inflight_samples * per >= self.config.max_inflight_bytes:
            return False
        return self.link.bulk_allowed(
            bulk_in_flight=self._hist_inflight, in_flight=self._inflight_samples, floor=self._count()
        )

    async def _wait_ack(self, timeout: float | None) -> None:
        """Until a batch in flight is acknowledged (or `timeout`, to look at new live data again)."""
        self._acked.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._acked.wait()
        except TimeoutError:
            pass

    def _submit(
        self, tg: asyncio.TaskGroup, uplink: Uplink, samples: list[Sample], lo: int, hi: int, *, historical: bool
    ) -> None:
        keep = self._keep
        if keep is not None:
            samples = [s for s in samples if keep(s.tag)]
        stamp = self.link.sent(bulk=historical, bulk_in_flight=self._hist_inflight)
        self._inflight[lo] = _InFlight(lo, hi, len(samples), historical)
        self._inflight_samples += len(samples)
        self._hist_inflight += historical
        self._bytes.submitted(len(samples))
        self.stats.in_flight = len(self._inflight)
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        batch = Batch(self.gateway_id, lo, hi, historical, samples)
        # tasks start in the order they are made, and an uplink writes before its first await:
        # so batches reach the peer in this order even with several in flight
        tg.create_task(self._send(uplink, batch, stamp), name=f"send:{self.name}:{lo}-{hi}")

    async def _send(self, uplink: Uplink, batch: Batch, stamp: Stamp) -> None:
        lo, hi, samples = batch.lo_seq, batch.hi_seq, batch.samples
        sent = len(samples)
        if samples:
            try:
                await uplink.send(batch)
            except Transient:
                raise
            except Partial as exc:
                self._rejected(len(exc.rejected), exc)
                sent = len(exc.accepted)
            except Permanent as exc:
                self._rejected(len(samples), exc)
                sent = 0
            except Exception as exc:  # a plugin bug triggered by this batch's content
                if not self._poisoned(lo, hi, exc):
                    raise
                sent = 0
            else:
                if self._poison is not None and self._poison[:2] == (lo, hi):
                    self._poison = None
        await self._record_ack(lo, hi, sent=sent)
        done = self._inflight.pop(lo)
        self._inflight_samples -= done.samples
        self._hist_inflight -= done.historical
        self.link.acked(stamp, max(1, done.samples))
        self.stats.in_flight = len(self._inflight)
        self.stats.rtt_ms = None if self.link.rtt is None else round(self.link.rtt * 1000, 1)
        self.stats.rate = round(self.link.rate)
        self._bytes.update()
        self._acked.set()
        self.backoff.reset()  # only once the peer answered a batch: a connect alone proves little
        self.stats.batches += 1
        now = time.time_ns()
        self.stats.last_ack_ns = now
        if batch.historical:
            self.stats.sent_historical += sent
        else:
            self.stats.sent_live += sent
            if samples:
                self.stats.live_lag_s = (now - samples[-1].ts_ns) / 1e9

    async def _record_ack(self, lo: int, hi: int, *, sent: int = 0, gap_ids: list[int] | None = None) -> None:
        """Record the peer's acknowledgement, retrying quietly while the buffer refuses the write.

        A failed acknowledgement write (disk full, a lock held by another process) is a storage
        problem, not an uplink failure: reconnecting would re-send the batch and every one after it.
        The samples stay in the buffer meanwhile, so a crash during the wait costs one duplicate
        batch, never data. The writer's disk-full handling makes the room this write needs.
        """
        backoff = Backoff(initial=0.1, cap=5.0)
        problem: str | None = None
        while True:
            try:
                await self.buffer.call(self.buffer.store.ack, self.name, lo, hi, sent=sent, gap_ids=gap_ids or ())
            except (sqlite3.Error, OSError) as exc:
                self.stats.ack_errors += 1
                if str(exc) != problem:
                    problem = str(exc)
                    self.log.warning(
                        "uplink %s: cannot record the acknowledgement of %d..%d yet, retrying: %s",
                        self.name, lo, hi, exc, extra={"uplink": self.name},
                    )  # fmt: skip
                await asyncio.sleep(backoff.next_delay())
                continue
            if problem is not None:
                self.log.info("uplink %s: acknowledgements recorded again", self.name, extra={"uplink": self.name})
            return

    def _poisoned(self, lo: int, hi: int, exc: Exception) -> bool:
        """True once the same window has crashed the plugin POISON_TRIES times in a row: it is then
        skipped (counted, logged with the traceback) so one bad record cannot block an uplink
        forever. Before that it is retried after a reconnect, in case the failure was transient.
        Only its own success clears the count: other batches of the window may well succeed."""
        tries = self._poison[2] + 1 if self._poison and self._poison[:2] == (lo, hi) else 1
        self._poison = (lo, hi, tries)
        if tries < POISON_TRIES:
            return False
        self._poison = None
        self.stats.rejected += hi - lo + 1
        self.log.error(
            "uplink %s: batch %d..%d failed %d times with %s: skipped (a plugin bug; please report it)",
            self.name, lo, hi, tries, type(exc).__name__, exc_info=exc, extra={"uplink": self.name},
        )  # fmt: skip
        return True

    def _rejected(self, n: int, exc: Exception) -> None:
        """The peer refused these for good: skip them (counted, logged) or halt by reconnecting."""
        if self.config.on_reject == "halt":
            raise Halted(f"peer rejected a batch and on_reject = 'halt': {exc}") from exc
        self.stats.rejected += n
        self.log.error("uplink %s rejected %d samples, skipped: %s", self.name, n, exc, extra={"uplink": self.name})

    async def _send_gaps(self, uplink: Uplink, gaps: list[tuple[int, Gap]]) -> None:
        items = [g for _, g in gaps]
        batch = Batch(self.gateway_id, items[0].lo_seq, items[-1].hi_seq, True, [], items)
        try:
            await uplink.send(batch)
        except (Permanent, Partial) as exc:
            self._rejected(0, exc)
        await self._record_ack(1, 0, gap_ids=[i for i, _ in gaps])
        self.stats.gaps_sent += len(items)
        self.log.warning(
            "uplink %s told of %d gap(s), %d samples dropped before delivery",
            self.name, len(items), sum(g.count for g in items), extra={"uplink": self.name},
        )  # fmt: skip
