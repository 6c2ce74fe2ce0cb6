"""BACnet/IP client driver (bacpypes3): COV subscriptions where the device supports them, polling
with ReadPropertyMultiple for the rest, writes with a priority through the command gate.

Connecting finds the device (a ReadProperty of the wildcard device object when `device_instance` is
not set, then a directed Who-Is, which also tells bacpypes3 the device's APDU size and segmentation),
reads its protocol-services-supported (is SubscribeCOV there?) and each object's units, then
subscribes. Per object, the sample's status comes from its status-flags and reliability (`codec.py`).

* An object the device does not have is logged once and reported as one BadNodeIdUnknown sample; the
  others keep running. It is looked up again at the next reconnect.
* A subscription the device refuses falls back to polling for that object (logged once). Renewal is
  ours, at half the lifetime, in the sample loop itself: no task outlives the driver.
* A ReadPropertyMultiple the device aborts as too large (segmentation not supported, buffer
  overflow) is split and `max_objects` lowered for good (until the next reconnect).
* `max_failed_polls` polls in a row without any answer, or a subscription renewal without an answer,
  raise `Transient`: the supervisor marks the tags Bad, backs off and re-enters.

The socket is shared by every device with the same `local_address` (`client.Stacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from bacpypes3.basetypes import BinaryPV
from bacpypes3.primitivedata import CharacterString, Double, Integer, ObjectIdentifier, Real, Unsigned

from drivers.bacnet import codec
from drivers.bacnet.client import Failure, LinkDown, Stack, Stacks, default_stacks
from drivers.bacnet.config import Config, Tag
from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Status, Value
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems

__all__ = ["Config", "Driver", "Stacks", "Tag", "WriteError"]

_POLL_PROPS = ["present-value", "status-flags", "reliability"]
_SUBSCRIBE_COV_BIT = 5  # BACnetServicesSupported: subscribeCOV
_WILDCARD_DEVICE = 4194303


class WriteError(Permanent):
    """A write the device refused, or that the configuration forbids; nothing was written."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Obj:
    tag: Tag
    path: str
    objid: ObjectIdentifier
    kind: str
    unit: str | None
    spid: int | None = None  # set while a COV subscription serves this object
    missing: bool = False

    @property
    def real(self) -> bool:
        return self.tag.object_type in ("analog-input", "analog-output", "analog-value")


