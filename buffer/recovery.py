"""What to do with a buffer that cannot be opened, and how an unusable one is salvaged.

The rules (README "Buffer"):
- a lock, an I/O, permission or disk-full error says nothing about the file: it is waited for,
  then edged exits 1 and the file stays as it is (`classify` -> BufferUnavailable);
- a buffer written by a newer edged is refused and left alone (BufferRefused, from Store);
- only a file that is not SQLite, fails quick_check, carries another application id or has a
  schema edged cannot use is set aside (BufferUnusable): renamed to a unique `<name>.bad-<time>`,
  never deleted. A fresh buffer takes its place and `salvage` copies into it every readable sample
  with its seq and timestamp, the tags, the uplinks with their acknowledged ranges and pending gap
  records, and the command audit trail. Seq ranges that cannot be read become gap records for
  every uplink that had not acknowledged them. The event is kept in the fresh buffer's meta
  (`Store.set_aside_events`: `edged status`, status.json, /health).
- a marker file `<name>.salvage` names the aside file until its salvage is complete, so a crash or
  a kill during it resumes at the next start (every step is idempotent or guarded by meta keys).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

import msgspec

from buffer.store import Range, SetAside, Store, subtract
from edged.errors import BufferUnavailable, BufferUnusable, StorageError
from edged.sdnotify import Notifier

log = logging.getLogger("edged.buffer")

_LOCKED = "locked by another process (an sqlite3 shell, a backup tool, a long `edged export`?)"
_UNAVAILABLE = {
    "SQLITE_BUSY": _LOCKED,
    "SQLITE_LOCKED": _LOCKED,
    "SQLITE_IOERR": "an I/O error",
    "SQLITE_CANTOPEN": "cannot open it (a missing directory, or no permission on it or the file)",
    "SQLITE_READONLY": "read-only for this user (check the owner and mode of the file and its directory)",
    "SQLITE_PERM": "no permission",
    "SQLITE_AUTH": "no permission",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_NOMEM": "out of memory",
    "SQLITE_PROTOCOL": _LOCKED,
    "SQLITE_NOLFS": "the file system does not support large files",
}
_UNUSABLE = {"SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_FORMAT"}
CHUNK = 50_000  # seqs copied per transaction
BISECT_BUDGET = 100_000  # failed reads tolerated before a still-failing range is given up whole


def _code(exc: sqlite3.Error) -> str:
    """The primary result code name: SQLITE_IOERR_SHORT_READ -> SQLITE_IOERR."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return "_".join(name.split("_")[:2])


def classify(path: Path, exc: BaseException) -> StorageError:
    """Map a failure opening the buffer to what must happen: wait, set aside, or just exit 1."""
    if isinstance(exc, OSError):
        return BufferUnavailable(f"{path}: cannot use the buffer now: {exc.strerror or exc}")
    code = _code(exc) if isinstance(exc, sqlite3.Error) else ""
    if code in _UNAVAILABLE:
        return BufferUnavailable(f"{path}: cannot use the buffer now: {_UNAVAILABLE[code]} ({exc})")
    if code in _UNUSABLE:
        return BufferUnusable(f"{path}: not a usable edged buffer: {exc}")
    return StorageError(f"{path}: cannot open the buffer: {exc} ({code or type(exc).__name__}); left as it is")


def keep_alive(status: str) -> None:
    """A long open (a lock wait, a salvage) before READY: keep systemd's start timeout and watchdog at bay."""
    Notifier().notify("WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000", f"STATUS={status}")


# ----------------------------------------------------------------------------------------- set aside


def _marker(p: Path) -> Path:
    return p.with_name(p.name + ".salvage")


class _Pending(msgspec.Struct):
    aside: str
    reason: str
    at_ns: int


def _read_marker(p: Path) -> _Pending | None:
    try:
        return msgspec.json.decode(_marker(p).read_bytes(), type=_Pending)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.error("%s: unreadable (%s); ignored", _marker(p), exc)
        return None


