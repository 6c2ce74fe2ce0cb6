"""What the pages show, computed from the running daemon's memory (never the disk), plus the two
things that do read the buffer: a tag's trend and the audit trail, each one bounded call (or a few)
on the buffer thread.

A page is a dict of *fields*, element id -> (text, css class): the template renders them and the
event stream sends the ones that changed, so the first paint and the live updates cannot disagree.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edged import __version__
from edged.model import Sample, Severity, severity, status_name

if TYPE_CHECKING:
    from buffer.store import Store
    from edged.daemon import Daemon

Fields = dict[str, tuple[str, str]]  # element id -> (text, css class)

TREND_RANGES = {"1h": 3600, "24h": 86400}
TREND_BUCKETS = 600  # points drawn: one per ~2 px of a wide chart
TREND_MAX_SAMPLES = 400_000  # a tag sampled faster than ~5 Hz over 24 h is drawn from its newest part
AUDIT_ROWS = 200


def quality_class(status: int) -> str:
    return {Severity.GOOD: "good", Severity.UNCERTAIN: "uncertain"}.get(severity(status), "bad")


def fmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return "-" if value is None else str(value)


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _state_class(state: str) -> str:
    return {"running": "good", "connected": "good", "stopped": "", "starting": "uncertain"}.get(state, "bad")


# ------------------------------------------------------------------------ uplink history (in memory)


@dataclass(slots=True)
class Point:
    t: float  # unix seconds
    backlog: int
    live: int  # cumulative samples acknowledged
    historical: int


class Sampler:
    """Every `interval_s`, each uplink's backlog and acknowledged counts, kept for an hour: the
    uplinks page charts them and the overview derives send rates. Memory only: ~1800 points each."""

    def __init__(self, daemon: Daemon, interval_s: float = 2.0, keep_s: float = 3600.0) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self.points: dict[str, deque[Point]] = {}
        self._maxlen = int(keep_s / interval_s)

    def sample(self) -> None:
        now = time.time()
        names = set()
        for s in self.daemon.senders:
            names.add(s.name)
            ring = self.points.setdefault(s.name, deque(maxlen=self._maxlen))
            backlog = self.daemon.backlog.get(s.name, (0, None))[0]
            ring.append(Point(now, backlog, s.stats.sent_live, s.stats.sent_historical))
        for gone in set(self.points) - names:
            del self.points[gone]

    def rates(self, name: str, span_s: float = 10.0) -> tuple[float, float]:
        """Live and historical samples/s over about the last `span_s`."""
        ring = self.points.get(name)
        if not ring or len(ring) < 2:
            return 0.0, 0.0
        last = ring[-1]
        first = next((p for p in ring if last.t - p.t <= span_s), ring[0])
        if first is last:
            first = ring[-2]
        dt = max(last.t - first.t, 1e-6)
        return max(0, last.live - first.live) / dt, max(0, last.historical - first.historical) / dt

    def series(self, name: str) -> list[list[float]]:
        """[t, backlog, live rate, historical rate] per point, for the uplinks chart."""
        ring = list(self.points.get(name, ()))
        out: list[list[float]] = []
        for prev, p in itertools.pairwise(ring):
            dt = max(p.t - prev.t, 1e-6)
            out.append([p.t, p.backlog, max(0, p.live - prev.live) / dt, max(0, p.historical - prev.historical) / dt])
        return out


# ------------------------------------------------------------------------ pages


def tag_catalogue(daemon: Daemon) -> list[dict[str, Any]]:
    """Every configured tag (devices, then computed groups) and any other the buffer was handed."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for dev in [*daemon.config.devices, *daemon.config.computed]:
        for t in dev.tags:
            path = dev.tag_path(t)
            seen.add(path)
            rows.append({"tag": path, "device": dev.name, "unit": t.unit or "", "low": t.low, "high": t.high,
                         "description": t.description})  # fmt: skip
    for path in sorted(set(daemon.current) - seen):
        rows.append({"tag": path, "device": path.split("/", 1)[0], "unit": daemon.current[path].unit or "",
                     "low": None, "high": None, "description": ""})  # fmt: skip
    return rows


def tag_fields(s: Sample | None, tag: str, now_ns: int) -> Fields:
    if s is None:
        return {f"v:{tag}": ("", ""), f"s:{tag}": ("no data yet", "nodata"), f"q:{tag}": ("", "")}
    cls = quality_class(s.status)
    return {f"v:{tag}": (fmt_value(s.value), cls), f"s:{tag}": (status_name(s.status), cls),
            f"q:{tag}": (str(s.score), cls)}  # fmt: skip


