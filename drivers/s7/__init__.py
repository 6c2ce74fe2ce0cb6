"""Siemens S7 driver (S7-300/400/1200/1500 over ISO-on-TCP) with python-snap7.

Per poll, the due tags are planned into read jobs (`plan.py`: neighbours merged into items, items
packed into PDUs of the negotiated size), each job sent as one PDU (`pdu.py`) over the device's
connection (`client.py`, one worker thread per connection) and each value decoded (`codec.py`).
Failure handling, by scope:

* One item refused (no such DB, address out of range, access denied): its tags get a Bad sample
  with the reason's status, counted and logged once; the other items of the job are unaffected.
  An item "address out of range" that merged several tags is split, and the split remembered, so
  the one tag beyond the end of a DB never takes its neighbours down.
* A whole job refused (error class in the header): its tags are Bad with that reason. A CPU that
  refuses the first job at connect (S7-1200/1500 without PUT/GET) fails the connect as Permanent.
* A timeout or a malformed answer: the rest of the poll is marked Bad with that reason, the poll is
  delivered, then the connection is given up (Transient): a late answer must never be read as the
  answer to the next job. Reconnecting is the supervisor's (backoff with jitter).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self

from drivers.s7 import codec
from drivers.s7.client import Failure, Link, LinkDown, item_failure, job_failure
from drivers.s7.config import CONNECTION_TYPES, Config, Tag
from drivers.s7.pdu import HeaderError, PduError, Spec, parse_read, parse_write, read_request, write_request
from drivers.s7.plan import MIN_PDU, Item, Range, Request, plan
from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Status, Value
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems

__all__ = ["Config", "Driver", "Tag", "WriteError"]

_SLACK = 0.001  # tags due within 1 ms of each other are polled together
_PLAN_CACHE = 64  # distinct due-sets whose plans are kept
_SPLITTABLE = frozenset({"item_05"})  # a refusal a range of one tag may avoid


class WriteError(Permanent):
    """A write the PLC refused or the configuration forbids (nothing was written)."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


