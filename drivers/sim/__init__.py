"""A simulated plant, so the daemon runs with no hardware: the embedded demo and the benches.

Signals are deterministic for a given seed (repeatable demos and tests); `dropout` makes polls fail
like a flaky device so the whole error path can be watched without a real one.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Literal, Self

from edged.config import DeviceBase, Duration, TagBase, ValueType
from edged.errors import Transient
from edged.model import Sample, Status
from edged.plugin import DriverSpec, PluginContext

Signal = Literal["sine", "ramp", "random_walk", "step", "stuck", "noisy", "counter", "bool"]


class SimTag(TagBase):
    signal: Signal = "sine"
    amplitude: float = 1.0
    offset: float = 0.0
    period: Duration = Duration(60.0)
    noise: float = 0.0  # standard deviation added to every signal
    spike_probability: float = 0.0  # chance per poll of a +-10x amplitude outlier
    nan_probability: float = 0.0  # chance per poll of NaN (a broken sensor)

    def source_type(self) -> ValueType:
        return "bool" if self.signal == "bool" else "int64" if self.signal == "counter" else "double"


class Config(DeviceBase):
    interval: Duration = Duration(1.0)
    seed: int = 0
    dropout: float = 0.0  # chance per poll that the "device" does not answer
    tags: list[SimTag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interval < 0.0005:
            raise ValueError("interval must be at least 500us")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def read_interval(self, tag: TagBase) -> float:
        return float(self.interval)


class _Gen:
    __slots__ = ("rng", "state", "tag")

    def __init__(self, tag: SimTag, rng: random.Random) -> None:
        self.tag = tag
        self.rng = rng
        self.state = tag.offset

    def value(self, t: float) -> float | int | bool:
        tag, rng = self.tag, self.rng
        phase = (t % tag.period) / tag.period
        v: float
        match tag.signal:
            case "sine":
                v = tag.offset + tag.amplitude * math.sin(2 * math.pi * phase)
            case "ramp":
                v = tag.offset + tag.amplitude * phase
            case "random_walk":
                self.state += rng.gauss(0.0, tag.amplitude * 0.01)
                v = self.state
            case "step":
                v = tag.offset + (tag.amplitude if phase >= 0.5 else 0.0)
            case "stuck":
                v = tag.offset
            case "noisy":
                v = tag.offset + rng.gauss(0.0, tag.amplitude)
            case "counter":
                self.state += 1
                return int(self.state)
            case "bool":
                return phase >= 0.5
        if tag.noise:
            v += rng.gauss(0.0, tag.noise)
        if tag.spike_probability and rng.random() < tag.spike_probability:
            v += rng.choice((-10.0, 10.0)) * (tag.amplitude or 1.0)
        if tag.nan_probability and rng.random() < tag.nan_probability:
            v = math.nan
        return v


class Driver:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self._rng = random.Random(config.seed)
        self._gens = [
            (config.tag_path(t), t.unit, _Gen(t, random.Random(config.seed * 7919 + i)))
            for i, t in enumerate(config.tags)
        ]

    async def __aenter__(self) -> Self:
        if self.config.dropout and self._rng.random() < self.config.dropout:
            raise Transient(f"{self.config.name}: simulated device did not answer the connect")
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def samples(self) -> AsyncIterator[list[Sample]]:
        interval = float(self.config.interval)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self.config.dropout and self._rng.random() < self.config.dropout:
                raise Transient(f"{self.config.name}: simulated device stopped answering")
            ts = time.time_ns()
            t = ts / 1e9
            yield [Sample(tag, ts, g.value(t), Status.GOOD, 100, unit) for tag, unit, g in self._gens]
            next_at += interval
            delay = next_at - loop.time()
            if delay < -interval:  # fell behind (suspend, overload): skip missed polls, never burst
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
