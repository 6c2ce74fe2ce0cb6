"""The SQLite ring buffer: every sample, every uplink's acknowledged ranges, and what was dropped.

Synchronous on purpose: the daemon runs it on one dedicated thread (see `buffer.Buffer`), CLI tools
use it directly. One connection per Store; SQLite's WAL lets another process (`edged status`,
`edged replay`) read and write beside the daemon.

Invariants:
- seq values are never reused. A brand-new buffer starts at the current Unix time in microseconds,
  so even a buffer that was replaced (corrupt file kept aside) continues above the old sequence and
  receivers that drop duplicates by (gateway, seq) never discard new data.
- an uplink's state is the set of seq ranges it has acknowledged (`acks`), merged as they touch.
  Everything else at or below the head is still owed to it. Recording an acknowledgement is one
  transaction, together with deleting the gap records it carried.
- trimming (age or size) deletes oldest-first by seq. For each uplink the part of the deleted range
  it never acknowledged becomes a gap record it must send, and is counted as dropped for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from buffer.audit import SCHEMA as AUDIT_SCHEMA
from buffer.audit import AuditRow as AuditRow  # re-exported: callers import them from here
from buffer.audit import AuditTables
from buffer.audit import InboxItem as InboxItem
from edged.errors import BufferRefused, BufferUnavailable, BufferUnusable, StorageError
from edged.files import ensure_mode
from edged.model import Gap, Sample

log = logging.getLogger("edged.buffer")

APPLICATION_ID = 0x65646764  # "edgd"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags(
    tag_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, unit TEXT);
CREATE TABLE IF NOT EXISTS samples(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, tag_id INTEGER NOT NULL,
    value, status INTEGER NOT NULL, score INTEGER NOT NULL, kind INTEGER);
CREATE TABLE IF NOT EXISTS uplinks(
    name TEXT PRIMARY KEY, created_ns INTEGER NOT NULL, sent INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0, gaps_sent INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks(
    uplink TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, PRIMARY KEY(uplink, lo)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps(
    id INTEGER PRIMARY KEY, uplink TEXT NOT NULL, lo_seq INTEGER NOT NULL, hi_seq INTEGER NOT NULL,
    lo_ts_ns INTEGER NOT NULL, hi_ts_ns INTEGER NOT NULL, count INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS gaps_by_uplink ON gaps(uplink, lo_seq);
"""
# Commands (buffer/audit.py): the audit trail, the ids seen and the `edged write` inbox.
_SCHEMA += AUDIT_SCHEMA

_CORE_TABLES = ("meta", "tags", "samples", "uplinks", "acks", "gaps")
OPEN_WAIT_S = 20.0  # a locked buffer: wait this long, then exit 1 (below WatchdogSec=30, TimeoutStartSec=60)
QUICK_CHECK_S = 15.0  # startup integrity check budget; a larger buffer is opened unchecked past it

Range = tuple[int, int]
KIND_BOOL = 1  # samples.kind: NULL = the value's own SQLite type, 1 = a bool stored as 0/1


@dataclass(frozen=True, slots=True)
class TrimResult:
    deleted: int = 0
    by_age: int = 0
    by_size: int = 0
    gaps: int = 0