class Driver:
    """Polls one S7 CPU. See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.problems = Problems(config.name, ctx.log)
        self._tags: list[Tag] = list(config.tags)
        self._paths = [config.tag_path(t) for t in self._tags]
        self._index = {t.name: i for i, t in enumerate(self._tags)}
        self._alone = [False] * len(self._tags)
        self._plans: dict[tuple[int, ...], list[Request]] = {}
        self._link: Link | None = None
        self._write_lock = asyncio.Lock()

    def counters(self) -> Mapping[str, int]:
        return self.problems.counts

    @property
    def pdu(self) -> int:
        """The PDU size the CPU negotiated (0 while not connected)."""
        return self._link.pdu if self._link is not None else 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        cfg = self.config
        link = Link(cfg.name, cfg.host, cfg.port, cfg.rack, cfg.slot, CONNECTION_TYPES[cfg.connection_type],
                    cfg.pdu_size)  # fmt: skip
        try:
            await link.open(float(cfg.timeout))
            self._link = link
            self._check_pdu(link.pdu)
            self._plans.clear()
            await self._probe()
        except LinkDown as exc:
            self._link = None
            await link.close()
            raise Transient(f"{cfg.name}: {exc}") from None
        except BaseException:
            self._link = None
            await link.close()
            raise
        self.problems.counts["connects"] += 1
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def _check_pdu(self, pdu: int) -> None:
        if not MIN_PDU <= pdu <= self.config.pdu_size:
            raise Permanent(f"{self.config.name}: the CPU negotiated an implausible PDU size of {pdu} bytes")
        room = self.config.limits(pdu).max_range
        for t in self._tags:
            if t.size > room:
                raise Permanent(
                    f"{self.config.name}: the CPU negotiated a {pdu}-byte PDU: tag {t.name} ({t.size} bytes) does not"
                    f" fit one answer ({room} bytes); use a shorter length"
                )

    async def _probe(self) -> None:
        """One job, so connecting fails when the CPU does not serve reads at all."""
        if not self._tags:
            return
        first = self._plan(tuple(range(len(self._tags))))[0]
        res = await self._read(first)
        if isinstance(res, Failure):
            self._count(res)
            msg = f"{self.config.name}: {self.config.endpoint}: {res.reason}"
            if res.answered and res.status == Status.BAD_CONFIGURATION_ERROR:
                raise Permanent(msg)
            raise Transient(msg)

    # ------------------------------------------------------------------ polling

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """One batch per poll. Tags run on a grid of their intervals from a common start, so tags
        with different intervals that fall due together are read in shared jobs."""
        n = len(self._tags)
        if n == 0:
            await asyncio.Event().wait()  # nothing to poll: idle until cancelled
            return
        loop = asyncio.get_running_loop()
        intervals = [float(t.interval if t.interval is not None else self.config.interval) for t in self._tags]
        start = loop.time()
        ticks = [0] * n
        while True:
            now = loop.time()
            due = tuple(i for i in range(n) if start + ticks[i] * intervals[i] <= now + _SLACK)
            if due:
                yield await self._poll(due)
                self._give_up_if_broken()
            after = loop.time() - start
            for i in due:
                ticks[i] += 1
                if ticks[i] * intervals[i] <= after:  # overran: skip missed polls, never burst
                    ticks[i] = math.floor(after / intervals[i]) + 1
            next_at = min(start + ticks[i] * intervals[i] for i in range(n))
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _give_up_if_broken(self) -> None:
        link = self._link
        if link is not None and link.broken is not None:
            self.problems.counts["connection_lost"] += 1
            raise Transient(f"{self.config.name}: connection to {self.config.endpoint} {link.broken}")

    async def poll(self, tags: Iterable[str] | None = None) -> list[Sample]:
        """Read the given tags (all by default) now, outside the schedule."""
        keys = tuple(range(len(self._tags))) if tags is None else tuple(sorted(self._key(t) for t in tags))
        return await self._poll(keys) if keys else []

    def _key(self, tag: str) -> int:
        name = tag.removeprefix(self.config.name + "/")
        if name not in self._index:
            raise KeyError(f"{self.config.name} has no tag {tag!r}")
        return self._index[name]

    def _item(self, k: int) -> Item:
        t = self._tags[k]
        return Item(k, t.area, t.db or 0, t.address, t.size, self._alone[k])

    def _plan(self, keys: tuple[int, ...]) -> list[Request]:
        cached = self._plans.get(keys)
        if cached is None:
            cached = plan((self._item(k) for k in keys), self.config.limits(self.pdu))
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[keys] = cached
        return cached

    async def _exchange(self, request: bytes) -> bytes | Failure:
        if self._link is None:
            raise Transient(f"{self.config.name}: not connected")
        self.problems.counts["requests"] += 1
        try:
            return await self._link.exchange(request, float(self.config.timeout))
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise Transient(f"{self.config.name}: {exc}") from None

    async def _read(self, req: Request) -> list[bytes | Failure] | Failure:
        """Per range its bytes or its item's failure; a Failure for the whole job."""
        assert self._link is not None
        ref = self._link.next_ref()
        specs = [r.spec() for r in req.ranges]
        reply = await self._exchange(read_request(ref, specs))
        if isinstance(reply, Failure):
            return reply
        try:
            items = parse_read(reply, ref, specs)
        except HeaderError as exc:
            return job_failure(exc)
        except PduError as exc:
            return self._link.garbled(str(exc))
        return [item_failure(x) if isinstance(x, int) else x for x in items]

    async def _poll(self, keys: tuple[int, ...]) -> list[Sample]:
        self.problems.counts["polls"] += 1
        queue = deque(self._plan(keys))
        out: list[Sample] = []
        skip: Failure | None = None  # the connection failed: the rest of the poll is not sent
        while queue:
            req = queue.popleft()
            if skip is not None:
                out.extend(self._bad(req.keys, skip, time.time_ns()))
                continue
            res = await self._read(req)
            ts = time.time_ns()
            if isinstance(res, Failure):
                self._count(res)
                self._report(("job", req.ranges[0].area, req.ranges[0].db, req.ranges[0].start), res, "job")
                out.extend(self._bad(req.keys, res, ts))
                if not res.answered:
                    skip = res
                continue
            retry: list[int] = []
            for r, got in zip(req.ranges, res, strict=True):
                where = ("range", r.area, r.db, r.start, r.size)
                if not isinstance(got, Failure):
                    self.problems.resolved(where)
                    out.extend(self._decode(r, got, ts))
                    continue
                self._count(got)
                if got.kind in _SPLITTABLE and self._isolate(r):
                    self.problems.report(where, got.kind, f"{got.reason}; reading these tags one by one from now on",
                                         what=self._what(r))  # fmt: skip
                    retry.extend(r.keys)
                    continue
                self.problems.report(where, got.kind, got.reason, what=self._what(r))
                out.extend(self._bad(r.keys, got, ts))
            if retry:
                queue.extendleft(reversed(self._plan(tuple(sorted(retry)))))
        return out

    def _what(self, r: Range) -> str:
        area = f"DB{r.db}" if r.area == "DB" else r.area
        return f"{area} bytes {r.start}..{r.end - 1}"

    def _report(self, where: tuple[object, ...], res: Failure, what: str) -> None:
        self.problems.report(where, res.kind, res.reason, what=f"{what} at {self.config.endpoint}")

    def _isolate(self, r: Range) -> bool:
        """Read a refused range's tags alone from now on; False when that changes nothing."""
        if len({(self._tags[k].address, self._tags[k].size) for k in r.keys}) < 2:
            return False
        changed = False
        for k in r.keys:
            if not self._alone[k]:
                self._alone[k] = changed = True
        if changed:
            self._plans.clear()
        return changed

    def _decode(self, r: Range, data: bytes, ts: int) -> list[Sample]:
        out: list[Sample] = []
        for k in r.keys:
            t = self._tags[k]
            off = t.address - r.start
            try:
                value = self._value(t, data[off : off + t.size])
            except codec.CodecError as exc:
                self.problems.counts["decode_error"] += 1
                self.problems.report(("decode", k), "decode_error", str(exc), what=f"tag {t.name}")
                out.append(Sample(self._paths[k], ts, None, Status.BAD_DECODING_ERROR, 0, t.unit))
                continue
            self.problems.resolved(("decode", k))
            out.append(Sample(self._paths[k], ts, value, Status.GOOD, 100, t.unit))
        return out

    @staticmethod
    def _value(t: Tag, raw: bytes) -> Value:
        value = codec.decode(raw, t.type, bit=t.bit or 0, length=t.length, encoding=t.encoding)
        if isinstance(value, (bool, str)) or (t.scale, t.offset) == (1.0, 0.0):
            return value
        return value * t.scale + t.offset

    def _bad(self, keys: Sequence[int], failure: Failure, ts: int) -> list[Sample]:
        return [Sample(self._paths[k], ts, None, failure.status, 0, self._tags[k].unit) for k in keys]

    def _count(self, failure: Failure) -> None:
        self.problems.counts["errors"] += 1
        self.problems.counts[failure.kind] += 1

    # ------------------------------------------------------------------ writing

    async def write(self, tag: str, value: Value) -> Sample:
        """Write one writable tag (engineering units) and read it back.

        A BOOL is a bit write (the CPU changes that bit alone, never a read-modify-write of its
        byte). Returns the read-back sample; raises WriteError when the tag is unknown or
        read-only, the value does not fit or the CPU refuses it, ReadbackMismatch when the
        read-back differs, Transient when the CPU does not answer (written or not: unknown).
        """
        cfg = self.config
        try:
            k = self._key(tag)
        except KeyError as exc:
            raise WriteError(str(exc.args[0]), Status.BAD_NODE_ID_UNKNOWN) from None
        t = self._tags[k]
        path = cfg.tag_path(t)
        if not t.writable:
            raise WriteError(f"{path} is not writable (set writable = true)", Status.BAD_CONFIGURATION_ERROR)
        try:
            data = codec.encode(self._raw(t, value), t.type, length=t.length, encoding=t.encoding)
        except codec.CodecError as exc:
            raise WriteError(f"{path}: {exc}", Status.BAD_OUT_OF_RANGE) from None
        spec = Spec(t.area, t.db or 0, t.address, t.size, t.bit if t.type == "bool" else None)
        rng = Range(t.area, t.db or 0, t.address, t.address + t.size, [k])
        async with self._write_lock:
            if self._link is None:
                raise Transient(f"{cfg.name}: not connected")
            self.problems.counts["writes"] += 1
            ref = self._link.next_ref()
            reply = await self._exchange(write_request(ref, spec, data))
            if isinstance(reply, Failure):
                self._count(reply)
                raise Transient(f"{path}: write failed: {reply.reason}")
            try:
                code = parse_write(reply, ref)
            except HeaderError as exc:
                raise WriteError(f"{path}: {job_failure(exc).reason}", job_failure(exc).status) from None
            except PduError as exc:
                raise Transient(f"{path}: write failed: {self._link.garbled(str(exc)).reason}") from None
            if code != 0xFF:
                failure = item_failure(code)
                self._count(failure)
                raise WriteError(f"{path}: {failure.reason}", failure.status)
            back = await self._read(Request((rng,)))
            got = back if isinstance(back, Failure) else back[0]
            if isinstance(got, Failure):
                self._count(got)
                raise Transient(f"{path}: read-back failed: {got.reason}")
        ts = time.time_ns()
        (sample,) = self._decode(rng, got, ts)
        wrote = codec.decode(data, t.type, bit=0, length=t.length, encoding=t.encoding)
        read = codec.decode(got, t.type, bit=t.bit or 0, length=t.length, encoding=t.encoding)
        if wrote != read:
            self.problems.counts["write_mismatch"] += 1
            raise ReadbackMismatch(f"{path}: wrote {value!r} but read back {sample.value!r}", sample.value)
        return sample

    @staticmethod
    def _raw(t: Tag, value: Value) -> int | float | bool | str:
        """The value in the PLC's units: the inverse of scale/offset, integers rounded to a step."""
        if value is None:
            raise codec.CodecError("None cannot be written")
        if isinstance(value, (bool, str)) or (t.scale, t.offset) == (1.0, 0.0):
            return value
        if not math.isfinite(value):
            raise codec.CodecError(f"{value} cannot be written")
        raw = (value - t.offset) / t.scale
        return round(raw) if t.type in codec.INTEGER_TYPES or t.type == "time" else raw


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
