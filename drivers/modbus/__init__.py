"""Modbus TCP and RTU driver: polls a device's register map with the fewest requests.

Per poll, the tags that are due are planned into requests (`plan.py`), read one transaction at a
time on the device's link (`client.py`) and decoded (`edged/protocols/modbus.py`, the codec shared
with the modbus_server uplink). Failure handling, by scope:

* One request fails (exception response, timeout, CRC error, short frame): its tags get a Bad sample
  with the reason's status, the problem is counted in `Driver.counters` and logged once, and the
  driver keeps running. After a request the device did not answer, the rest of that poll is skipped
  (marked Bad with the same reason) so a dead device costs one timeout per poll, never one per
  request; on a shared RTU line that is what keeps the other devices on time.
* A merged request refused with "illegal data address"/"illegal data value" is split and re-read at
  once, and the split is remembered: a hole in the device's map never takes its neighbours down.
* `max_failed_polls` consecutive polls with no answer at all, or a lost TCP connection / serial
  port, raise `Transient`. Reconnecting is deliberately left to the daemon's supervisor: it marks the
  tags Bad once, backs off with jitter and re-enters, which reconnects (TCP) or re-acquires the
  shared line (RTU). `__aenter__` probes the device with one read, so a device that stays silent
  fails the connect and the supervisor's backoff grows instead of resetting on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import NoReturn, Self

from drivers.modbus.client import (
    Failure,
    LineSettings,
    Link,
    LinkDown,
    Reply,
    SerialLines,
    TcpLink,
    default_lines,
)
from drivers.modbus.config import Config, Tag
from drivers.modbus.plan import BIT_TABLES, Isolation, Item, Request, plan
from edged.errors import Permanent, Transient
from edged.model import Sample, Status, Value
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems
from edged.protocols import modbus as codec

__all__ = ["Config", "Driver", "SerialLines", "Tag", "WriteError"]

_SLACK = 0.001  # tags due within 1 ms of each other are polled together
_PLAN_CACHE = 64  # distinct due-sets whose plans are kept
_SPLITTABLE = frozenset({"exception_02", "exception_03"})  # refusals a smaller request may avoid


class WriteError(Permanent):
    """A write the device refused, that did not read back, or that the configuration forbids."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


