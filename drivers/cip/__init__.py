"""EtherNet/IP driver for Logix controllers (pycomm3): tags read by name, writes through the gate.

Connecting opens a CIP session and a (Large) Forward Open of `connection_size` bytes, then uploads
the controller's tag list (`upload_tags`, which gives every tag's type and structure) or takes the
types the config declares. Each poll reads every tag with Read Tag services; neighbouring elements
of one array become one service (`plan.py`), and pycomm3 packs the services into Multiple Service
Packets that fit the connection.

* A tag the controller does not have is one BadNodeIdUnknown sample, logged once; the others keep
  running. It is looked up again at the next reconnect.
* A per-tag error reply (out of range, type mismatch, privilege) is a Bad sample with the status
  from `client.status_of`, counted and logged once.
* A lost connection (reset, timeout) raises `Transient`: the supervisor marks the tags Bad, backs
  off and re-enters; so do `max_failed_polls` polls in a row without one readable reply.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from drivers.cip.client import Connection, Described, LinkDown, Outcome
from drivers.cip.config import INTEGER_BITS, Config, Tag, element_of
from drivers.cip.plan import Item, Read, plan
from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Status, Value
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems

__all__ = ["Config", "Driver", "Tag", "WriteError"]

_PACKET_OVERHEAD = 64  # encapsulation + CPF + Multiple Service Packet header, bytes
_ELEMENT_MAX = 8  # bytes per element in a reply (LINT/LREAL)
_SIGNED = frozenset({"SINT", "INT", "DINT", "LINT"})


class WriteError(Permanent):
    """A write the controller refused, or that the configuration forbids; nothing was written."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Tag:
    tag: Tag
    path: str
    type_name: str | None  # declared or uploaded
    missing: Outcome | None = None  # why it is not polled


