"""The compute layer: fed the samples about to be stored, it returns the computed samples to store
beside them (same list, same transaction), each through its group's TagProcessor (range,
deadband, quality checks) exactly like a measured tag.

It is fed what is stored (after the inputs' deadband), so a result can always be recomputed from
the buffer: the totalizer's recovery after a SIGKILL relies on that. Computed tags that read other
computed tags run in dependency order within one round (a heap of plan indices), so a chain sees
this round's values, never last round's.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from edged.compute.functions import Calc, Events, Out, TotalizerCalc, WindowCalc, make
from edged.compute.plan import TagPlan
from edged.errors import Permanent
from edged.model import Sample, Value
from edged.quality import TagProcessor

if TYPE_CHECKING:
    from buffer.store import Store
    from edged.compute.config import ComputedGroup

Sink = Callable[[list[Sample]], None]
EventHook = Callable[[str, str, bool, int, str], None]  # tag, kind ("drift"), active, ts_ns, detail


class _Node:
    __slots__ = ("calc", "index", "plan", "processor", "queued")

    def __init__(self, index: int, plan: TagPlan, calc: Calc, processor: TagProcessor) -> None:
        self.index = index
        self.plan = plan
        self.calc = calc
        self.processor = processor
        self.queued = False


class Engine:
    """All computed tags of a config. `feed` and `tick` return samples to store; `writer(group)` is
    the command gate's way to reset a totalizer; `recover(store)` runs once before the first feed."""

    def __init__(
        self,
        plans: Sequence[TagPlan],
        *,
        clock: Callable[[], int] = time.time_ns,
        sink: Sink | None = None,
        on_event: EventHook | None = None,
        refresh_s: float = 3600.0,
    ) -> None:
        self._clock = clock
        self._refresh_ns = int(refresh_s * 1e9)  # a silent totalizer's total is stored again this often
        self.sink = sink  # where a reset's sample goes (the buffer); feed/tick return theirs
        self.events = Events(on_event)
        groups: dict[str, ComputedGroup] = {}
        for p in plans:
            groups.setdefault(p.group.name, p.group)
        self._processors = {name: TagProcessor(g, clock=clock) for name, g in groups.items()}
        self._nodes = [_Node(i, p, make(p, self.events), self._processors[p.group.name]) for i, p in enumerate(plans)]
        self._by_path = {n.plan.path: n for n in self._nodes}
        self._users: dict[str, list[tuple[_Node, int]]] = {}
        for n in self._nodes:
            for i, tag in enumerate(n.plan.inputs):
                self._users.setdefault(tag, []).append((n, i))
        self._ticking = [n for n in self._nodes if isinstance(n.calc, WindowCalc) and n.calc.aligned]
        self._totalizers = [n for n in self._nodes if isinstance(n.calc, TotalizerCalc)]
        self.evaluations = 0
        self.stored = 0

    @property
    def groups(self) -> list[str]:
        return list(self._processors)

    @property
    def tags(self) -> list[str]:
        return list(self._by_path)

    def feed(self, samples: Iterable[Sample]) -> list[Sample]:
        """The computed samples that `samples` (about to be stored) lead to, in dependency order."""
        heap: list[int] = []
        self._dispatch(samples, heap)
        if not heap:
            return []
        return self._run(heap)

    def _dispatch(self, samples: Iterable[Sample], heap: list[int]) -> None:
        users = self._users
        for s in samples:
            found = users.get(s.tag)
            if found is None:
                continue
            for node, i in found:
                node.calc.push(i, s)
                if not node.queued:
                    node.queued = True
                    heapq.heappush(heap, node.index)

    def _run(self, heap: list[int], first: list[Sample] | None = None) -> list[Sample]:
        out: list[Sample] = first or []
        nodes = self._nodes
        while heap:
            node = nodes[heapq.heappop(heap)]
            node.queued = False
            results = node.calc.evaluate()
            if results:
                stored = self._emit(node, results)
                out.extend(stored)
                self._dispatch(stored, heap)
        return out

    def _emit(self, node: _Node, results: list[Out]) -> list[Sample]:
        self.evaluations += len(results)
        path, unit = node.plan.path, node.plan.cfg.unit
        made = [Sample(path, ts, value, status, score, unit) for ts, value, status, score in results]
        stored = node.processor.process(made)
        self.stored += len(stored)
        if stored and isinstance(node.calc, TotalizerCalc):
            node.calc.emitted_ns = self._clock()
        return stored

    def tick(self, now_ns: int | None = None) -> list[Sample]:
        """Close aligned windows whose end has passed (by the clock, after a grace period), store
        again the total of a totalizer that stored nothing for `refresh_s`, and report computed tags
        that went silent past their stale_after."""
        now = self._clock() if now_ns is None else now_ns
        heap: list[int] = []
        out: list[Sample] = []
        for node in self._ticking:
            results = node.calc.tick(now)
            if results:
                stored = self._emit(node, results)
                out.extend(stored)
                self._dispatch(stored, heap)
        for node in self._totalizers:
            calc = node.calc
            assert isinstance(calc, TotalizerCalc)
            if calc.emitted_ns is None:
                calc.emitted_ns = now
            elif now - calc.emitted_ns >= self._refresh_ns:
                calc.emitted_ns = now
                again = calc.refresh()
                if again is not None:  # past the deadband: the same total, stored again
                    p = node.plan
                    out.append(Sample(p.path, again[0], again[1], again[2], again[3], p.cfg.unit))
        for proc in self._processors.values():
            stale = proc.sweep(now)
            if stale:
                out.extend(stale)
                self._dispatch(stale, heap)
        return self._run(heap, out) if heap else out

    # ------------------------------------------------------------------ totalizers

    def totalizer(self, path: str) -> TotalizerCalc | None:
        node = self._by_path.get(path)
        return node.calc if node is not None and isinstance(node.calc, TotalizerCalc) else None

    def reset(self, path: str, value: Value) -> Sample:
        """Set a totalizer (the command gate checked who may, and audits it); the sample is stored
        through `sink` and fed to the tags that read it. Raises Permanent for anything else."""
        calc = self.totalizer(path)
        if calc is None:
            raise Permanent(f"{path} is not a totalizer: only a totalizer can be written (a reset)")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Permanent(f"a totalizer is set to a finite number (0 to reset), not {value!r}")
        node = self._by_path[path]
        out = calc.reset(float(value), self._clock())
        self.evaluations += 1
        made = Sample(path, out[0], out[1], out[2], out[3], node.plan.cfg.unit)
        # a reset is always stored, whatever the deadband: the processor only scores it
        node.processor.process([made])
        heap: list[int] = []
        self._dispatch([made], heap)
        stored = self._run(heap, [made])
        if self.sink is not None:
            self.sink(stored)
        return made

    def writer(self, group: str) -> GroupWriter | None:
        return GroupWriter(self, group) if group in self._processors else None

    def recover(self, store: Store) -> int:
        """Rebuild every totalizer from the buffer (runs on the buffer thread, before the first
        feed): the newest stored total, the input in effect then, and the inputs stored after it.
        Returns how many totalizers resumed from a stored total."""
        resumed = 0
        for node in self._nodes:
            calc = node.calc
            if not isinstance(calc, TotalizerCalc):
                continue
            total = store.newest_of(node.plan.path)
            source = node.plan.inputs[0]
            if total is None or total.seq is None:
                calc.restore(None, None, [])
                continue
            bounding = store.newest_of(source, before_seq=total.seq)
            after = bounding.seq if bounding is not None and bounding.seq is not None else total.seq
            later = store.samples_of(source, after_seq=after)
            calc.restore(total, bounding, later)
            node.processor.process([Sample(node.plan.path, total.ts_ns, total.value, total.status, total.score,
                                           total.unit)])  # fmt: skip  # the deadband starts from the stored total
            resumed += 1
        return resumed

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {"evaluations": self.evaluations, "stored": self.stored}
        out["out_of_order"] = sum(n.calc.out_of_order for n in self._nodes)
        out.update(self.events.counts)
        return out


class GroupWriter:
    """The Writable the command gate sees for one [[computed]] group (edged.plugin.Writable)."""

    def __init__(self, engine: Engine, group: str) -> None:
        self._engine = engine
        self._group = group

    async def write(self, tag: str, value: Value) -> Sample | Value:
        return self._engine.reset(f"{self._group}/{tag}", value)
