"""Request planning: cover a device's due tags with the fewest Modbus read requests.

Pure (no I/O, no pymodbus) so it is tested exhaustively. The model:

* Tags of one table are sorted by address. Tags whose registers overlap (bits of one status word, a
  string and a register inside it) form one atomic *block*: they are always read together.
* Consecutive blocks share a request when every unread hole in it is at most `max_gap` registers
  (`max_gap_bits` for coils/discrete inputs) and the request stays within `max_registers` (125,
  the protocol limit for function 3/4) or `max_bits` (2000 for function 1/2).
* `isolation` lets the driver learn from a device: a merged request refused with "illegal data
  address" (a bridged hole is not mapped in the device) is re-planned with its tags at `ADJACENT`
  (no holes in any request holding them), then `ALONE` (each tag read by itself).
* Removing blocks from the front of a feasible request keeps it feasible (its holes stay, its span
  and strictest isolation can only shrink), so the greedy "extend the current request as far as
  possible" is optimal; `optimal_request_count` is an independent dynamic programme over the
  sorted tags, used by the tests and the bench to check that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, get_args

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
TABLES: tuple[Table, ...] = get_args(Table)
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})

MAX_REGISTERS = 125  # function codes 3 and 4
MAX_BITS = 2000  # function codes 1 and 2


class Isolation(IntEnum):
    MERGE = 0  # bridge holes up to max_gap
    ADJACENT = 1  # merge only with touching or overlapping tags
    ALONE = 2  # always its own request


@dataclass(frozen=True, slots=True)
class Item:
    """One tag to read: `key` is the caller's handle, `size` in registers (1 for a bit)."""

    key: int
    table: Table
    address: int
    size: int = 1
    isolation: Isolation = Isolation.MERGE

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class Limits:
    max_registers: int = MAX_REGISTERS
    max_bits: int = MAX_BITS
    max_gap: int = 10  # registers read and thrown away to save a request
    max_gap_bits: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.max_registers <= MAX_REGISTERS:
            raise ValueError(f"max_registers must be between 1 and {MAX_REGISTERS}")
        if not 1 <= self.max_bits <= MAX_BITS:
            raise ValueError(f"max_bits must be between 1 and {MAX_BITS}")
        if self.max_gap < 0 or self.max_gap_bits < 0:
            raise ValueError("max_gap and max_gap_bits must be >= 0")

    def span(self, table: Table) -> int:
        return self.max_bits if table in BIT_TABLES else self.max_registers

    def gap(self, table: Table) -> int:
        return self.max_gap_bits if table in BIT_TABLES else self.max_gap


@dataclass(frozen=True, slots=True)
class Request:
    """One read: `count` registers (or bits) from `address`, serving the items `keys`."""

    table: Table
    address: int
    count: int
    keys: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(slots=True)
class _Block:
    start: int
    end: int
    level: Isolation
    items: list[Item] = field(default_factory=list)


def _allowed_gap(level: Isolation, max_gap: int) -> int | None:
    """The longest hole a request may bridge, given the strictest isolation among its tags."""
    if level == Isolation.ALONE:
        return None
    return max_gap if level == Isolation.MERGE else 0


def _blocks(items: Sequence[Item], span: int) -> list[_Block]:
    """Atomic blocks of overlapping items (sorted input); a chain longer than `span` is cut."""
    out: list[_Block] = []
    for it in items:
        cur = out[-1] if out else None
        if (
            cur is not None
            and it.isolation != Isolation.ALONE
            and cur.level != Isolation.ALONE
            and it.address < cur.end
            and max(cur.end, it.end) - cur.start <= span
        ):
            cur.end = max(cur.end, it.end)
            cur.level = max(cur.level, it.isolation)
            cur.items.append(it)
        else:
            out.append(_Block(it.address, it.end, it.isolation, [it]))
    return out


def _check(it: Item, limits: Limits) -> None:
    if it.table not in TABLES:
        raise ValueError(f"unknown table {it.table!r}")
    if it.table in BIT_TABLES and it.size != 1:
        raise ValueError(f"a {it.table} item has size 1, not {it.size}")
    if not 1 <= it.size <= limits.span(it.table):
        raise ValueError(f"item {it.key} needs {it.size} registers, more than one request can read")
    if it.address < 0 or it.end > 65536:
        raise ValueError(f"item {it.key} at {it.address}+{it.size} is outside the address space")


def _by_table(items: Iterable[Item], limits: Limits) -> dict[Table, list[Item]]:
    groups: dict[Table, list[Item]] = {}
    for it in items:
        _check(it, limits)
        groups.setdefault(it.table, []).append(it)
    for lst in groups.values():
        lst.sort(key=lambda i: (i.address, i.end, i.key))
    return groups


def plan(items: Iterable[Item], limits: Limits | None = None) -> list[Request]:
    """The fewest requests covering every item, in table then address order."""
    limits = limits or Limits()
    out: list[Request] = []
    groups = _by_table(items, limits)
    for table in TABLES:
        if table not in groups:
            continue
        span, max_gap = limits.span(table), limits.gap(table)
        cur: list[_Block] = []
        end, level, hole = 0, Isolation.MERGE, 0  # of `cur`: end, strictest isolation, longest hole
        for b in _blocks(groups[table], span):
            if cur:
                lvl, gap = max(level, b.level), max(hole, b.start - end)
                allowed = _allowed_gap(lvl, max_gap)
                if allowed is not None and gap <= allowed and max(end, b.end) - cur[0].start <= span:
                    cur.append(b)
                    end, level, hole = max(end, b.end), lvl, gap
                    continue
                out.append(_request(table, cur))
            cur = [b]
            end, level, hole = b.end, b.level, 0
        if cur:
            out.append(_request(table, cur))
    return out


def _request(table: Table, blocks: list[_Block]) -> Request:
    start = blocks[0].start
    end = max(b.end for b in blocks)
    return Request(table, start, end - start, tuple(it.key for b in blocks for it in b.items))


def optimal_request_count(items: Iterable[Item], limits: Limits | None = None) -> int:
    """Exact minimum by dynamic programming over sorted items (reference for tests and the bench).

    best[i] = fewest requests for items i..n-1, where a request is any run i..j whose span fits and
    whose holes respect the gap/isolation rules. O(n * w), w = items that fit in one request.
    """
    limits = limits or Limits()
    total = 0
    for table, lst in _by_table(items, limits).items():
        span, max_gap = limits.span(table), limits.gap(table)
        n = len(lst)
        best = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = 1 + best[i + 1]
            end, level, hole = lst[i].end, lst[i].isolation, 0
            for j in range(i + 1, n):
                level, hole = max(level, lst[j].isolation), max(hole, lst[j].address - end)
                allowed = _allowed_gap(level, max_gap)
                end = max(end, lst[j].end)
                if allowed is None or hole > allowed or end - lst[i].address > span:
                    break  # holes, isolation and span only grow with j
                best[i] = min(best[i], 1 + best[j + 1])
        total += best[0]
    return total


def registers_read(requests: Iterable[Request]) -> int:
    """Registers (or bits) transferred, holes included: the price paid for fewer requests."""
    return sum(r.count for r in requests)