def aside_path(p: Path) -> Path:
    """A name no earlier set-aside file (or its -wal/-shm) has: two recoveries in a second never collide."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 1_000_000):
        cand = p.with_name(f"{p.name}.bad-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not any(Path(f"{cand}{s}").exists() for s in ("", "-wal", "-shm")):
            return cand
    raise BufferUnavailable(f"{p}: too many set-aside files beside it")  # pragma: no cover


def recover(p: Path, reason: str, *, synchronous: str = "NORMAL") -> Store:
    """Set the unusable file aside (never delete it), start a fresh buffer, salvage into it."""
    pending = _read_marker(p)
    # a crash between writing the marker and moving the file: finish the move under the same name
    aside = Path(pending.aside) if pending and not Path(pending.aside).exists() else aside_path(p)
    try:
        tmp = _marker(p).with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgspec.json.encode(_Pending(str(aside), reason, time.time_ns())))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, _marker(p))
        for suffix in ("-wal", "-shm", ""):  # the database last: until it moves, the next start retries
            src = Path(f"{p}{suffix}")
            if src.exists():
                src.rename(Path(f"{aside}{suffix}"))
    except OSError as exc:
        raise BufferUnavailable(f"{p}: unusable ({reason}), and it cannot be set aside: {exc}") from exc
    log.error("buffer unusable, kept aside as %s; starting a fresh buffer and salvaging it: %s", aside, reason)
    store = Store(p, synchronous=synchronous)
    resume(store)
    return store


def resume(store: Store) -> SetAside | None:
    """Salvage the file the marker names into `store` (a no-op without a marker)."""
    pending = _read_marker(store.path)
    if pending is None:
        return None
    aside = Path(pending.aside)
    if not aside.exists():  # never moved (it opened after all), or moved away by hand
        _marker(store.path).unlink(missing_ok=True)
        return None
    try:
        event = salvage(store, aside, pending.reason, pending.at_ns)
    except (sqlite3.Error, OSError) as exc:
        err = classify(store.path, exc)
        if isinstance(err, BufferUnavailable):
            raise err from exc  # disk full, I/O: the salvage goes on at the next start
        log.exception("salvage of %s failed; what it still holds stays in it", aside)
        event = SetAside(str(aside), pending.at_ns, pending.reason, note=f"salvage failed: {exc}")
        with store.transaction():
            _record(store, event)
    _marker(store.path).unlink(missing_ok=True)
    log.warning(
        "salvaged %d samples from %s into the fresh buffer; %d seqs unreadable, %d gap records for the uplinks%s",
        event.salvaged, aside, event.lost, event.gaps, f" ({event.note})" if event.note else "",
    )  # fmt: skip
    return event


# ----------------------------------------------------------------------------------------- salvage


class _Salvage:
    """One salvage of an attached (read-only) old file into the fresh store's connection."""

    def __init__(self, store: Store, aside: Path) -> None:
        self.store = store
        self.db = store.db
        self.aside = aside
        self.notes: list[str] = []
        self.budget = BISECT_BUDGET

    def q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]] | None:
        """A read of the old file; None when it cannot be read."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError:
            return None

    def one(self, sql: str, args: tuple[object, ...] = ()) -> object:
        rows = self.q(sql, args)
        return rows[0][0] if rows else None

    def meta(self, key: str) -> object:
        return self.one("SELECT value FROM main.meta WHERE key=?", (key,))

    def attach(self) -> bool:
        for uri, note in (
            (f"file:{self.aside}?mode=ro", ""),
            (f"file:{self.aside}?immutable=1", "its WAL was not read"),
        ):
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("DETACH DATABASE old")
            try:
                self.db.execute("ATTACH DATABASE ? AS old", (uri,))
                self.db.execute("SELECT count(*) FROM old.sqlite_master").fetchone()
            except sqlite3.DatabaseError:
                continue
            if note:
                self.notes.append(note)
            return True
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("DETACH DATABASE old")
        self.notes.append("nothing in it could be read")
        return False

    def columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in self.q(f"PRAGMA old.table_info({table})") or []]

    def copy_rows(self, table: str, key: str, cols: list[str]) -> None:
        """INSERT OR IGNORE the old table's rows into main's (small tables), skipping unreadable ones."""
        have = self.columns(table)
        cols = [c for c in cols if c in have]
        if key not in cols:
            return
        sql = (
            f"INSERT OR IGNORE INTO main.{table}({', '.join(cols)}) SELECT {', '.join(cols)} FROM old.{table}"
            f" WHERE {key} BETWEEN ? AND ?"
        )
        bad = self.copy_range(sql, f"SELECT * FROM old.{table} WHERE {key} BETWEEN ? AND ?", -(2**63), 2**63 - 1)
        if bad:
            self.notes.append(f"some {table} rows unreadable")

    def copy_range(
        self, insert: str, probe: str, lo: int, hi: int, progress: str = "", invalid: str = ""
    ) -> list[Range]:
        """Copy key range lo..hi chunk by chunk, bisecting around unreadable pages; the unreadable ranges.

        A failing chunk is read again on its own: if that works the failure was the write (disk
        full, I/O) and is raised, so the salvage resumes at the next start instead of writing gaps."""
        bad: list[Range] = []
        todo: list[Range] = []
        pos, chunks = lo, 0
        while todo or pos <= hi:
            if todo:
                a, b = todo.pop()
            else:
                nxt = self.q(_seek(probe), (pos, hi))
                if nxt is not None and nxt[0][0] is None:
                    break
                a = pos if nxt is None else int(nxt[0][0])  # type: ignore[call-overload]
                b = min(a + CHUNK - 1, hi)
                pos = b + 1
            try:
                with self.store.transaction():
                    self.db.execute(insert, (a, b))
                    rejects = self.db.execute(invalid, (a, b)).fetchall() if invalid else []
                    if rejects and progress:
                        self._save_bad(progress, *((int(x), int(x)) for x, _ in rejects), transaction=False)
                    bad += [(int(x), int(x)) for x, _ in rejects]
                    if not todo and progress:
                        self.db.execute("INSERT OR REPLACE INTO main.meta VALUES(?, ?)", (progress, b))
            except sqlite3.DatabaseError:
                if self.q(probe, (a, b)) is not None:
                    raise
                self.budget -= 1
                if self.budget <= 0:  # too damaged to bisect further: the rest is lost whole
                    given_up = [(a, b), *todo, *([(pos, hi)] if pos <= hi else [])]
                    bad += given_up
                    for r in given_up if progress else []:
                        self._save_bad(progress, r)
                    break
                if a == b:
                    bad.append((a, b))
                    if progress:
                        self._save_bad(progress, (a, b))
                else:
                    mid = a + (b - a) // 2
                    todo += [(mid + 1, b), (a, mid)]
            chunks += 1
            if progress and chunks % 20 == 0:
                keep_alive(f"salvaging {self.aside.name}: seq {b} of {hi}")
        return bad

    def _save_bad(self, progress: str, *new: Range, transaction: bool = True) -> None:
        """Unreadable ranges found so far, kept with the progress so a resumed salvage still owes them."""
        key = f"{progress}_bad"
        have = self.meta(key)
        ranges = msgspec.json.decode(str(have), type=list[tuple[int, int]]) if have else []
        with self.store.transaction() if transaction else contextlib.nullcontext():
            self.db.execute(
                "INSERT OR REPLACE INTO main.meta VALUES(?, ?)", (key, msgspec.json.encode([*ranges, *new]).decode())
            )


def _seek(probe: str) -> str:
    """The probe (`SELECT * FROM old.T WHERE k BETWEEN ? AND ?`) turned into a seek for the first key."""
    head, _, cond = probe.partition(" WHERE ")
    key = cond.split(" ", 1)[0]
    return f"SELECT min({key}) FROM {head.split(' FROM ', 1)[1]} WHERE {cond}"


_SAMPLE_COLS = ("seq", "ts_ns", "tag_id", "value", "status", "score")
_VALID = (
    "typeof(ts_ns)='integer' AND typeof(tag_id)='integer' AND typeof(status)='integer'"
    " AND typeof(score)='integer' AND typeof(value) IN ('null','integer','real','text')"
    " AND tag_id IN (SELECT tag_id FROM main.tags)"
)


def salvage(store: Store, aside: Path, reason: str, at_ns: int) -> SetAside:
    """Copy what `aside` still holds into the fresh `store` and record the event (idempotent)."""
    for e in store.set_aside_events():
        if e.path == str(aside):
            return e
    s = _Salvage(store, aside)
    salvaged = lost = gaps = 0
    try:
        if s.attach():
            salvaged, lost, gaps = _salvage_attached(s, str(aside))
    finally:
        with contextlib.suppress(sqlite3.Error):
            store.db.execute("DETACH DATABASE old")
    event = SetAside(str(aside), at_ns, reason, salvaged, lost, gaps, "; ".join(s.notes))
    with store.transaction() as db:
        _record(store, event)
        db.execute("DELETE FROM meta WHERE key LIKE 'salvage%'")
    store.head = store._read_head()
    return event


def _salvage_attached(s: _Salvage, aside: str) -> tuple[int, int, int]:
    store, db = s.store, s.db
    old_head = _int(s.one("SELECT seq FROM old.sqlite_sequence WHERE name='samples'"))
    sample_cols = s.columns("samples")
    can_read = all(c in sample_cols for c in _SAMPLE_COLS)
    first = _int(s.one("SELECT min(seq) FROM old.samples")) if can_read else None
    seen = [
        v
        for v in (
            _int(s.one("SELECT max(seq) FROM old.samples")) if "seq" in sample_cols else None,
            _int(s.one("SELECT max(hi) FROM old.acks")),
            _int(s.one("SELECT max(hi_seq) FROM old.gaps")),
        )
        if v is not None
    ]
    max_seen = max(seen, default=0)
    exact = old_head is not None and max_seen <= old_head < 2**62
    hi = old_head if exact and old_head is not None else max_seen
    if not exact:
        s.notes.append(f"its last seq is unknown; samples above seq {max_seen} may be missing without a gap record")

    # tags first (samples are validated against them), then the small tables, once
    s.copy_rows("tags", "tag_id", ["tag_id", "name", "unit"])
    if s.meta("salvage_of") != aside:
        with store.transaction():
            ups = s.q("SELECT name, created_ns, sent, dropped, gaps_sent FROM old.uplinks")
            if ups is None:
                s.notes.append("its uplinks table was unreadable: uplinks start from their start_from")
            for row in ups or []:
                db.execute(
                    "INSERT OR IGNORE INTO main.uplinks(name, created_ns, sent, dropped, gaps_sent) VALUES(?,?,?,?,?)",
                    row,
                )
            acks = s.q("SELECT uplink, lo, hi FROM old.acks")
            if acks is None:
                s.notes.append("its acknowledgements were unreadable: everything salvaged is sent again")
            for up, a, b in acks or []:
                if isinstance(a, int) and isinstance(b, int) and a <= b:
                    store._ack(str(up), a, b)
            if s.q(
                "INSERT INTO main.gaps(uplink, lo_seq, hi_seq, lo_ts_ns, hi_ts_ns, count)"
                " SELECT uplink, lo_seq, hi_seq, lo_ts_ns, hi_ts_ns, count FROM old.gaps"
            ) is None:  # fmt: skip
                s.notes.append("its pending gap records were unreadable")
            for key in ("trimmed_age", "trimmed_size"):
                v = s.one("SELECT value FROM old.meta WHERE key=?", (key,))
                if isinstance(v, int):
                    db.execute("UPDATE main.meta SET value = value + ? WHERE key=?", (v, key))
            history = s.one("SELECT value FROM old.meta WHERE key='set_aside'")
            if isinstance(history, str):
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    events = msgspec.json.decode(history, type=list[SetAside])
                    db.execute(
                        "INSERT OR REPLACE INTO main.meta VALUES('set_aside', ?)",
                        (msgspec.json.encode(events).decode(),),
                    )
            if exact:  # continue the old numbering: no hole between the salvaged seqs and new ones
                db.execute("UPDATE sqlite_sequence SET seq=? WHERE name='samples'", (hi,))
            elif store._read_head() <= hi:
                db.execute("UPDATE sqlite_sequence SET seq=? WHERE name='samples'", (hi + 1_000_000,))
            db.execute("INSERT OR REPLACE INTO main.meta VALUES('salvage_of', ?)", (aside,))
    audit_cols = [r[1] for r in db.execute("PRAGMA main.table_info(audit)").fetchall()]
    s.copy_rows("audit", "id", audit_cols)

    bad: list[Range] = []
    lo = first
    if can_read:
        kind = "kind" if "kind" in sample_cols else "NULL"
        cols = ", ".join(_SAMPLE_COLS)
        insert = (
            f"INSERT OR IGNORE INTO main.samples({cols}, kind) SELECT {cols}, {kind} FROM old.samples"
            f" WHERE seq BETWEEN ? AND ? AND {_VALID}"
        )
        start = _int(s.meta("salvage_pos"))
        prior = s.meta("salvage_pos_bad")
        bad = msgspec.json.decode(str(prior), type=list[tuple[int, int]]) if prior else []
        pos = start + 1 if start is not None else (lo if lo is not None else 0)
        # rows that read but are no valid sample (garbage from a damaged page) are lost too
        invalid = f"SELECT seq, seq FROM old.samples WHERE seq BETWEEN ? AND ? AND NOT ({_VALID})"
        probe = "SELECT * FROM old.samples WHERE seq BETWEEN ? AND ?"
        bad += s.copy_range(insert, probe, pos, hi, "salvage_pos", invalid)
        bad = sorted(set(bad))
        if lo is None:
            s.notes.append("the start of its samples was unreadable")
            lo = store.first_seq() or hi + 1
    elif sample_cols or old_head is not None:
        s.notes.append("its samples table has a shape this edged cannot read")
        lo = _int(s.one("SELECT min(seq) FROM old.samples")) if "seq" in sample_cols else None
        lo = hi if lo is None else lo
        bad = [(lo, hi)] if hi >= lo else []
    lost_ranges = _merge([(max(a, lo), min(b, hi)) for a, b in bad if lo is not None and min(b, hi) >= max(a, lo)])
    lost = sum(b - a + 1 for a, b in lost_ranges)
    gaps = 0
    with store.transaction():
        for up in store.uplink_names():
            for a, b in lost_ranges:
                for x, y in subtract(a, b, store.acked(up)):
                    ts_lo = _ts(db, x, before=True) or _ts(db, y, before=False) or 0
                    ts_hi = _ts(db, y, before=False) or ts_lo
                    db.execute(
                        "INSERT INTO gaps(uplink, lo_seq, hi_seq, lo_ts_ns, hi_ts_ns, count) VALUES(?,?,?,?,?,?)",
                        (up, x, y, ts_lo, ts_hi, y - x + 1),
                    )
                    db.execute("UPDATE uplinks SET dropped = dropped + ? WHERE name=?", (y - x + 1, up))
                    gaps += 1
                store._ack(up, a, b)  # settled: acknowledged before, or owed as a gap record now
            head = store._read_head()
            if not exact and head > max_seen + 1:  # the numbering jumped: nothing was ever stored in between
                store._ack(up, max_seen + 1, head)
    salvaged = store.count(lo, hi) if lo is not None else 0
    return salvaged, lost, gaps


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _record(store: Store, event: SetAside) -> None:
    _record_all(store.db, [*store.set_aside_events(), event])


def _record_all(db: sqlite3.Connection, events: list[SetAside]) -> None:
    db.execute("INSERT OR REPLACE INTO main.meta VALUES('set_aside', ?)", (msgspec.json.encode(events).decode(),))


def _ts(db: sqlite3.Connection, seq: int, *, before: bool) -> int | None:
    """Source time of the nearest salvaged sample before/after a lost range: its time bounds."""
    sql = (
        "SELECT ts_ns FROM main.samples WHERE seq < ? ORDER BY seq DESC LIMIT 1"
        if before
        else "SELECT ts_ns FROM main.samples WHERE seq > ? ORDER BY seq LIMIT 1"
    )
    row = db.execute(sql, (seq,)).fetchone()
    return int(row[0]) if row else None


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


__all__ = ["BufferUnusable", "aside_path", "classify", "keep_alive", "recover", "resume", "salvage"]
