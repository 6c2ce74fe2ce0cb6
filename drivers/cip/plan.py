"""Which read services one poll sends: one per controller tag, neighbouring array elements merged.

pycomm3 already packs the services into Multiple Service Packets sized to the connection; what it
does not do is merge `Temps[3]`, `Temps[4]`, `Temps[5]` into one Read Tag of 3 elements. Each
service costs its header and the tag's path (about 10 + len(name) bytes) in the request and 4..6
bytes in the reply, so for arrays merging is what keeps a poll to one packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Item:
    """One configured tag as the planner sees it."""

    base: str  # the name read from the controller, without a trailing bit
    bit: int | None
    element: tuple[str, int] | None  # (array, index) when it may be merged with its neighbours


@dataclass(frozen=True, slots=True)
class Read:
    """One Read Tag service: `name` (with `{n}` for several elements) and who takes which value."""

    name: str
    elements: int
    members: tuple[tuple[int, int, int | None], ...]  # (tag index, element offset, bit)


def plan(items: Sequence[Item], *, max_elements: int, max_gap: int = 0) -> list[Read]:
    """Merge elements of one array whose indices are at most `max_gap` apart into one read of at
    most `max_elements`; every other tag is one read (tags naming the same thing share it)."""
    reads: list[Read] = []
    by_base: dict[str, list[tuple[int, int, int | None]]] = {}
    arrays: dict[str, list[tuple[int, int, int | None]]] = {}  # array -> (index, tag, bit)
    for i, it in enumerate(items):
        if it.element is not None and max_elements > 1:
            arrays.setdefault(it.element[0], []).append((it.element[1], i, it.bit))
        else:
            by_base.setdefault(it.base, []).append((i, 0, it.bit))
    for base, members in by_base.items():
        reads.append(Read(base, 1, tuple(members)))
    for array, elems in arrays.items():
        elems.sort()
        run: list[tuple[int, int, int | None]] = []
        for e in elems:
            if run and (e[0] - run[-1][0] > max_gap + 1 or e[0] - run[0][0] >= max_elements):
                reads.append(_run(array, run))
                run = []
            run.append(e)
        reads.append(_run(array, run))
    return reads


def _run(array: str, run: list[tuple[int, int, int | None]]) -> Read:
    lo, n = run[0][0], run[-1][0] - run[0][0] + 1
    members = tuple((i, idx - lo, bit) for idx, i, bit in run)
    return Read(f"{array}[{lo}]" if n == 1 else f"{array}[{lo}]{{{n}}}", n, members)