class Driver:
    """Polls one Modbus device (one unit id). See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext, *, lines: SerialLines | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        # polls, requests, errors and one key per error kind; each problem logged once
        self.problems = Problems(config.name, self.log, max_failed_polls=config.max_failed_polls)
        self._lines = lines
        self._tags: list[Tag] = list(config.tags)
        self._paths = [config.tag_path(t) for t in self._tags]
        self._index = {t.name: i for i, t in enumerate(self._tags)}
        self._isolation = [Isolation.MERGE] * len(self._tags)
        self._plans: dict[tuple[int, ...], list[Request]] = {}
        self._link: Link | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._write_lock = asyncio.Lock()

    def counters(self) -> Mapping[str, int]:
        return self.problems.counts

    @property
    def link(self) -> Link | None:
        """The open connection (shared with the other devices of an RTU line)."""
        return self._link

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        cfg = self.config
        stack = contextlib.AsyncExitStack()
        try:
            if cfg.is_tcp:
                assert cfg.host is not None
                assert isinstance(cfg.port, int)
                tcp = TcpLink(cfg.host, cfg.port)
                stack.callback(tcp.close)
                await tcp.open(max(float(cfg.timeout), 1.0))  # connecting may take longer than a reply
                self._link = tcp
            else:
                assert isinstance(cfg.port, str)
                settings = LineSettings(cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits)
                lines = self._lines if self._lines is not None else default_lines()
                self._link = await stack.enter_async_context(lines.use(cfg.port, settings, cfg.name))
            await self._probe()
        except LinkDown as exc:
            self._link = None
            await stack.aclose()
            raise Transient(f"{cfg.name}: {exc}") from None
        except BaseException:
            self._link = None
            await stack.aclose()
            raise
        self._stack = stack
        self.problems.counts["connects"] += 1
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._link = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def _probe(self) -> None:
        """One read, so connecting fails (Transient) when the device does not answer at all."""
        if not self._tags:
            return
        first = self._plan(tuple(range(len(self._tags))))[0]
        res = await self._read(first)
        if isinstance(res, Failure) and not res.answered:
            self._count(res)
            raise Transient(f"{self.config.name}: unit {self.config.unit_id} at {self.config.endpoint}: {res.reason}")

    # ------------------------------------------------------------------ polling

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """One batch per poll cycle. Tags run on a grid of their intervals from a common start, so
        tags with different intervals that fall due together are read in shared requests."""
        n = len(self._tags)
        if n == 0:
            await asyncio.Event().wait()  # nothing to poll: idle until cancelled
            return
        loop = asyncio.get_running_loop()
        intervals = [float(t.interval if t.interval is not None else self.config.interval) for t in self._tags]
        start = loop.time()
        ticks = [0] * n  # tag i is next due at start + ticks[i] * intervals[i]
        while True:
            now = loop.time()
            due = tuple(i for i in range(n) if start + ticks[i] * intervals[i] <= now + _SLACK)
            if due:
                yield await self._poll(due)
            after = loop.time() - start
            for i in due:
                ticks[i] += 1
                if ticks[i] * intervals[i] <= after:  # overran: skip missed polls, never burst
                    ticks[i] = math.floor(after / intervals[i]) + 1
            next_at = min(start + ticks[i] * intervals[i] for i in range(n))
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def poll(self, tags: Iterable[str] | None = None) -> list[Sample]:
        """Read the given tags (all by default) now, outside the schedule."""
        keys = tuple(range(len(self._tags))) if tags is None else tuple(sorted(self._key(t) for t in tags))
        return await self._poll(keys) if keys else []

    def _key(self, tag: str) -> int:
        name = tag.removeprefix(self.config.name + "/")
        if name not in self._index:
            raise KeyError(f"{self.config.name} has no tag {tag!r}")
        return self._index[name]

    def _plan(self, keys: tuple[int, ...]) -> list[Request]:
        cached = self._plans.get(keys)
        if cached is None:
            items = (Item(k, t.table, t.address, t.size, self._isolation[k]) for k in keys for t in (self._tags[k],))
            cached = plan(items, self.config.limits)
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[keys] = cached
        return cached

    async def _read(self, req: Request) -> Reply | Failure:
        if self._link is None:
            raise Transient(f"{self.config.name}: not connected")
        self.problems.counts["requests"] += 1
        cfg = self.config
        try:
            return await self._link.read(
                req.table, req.address, req.count, cfg.unit_id, float(cfg.timeout), cfg.retries
            )
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise Transient(f"{cfg.name}: {exc}") from None

    async def _poll(self, keys: tuple[int, ...]) -> list[Sample]:
        self.problems.counts["polls"] += 1
        queue = deque(self._plan(keys))
        out: list[Sample] = []
        skip: Failure | None = None  # set once the device did not answer: skip the rest of this poll
        answered = False
        while queue:
            req = queue.popleft()
            if skip is not None:
                out.extend(self._bad(req.keys, skip, time.time_ns()))
                continue
            res = await self._read(req)
            ts = time.time_ns()
            if not isinstance(res, Failure):
                answered = True
                self.problems.resolved(("request", req.table, req.address, req.count))
                out.extend(self._decode(req, res, ts))
                continue
            self._count(res)
            answered = answered or res.answered
            if res.kind in _SPLITTABLE and self._isolate(req):
                self.problems.report(
                    ("split", req.table, req.address, req.count),
                    res.kind,
                    f"{res.reason}; reading these tags in smaller requests from now on",
                    what=f"{req.table} {req.address}..{req.end - 1}",
                )
                queue.extendleft(reversed(self._plan(tuple(sorted(req.keys)))))
                continue
            self.problems.report(
                ("request", req.table, req.address, req.count),
                res.kind,
                res.reason,
                what=f"unit {self.config.unit_id} {req.table} {req.address}..{req.end - 1}",
            )
            out.extend(self._bad(req.keys, res, ts))
            if not res.answered:
                skip = res
        if answered:
            self.problems.poll_answered()
        else:
            reason = skip.reason if skip is not None else "no answer"
            self.problems.poll_unanswered(
                lambda n: (
                    f"{self.config.name}: unit {self.config.unit_id} at {self.config.endpoint} did not answer"
                    f" {n} polls in a row ({reason})"
                )
            )
        return out

    def _isolate(self, req: Request) -> bool:
        """Raise the isolation of a refused request's tags; False when it cannot be split further."""
        if len({(self._tags[k].address, self._tags[k].size) for k in req.keys}) < 2:
            return False
        changed = False
        for k in req.keys:
            if self._isolation[k] < Isolation.ALONE:
                self._isolation[k] = Isolation(self._isolation[k] + 1)
                changed = True
        if changed:
            self._plans.clear()
        return changed

    def _decode(self, req: Request, reply: Reply, ts: int) -> list[Sample]:
        out: list[Sample] = []
        for k in req.keys:
            tag = self._tags[k]
            off = tag.address - req.address
            try:
                if tag.table in BIT_TABLES:
                    value: Value = bool(reply[off])
                else:
                    raw = codec.decode(
                        [int(r) for r in reply[off : off + tag.size]],
                        tag.dtype,
                        word_order=tag.word_order,
                        byte_order=tag.byte_order,
                        bit=tag.bit,
                        length=tag.length,
                        encoding=tag.encoding,
                    )
                    value = codec.to_engineering(raw, tag.scale, tag.offset)
            except codec.CodecError as exc:
                self.problems.counts["decode_error"] += 1
                self.problems.report(("decode", k), "decode_error", str(exc), what=f"tag {tag.name}")
                out.append(Sample(self._paths[k], ts, None, Status.BAD_DECODING_ERROR, 0, tag.unit))
                continue
            self.problems.resolved(("decode", k))
            out.append(Sample(self._paths[k], ts, value, Status.GOOD, 100, tag.unit))
        return out

    def _bad(self, keys: Sequence[int], failure: Failure, ts: int) -> list[Sample]:
        return [Sample(self._paths[k], ts, None, failure.status, 0, self._tags[k].unit) for k in keys]

    def _count(self, failure: Failure) -> None:
        self.problems.counts["errors"] += 1
        self.problems.counts[failure.kind] += 1

    # ------------------------------------------------------------------ writing

    async def write(self, tag: str, value: Value) -> Sample:
        """Write one writable tag (engineering units) and read it back.

        Returns the read-back sample. Raises WriteError when the tag is unknown or read-only, the
        value does not fit, the device refuses it or the read-back differs; Transient when the
        device does not answer or the connection is lost (the write may or may not have happened).
        A `bit` of a holding register is a read-modify-write of that register.
        """
        cfg = self.config
        try:
            k = self._key(tag)
        except KeyError as exc:
            raise WriteError(str(exc.args[0]), Status.BAD_NODE_ID_UNKNOWN) from None
        t = self._tags[k]
        if not t.writable:
            raise WriteError(f"{cfg.tag_path(t)} is not writable (set writable = true)", Status.BAD_CONFIGURATION_ERROR)
        req = Request(t.table, t.address, t.size, (k,))
        async with self._write_lock:
            try:
                regs = await self._encode(t, req, value)
            except codec.CodecError as exc:
                raise WriteError(f"{cfg.tag_path(t)}: {exc}", Status.BAD_OUT_OF_RANGE) from None
            if self._link is None:
                raise Transient(f"{cfg.name}: not connected")
            self.problems.counts["writes"] += 1
            try:
                failure = await self._link.write(t.table, t.address, regs, cfg.unit_id, float(cfg.timeout), cfg.retries)
            except LinkDown as exc:
                raise Transient(f"{cfg.name}: {exc}") from None
            if failure is not None:
                self._count(failure)
                self._fail_write(t, failure, "write")
            back = await self._read(req)
            if isinstance(back, Failure):
                self._count(back)
                self._fail_write(t, back, "read-back")
        ts = time.time_ns()
        (sample,) = self._decode(req, back, ts)
        if self._written(t, regs) != self._written(t, back):
            self.problems.counts["write_mismatch"] += 1
            raise WriteError(
                f"{cfg.tag_path(t)}: wrote {value!r} but read back {sample.value!r}",
                Status.BAD_DEVICE_FAILURE,
            )
        return sample

    async def _encode(self, t: Tag, req: Request, value: Value) -> list[int]:
        if t.dtype == "string":
            if not isinstance(value, str):
                raise codec.CodecError(f"{value!r} is not a string")
            return codec.encode(value, "string", byte_order=t.byte_order, length=t.length, encoding=t.encoding)
        if t.bit is not None or t.dtype == "bool":
            if not isinstance(value, bool) and value not in (0, 1):
                raise codec.CodecError(f"{value!r} is not a boolean")
            if t.bit is None:
                return [1 if value else 0]
            current = await self._read(req)  # read-modify-write of the register(s) holding the bit
            if isinstance(current, Failure):
                self._count(current)
                self._fail_write(t, current, "read before write")
            return codec.set_bit(
                [int(r) for r in current],
                t.dtype,
                t.bit,
                bool(value),
                word_order=t.word_order,
                byte_order=t.byte_order,
            )
        if isinstance(value, (bool, str)) or value is None:
            raise codec.CodecError(f"{value!r} is not a number")
        raw = codec.to_raw(value, t.dtype, t.scale, t.offset)
        return codec.encode(raw, t.dtype, word_order=t.word_order, byte_order=t.byte_order)

    @staticmethod
    def _written(t: Tag, regs: Sequence[int | bool]) -> tuple[int, ...]:
        """What must read back equal: the whole value, or only the bit that was written."""
        if t.bit is not None:
            return (
                int(
                    codec.decode(
                        [int(r) for r in regs],
                        t.dtype,
                        word_order=t.word_order,
                        byte_order=t.byte_order,
                        bit=t.bit,
                    )
                ),
            )
        return tuple(int(r) for r in regs)

    def _fail_write(self, t: Tag, failure: Failure, step: str) -> NoReturn:
        msg = f"{self.config.tag_path(t)}: {step} failed: {failure.reason}"
        if failure.answered:
            raise WriteError(msg, failure.status)
        raise Transient(msg)


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
