"""JSON lines to a local file: for the demo, for debugging, and as a last-resort local archive.

A batch counts as acknowledged once it is written and (by default) fsync'ed, so the file holds
everything the buffer marks as delivered to it, even across a power cut.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Self

import msgspec

from edged.config import UplinkBase
from edged.errors import Permanent, Transient
from edged.model import Batch, status_name
from edged.plugin import PluginContext, UplinkSpec


class Config(UplinkBase):
    path: str = "samples.jsonl"  # relative to gateway.data_dir
    fsync: bool = True


class Record(msgspec.Struct, omit_defaults=True):
    gateway: str
    seq: int | None
    tag: str
    ts_ns: int
    value: float | int | bool | str | None
    status: int
    quality: str
    score: int
    unit: str | None = None
    historical: bool = False


class GapRecord(msgspec.Struct, tag="gap"):
    gateway: str
    lo_seq: int
    hi_seq: int
    lo_ts_ns: int
    hi_ts_ns: int
    count: int


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        p = Path(config.path)
        self.path = p if p.is_absolute() else ctx.data_dir / p
        self.config = config
        self.gateway = ctx.gateway_id
        self._fh: IO[bytes] | None = None
        self._enc = msgspec.json.Encoder()

    async def __aenter__(self) -> Self:
        try:
            self._fh = await asyncio.to_thread(self._open)
        except PermissionError as exc:
            raise Permanent(f"cannot open {self.path}: {exc.strerror}") from exc
        except OSError as exc:
            raise Transient(f"cannot open {self.path}: {exc.strerror}") from exc
        return self

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "ab")  # lives as long as the connection

    async def __aexit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self._fh.flush()
        if self.config.fsync:
            os.fsync(self._fh.fileno())

    async def send(self, batch: Batch) -> None:
        enc, gw, hist = self._enc, self.gateway, batch.historical
        lines = [
            enc.encode(
                Record(gw, s.seq, s.tag, s.ts_ns, s.value, s.status, status_name(s.status), s.score, s.unit, hist)
            )
            for s in batch.samples
        ]
        lines += [enc.encode(GapRecord(gw, g.lo_seq, g.hi_seq, g.lo_ts_ns, g.hi_ts_ns, g.count)) for g in batch.gaps]
        try:
            await asyncio.to_thread(self._write, b"\n".join(lines) + b"\n")
        except OSError as exc:
            raise Transient(f"write to {self.path} failed: {exc.strerror}") from exc


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