def tags_fields(daemon: Daemon) -> tuple[Fields, dict[str, int]]:
    """Fields of the tags page and each tag's timestamp (ms; the page turns it into an age itself)."""
    now = time.time_ns()
    fields: Fields = {}
    stamps: dict[str, int] = {}
    for row in tag_catalogue(daemon):
        s = daemon.current.get(row["tag"])
        fields.update(tag_fields(s, row["tag"], now))
        if s is not None:
            stamps[f"a:{row['tag']}"] = s.ts_ns // 1_000_000
    return fields, stamps


def quality_counts(daemon: Daemon) -> dict[str, int]:
    counts = {"good": 0, "uncertain": 0, "bad": 0}
    for s in daemon.current.values():
        counts[quality_class(s.status)] += 1
    return counts


def overview_fields(daemon: Daemon, sampler: Sampler) -> Fields:
    now = time.time_ns()
    b = daemon.buffer
    cap = int(daemon.config.buffer.max_bytes)
    fill = 100.0 * daemon.buffer_file_bytes / cap if cap else 0.0
    counts = quality_counts(daemon)
    f: Fields = {
        "gateway": (daemon.config.gateway.id, ""),
        "version": (__version__, ""),
        "uptime": (fmt_age((now - daemon.started_ns) / 1e9), ""),
        "lag": (f"{daemon.loop_lag_s * 1000:.0f} ms", "bad" if daemon.loop_lag_s > 1 else ""),
        "buffer-bytes": (f"{fmt_bytes(daemon.buffer_file_bytes)} of {fmt_bytes(cap)}", ""),
        "buffer-fill": (f"{fill:.1f} %", "bad" if fill > 95 else "uncertain" if fill > 80 else "good"),
        "buffer-retention": (fmt_age(float(daemon.config.buffer.retention)), ""),
        "buffer-stored": (str(b.stored), ""),
        "buffer-dropped": (str(b.dropped_ingest), "bad" if b.dropped_ingest else ""),
        "buffer-alarm": (b.alarm or "none", "bad" if b.alarm else "good"),
        "tags-good": (str(counts["good"]), "good"),
        "tags-uncertain": (str(counts["uncertain"]), "uncertain" if counts["uncertain"] else ""),
        "tags-bad": (str(counts["bad"]), "bad" if counts["bad"] else ""),
        "devices-up": (f"{sum(r.stats.state == 'running' for r in daemon.devices)} of {len(daemon.devices)}", ""),
    }
    f.update(uplinks_fields(daemon, sampler))
    f.update(alarm_count_fields(daemon))
    return f


def devices_fields(daemon: Daemon) -> Fields:
    now = time.time_ns()
    f: Fields = {}
    for r in daemon.devices:
        st, n = r.stats, r.name
        f[f"d-state:{n}"] = (st.state, _state_class(st.state))
        f[f"d-connects:{n}"] = (str(max(0, st.connects - 1)), "")
        f[f"d-polls:{n}"] = (str(st.polls), "")
        f[f"d-samples:{n}"] = (str(st.samples), "")
        f[f"d-errors:{n}"] = (str(st.errors), "bad" if st.errors else "")
        f[f"d-error:{n}"] = (st.last_error or "", "")
        f[f"d-age:{n}"] = (fmt_age((now - st.last_sample_ns) / 1e9 if st.last_sample_ns else None), "")
        counters = r.tally.totals()
        f[f"d-counters:{n}"] = (", ".join(f"{k} {v:g}" for k, v in sorted(counters.items())), "")
    return f


def uplinks_fields(daemon: Daemon, sampler: Sampler) -> Fields:
    now = time.time_ns()
    f: Fields = {}
    for s in daemon.senders:
        n = s.name
        backlog, oldest = daemon.backlog.get(n, (0, None))
        dropped, gaps_owed = daemon.delivery.get(n, (0, 0))
        live, hist = sampler.rates(n)
        f[f"u-state:{n}"] = (s.stats.state, _state_class(s.stats.state))
        f[f"u-backlog:{n}"] = (str(backlog), "uncertain" if backlog > 10_000 else "")
        f[f"u-oldest:{n}"] = (fmt_age((now - oldest) / 1e9 if oldest else None), "")
        f[f"u-live:{n}"] = (f"{live:.1f}/s", "")
        f[f"u-hist:{n}"] = (f"{hist:.1f}/s", "")
        f[f"u-gaps:{n}"] = (f"{s.stats.gaps_sent} sent, {gaps_owed} owed", "uncertain" if gaps_owed else "")
        f[f"u-dropped:{n}"] = (str(dropped), "bad" if dropped else "")
        f[f"u-errors:{n}"] = (str(s.stats.errors), "bad" if s.stats.errors else "")
    return f


# ------------------------------------------------------------------------ buffer reads