class Driver:
    """One BACnet device. See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext, *, stacks: Stacks | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        self.problems = Problems(config.name, self.log, max_failed_polls=config.max_failed_polls)
        self._stacks = stacks
        self._objs = [
            _Obj(t, config.tag_path(t), ObjectIdentifier((t.object_type, t.instance)), t.value_kind(), t.unit)
            for t in config.tags
        ]
        self._index = {o.tag.name: i for i, o in enumerate(self._objs)}
        self._stack: Stack | None = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._queue: asyncio.Queue[Sample | int] = asyncio.Queue()  # COV samples, or an object to re-read
        self._chunk = config.max_objects
        self._initial: list[Sample] = []
        self._write_lock = asyncio.Lock()
        self.instance: int | None = config.device_instance
        self.cov_supported = False

    def counters(self) -> Mapping[str, int]:
        return self.problems.counts

    @property
    def _t(self) -> tuple[float, int]:
        return float(self.config.timeout), self.config.retries

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        cfg = self.config
        exit_stack = contextlib.AsyncExitStack()
        try:
            stacks = self._stacks if self._stacks is not None else default_stacks()
            self._stack = await exit_stack.enter_async_context(stacks.use(cfg.local_address, cfg.local_instance))
            exit_stack.push_async_callback(self._unsubscribe_all)
            await self._find()
            await self._read_units()
            if cfg.cov and self.cov_supported:
                await self._subscribe_all(first=True)
        except LinkDown as exc:
            await exit_stack.aclose()
            self._stack = None
            raise Transient(f"{cfg.name}: {exc}") from None
        except BaseException:
            await exit_stack.aclose()
            self._stack = None
            raise
        self._exit = exit_stack
        self.problems.counts["connects"] += 1
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._exit is not None:
            exit_stack, self._exit = self._exit, None
            await exit_stack.aclose()
        self._stack = None

    def _need(self) -> Stack:
        if self._stack is None:
            raise Transient(f"{self.config.name}: not connected")
        return self._stack

    def _fail(self, what: str, failure: Failure) -> Transient | Permanent:
        msg = f"{self.config.name}: {what} at {self.config.address}: {failure.reason}"
        return Transient(msg) if not failure.answered or failure.status == Status.BAD_TIMEOUT else Permanent(msg)

    async def _find(self) -> None:
        """Which device answers at `address`, and whether it takes SubscribeCOV."""
        cfg, stack = self.config, self._need()
        t, r = self._t
        self.problems.counts["requests"] += 1
        dev = ObjectIdentifier(("device", cfg.device_instance if cfg.device_instance is not None else _WILDCARD_DEVICE))
        got = await stack.read(cfg.address, dev, "object-identifier", t, r)
        if isinstance(got, Failure) and got.answered and cfg.device_instance is None:
            # the wildcard instance is not served by every device: ask who is there (waits `timeout`)
            found = await stack.who_is(cfg.address, None, None, t)
            if len(found) == 1:
                got = (None, found[0].instance)
        if isinstance(got, Failure):
            self._count(got)
            raise self._fail("reading the device object", got)
        self.instance = int(got[1])
        if cfg.device_instance is not None and self.instance != cfg.device_instance:
            raise Permanent(f"{cfg.name}: {cfg.address} is device {self.instance}, not {cfg.device_instance}")
        # a directed Who-Is fills bacpypes3's device cache (APDU size, segmentation) for large reads
        iams = await stack.who_is(cfg.address, self.instance, self.instance, t)
        if not iams:
            self.log.info("%s: device %s did not answer Who-Is; reading without its APDU limits", cfg.name,
                          self.instance, extra={"device": cfg.name})  # fmt: skip
        if not cfg.cov:
            return
        self.problems.counts["requests"] += 1
        services = await stack.read(cfg.address, ObjectIdentifier(("device", self.instance)),
                                    "protocol-services-supported", t, r)  # fmt: skip
        if isinstance(services, Failure):
            self._count(services)
            if not services.answered:
                raise self._fail("reading protocol-services-supported", services)
            self.cov_supported = False
        else:
            bits = list(services)
            self.cov_supported = len(bits) > _SUBSCRIBE_COV_BIT and bool(bits[_SUBSCRIBE_COV_BIT])
        if not self.cov_supported:
            self.log.info("%s: device %s does not support SubscribeCOV: polling every %gs", cfg.name, self.instance,
                          float(cfg.interval), extra={"device": cfg.name})  # fmt: skip

    async def _read_units(self) -> None:
        """Each number object's units, once per connect; objects the device lacks are marked here."""
        cfg, stack = self.config, self._need()
        t, r = self._t
        for chunk in _chunks(self._objs, self._chunk):
            self.problems.counts["requests"] += 1
            specs = [(o.objid, ["units" if _has_units(o) else "present-value"]) for o in chunk]
            res = await stack.read_multiple(cfg.address, specs, t, r)
            if isinstance(res, Failure):
                self._count(res)
                if not res.answered:
                    raise self._fail("reading units", res)
                continue  # units are a nicety: the polls report what is wrong per object
            for o, (_, props) in zip(chunk, specs, strict=True):
                got = res.get((o.objid, props[0]))
                if isinstance(got, Failure):
                    if got.kind == "unknown_object":
                        self._missing(o, got)
                    continue
                if props[0] == "units" and got is not None:
                    unit = codec.unit_symbol(str(got))
                    if o.tag.unit is None:
                        o.unit = unit
                    elif unit is not None and unit != o.tag.unit and o.tag.source_unit is None:
                        self.log.warning(
                            "%s: %s (%s): the device reports %s, the config says unit = %r (set source_unit to"
                            " convert)", cfg.name, o.tag.name, o.tag.object, unit, o.tag.unit,
                            extra={"device": cfg.name},
                        )  # fmt: skip

    def _missing(self, o: _Obj, failure: Failure) -> None:
        o.missing = True
        self.problems.counts["unknown_object"] += 1
        reason = f"{failure.reason}: the device has no {o.tag.object}"
        self.problems.report(("object", o.tag.name), failure.kind, reason, what=f"tag {o.tag.name}")
        self._initial.append(Sample(o.path, time.time_ns(), None, Status.BAD_NODE_ID_UNKNOWN, 0, o.unit))

    # ------------------------------------------------------------------ COV

    async def _subscribe_all(self, *, first: bool = False) -> None:
        cfg, stack = self.config, self._need()
        t, r = self._t
        for i, o in enumerate(self._objs):
            if o.missing or o.tag.cov is False or (not first and o.spid is None):
                continue
            spid = o.spid if o.spid is not None else stack.new_spid()
            if o.spid is None:
                stack.listen(cfg.address, spid, o.objid, functools.partial(self._notified, i))
            self.problems.counts["subscribes"] += 1
            failure = await stack.subscribe(cfg.address, o.objid, spid, cfg.cov_confirmed, int(cfg.cov_lifetime), t, r)
            if failure is None:
                o.spid = spid
                continue
            self._count(failure)
            if not failure.answered:
                stack.unlisten(cfg.address, spid)
                raise self._fail(f"subscribing to {o.tag.object}", failure)
            stack.unlisten(cfg.address, spid)
            o.spid = None
            self.problems.report(("cov", o.tag.name), "cov_refused",
                                 f"COV subscription refused ({failure.reason}): polling every {float(cfg.interval):g}s",
                                 what=f"tag {o.tag.name}")  # fmt: skip

    async def _unsubscribe_all(self) -> None:
        """Cancel our subscriptions (best effort, briefly): the device would otherwise keep
        notifying a gateway that is gone until the lifetime runs out."""
        stack = self._stack
        if stack is None:
            return
        for o in self._objs:
            if o.spid is None:
                continue
            spid, o.spid = o.spid, None
            stack.unlisten(self.config.address, spid)
            with contextlib.suppress(Exception):
                await stack.subscribe(self.config.address, o.objid, spid, False, None, min(1.0, self._t[0]), 0)

    def _notified(self, i: int, values: dict[str, object]) -> None:
        """Called by bacpypes3 (in its own task) per notification: convert and queue."""
        o = self._objs[i]
        self.problems.counts["notifications"] += 1
        if o.spid is None:
            return
        ts = time.time_ns()
        try:
            raw = values["present-value"]
            flags = values.get("status-flags")
            if isinstance(raw, Exception) or isinstance(flags, Exception):
                raise codec.CodecError(f"undecodable notification: {raw!r} {flags!r}")
            value, status = codec.quality(codec.to_value(o.kind, raw, real=o.real), _bits(flags), None)
        except (KeyError, codec.CodecError) as exc:
            self.problems.counts["decode_error"] += 1
            self.problems.report(("decode", o.tag.name), "decode_error", str(exc), what=f"tag {o.tag.name}")
            self._queue.put_nowait(Sample(o.path, ts, None, Status.BAD_DECODING_ERROR, 0, o.unit))
            return
        if status == Status.BAD_DEVICE_FAILURE:
            self._queue.put_nowait(i)  # fault: read its reliability for the precise status
        self._queue.put_nowait(Sample(o.path, ts, value, status, codec.score(status), o.unit))

    # ------------------------------------------------------------------ polling

    async def samples(self) -> AsyncIterator[list[Sample]]:
        """COV samples as they arrive; polled objects every `interval`; renewals at half the lifetime."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        if self._initial:
            first, self._initial = self._initial, []
            yield first
        next_poll = loop.time()
        next_renew = loop.time() + float(cfg.cov_lifetime) / 2
        while True:
            polled = [i for i, o in enumerate(self._objs) if not o.missing and o.spid is None]
            now = loop.time()
            if polled and now >= next_poll:
                yield await self._poll(polled)
                next_poll += float(cfg.interval)
                if next_poll <= loop.time():  # overran: skip missed polls, never burst
                    next_poll = loop.time() + float(cfg.interval)
            if any(o.spid is not None for o in self._objs) and now >= next_renew:
                await self._subscribe_all()
                next_renew = loop.time() + float(cfg.cov_lifetime) / 2
            deadline = min(next_poll if polled else float("inf"), next_renew)
            batch: list[Sample] = []
            reread: set[int] = set()
            try:
                async with asyncio.timeout_at(deadline if deadline != float("inf") else None):
                    item = await self._queue.get()
                    while True:
                        if isinstance(item, int):
                            reread.add(item)
                        else:
                            batch.append(item)
                        if self._queue.empty():
                            break
                        item = self._queue.get_nowait()
            except TimeoutError:
                pass
            if batch:
                yield batch
            if reread:
                yield await self._poll(sorted(reread))

    async def poll(self, tags: Sequence[str] | None = None) -> list[Sample]:
        """Read the given tags (all by default) now, whether COV serves them or not."""
        keys = list(range(len(self._objs))) if tags is None else sorted(self._key(t) for t in tags)
        return await self._poll(keys)

    def _key(self, tag: str) -> int:
        name = tag.removeprefix(self.config.name + "/")
        if name not in self._index:
            raise KeyError(f"{self.config.name} has no tag {tag!r}")
        return self._index[name]

    async def _poll(self, keys: Sequence[int]) -> list[Sample]:
        self.problems.counts["polls"] += 1
        out: list[Sample] = []
        answered = False
        silent: Failure | None = None
        pending = list(_chunks(list(keys), self._chunk))
        while pending:
            chunk = pending.pop(0)
            if silent is not None:
                out += self._bad(chunk, silent)
                continue
            res = await self._read(chunk)
            if isinstance(res, Failure):
                self._count(res)
                if res.too_big and len(chunk) > 1:
                    self._chunk = max(1, len(chunk) // 2)
                    self.problems.report("split", res.kind, f"{res.reason}; reading {self._chunk} objects per request"
                                         " from now on")  # fmt: skip
                    pending = list(_chunks(chunk, self._chunk)) + pending
                    continue
                answered = answered or res.answered
                self.problems.report(("request", chunk[0], len(chunk)), res.kind, res.reason,
                                     what=f"ReadPropertyMultiple of {len(chunk)} objects")  # fmt: skip
                out += self._bad(chunk, res)
                if not res.answered:
                    silent = res
                continue
            answered = True
            self.problems.resolved(("request", chunk[0], len(chunk)))
            out += self._decode(chunk, res)
        if answered:
            self.problems.poll_answered()
        else:
            reason = silent.reason if silent is not None else "no answer"
            self.problems.poll_unanswered(
                lambda n: (
                    f"{self.config.name}: device at {self.config.address} did not answer {n} polls in a row ({reason})"
                )
            )
        return out

    async def _read(self, chunk: Sequence[int]) -> dict[tuple[ObjectIdentifier, str], object] | Failure:
        stack = self._need()
        self.problems.counts["requests"] += 1
        specs = [(self._objs[k].objid, _POLL_PROPS) for k in chunk]
        try:
            return await stack.read_multiple(self.config.address, specs, *self._t)
        except LinkDown as exc:
            raise Transient(f"{self.config.name}: {exc}") from None

    def _decode(self, chunk: Sequence[int], res: Mapping[tuple[ObjectIdentifier, str], object]) -> list[Sample]:
        ts = time.time_ns()
        out: list[Sample] = []
        for k in chunk:
            o = self._objs[k]
            raw = res.get((o.objid, "present-value"))
            if isinstance(raw, Failure) or raw is None:
                failure = raw or Failure(
                    Status.BAD_COMMUNICATION_ERROR, "short_reply", "no present-value in the answer", True
                )
                self._count(failure)
                self.problems.report(("object", o.tag.name), failure.kind, failure.reason, what=f"tag {o.tag.name}")
                if failure.kind == "unknown_object":
                    o.missing = True
                out.append(Sample(o.path, ts, None, failure.status, 0, o.unit))
                continue
            flags = res.get((o.objid, "status-flags"))
            rel = res.get((o.objid, "reliability"))
            try:
                value, status = codec.quality(
                    codec.to_value(o.kind, raw, real=o.real),
                    None if isinstance(flags, Failure) or flags is None else _bits(flags),
                    None if isinstance(rel, Failure) or rel is None else str(rel),
                )
            except codec.CodecError as exc:
                self.problems.counts["decode_error"] += 1
                self.problems.report(("decode", o.tag.name), "decode_error", str(exc), what=f"tag {o.tag.name}")
                out.append(Sample(o.path, ts, None, Status.BAD_DECODING_ERROR, 0, o.unit))
                continue
            self.problems.resolved(("object", o.tag.name))
            self.problems.resolved(("decode", o.tag.name))
            out.append(Sample(o.path, ts, value, status, codec.score(status), o.unit))
        return out

    def _bad(self, keys: Sequence[int], failure: Failure) -> list[Sample]:
        ts = time.time_ns()
        return [Sample(self._objs[k].path, ts, None, failure.status, 0, self._objs[k].unit) for k in keys]

    def _count(self, failure: Failure) -> None:
        self.problems.counts["errors"] += 1
        self.problems.counts[failure.kind] += 1

    # ------------------------------------------------------------------ writing

    async def write(self, tag: str, value: Value) -> Sample:
        """Write one writable tag's present-value at its priority and read it back.

        Raises WriteError (nothing written) for an unknown or read-only tag, a value of the wrong
        kind, or a refusal by the device; ReadbackMismatch when the device reads back another
        value (typically: a higher priority holds the object; the message names it); Transient
        when the device does not answer (the write may or may not have happened).
        """
        cfg = self.config
        try:
            k = self._key(tag)
        except KeyError as exc:
            raise WriteError(str(exc.args[0]), Status.BAD_NODE_ID_UNKNOWN) from None
        o = self._objs[k]
        if not o.tag.writable:
            raise WriteError(f"{o.path} is not writable (set writable = true)", Status.BAD_CONFIGURATION_ERROR)
        encoded = _encode(o, value)
        priority = cfg.priority_of(o.tag)
        async with self._write_lock:
            stack = self._need()
            self.problems.counts["writes"] += 1
            try:
                failure = await stack.write(cfg.address, o.objid, encoded, priority, *self._t)
            except LinkDown as exc:
                raise Transient(f"{cfg.name}: {exc}") from None
            if failure is not None:
                self._count(failure)
                msg = f"{o.path}: write at priority {priority} failed: {failure.reason}"
                if failure.answered:
                    raise WriteError(msg, failure.status)
                raise Transient(msg)
            res = await self._read([k])
            if isinstance(res, Failure):
                self._count(res)
                raise WriteError(f"{o.path}: read-back failed: {res.reason}", res.status)
            (sample,) = self._decode([k], res)
            back = res.get((o.objid, "present-value"))
            back_value = (
                codec.to_value(o.kind, back, real=o.real)
                if back is not None and not isinstance(back, Failure)
                else None
            )
            if not codec.same(o.kind, value, back_value):
                self.problems.counts["write_mismatch"] += 1
                holder = await self._holder(o)
                raise ReadbackMismatch(
                    f"{o.path}: wrote {value!r} at priority {priority} but read back {back_value!r}{holder}",
                    back_value,
                )
        return sample

    async def _holder(self, o: _Obj) -> str:
        """Which priority commands the object (for the mismatch message), if the device says."""
        got = await self._need().read(self.config.address, o.objid, "priority-array", *self._t)
        if isinstance(got, Failure) or got is None:
            return ""
        for n, slot in enumerate(got, start=1):
            if getattr(slot, "null", None) is not None:  # a relinquished slot holds the Null choice
                continue
            return f" (priority {n} holds the object)"
        return ""


def _encode(o: _Obj, value: Value) -> Any:
    otype = o.tag.object_type
    if o.kind == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise WriteError(f"{o.path}: {value!r} is not a boolean", Status.BAD_TYPE_MISMATCH)
        return BinaryPV("active" if value else "inactive")
    if o.kind == "string":
        if not isinstance(value, str):
            raise WriteError(f"{o.path}: {value!r} is not a string", Status.BAD_TYPE_MISMATCH)
        return CharacterString(value)
    if isinstance(value, bool | str) or value is None:
        raise WriteError(f"{o.path}: {value!r} is not a number", Status.BAD_TYPE_MISMATCH)
    if otype in ("analog-input", "analog-output", "analog-value"):
        try:
            codec.as_real(float(value))
        except codec.CodecError as exc:
            raise WriteError(f"{o.path}: {exc}", Status.BAD_OUT_OF_RANGE) from None
        return Real(float(value))
    if otype == "large-analog-value":
        return Double(float(value))
    if not float(value).is_integer():
        raise WriteError(f"{o.path}: {value!r} is not an integer (a {otype} holds one)", Status.BAD_TYPE_MISMATCH)
    n = int(value)
    if otype == "integer-value":
        if not -(2**31) <= n < 2**31:
            raise WriteError(f"{o.path}: {n} is outside the INTEGER range", Status.BAD_OUT_OF_RANGE)
        return Integer(n)
    low = 1 if otype.startswith("multi-state") else 0
    if not low <= n < 2**32:
        raise WriteError(f"{o.path}: {n} is outside {low}..{2**32 - 1}", Status.BAD_OUT_OF_RANGE)
    return Unsigned(n)


def _has_units(o: _Obj) -> bool:
    return o.kind == "number" and not o.tag.object_type.startswith("multi-state")


def _bits(flags: object) -> list[int] | None:
    if flags is None:
        return None
    if not isinstance(flags, list):
        raise codec.CodecError(f"status-flags {flags!r} is not a bit string")
    return [int(b) for b in flags]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
