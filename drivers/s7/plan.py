"""Request planning: cover the due tags with the fewest S7 read jobs (pure, no I/O).

Two levels, because an S7 read job carries several items and each item a byte range:

1. *Ranges.* Tags of one area (and DB) are sorted by byte offset; overlapping tags (the bits of one
   byte, a STRING and a CHAR inside it) form one atomic block. Neighbouring blocks share one item
   when every unread hole is at most `max_gap` bytes and the item stays within what one answer can
   carry (`pdu - 18` bytes). This is the Modbus planner's rule, per area.
2. *Jobs.* Ranges are packed into PDUs: at most `max_items` items per job, the request (10 + 2 +
   12 per item) and the answer (12 + 2 + 4 per item + data + fill bytes) both within the negotiated
   PDU size. First-fit decreasing: within a few percent of the optimum for bin packing, and
   `lower_bound` gives what no packing can beat, for the tests and the bench.

A range the PLC refuses as "address out of range" (a DB shorter than the map says) takes its
neighbours down with it; the driver then marks those tags `alone` and re-plans, so only the tag
that does not exist stays Bad.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers.s7.pdu import HEADER_ACK, ITEM_HEADER, READ_OVERHEAD, Spec, reply_size, request_size

MIN_PDU = 240  # the smallest PDU an S7 CPU negotiates (S7-300, S7-1200); 480 S7-400, 960 S7-1500
MAX_PDU = 960
MAX_ITEMS = 20  # items per read job that every S7-300/400/1200/1500 accepts (snap7's MaxVars)


@dataclass(frozen=True, slots=True)
class Item:
    """One tag to read: `size` bytes from byte `start` of `area` (`db` for a DB)."""

    key: int
    area: str
    db: int
    start: int
    size: int
    alone: bool = False  # read in a range of its own (learned from a refusal)

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True, slots=True)
class Limits:
    pdu: int = MIN_PDU  # the negotiated PDU size
    max_items: int = MAX_ITEMS
    max_gap: int = 16  # unused bytes read to merge two ranges into one item

    def __post_init__(self) -> None:
        if not MIN_PDU <= self.pdu <= MAX_PDU * 8:
            raise ValueError(f"PDU size must be {MIN_PDU}..{MAX_PDU * 8}")
        if not 1 <= self.max_items <= 255:
            raise ValueError("max_items must be 1..255")
        if self.max_gap < 0:
            raise ValueError("max_gap must be >= 0")

    @property
    def max_range(self) -> int:
        """The longest item one answer can carry."""
        return self.pdu - READ_OVERHEAD

    @property
    def items_per_job(self) -> int:
        return min(self.max_items, (self.pdu - request_size(0)) // (request_size(1) - request_size(0)))


@dataclass(slots=True)
class Range:
    """One item of a job: bytes `start`..`end` of an area, serving the tags `keys`."""

    area: str
    db: int
    start: int
    end: int
    keys: list[int] = field(default_factory=list)
    alone: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    def spec(self) -> Spec:
        return Spec(self.area, self.db, self.start, self.size)


@dataclass(frozen=True, slots=True)
class Request:
    """One read job (one PDU each way)."""

    ranges: tuple[Range, ...]

    @property
    def keys(self) -> list[int]:
        return [k for r in self.ranges for k in r.keys]


def _check(it: Item, limits: Limits) -> None:
    if not 1 <= it.size <= limits.max_range:
        raise ValueError(f"item {it.key} of {it.size} bytes does not fit one answer ({limits.max_range} bytes)")
    if it.start < 0 or it.end > 1 << 21:
        raise ValueError(f"item {it.key} at {it.start}+{it.size} is outside the S7 address space")


def ranges(items: Iterable[Item], limits: Limits) -> list[Range]:
    """Level 1: the items merged into ranges, in (area, db, start) order."""
    groups: dict[tuple[str, int], list[Item]] = {}
    for it in items:
        _check(it, limits)
        groups.setdefault((it.area, it.db), []).append(it)
    out: list[Range] = []
    for (area, db), lst in sorted(groups.items()):
        lst.sort(key=lambda i: (i.start, i.end, i.key))
        cur: Range | None = None
        for it in lst:
            if cur is not None:
                overlaps = it.start < cur.end
                joinable = not (it.alone or cur.alone) and it.start - cur.end <= limits.max_gap
                if (overlaps or joinable) and max(cur.end, it.end) - cur.start <= limits.max_range:
                    cur.end = max(cur.end, it.end)
                    cur.keys.append(it.key)
                    cur.alone = cur.alone or it.alone
                    continue
                out.append(cur)
            cur = Range(area, db, it.start, it.end, [it.key], it.alone)
        if cur is not None:
            out.append(cur)
    return out


def _reply_bound(sizes: list[int]) -> int:
    """The answer's size whatever the order of its items (a fill byte counted for each odd one)."""
    return HEADER_ACK + 2 + sum(ITEM_HEADER + n + n % 2 for n in sizes)


def pack(rs: list[Range], limits: Limits) -> list[Request]:
    """Level 2: ranges into jobs, first-fit decreasing under the item and both PDU budgets."""
    jobs: list[list[Range]] = []
    per_job = limits.items_per_job
    for r in sorted(rs, key=lambda r: (-r.size, r.area, r.db, r.start)):
        for job in jobs:
            if len(job) < per_job and _reply_bound([*(x.size for x in job), r.size]) <= limits.pdu:
                job.append(r)
                break
        else:
            jobs.append([r])
    out = [Request(tuple(sorted(j, key=lambda r: (r.area, r.db, r.start)))) for j in jobs]
    out.sort(key=lambda q: (q.ranges[0].area, q.ranges[0].db, q.ranges[0].start))
    for q in out:  # the invariants the PLC enforces; a violation is a planner bug
        assert len(q.ranges) <= per_job and request_size(len(q.ranges)) <= limits.pdu
        assert reply_size([r.size for r in q.ranges]) <= limits.pdu
    return out


def plan(items: Iterable[Item], limits: Limits | None = None) -> list[Request]:
    """The read jobs covering every item."""
    limits = limits or Limits()
    return pack(ranges(items, limits), limits)


def lower_bound(items: Iterable[Item], limits: Limits | None = None) -> int:
    """No plan of these ranges needs fewer jobs: by item count and by answer bytes."""
    limits = limits or Limits()
    rs = ranges(items, limits)
    if not rs:
        return 0
    payload = sum(ITEM_HEADER + r.size + r.size % 2 for r in rs)
    return max(
        math.ceil(len(rs) / limits.items_per_job), math.ceil(payload / (limits.pdu - READ_OVERHEAD + ITEM_HEADER))
    )


def bytes_read(requests: Iterable[Request]) -> int:
    """Bytes transferred, holes included: the price of fewer jobs."""
    return sum(r.size for q in requests for r in q.ranges)