def downsample(samples: list[Sample], lo_ns: int, hi_ns: int, buckets: int = TREND_BUCKETS) -> list[list[float]]:
    """[t_ms, min, max, last, worst severity] per non-empty time bucket, so a one-sample spike stays
    visible however many samples share its bucket (an average would flatten it). Non-numeric values
    (strings) are left out; booleans count as 0/1."""
    width = max(1, (hi_ns - lo_ns) // buckets)
    out: dict[int, list[float]] = {}
    for s in samples:
        v = s.value
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, int | float) or not math.isfinite(v):
            continue
        i = (s.ts_ns - lo_ns) // width
        b = out.get(i)
        sev = float(severity(s.status))
        if b is None:
            out[i] = [(lo_ns + i * width) / 1e6, v, v, v, sev]
        else:
            b[1] = min(b[1], v)
            b[2] = max(b[2], v)
            b[3] = v
            b[4] = max(b[4], sev)
    return [out[k] for k in sorted(out)]


def audit_rows(store: Store, limit: int = AUDIT_ROWS) -> list[dict[str, Any]]:
    """The newest `limit` audit rows, newest first; runs on the buffer thread (one indexed query)."""
    try:
        rows = store.db.execute(
            "SELECT received_ns, source, user, tag, value, old, result, code, reason, readback FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    keys = ("received_ns", "source", "user", "tag", "value", "old", "result", "code", "reason", "readback")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# ------------------------------------------------------------------------ alarms (edged.alarms, in memory)

ALARM_ORDER = {"unack": 0, "rtn_unack": 1, "acked": 2, "normal": 3}  # what needs the operator first
SHELVE_CHOICES = ("15m", "1h", "4h", "8h")
STATE_TEXT = {"unack": "active, unacknowledged", "acked": "active, acknowledged",
              "rtn_unack": "cleared, unacknowledged", "normal": "normal"}  # fmt: skip


def _local_time(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def alarm_list(daemon: Daemon) -> list[dict[str, Any]]:
    """Every configured alarm, unacknowledged and active first, then by priority (highest first)."""
    engine = daemon.alarms
    if engine is None:
        return []
    rows = []
    for a in engine.alarms.values():
        row = engine.describe(a)
        row["type"] = a.cfg.type
        row["tag"] = a.cfg.tag
        rows.append(row)

    def key(r: dict[str, Any]) -> tuple[int, int, int, str]:
        suppressed = bool(r["out_of_service"] or r["shelved_until_ns"])
        return (suppressed, ALARM_ORDER.get(r["state"], 9), -r["priority"], r["path"])

    return sorted(rows, key=key)


def shelve_choices(max_shelve_s: float) -> list[str]:
    """The shelve durations offered: the usual ones up to `max_shelve` (which is always offered)."""
    from edged.config import Duration

    out = [c for c in SHELVE_CHOICES if float(Duration.parse(c)) < max_shelve_s]
    return [*out, fmt_duration(max_shelve_s)]


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def alarm_counts(daemon: Daemon) -> dict[str, int]:
    """Active and unacknowledged (shelved and out-of-service ones are not annunciated), shelved."""
    counts = {"configured": 0, "active": 0, "unacknowledged": 0, "shelved": 0, "out_of_service": 0}
    if daemon.alarms is None:
        return counts
    for a in daemon.alarms.alarms.values():
        counts["configured"] += 1
        if a.cfg.out_of_service:
            counts["out_of_service"] += 1
        elif a.shelved_until is not None:
            counts["shelved"] += 1
        else:
            counts["active"] += a.state.active
            counts["unacknowledged"] += not a.state.acked
    return counts


def alarm_fields(daemon: Daemon) -> Fields:
    f: Fields = {}
    for r in alarm_list(daemon):
        p, st = r["path"], r["state"]
        f[f"al-state:{p}"] = (STATE_TEXT.get(st, st), f"alarm-{st}")
        f[f"al-since:{p}"] = (_local_time(r["since_ns"]), "")
        f[f"al-value:{p}"] = (fmt_value(r["value"]), "")
        if r["out_of_service"]:
            sup = ("out of service", "alarm-oos")
        elif r["shelved_until_ns"]:
            sup = (f"shelved until {_local_time(r['shelved_until_ns'])}", "alarm-shelved")
        else:
            sup = ("", "")
        f[f"al-sup:{p}"] = sup
    f.update(alarm_count_fields(daemon))
    return f


def alarm_count_fields(daemon: Daemon) -> Fields:
    c = alarm_counts(daemon)
    return {
        "alarms-active": (str(c["active"]), "bad" if c["active"] else "good"),
        "alarms-unacked": (str(c["unacknowledged"]), "bad" if c["unacknowledged"] else "good"),
        "alarms-shelved": (str(c["shelved"]), "uncertain" if c["shelved"] else ""),
        "alarms-oos": (str(c["out_of_service"]), ""),
    }