class Driver:
    """One Logix controller. See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        self.problems = Problems(config.name, self.log, max_failed_polls=config.max_failed_polls)
        self._tags = [_Tag(t, config.tag_path(t), t.type) for t in config.tags]
        self._index = {t.tag.name: i for i, t in enumerate(self._tags)}
        self._conn: Connection | None = None
        self._reads: list[Read] = []
        self._initial: list[Sample] = []
        self._packets_before = 0

    def counters(self) -> Mapping[str, int]:
        out = dict(self.problems.counts)
        out["requests"] = out.get("requests", 0) + (self._conn.packets if self._conn is not None else 0)
        return out

    @property
    def reads(self) -> list[Read]:
        """The Read Tag services of one poll (after connecting)."""
        return list(self._reads)

    @property
    def info(self) -> dict[str, Any]:
        """The controller's identity (vendor, product_name, revision, serial, keyswitch, name)."""
        return dict(self._conn.info) if self._conn is not None else {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        cfg = self.config
        conn = Connection(cfg)
        try:
            await conn.open(self._declared())
            await self._resolve(conn)
            self._conn = conn
            self._initial = self._initial + await self._poll()
        except LinkDown as exc:
            self._conn = None
            self.problems.counts["connection_lost"] += 1
            await conn.close()
            raise Transient(f"{cfg.name}: {cfg.host}:{cfg.port}: {exc}") from None
        except BaseException:
            self._conn = None
            await conn.close()
            raise
        self.problems.counts["connects"] += 1
        info = conn.info
        self.log.info(
            "%s: connected to %s (%s, revision %s), %d-byte connection, %d read services per poll",
            cfg.name, info.get("product_name"), info.get("vendor"), info.get("revision"), conn.connection_size,
            len(self._reads), extra={"device": cfg.name},
        )  # fmt: skip
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.problems.counts["requests"] += conn.packets
            await conn.close()

    def _declared(self) -> dict[str, tuple[str, int]]:
        """Tag definitions from the config (used when the tag list is not uploaded): scalars, and
        arrays as long as the highest element named."""
        out: dict[str, tuple[str, int]] = {}
        for t in self.config.tags:
            if t.type is None:
                continue
            element = element_of(t.base)
            if element is None:
                out[t.base] = (t.type, 0)
            else:
                length = max(out.get(element[0], (t.type, 0))[1], element[1] + 1)
                out[element[0]] = (t.type, length)
        return out

    async def _resolve(self, conn: Connection) -> None:
        """Each tag's type from the controller (or the config); unknown tags are set aside."""
        described = await conn.describe(sorted({t.tag.base for t in self._tags}))
        self._initial = []
        for t in self._tags:
            d = described[t.tag.base]
            t.missing = None
            if isinstance(d, Outcome):
                t.missing = d
            elif t.tag.type is not None and d.atomic and d.type_name != t.tag.type:
                t.missing = Outcome(None, Status.BAD_TYPE_MISMATCH, "type_mismatch",
                                    f"the controller's tag is {d.type_name}, the config says {t.tag.type}")  # fmt: skip
            elif not d.atomic and not d.type_name.upper().endswith("STRING"):
                t.missing = Outcome(None, Status.BAD_CONFIGURATION_ERROR, "structure",
                                    f"{t.tag.tag} is a {d.type_name} structure: name one of its members")  # fmt: skip
            else:
                t.type_name = d.type_name
            if t.missing is not None:
                self._missing(t, t.missing)
        polled = [(i, t) for i, t in enumerate(self._tags) if t.missing is None]
        items = [Item(t.tag.base, t.tag.bit, self._mergeable(t, described[t.tag.base])) for _, t in polled]
        max_elements = max(1, (conn.connection_size - _PACKET_OVERHEAD) // _ELEMENT_MAX)
        reads = plan(items, max_elements=max_elements)
        # plan() numbers the polled tags; map back to indices of self._tags
        self._reads = [
            Read(r.name, r.elements, tuple((polled[k][0], off, bit) for k, off, bit in r.members)) for r in reads
        ]

    @staticmethod
    def _mergeable(t: _Tag, d: Described | Outcome) -> tuple[str, int] | None:
        if not isinstance(d, Described) or not d.atomic or d.type_name in ("BOOL", "DWORD"):
            return None
        if "STRING" in d.type_name:
            return None
        return element_of(t.tag.base)

    def _missing(self, t: _Tag, why: Outcome) -> None:
        self.problems.counts[why.kind] += 1
        self.problems.report(("tag", t.tag.name), why.kind, f"{t.tag.tag}: {why.reason}", what=f"tag {t.tag.name}")
        self._initial.append(Sample(t.path, time.time_ns(), None, why.status, 0, t.tag.unit))

    def _need(self) -> Connection:
        if self._conn is None:
            raise Transient(f"{self.config.name}: not connected")
        return self._conn

    # ------------------------------------------------------------------ polling

    async def samples(self) -> AsyncIterator[list[Sample]]:
        loop = asyncio.get_running_loop()
        if self._initial:
            first, self._initial = self._initial, []
            yield first
        next_poll = loop.time() + float(self.config.interval)
        while True:
            delay = next_poll - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield await self._poll()
            next_poll += float(self.config.interval)
            if next_poll <= loop.time():  # overran: skip missed polls, never burst
                next_poll = loop.time() + float(self.config.interval)

    async def poll(self) -> list[Sample]:
        """Read every tag now (what one poll of `samples` yields)."""
        return await self._poll()

    async def _poll(self) -> list[Sample]:
        if not self._reads:
            return []
        conn = self._need()
        self.problems.counts["polls"] += 1
        try:
            outcomes = await conn.read([r.name for r in self._reads])
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise Transient(f"{self.config.name}: connection lost: {exc}") from None
        ts = time.time_ns()
        out: list[Sample] = []
        answered = False
        for r, o in zip(self._reads, outcomes, strict=True):
            answered = answered or o.kind != "bad_reply"
            if not o.ok:
                self.problems.counts["errors"] += 1
                self.problems.counts[o.kind] += 1
                for i, _, _ in r.members:
                    t = self._tags[i]
                    self.problems.report(("tag", t.tag.name), o.kind, f"{t.tag.tag}: {o.reason}",
                                         what=f"tag {t.tag.name}")  # fmt: skip
                    out.append(Sample(t.path, ts, None, o.status, 0, t.tag.unit))
                continue
            values = o.value if r.elements > 1 else [o.value]
            for i, off, bit in r.members:
                t = self._tags[i]
                try:
                    value = _value(values[off], bit)
                except (TypeError, IndexError, ValueError) as exc:
                    self.problems.counts["decode_error"] += 1
                    self.problems.report(("tag", t.tag.name), "decode_error", f"{t.tag.tag}: {exc}",
                                         what=f"tag {t.tag.name}")  # fmt: skip
                    out.append(Sample(t.path, ts, None, Status.BAD_DECODING_ERROR, 0, t.tag.unit))
                    continue
                self.problems.resolved(("tag", t.tag.name))
                out.append(Sample(t.path, ts, value, Status.GOOD, 100, t.tag.unit))
        if answered:
            self.problems.poll_answered()
        else:
            self.problems.poll_unanswered(
                lambda n: f"{self.config.name}: no readable reply from {self.config.host} in {n} polls in a row"
            )
        return out

    # ------------------------------------------------------------------ writing

    async def write(self, tag: str, value: Value) -> Sample:
        """Write one writable tag and read it back.

        Raises WriteError (nothing written) for an unknown or read-only tag, a value that does not
        fit the tag's type, or a refusal by the controller; ReadbackMismatch when the controller
        reads back another value (the logic overwrote it); Transient when the connection is lost
        (the write may or may not have happened).
        """
        name = tag.removeprefix(self.config.name + "/")
        k = self._index.get(name)
        if k is None:
            raise WriteError(f"{self.config.name} has no tag {tag!r}", Status.BAD_NODE_ID_UNKNOWN)
        t = self._tags[k]
        if not t.tag.writable:
            raise WriteError(f"{t.path} is not writable (set writable = true)", Status.BAD_CONFIGURATION_ERROR)
        if t.missing is not None:
            raise WriteError(f"{t.path}: {t.missing.reason}", t.missing.status)
        encoded = _encode(t, value)
        conn = self._need()
        self.problems.counts["writes"] += 1
        try:
            res = await conn.write(t.tag.base, encoded)
            if not res.ok:
                self.problems.counts["errors"] += 1
                self.problems.counts[res.kind] += 1
                raise WriteError(f"{t.path}: write refused: {res.reason}", res.status)
            (back,) = await conn.read([t.tag.base])
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise Transient(f"{self.config.name}: connection lost while writing {t.path}: {exc}") from None
        ts = time.time_ns()
        if not back.ok:
            raise WriteError(f"{t.path}: read-back failed: {back.reason}", back.status)
        if not _same(t.type_name, encoded, back.value):
            self.problems.counts["write_mismatch"] += 1
            raise ReadbackMismatch(f"{t.path}: wrote {value!r} but read back {back.value!r}", back.value)
        return Sample(t.path, ts, back.value, Status.GOOD, 100, t.tag.unit)


def _value(raw: Any, bit: int | None) -> Value:
    if bit is not None:
        return bool((int(raw) >> bit) & 1)
    if isinstance(raw, bool | int | float | str):
        return raw
    raise TypeError(f"unexpected value {raw!r}")


def _encode(t: _Tag, value: Value) -> Value:
    typ = t.type_name or ""
    if typ == "BOOL":
        if not isinstance(value, bool) and value not in (0, 1):
            raise WriteError(f"{t.path}: {value!r} is not a boolean", Status.BAD_TYPE_MISMATCH)
        return bool(value)
    if "STRING" in typ:
        if not isinstance(value, str):
            raise WriteError(f"{t.path}: {value!r} is not a string", Status.BAD_TYPE_MISMATCH)
        return value
    if isinstance(value, bool | str) or value is None:
        raise WriteError(f"{t.path}: {value!r} is not a number", Status.BAD_TYPE_MISMATCH)
    if typ in ("REAL", "LREAL"):
        v = float(value)
        if typ == "REAL" and math.isfinite(v) and abs(v) > 3.4028234663852886e38:
            raise WriteError(f"{t.path}: {v!r} is outside the REAL range", Status.BAD_OUT_OF_RANGE)
        return v
    if typ in INTEGER_BITS:
        if not float(value).is_integer():
            raise WriteError(f"{t.path}: {value!r} is not an integer (the tag is a {typ})", Status.BAD_TYPE_MISMATCH)
        n, bits = int(value), INTEGER_BITS[typ]
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if typ in _SIGNED else (0, 2**bits - 1)
        if not lo <= n <= hi:
            raise WriteError(f"{t.path}: {n} is outside {lo}..{hi} (a {typ})", Status.BAD_OUT_OF_RANGE)
        return n
    raise WriteError(f"{t.path}: writing a {typ or 'tag of unknown type'} is not supported", Status.BAD_TYPE_MISMATCH)


def _same(typ: str | None, wrote: Value, back: Any) -> bool:
    if typ == "REAL" and isinstance(wrote, float) and isinstance(back, float):
        (f32,) = struct.unpack("<f", struct.pack("<f", wrote))
        return f32 == back or (math.isnan(f32) and math.isnan(back))
    return bool(wrote == back)


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