@dataclass(frozen=True, slots=True)
class Space:
    """The buffer's space, in bytes. The file does not shrink after a DELETE: its free pages are
    reused by new rows first, so a full file system with free pages inside the file is not full."""

    used: int  # live pages
    inner_free: int  # free pages inside the database file
    wal: int  # the WAL file as it is now
    wal_headroom: int  # what the WAL grows to between checkpoints (it needs file-system space)
    fs_free: int  # free on the file system

    def room(self, max_bytes: int, keep_free: int) -> int:
        """How much more live data fits: the free pages inside the file, then file-system space
        beyond `keep_free` and beyond what the WAL still needs to reach its working size; at most
        up to max_bytes. Negative when over max_bytes. Deleting rows only ever adds free pages, so
        this never asks to delete for space the file system itself lacks."""
        wal_short = max(0, self.wal_headroom - self.wal)
        grow = max(0, self.fs_free - keep_free - wal_short)
        return min(self.inner_free + grow, max_bytes - self.used)

    def margin(self, max_bytes: int, keep_free: int) -> int:
        """The trim step: 1 % of what the buffer may hold (64 KiB..16 MiB)."""
        cap = self.used + max(0, self.room(max_bytes, keep_free))
        return min(16 * 1024**2, max(64 * 1024, cap // 100))


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    name: str
    acked: list[Range]
    backlog: int
    oldest_unsent_ns: int | None
    sent: int
    dropped: int
    pending_gaps: int


class SetAside(msgspec.Struct, frozen=True, omit_defaults=True):
    """A buffer file found unusable, kept aside, and what was carried over from it (meta `set_aside`)."""

    path: str
    at_ns: int
    reason: str
    salvaged: int = 0  # samples copied into the fresh buffer with their seq and timestamp
    lost: int = 0  # seqs that could not be read (at most: counted by seq width); owed as gap records
    gaps: int = 0  # gap records written for uplinks that had not acknowledged the lost seqs
    note: str = ""


@dataclass(frozen=True, slots=True)
class BufferStatus:
    path: str
    file_bytes: int
    used_bytes: int
    samples: int
    first_seq: int | None
    head: int
    oldest_ns: int | None
    newest_ns: int | None
    trimmed_age: int
    trimmed_size: int
    uplinks: list[UplinkStatus] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)


@functools.cache
def _core_columns() -> dict[str, frozenset[str]]:
    """The columns each core table has in the schema this edged writes (from the script itself)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return {t: frozenset(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in _CORE_TABLES}
    finally:
        db.close()


def wal_pages(fs_bytes: int, page_size: int) -> int:
    """The auto-checkpoint size for a file system (see `Store.fit_wal`)."""
    return min(1000, max(64, fs_bytes // 64 // page_size))


def subtract(lo: int, hi: int, ranges: Iterable[Range]) -> list[Range]:
    """The parts of [lo, hi] not covered by `ranges` (sorted by start), oldest first."""
    holes: list[Range] = []
    pos = lo
    for a, b in ranges:
        if b < pos:
            continue
        if a > hi:
            break
        if a > pos:
            holes.append((pos, min(a - 1, hi)))
        pos = max(pos, b + 1)
        if pos > hi:
            break
    if pos <= hi:
        holes.append((pos, hi))
    return holes


class Store(AuditTables):
    """One connection to the buffer database. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        create: bool = True,
        readonly: bool = False,
        busy_timeout_ms: int = 10_000,
        verify: bool = False,
    ) -> None:
        """Open (or create) the buffer. Every failure is a StorageError whose class says what to do:
        BufferUnavailable (wait, retry), BufferRefused (leave it alone), BufferUnusable (set aside).
        `verify` adds a time-bounded quick_check (the daemon's open; CLI readers skip it)."""
        from buffer.recovery import classify

        self.path = Path(path)
        self._tag_ids: dict[str, tuple[int, str | None]] = {}
        self._tags_by_id: dict[int, tuple[str, str | None]] = {}
        if not self.path.exists() and not create:
            raise StorageError(f"no buffer at {self.path}")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    ensure_mode(self.path)  # 0640 whatever the umask; SQLite gives -wal/-shm the same mode
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise classify(self.path, exc) from exc
        try:
            self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            fresh = self._check_identity(readonly)
            if verify and not fresh:
                self._quick_check()
            if not fresh:
                self._check_schema(readonly)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self.db.execute("PRAGMA journal_size_limit=67108864")
                self.db.executescript(_SCHEMA)
                self._init_meta()
            self.head = self._read_head()
        except (StorageError, sqlite3.Error, OSError) as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            if isinstance(exc, StorageError):
                raise
            raise classify(self.path, exc) from exc

    # ------------------------------------------------------------------ lifecycle

    def _check_identity(self, readonly: bool) -> bool:
        """Refuse what is not ours to use; True for a brand-new (empty) file."""
        app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and tables == 0:
            if readonly:
                raise StorageError(f"{self.path}: empty, not an edged buffer")
            self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return True
        if app_id != APPLICATION_ID:
            raise BufferUnusable(
                f"{self.path}: a foreign SQLite database (application_id {app_id:#x}), not an edged buffer"
            )
        if version > SCHEMA_VERSION:
            raise BufferRefused(
                f"{self.path}: written by a newer edged (buffer schema {version}, this edged reads up to"
                f" {SCHEMA_VERSION}); refusing to touch it. Install that edged again, or move the file away"
                " to start an empty buffer (its unsent data stays in it)"
            )
        return False

    def _quick_check(self) -> None:
        """PRAGMA quick_check, bounded by QUICK_CHECK_S so a big buffer still starts in time."""
        deadline = time.monotonic() + QUICK_CHECK_S
        self.db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            rows = self.db.execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_INTERRUPT":
                raise
            log.warning("%s: integrity check stopped after %.0fs (a large buffer); opened unchecked",
                        self.path, QUICK_CHECK_S)  # fmt: skip
            return
        finally:
            self.db.set_progress_handler(None, 0)
        if [r[0] for r in rows] != ["ok"]:
            raise BufferUnusable(f"{self.path}: corrupt (quick_check: {'; '.join(str(r[0]) for r in rows)})")

    def _check_schema(self, readonly: bool) -> None:
        """edged's own file with tables this edged cannot write to would run storing nothing: such a
        file is unusable. Missing tables are created (repaired) by the schema script."""
        kinds = dict(self.db.execute("SELECT name, type FROM sqlite_master").fetchall())
        missing_tables = [t for t in _CORE_TABLES if t not in kinds]
        for table, want in _core_columns().items():
            if table not in kinds:
                continue
            if kinds[table] != "table":
                raise BufferUnusable(f"{self.path}: {table} is a {kinds[table]}, not a table: not an edged buffer")
            have = {r[1]: r for r in self.db.execute(f"PRAGMA table_info({table})").fetchall()}
            absent = sorted(want - set(have))
            blocking = sorted(c for c, r in have.items() if c not in want and r[3] and r[4] is None and not r[5])
            if absent or blocking:
                detail = ", ".join(
                    [*(f"no column {c}" for c in absent), *(f"unknown required column {c}" for c in blocking)]
                )
                raise BufferUnusable(f"{self.path}: table {table} has a shape this edged cannot use ({detail})")
        if (
            "tags" in missing_tables
            and "samples" in kinds
            and self.db.execute("SELECT 1 FROM samples LIMIT 1").fetchone()
        ):
            raise BufferUnusable(f"{self.path}: samples without a tags table: their tag names are lost")
        if missing_tables and not readonly:
            log.warning("%s: creating missing tables %s", self.path, ", ".join(missing_tables))

    def _init_meta(self) -> None:
        with self.transaction():
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='samples'").fetchone()
            if row is None:
                base = time.time_ns() // 1000
                self.db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES('samples', ?)", (base,))
                self.db.execute("INSERT OR IGNORE INTO meta VALUES('created_ns', ?)", (time.time_ns(),))
            for key in ("trimmed_age", "trimmed_size"):
                self.db.execute("INSERT OR IGNORE INTO meta VALUES(?, 0)", (key,))

    def _read_head(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='samples'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
                self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ writing

    def _intern(self, name: str, unit: str | None) -> int:
        known = self._tag_ids.get(name)
        if known is not None and known[1] == unit:
            return known[0]
        row = self.db.execute("SELECT tag_id, unit FROM tags WHERE name=?", (name,)).fetchone()
        if row is None:
            tag_id = self.db.execute("INSERT INTO tags(name, unit) VALUES(?,?)", (name, unit)).lastrowid
            assert tag_id is not None
        else:
            tag_id = row[0]
            if row[1] != unit:  # a tag has one unit: the latest written
                self.db.execute("UPDATE tags SET unit=? WHERE tag_id=?", (unit, tag_id))
        self._tag_ids[name] = (tag_id, unit)
        self._tags_by_id[tag_id] = (name, unit)
        return tag_id

    def append(self, samples: Sequence[Sample]) -> Range:
        """Store samples in one transaction; returns the (first, last) seq assigned."""
        if not samples:
            return (self.head + 1, self.head)
        with self.transaction():
            head = self._read_head()
            intern = self._intern
            rows: list[tuple[object, ...]] = []
            seq = head
            for s in samples:
                seq += 1
                v = s.value
                # SQLite has no boolean: a bool is stored as 0/1 with kind 1, so it reads back as a bool
                if v is True or v is False:
                    rows.append((seq, s.ts_ns, intern(s.tag, s.unit), 1 if v else 0, s.status, s.score, KIND_BOOL))
                else:
                    rows.append((seq, s.ts_ns, intern(s.tag, s.unit), v, s.status, s.score, None))
            self.db.executemany(
                "INSERT INTO samples(seq, ts_ns, tag_id, value, status, score, kind) VALUES(?,?,?,?,?,?,?)", rows
            )
        first = head + 1
        self.head = seq
        return (first, seq)

    # ------------------------------------------------------------------ reading

    def _tag(self, tag_id: int) -> tuple[str, str | None]:
        t = self._tags_by_id.get(tag_id)
        if t is None:
            row = self.db.execute("SELECT name, unit FROM tags WHERE tag_id=?", (tag_id,)).fetchone()
            t = (row[0], row[1]) if row else (f"<unknown tag {tag_id}>", None)
            self._tags_by_id[tag_id] = t
        return t

    def _rows_to_samples(self, rows: Iterable[tuple[Any, ...]]) -> list[Sample]:
        out = []
        tag = self._tag
        for seq, ts_ns, tag_id, value, status, score, kind in rows:
            name, unit = tag(tag_id)
            if kind == KIND_BOOL:
                value = bool(value)
            out.append(Sample(name, ts_ns, value, status, score, unit, seq))
        return out

    def read(self, lo: int, hi: int, limit: int) -> tuple[list[Sample], int]:
        """Samples with lo <= seq <= hi, oldest first, at most `limit`; and the last seq the
        result covers (hi when fewer than `limit` came back), so holes are acknowledged too."""
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples"
            " WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
            (lo, hi, limit),
        ).fetchall()
        covered = rows[-1][0] if len(rows) == limit else hi
        return self._rows_to_samples(rows), covered

    def read_time(self, since_ns: int | None, until_ns: int | None, after_seq: int, limit: int) -> list[Sample]:
        """Samples by source time (for export/replay), in seq order after `after_seq`."""
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples"
            " WHERE seq > ? AND ts_ns >= ? AND ts_ns < ? ORDER BY seq LIMIT ?",
            (
                after_seq,
                since_ns if since_ns is not None else -(2**63),
                until_ns if until_ns is not None else 2**63 - 1,
                limit,
            ),
        ).fetchall()
        return self._rows_to_samples(rows)

    def latest(self, window: int = 1_000_000) -> list[Sample]:
        """The newest stored sample of every tag seen in the last `window` seqs: what a server of
        current values shows after a restart instead of "waiting for initial data". Bounded by the
        window so it costs the same on a full 24 h buffer (a tag silent for longer is left out)."""
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples WHERE seq IN"
            " (SELECT max(seq) FROM samples WHERE seq > ? GROUP BY tag_id) ORDER BY seq",
            (self.head - window,),
        ).fetchall()
        return self._rows_to_samples(rows)

    def first_seq(self) -> int | None:
        row = self.db.execute("SELECT seq FROM samples ORDER BY seq LIMIT 1").fetchone()
        return int(row[0]) if row else None

    # ------------------------------------------------------------------ uplinks

    def register_uplink(self, name: str, start_from: str = "earliest") -> None:
        """Make the uplink known. A brand-new uplink starting from `latest` acknowledges the past."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO uplinks(name, created_ns) VALUES(?, ?)", (name, time.time_ns())
            )
            if cur.rowcount and start_from == "latest":
                self._ack(name, 0, self._read_head())

    def uplink_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM uplinks ORDER BY name")]

    def acked(self, uplink: str) -> list[Range]:
        return [(a, b) for a, b in self.db.execute("SELECT lo, hi FROM acks WHERE uplink=? ORDER BY lo", (uplink,))]

    def unacked(self, uplink: str, upto: int, *, limit: int = 100, from_seq: int | None = None) -> list[Range]:
        """Seq ranges at or below `upto` (and from `from_seq` on) still owed to the uplink, oldest first."""
        first = self.first_seq()
        if first is not None and from_seq is not None:
            first = max(first, from_seq)
        if first is None or first > upto:
            return []
        return subtract(first, upto, self.acked(uplink))[:limit]

    def backlog(self, uplink: str) -> tuple[int, int | None]:
        """(samples owed, source time of the oldest owed) from the seq ranges: cheap at any size."""
        holes = self.unacked(uplink, self.head, limit=1_000_000)
        oldest = None
        for lo, hi in holes:
            row = self.db.execute(
                "SELECT ts_ns FROM samples WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT 1", (lo, hi)
            ).fetchone()
            if row:
                oldest = int(row[0])
                break
        return sum(b - a + 1 for a, b in holes), oldest

    def delivery_counts(self, uplink: str) -> tuple[int, int]:
        """(samples dropped before the uplink got them, gap records it still has to send)."""
        row = self.db.execute("SELECT dropped FROM uplinks WHERE name=?", (uplink,)).fetchone()
        gaps = self.db.execute("SELECT count(*) FROM gaps WHERE uplink=?", (uplink,)).fetchone()[0]
        return (int(row[0]) if row else 0, int(gaps))

    def file_bytes(self) -> int:
        """The database, its WAL and shared-memory file on disk."""
        return sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        )

    def _ack(self, uplink: str, lo: int, hi: int) -> None:
        rows = self.db.execute(
            "SELECT lo, hi FROM acks WHERE uplink=? AND lo <= ? AND hi >= ?", (uplink, hi + 1, lo - 1)
        ).fetchall()
        new_lo = min([lo, *(r[0] for r in rows)])
        new_hi = max([hi, *(r[1] for r in rows)])
        if rows:
            self.db.executemany("DELETE FROM acks WHERE uplink=? AND lo=?", [(uplink, r[0]) for r in rows])
        self.db.execute("INSERT INTO acks(uplink, lo, hi) VALUES(?,?,?)", (uplink, new_lo, new_hi))

    def ack(self, uplink: str, lo: int, hi: int, *, sent: int = 0, gap_ids: Sequence[int] = ()) -> None:
        """Record that the peer acknowledged seq lo..hi (and these gap records): one transaction."""
        with self.transaction():
            if hi >= lo:
                self._ack(uplink, lo, hi)
            if gap_ids:
                self.db.executemany("DELETE FROM gaps WHERE id=? AND uplink=?", [(g, uplink) for g in gap_ids])
            self.db.execute(
                "UPDATE uplinks SET sent = sent + ?, gaps_sent = gaps_sent + ? WHERE name=?",
                (sent, len(gap_ids), uplink),
            )

    def unack(self, uplink: str, lo: int, hi: int) -> int:
        """Forget that the uplink acknowledged lo..hi, so it is sent again (`edged replay`).

        A running daemon's sender sees the re-opened range as backlog on its next pass: the
        coordination is this one transaction, no signal needed. Returns the seqs re-opened.
        """
        reopened = 0
        with self.transaction():
            rows = self.db.execute(
                "SELECT lo, hi FROM acks WHERE uplink=? AND lo <= ? AND hi >= ?", (uplink, hi, lo)
            ).fetchall()
            for a, b in rows:
                self.db.execute("DELETE FROM acks WHERE uplink=? AND lo=?", (uplink, a))
                if a < lo:
                    self.db.execute("INSERT INTO acks(uplink, lo, hi) VALUES(?,?,?)", (uplink, a, lo - 1))
                if b > hi:
                    self.db.execute("INSERT INTO acks(uplink, lo, hi) VALUES(?,?,?)", (uplink, hi + 1, b))
                reopened += min(b, hi) - max(a, lo) + 1
        return reopened

    def seq_span(self, since_ns: int | None, until_ns: int | None) -> Range | None:
        """The seq range spanning samples with since <= ts < until (None when there are none)."""
        row = self.db.execute(
            "SELECT min(seq), max(seq) FROM samples WHERE ts_ns >= ? AND ts_ns < ?",
            (since_ns if since_ns is not None else -(2**63), until_ns if until_ns is not None else 2**63 - 1),
        ).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def count(self, lo: int, hi: int) -> int:
        return int(self.db.execute("SELECT count(*) FROM samples WHERE seq BETWEEN ? AND ?", (lo, hi)).fetchone()[0])

    def pending_gaps(self, uplink: str, limit: int = 100) -> list[tuple[int, Gap]]:
        return [
            (r[0], Gap(r[1], r[2], r[3], r[4], r[5]))
            for r in self.db.execute(
                "SELECT id, lo_seq, hi_seq, lo_ts_ns, hi_ts_ns, count FROM gaps WHERE uplink=? ORDER BY lo_seq LIMIT ?",
                (uplink, limit),
            )
        ]

    # ------------------------------------------------------------------ trimming

    def used_bytes(self) -> int:
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _age_boundary(self, cutoff_ns: int, max_rows: int) -> int | None:
        """First seq to keep by age: rows are trimmed oldest-first by seq, up to the first young one."""
        oldest = self.db.execute("SELECT seq, ts_ns FROM samples ORDER BY seq LIMIT 1").fetchone()
        if oldest is None or oldest[1] >= cutoff_ns:
            return None  # the common case, answered by one row (the writer asks after every flush)
        first = int(oldest[0])
        scanned, pos = 0, first
        while scanned < max_rows:
            rows = self.db.execute(
                "SELECT seq, ts_ns FROM samples WHERE seq >= ? ORDER BY seq LIMIT 10000", (pos,)
            ).fetchall()
            if not rows:
                return self.head + 1
            for seq, ts in rows:
                if ts >= cutoff_ns:
                    return int(seq) if seq > first else None
            scanned += len(rows)
            pos = rows[-1][0] + 1
        return pos

    def free_bytes(self) -> int:
        """Space left on the buffer's file system for this (unprivileged) process."""
        st = os.statvfs(self.path.parent)
        return int(st.f_bavail * st.f_frsize)

    def fs_bytes(self) -> int:
        """The size of the buffer's file system."""
        st = os.statvfs(self.path.parent)
        return int(st.f_blocks * st.f_frsize)

    def fit_wal(self, fs_bytes: int) -> None:
        """Checkpoint at about 1/64 of the file system (64..1000 pages): on a small one the WAL,
        which needs room of its own between checkpoints, stays a small share of it."""
        page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        self.db.execute(f"PRAGMA wal_autocheckpoint={wal_pages(fs_bytes, page_size)}")

    def wal_headroom(self) -> int:
        """What the WAL grows to between checkpoints: the auto-checkpoint size plus one transaction,
        generously (twice the checkpoint size)."""
        page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) or 1000
        return 2 * pages * page_size

    def space(self) -> Space:
        page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        try:
            wal = Path(f"{self.path}-wal").stat().st_size
        except FileNotFoundError:
            wal = 0
        return Space(
            used=(pages - free) * page_size,
            inner_free=free * page_size,
            wal=wal,
            wal_headroom=self.wal_headroom(),
            fs_free=self.free_bytes(),
        )

    def _size_boundary(self, max_bytes: int, min_free: int = 0) -> int | None:
        """First seq to keep by size: when the room left (`Space.room`) falls below the margin,
        just enough of the oldest rows go to leave twice the margin (estimated per row; the caller
        repeats while it deletes), so the trim neither runs on every flush nor deletes more."""
        sp = self.space()
        room = sp.room(max_bytes, min_free)
        margin = sp.margin(max_bytes, min_free)
        if room >= margin:
            return None
        first = self.first_seq()
        if first is None:
            return None
        # rows are only ever deleted oldest-first, so seqs are contiguous: no count(*) over the table
        count = self._read_head() - first + 1
        per_row = max(1.0, sp.used / count)
        n = min(count, max(1, math.ceil((2 * margin - room) / per_row)))
        row = self.db.execute("SELECT seq FROM samples ORDER BY seq LIMIT 1 OFFSET ?", (n,)).fetchone()
        return int(row[0]) if row else self.head + 1

    def trim(
        self,
        *,
        retention_ns: int,
        max_bytes: int,
        now_ns: int | None = None,
        max_rows: int = 500_000,
        min_free: int = 0,
    ) -> TrimResult:
        """Apply retention and the size cap; returns what was deleted. Repeat while it deletes.
        `min_free`: file-system space the buffer must not grow into (see `Space.room`)."""
        now = time.time_ns() if now_ns is None else now_ns
        age_b = self._age_boundary(now - retention_ns, max_rows)
        size_b = self._size_boundary(max_bytes, min_free)
        boundary = max(b for b in (age_b, size_b, 0) if b is not None)
        first = self.first_seq()
        if first is None or boundary <= first:
            return TrimResult()
        boundary = min(boundary, first + max_rows)
        with self.transaction():
            gaps = self._record_gaps(first, boundary - 1)
            deleted = self.db.execute("DELETE FROM samples WHERE seq < ?", (boundary,)).rowcount
            by_age = min(deleted, max(0, (age_b or 0) - first))
            by_size = deleted - by_age
            self.db.execute("UPDATE meta SET value = value + ? WHERE key='trimmed_age'", (by_age,))
            self.db.execute("UPDATE meta SET value = value + ? WHERE key='trimmed_size'", (by_size,))
        return TrimResult(deleted=deleted, by_age=by_age, by_size=by_size, gaps=gaps)

    def _record_gaps(self, lo: int, hi: int) -> int:
        n = 0
        for uplink in self.uplink_names():
            for a, b in subtract(lo, hi, self.acked(uplink)):
                count, ts_lo, ts_hi = self.db.execute(
                    "SELECT count(*), min(ts_ns), max(ts_ns) FROM samples WHERE seq BETWEEN ? AND ?", (a, b)
                ).fetchone()
                if count:
                    self.db.execute(
                        "INSERT INTO gaps(uplink, lo_seq, hi_seq, lo_ts_ns, hi_ts_ns, count) VALUES(?,?,?,?,?,?)",
                        (uplink, a, b, ts_lo, ts_hi, count),
                    )
                    self.db.execute("UPDATE uplinks SET dropped = dropped + ? WHERE name=?", (count, uplink))
                    n += 1
            # the deleted range is settled for this uplink: acknowledged, or owed as a gap record
            self._ack(uplink, 0, hi)
        return n

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        self.db.execute(f"PRAGMA wal_checkpoint({mode})")

    def integrity_ok(self) -> bool:
        return bool(self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    # ------------------------------------------------------------------ commands
    # The audit trail and the inbox are in buffer/audit.py (AuditTables).

    def newest_sample(self, tag: str, *, scan: int = 200_000) -> Sample | None:
        """The newest stored sample of a tag among the last `scan` rows (bounded: samples has no tag index)."""
        known = self.db.execute("SELECT tag_id FROM tags WHERE name=?", (tag,)).fetchone()
        if known is None:
            return None
        head = self._read_head()
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples"
            " WHERE seq > ? AND tag_id = ? ORDER BY seq DESC LIMIT 1",
            (head - scan, known[0]),
        ).fetchall()
        return self._rows_to_samples(rows)[0] if rows else None

    def newest_of(self, tag: str, *, before_seq: int | None = None) -> Sample | None:
        """The newest stored sample of a tag (below `before_seq`), however far back: a totalizer's
        recovery at start (edged.compute). Walks seq downwards from the head until it finds one."""
        known = self.db.execute("SELECT tag_id FROM tags WHERE name=?", (tag,)).fetchone()
        if known is None:
            return None
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples"
            " WHERE seq < ? AND tag_id = ? ORDER BY seq DESC LIMIT 1",
            (before_seq if before_seq is not None else 2**63 - 1, known[0]),
        ).fetchall()
        return self._rows_to_samples(rows)[0] if rows else None

    def samples_of(self, tag: str, *, after_seq: int, limit: int = 1_000_000) -> list[Sample]:
        """A tag's stored samples above `after_seq`, oldest first (a totalizer's recovery)."""
        known = self.db.execute("SELECT tag_id FROM tags WHERE name=?", (tag,)).fetchone()
        if known is None:
            return []
        rows = self.db.execute(
            "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples"
            " WHERE seq > ? AND tag_id = ? ORDER BY seq LIMIT ?",
            (after_seq, known[0], limit),
        ).fetchall()
        return self._rows_to_samples(rows)

    def newest_of_tags(self, tags: Sequence[str]) -> list[Sample]:
        """The newest stored sample of each of these tags, however far back, in one pass over the
        table per 500 tags (alarm recovery at start, edged.alarms); tags never stored are left out."""
        out: list[Sample] = []
        for i in range(0, len(tags), 500):
            chunk = list(tags[i : i + 500])
            marks = ",".join("?" * len(chunk))
            ids = [r[0] for r in self.db.execute(f"SELECT tag_id FROM tags WHERE name IN ({marks})", chunk)]
            if not ids:
                continue
            marks = ",".join("?" * len(ids))
            rows = self.db.execute(
                "SELECT seq, ts_ns, tag_id, value, status, score, kind FROM samples WHERE seq IN"
                f" (SELECT max(seq) FROM samples WHERE tag_id IN ({marks}) GROUP BY tag_id) ORDER BY seq",
                ids,
            ).fetchall()
            out += self._rows_to_samples(rows)
        return out

    # ------------------------------------------------------------------ status

    def status(self) -> BufferStatus:
        self.head = self._read_head()
        first = self.first_seq()
        count = self.db.execute("SELECT count(*) FROM samples").fetchone()[0]
        oldest = newest = None
        if first is not None:
            oldest = self.db.execute("SELECT ts_ns FROM samples WHERE seq=?", (first,)).fetchone()[0]
            newest = self.db.execute("SELECT ts_ns FROM samples ORDER BY seq DESC LIMIT 1").fetchone()[0]
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        uplinks = []
        for name, sent, dropped in self.db.execute("SELECT name, sent, dropped FROM uplinks ORDER BY name").fetchall():
            backlog, oldest_unsent = self.backlog(name)
            n_gaps = self.db.execute("SELECT count(*) FROM gaps WHERE uplink=?", (name,)).fetchone()[0]
            uplinks.append(UplinkStatus(name, self.acked(name), backlog, oldest_unsent, sent, dropped, n_gaps))
        file_bytes = self.file_bytes()
        return BufferStatus(
            path=str(self.path),
            file_bytes=file_bytes,
            used_bytes=self.used_bytes(),
            samples=count,
            first_seq=first,
            head=self.head,
            oldest_ns=oldest,
            newest_ns=newest,
            trimmed_age=int(meta.get("trimmed_age", 0)),
            trimmed_size=int(meta.get("trimmed_size", 0)),
            uplinks=uplinks,
            set_aside=self.set_aside_events(),
        )

    def set_aside_events(self) -> list[SetAside]:
        """Buffers this one replaced because they were unusable, oldest first (see buffer.recovery)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='set_aside'").fetchone()
        return msgspec.json.decode(row[0], type=list[SetAside]) if row else []


def open_or_recover(path: str | os.PathLike[str], *, synchronous: str = "NORMAL", wait_s: float = OPEN_WAIT_S) -> Store:
    """The daemon's open. A buffer that cannot be used right now (locked, I/O or permission error)
    is waited for up to `wait_s`, then BufferUnavailable is raised and nothing is touched; a newer
    edged's buffer raises BufferRefused. Only an unusable file is set aside, and what it held is
    salvaged into the fresh buffer (buffer.recovery)."""
    from buffer import recovery

    p = Path(path)
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            store = Store(p, synchronous=synchronous, verify=True, busy_timeout_ms=1000)
        except BufferUnavailable as exc:
            if time.monotonic() >= deadline:
                raise BufferUnavailable(
                    f"{exc}; gave up after {wait_s:.0f}s. The buffer is left as it is: edged exits so that it"
                    " is started again (systemd: Restart=on-failure)"
                ) from exc
            if not waiting:
                log.warning("%s; waiting up to %.0fs", exc, wait_s)
                waiting = True
            recovery.keep_alive(f"waiting for the buffer: {exc}")
            time.sleep(0.5)
            continue
        except BufferUnusable as exc:
            return recovery.recover(p, str(exc), synchronous=synchronous)
        break
    if waiting:
        log.info("%s: the buffer is available again", p)
    store.db.execute("PRAGMA busy_timeout=10000")
    recovery.resume(store)  # a salvage a crash or kill interrupted goes on where it stopped
    return store
