"""`edged replay` and `edged export`: re-send or dump stored samples after an outage.

Replay re-opens the chosen range in the uplink's acknowledged set (one buffer transaction). A
running daemon's sender then sends it as historical backlog by itself, so the CLI only watches the
range close; with no daemon running, the CLI sends the range itself through the same plugin. Either
way the acknowledged ranges stay the single source of truth: nothing else is coordinated.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from buffer import Buffer, Store
from edged import registry
from edged.config import Config, Duration, UplinkBase, tag_matcher
from edged.daemon import is_running, read_status
from edged.delivery import Sender, SenderStats
from edged.errors import ConfigError, Transient
from edged.model import Sample, status_name
from edged.plugin import Backoff, PluginContext


def parse_time(text: str, *, now_ns: int | None = None) -> int:
    """ISO 8601 ("2026-11-24T06:00:00Z"; without an offset it is local time), "now", or a duration
    back from now ("-2h", "90m", "2h ago")."""
    now = time.time_ns() if now_ns is None else now_ns
    s = text.strip()
    if s == "now":
        return now
    rel = re.fullmatch(r"-?\s*([0-9][0-9.a-z]*)(\s*ago)?", s)
    if rel and not re.fullmatch(r"\d{4}-.*", s):
        try:
            return now - int(Duration.parse(rel.group(1)) * 1e9)
        except ValueError:
            pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"invalid time {text!r}: use ISO 8601 (2026-11-24T06:00Z), 'now' or '-2h'") from None
    if t.tzinfo is None:
        t = t.astimezone()  # local time, as a plant engineer reads the clock on the wall
    return int(t.timestamp() * 1e9)


@dataclass(frozen=True, slots=True)
class Plan:
    uplink: str
    lo: int
    hi: int
    samples: int  # stored samples in lo..hi
    pending: int  # of those, not acknowledged right now


def make_plan(
    store: Store,
    uplink: str,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> Plan | None:
    """The seq range to replay; None when the buffer holds nothing in it."""
    if uplink not in store.uplink_names():
        known = ", ".join(store.uplink_names()) or "none yet"
        raise ConfigError(f"uplink {uplink!r} has never run against this buffer (known: {known})")
    if from_seq is not None or to_seq is not None:
        first = store.first_seq()
        if first is None:
            return None
        lo, hi = max(from_seq or first, first), min(to_seq if to_seq is not None else store.head, store.head)
    else:
        span = store.seq_span(since_ns, until_ns)
        if span is None:
            return None
        lo, hi = span
    if hi < lo:
        return None
    pending = sum(b - a + 1 for a, b in owed_in(store, uplink, lo, hi))
    return Plan(uplink, lo, hi, store.count(lo, hi), pending)


def owed_in(store: Store, uplink: str, lo: int, hi: int) -> list[tuple[int, int]]:
    return store.unacked(uplink, hi, limit=1_000_000, from_seq=lo)


def daemon_pid(data_dir: Path) -> int | None:
    """The pid of a daemon running on this data dir right now, from its status file."""
    st = read_status(data_dir)
    return int(st["pid"]) if st is not None and is_running(st) else None


class Progress:
    """A one-line progress bar on a terminal; a line every few seconds otherwise (journals, CI)."""

    def __init__(self, total: int, out: IO[str] = sys.stderr) -> None:
        self.total = max(total, 1)
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        rate = done / max(now - self.t0, 1e-9)
        bar = "#" * int(frac * 30)
        line = f"[{bar:<30}] {frac:6.1%} {done:,}/{self.total:,} samples, {rate:,.0f}/s"
        if self.tty:
            self.out.write("\r" + line + ("\n" if final else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


async def watch(store: Store, plan: Plan, progress: Progress, *, timeout_s: float, poll_s: float = 0.5) -> int:
    """Wait for a running daemon to send the re-opened range; returns what is still owed at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        owed = sum(b - a + 1 for a, b in owed_in(store, plan.uplink, plan.lo, plan.hi))
        progress.update(plan.hi - plan.lo + 1 - owed, final=owed == 0)
        if owed == 0 or time.monotonic() > deadline:
            return owed
        await asyncio.sleep(poll_s)


async def send_standalone(
    store: Store, config: Config, uplink_cfg: UplinkBase, plan: Plan, progress: Progress, *, attempts: int = 8
) -> SenderStats:
    """No daemon running: deliver the owed part of the range through the daemon's own Sender, so a
    rejected batch, `on_reject`, gap records and a plugin bug are handled exactly as in the daemon.
    Returns the Sender's figures; raises Transient when the uplink cannot be reached or halts."""
    spec = registry.uplink_spec(uplink_cfg.type)
    log = logging.getLogger(f"edged.replay.{uplink_cfg.name}")
    ctx = PluginContext(config.gateway.id, config.data_dir, log, config=config)
    failure: Transient | None = None
    async with Buffer(config.buffer_path, config.buffer) as buf:
        sender = Sender(
            buf, uplink_cfg, lambda: spec.uplink(uplink_cfg, ctx), gateway_id=config.gateway.id, log=log,
            backoff=Backoff(initial=0.5, cap=10.0),
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch(store, plan, progress, timeout_s=math.inf), name="replay-progress")
            try:
                await sender.replay(plan.lo, plan.hi, attempts=attempts)
            except Transient as exc:
                failure = exc
            watcher.cancel()
    if failure is not None:
        raise failure
    progress.update(plan.hi - plan.lo + 1, final=True)
    return sender.stats


# ----------------------------------------------------------------------------------------- export


class ExportRow(msgspec.Struct):
    seq: int | None
    tag: str
    ts: str
    ts_ns: int
    value: float | int | bool | str | None
    status: int
    quality: str
    score: int
    unit: str | None


def iter_samples(
    store: Store, since_ns: int | None, until_ns: int | None, patterns: list[str], page: int = 10_000
) -> Iterator[Sample]:
    keep = tag_matcher(patterns)
    after = -(2**63)
    while True:
        rows = store.read_time(since_ns, until_ns, after, page)
        if not rows:
            return
        for s in rows:
            if keep(s.tag):
                yield s
        after = rows[-1].seq or after


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def export(samples: Iterator[Sample], out: IO[str], fmt: str) -> int:
    """Write samples as CSV (for a spreadsheet) or JSON lines (for scripts); returns the count."""
    n = 0
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(["seq", "tag", "timestamp_utc", "ts_ns", "value", "status", "quality", "score", "unit"])
        for s in samples:
            w.writerow(
                [s.seq, s.tag, _iso(s.ts_ns), s.ts_ns, s.value, s.status, status_name(s.status), s.score, s.unit]
            )
            n += 1
        return n
    enc = msgspec.json.Encoder()
    buf = io.BytesIO()
    for s in samples:
        row = ExportRow(s.seq, s.tag, _iso(s.ts_ns), s.ts_ns, s.value, s.status, status_name(s.status), s.score, s.unit)
        buf.write(enc.encode(row) + b"\n")
        n += 1
        if n % 10_000 == 0:
            out.write(buf.getvalue().decode())
            buf = io.BytesIO()
    out.write(buf.getvalue().decode())
    return n
