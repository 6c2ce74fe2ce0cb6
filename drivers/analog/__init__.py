"""Analog inputs (4-20 mA loops, RTDs, thermocouples) from a Linux IIO ADC or a Modbus AI module.

The source gives a raw signal per tag (mA, mV or ohm); `convert.py` turns it into an engineering
value and a status: NAMUR NE43 bands on 4-20 mA loops (3.8..20.5 mA good, the gaps up to 3.6 and
21.0 mA Uncertain, beyond them Bad), and Bad for RTD/thermocouple readings outside their
standard's range (open or shorted sensor). Thermocouples are converted after the other tags of the
same poll, so a `cjc_tag` (an RTD on the terminal block, say) is always the fresh reading.

* `source = "iio"`: the sysfs files are read in one `asyncio.to_thread` call per poll (tiny
  files, but a slow ADC driver blocks in `read()`, and the event loop must not). A missing channel
  file, an unreadable or garbled value is a Bad sample for that tag, counted and logged once; the
  device directory disappearing raises Transient.
* `source = "modbus"`: the `drivers.modbus` driver is composed, not copied: it is built from the
  `modbus` settings and one register tag per analog tag, and its samples are converted here. Its
  connection handling, retries and error statuses are the Modbus driver's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from drivers.analog.config import Config, Tag
from drivers.analog.convert import Result, convert
from drivers.analog.iio import Channel, DeviceGone, read_channels
from edged import registry
from edged.aio import closing
from edged.conversions.loop import iio_current_ma
from edged.errors import Transient
from edged.model import Sample, Severity, Status, severity
from edged.plugin import Driver as DriverProtocol
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems

__all__ = ["Config", "Driver", "Tag"]


class Driver:
    """One analog input device. See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        # polls, and one key per problem kind (ne43_*, read_error...); each problem logged once per tag
        self.problems = Problems(config.name, self.log)
        self._tags = list(config.tags)
        self._paths = [config.tag_path(t) for t in self._tags]
        self._by_path = {p: i for i, p in enumerate(self._paths)}
        # thermocouples last, so their cold-junction tag of the same poll is already converted
        self._order = sorted(range(len(self._tags)), key=lambda i: self._tags[i].conversion == "thermocouple")
        self._last: dict[str, tuple[float | None, int]] = {}  # tag name -> (value, status), for cjc_tag
        self._modbus: DriverProtocol | None = None  # the modbus driver when source = "modbus"

    # ------------------------------------------------------------------ lifecycle

    def counters(self) -> Mapping[str, int]:
        return self.problems.counts

    async def __aenter__(self) -> Self:
        cfg = self.config
        if cfg.source == "iio":
            assert cfg.iio_path is not None
            if not await asyncio.to_thread(Path(cfg.iio_path).is_dir):
                raise Transient(f"{cfg.name}: IIO device {cfg.iio_path} does not exist (driver not loaded?)")
        else:
            # the modbus driver, found as the daemon finds it: no plugin imports another
            modbus = registry.driver_spec("modbus").driver(cfg.modbus_config(), self.ctx)
            await modbus.__aenter__()  # raises the Modbus driver's Transient/Permanent
            self._modbus = modbus
        self.problems.counts["connects"] += 1
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        modbus, self._modbus = self._modbus, None
        if modbus is not None:
            await modbus.__aexit__(et, e, tb)

    # ------------------------------------------------------------------ reading

    async def samples(self) -> AsyncGenerator[list[Sample], None]:
        if not self._tags:
            await asyncio.Event().wait()
            return
        if self._modbus is not None:
            async with closing(self._modbus.samples()) as stream:
                async for batch in stream:
                    yield self._from_modbus(batch)
            return
        loop = asyncio.get_running_loop()
        interval = float(self.config.interval)
        next_at = loop.time()
        while True:
            yield await self.poll()
            next_at += interval
            delay = next_at - loop.time()
            if delay < -interval:  # fell behind: skip missed polls, never burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(max(0.0, delay))

    async def poll(self) -> list[Sample]:
        """Read every IIO channel now: one batch, one sample per tag."""
        assert self.config.iio_path is not None
        self.problems.counts["polls"] += 1
        channels = {t.channel for t in self._tags if t.channel is not None}
        try:
            raw = await asyncio.to_thread(read_channels, Path(self.config.iio_path), channels)
        except DeviceGone as exc:
            self.problems.counts["device_gone"] += 1
            raise Transient(f"{self.config.name}: {exc}") from None
        ts = time.time_ns()
        signals: dict[int, tuple[float | None, int, tuple[str, str] | None]] = {}
        for i, tag in enumerate(self._tags):
            assert tag.channel is not None
            signals[i] = self._iio_signal(tag, raw[tag.channel])
        return self._convert(signals, {i: ts for i in signals})

    @staticmethod
    def _iio_signal(tag: Tag, ch: Channel) -> tuple[float | None, int, tuple[str, str] | None]:
        if ch.raw is None:
            return None, ch.status, ch.problem
        if tag.signal == "current_ma":
            assert tag.shunt_ohm is not None
            return iio_current_ma(ch.raw, ch.scale_mv, ch.offset, tag.shunt_ohm), Status.GOOD, None
        if tag.signal == "resistance_ohm":
            assert tag.excitation_ma is not None
            return ch.mv / tag.excitation_ma, Status.GOOD, None  # mV / mA = ohm
        return ch.mv, Status.GOOD, None

    def _from_modbus(self, batch: list[Sample]) -> list[Sample]:
        signals: dict[int, tuple[float | None, int, tuple[str, str] | None]] = {}
        stamps: dict[int, int] = {}
        for s in batch:
            i = self._by_path.get(s.tag)
            if i is None:
                continue
            stamps[i] = s.ts_ns
            if severity(s.status) == Severity.BAD or s.value is None:
                signals[i] = (None, s.status, None)  # the Modbus driver already counted and logged it
            elif isinstance(s.value, bool) or not isinstance(s.value, (int, float)):
                reason = f"register gives {type(s.value).__name__} {s.value!r}, not a number"
                signals[i] = (None, Status.BAD_CONFIGURATION_ERROR, ("not_a_number", reason))
            else:
                signals[i] = (float(s.value), s.status, None)
        return self._convert(signals, stamps)

    def _convert(
        self, signals: dict[int, tuple[float | None, int, tuple[str, str] | None]], stamps: dict[int, int]
    ) -> list[Sample]:
        results: dict[int, Result] = {}
        for i in self._order:
            if i not in signals:
                continue
            tag = self._tags[i]
            value, status, problem = signals[i]
            if value is None:
                res = Result(None, status, 0, problem)
            else:
                cjc = self._last.get(tag.cjc_tag) if tag.cjc_tag is not None else None
                res = convert(tag, value, cjc)
                if severity(status) > severity(res.status):  # the source's own doubt (Modbus) wins
                    res = Result(res.value, status, min(res.score, 50), res.problem)
            self._last[tag.name] = (res.value, res.status)
            self._note(tag, res.problem)
            results[i] = res
        out: list[Sample] = []
        for i in sorted(results):
            tag, res = self._tags[i], results[i]
            out.append(
                Sample(self._paths[i], stamps[i], res.value, res.status, res.score, tag.unit or tag.default_unit)
            )
        return out

    def _note(self, tag: Tag, problem: tuple[str, str] | None) -> None:
        """Count every problem; log it when it first appears on a tag, and once when it clears."""
        if problem is None:
            self.problems.resolved(tag.name)
            return
        kind, reason = problem
        self.problems.counts[kind] += 1
        self.problems.report(tag.name, kind, reason)


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
