"""The command tables of the buffer database: the audit trail, the ids seen, and the `edged write` inbox.

A mixin of `buffer.store.Store` (it uses the Store's connection and transactions), kept apart so
the sample ring and the command trail can change independently.

- `audit`: every command (edged.commands), written with synchronous=FULL: a command is on disk
  before anything reaches the wire, and a crash in between leaves the row in flight. It shares the
  file (and so `[buffer] max_bytes`) with the samples, so it has a bound of its own in rows and in
  bytes (oldest rows dropped first, and counted in `meta.audit_dropped`): a flood of commands
  cannot push unsent samples out through the size cap. Retention (`audit_trim`) applies
  `commands.audit_retention`; sample retention never touches these tables.
- `command_ids`: (source, cmd_id) of every command that passed the signature and age checks, with
  its own expiry (the duplicate window). Separate from `audit`, so neither the audit bound nor its
  retention can reopen the window for a replay, and it holds across restarts.
- `command_writes`: when each tag was last written, for `min_interval` across restarts (the audit
  bound may have dropped that row).
- `commands`: the inbox through which `edged write` hands a command to a running daemon.

Additive tables, so a buffer made before them gets them on its next open (schema stays 1).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_ns INTEGER NOT NULL, source TEXT NOT NULL, user TEXT,
    cmd_id TEXT, tag TEXT, value TEXT, cmd_ts_ns INTEGER, old TEXT, written_ns INTEGER,
    result TEXT, code TEXT, reason TEXT, readback TEXT, finished_ns INTEGER);
CREATE INDEX IF NOT EXISTS audit_by_tag ON audit(tag, written_ns);
CREATE INDEX IF NOT EXISTS audit_by_cmd ON audit(source, cmd_id);
CREATE TABLE IF NOT EXISTS command_ids(
    source TEXT NOT NULL, cmd_id TEXT NOT NULL, cmd_ts_ns INTEGER NOT NULL, seen_ns INTEGER NOT NULL,
    PRIMARY KEY(source, cmd_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS command_ids_by_age ON command_ids(seen_ns);
CREATE TABLE IF NOT EXISTS command_writes(tag TEXT PRIMARY KEY, written_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands(
    id INTEGER PRIMARY KEY AUTOINCREMENT, submitted_ns INTEGER NOT NULL, cmd_id TEXT NOT NULL,
    source TEXT NOT NULL, user TEXT, tag TEXT NOT NULL, value TEXT NOT NULL, cmd_ts_ns INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', result TEXT);
"""

# What an audit row counts against its byte bound: the stored text (in bytes) plus a fixed 64 for
# the integers and the row's overhead. SQLite's pages and indexes add to that in the file.
_ROW_BYTES = (
    "(64 + "
    + " + ".join(
        f"coalesce(length(CAST({c} AS BLOB)), 0)"
        for c in ("source", "user", "cmd_id", "tag", "value", "old", "result", "code", "reason", "readback")
    )
    + ")"
)
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 16 * 1024**2
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One command as the audit trail holds it; `result` is None while it is (or was left) in flight."""

    id: int
    received_ns: int
    source: str
    user: str | None
    cmd_id: str | None
    tag: str | None
    value: Any
    cmd_ts_ns: int | None
    old: Any
    written_ns: int | None  # set when every check passed and the write went to the device
    result: str | None
    code: str | None
    reason: str | None
    readback: Any
    finished_ns: int | None


@dataclass(frozen=True, slots=True)
class AuditStats:
    rows: int
    bytes: int
    dropped: int  # rows the bound dropped (oldest first), ever


@dataclass(frozen=True, slots=True, order=True)
class InboxItem:
    id: int
    cmd_id: str
    source: str
    user: str | None
    tag: str
    value: Any
    cmd_ts_ns: int


def json_text(value: Any) -> str | None:
    """Command values as JSON text, so a bool, an int and a float stay what they were. A value JSON
    cannot hold exactly (an integer beyond 64 bits) is kept as its repr, in a JSON string."""
    if value is None:
        return None
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, OverflowError, ValueError):
        return msgspec.json.encode(repr(value)).decode()


def _unjson(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _ns(value: int | None) -> int | None:
    """Nanosecond timestamps as SQLite can hold them (64-bit), whatever a sender claimed."""
    if value is None:
        return None
    return max(-INT64_MAX, min(INT64_MAX, int(value)))


class AuditTables:
    """The command tables; mixed into Store, which provides `db` and `transaction()`."""

    db: sqlite3.Connection

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _durable(self) -> Iterator[sqlite3.Connection]:
        level = self.db.execute("PRAGMA synchronous").fetchone()[0]
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self.transaction() as db:
                yield db
        finally:
            self.db.execute(f"PRAGMA synchronous={int(level)}")

    # ------------------------------------------------------------------ accounting

    def _audit_counters(self, db: sqlite3.Connection) -> None:
        """Row and byte counters in `meta`, counted once for a buffer made before them."""
        if getattr(self, "_audit_counted", False):
            return
        db.execute("INSERT OR IGNORE INTO meta VALUES('audit_rows', (SELECT count(*) FROM audit))")
        db.execute(f"INSERT OR IGNORE INTO meta VALUES('audit_bytes', (SELECT total({_ROW_BYTES}) FROM audit))")
        db.execute("INSERT OR IGNORE INTO meta VALUES('audit_dropped', 0)")
        self._audit_counted = True

    def _row_bytes(self, db: sqlite3.Connection, row: int) -> int:
        got = db.execute(f"SELECT {_ROW_BYTES} FROM audit WHERE id=?", (row,)).fetchone()
        return int(got[0]) if got else 0

    def _count(self, db: sqlite3.Connection, rows: int, nbytes: int) -> None:
        db.execute("UPDATE meta SET value = value + ? WHERE key='audit_rows'", (rows,))
        db.execute("UPDATE meta SET value = value + ? WHERE key='audit_bytes'", (nbytes,))

    def _bound(self, db: sqlite3.Connection, max_rows: int, max_bytes: int, keep: int) -> int:
        """Drop the oldest rows until both bounds hold (never the row `keep`); returns how many."""
        rows, nbytes = self._stats(db)
        excess_rows, excess_bytes = rows - max_rows, nbytes - max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0
        cut, n, freed = None, 0, 0
        for rid, size in db.execute(f"SELECT id, {_ROW_BYTES} FROM audit WHERE id < ? ORDER BY id", (keep,)):
            cut, n, freed = rid, n + 1, freed + int(size)
            if n >= excess_rows and freed >= excess_bytes:
                break
        if cut is None:
            return 0
        db.execute("DELETE FROM audit WHERE id <= ?", (cut,))
        self._count(db, -n, -freed)
        db.execute("UPDATE meta SET value = value + ? WHERE key='audit_dropped'", (n,))
        return n

    def _stats(self, db: sqlite3.Connection) -> tuple[int, int]:
        got = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('audit_rows', 'audit_bytes')").fetchall())
        return int(got.get("audit_rows", 0)), int(got.get("audit_bytes", 0))

    def audit_stats(self) -> AuditStats:
        with self.transaction() as db:
            self._audit_counters(db)
            rows, nbytes = self._stats(db)
            dropped = db.execute("SELECT value FROM meta WHERE key='audit_dropped'").fetchone()[0]
        return AuditStats(rows, nbytes, int(dropped))

    # ------------------------------------------------------------------ the audit trail

    def audit_begin(
        self,
        *,
        received_ns: int,
        source: str,
        user: str | None,
        cmd_id: str | None,
        tag: str | None,
        value: Any,
        cmd_ts_ns: int | None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> int:
        """Record a command as received (in flight); returns its audit row id. The caller bounds
        the text it passes (edged.commands truncates); the oldest rows make room."""
        with self._durable() as db:
            self._audit_counters(db)
            cur = db.execute(
                "INSERT INTO audit(received_ns, source, user, cmd_id, tag, value, cmd_ts_ns) VALUES(?,?,?,?,?,?,?)",
                (_ns(received_ns), source, user, cmd_id, tag, json_text(value), _ns(cmd_ts_ns)),
            )
            row = cur.lastrowid
            assert row is not None
            self._count(db, 1, self._row_bytes(db, row))
            self._bound(db, max_rows, max_bytes, row)
        return row

    def audit_wire(self, row: int, *, old: Any, written_ns: int, tag: str | None = None) -> None:
        """Every check passed and the write goes to the device now."""
        with self._durable() as db:
            self._audit_counters(db)
            before = self._row_bytes(db, row)
            db.execute("UPDATE audit SET old=?, written_ns=? WHERE id=?", (json_text(old), _ns(written_ns), row))
            self._count(db, 0, self._row_bytes(db, row) - before)
            if tag is not None:
                db.execute("INSERT OR REPLACE INTO command_writes VALUES(?, ?)", (tag, _ns(written_ns)))

    def audit_finish(
        self,
        row: int,
        *,
        result: str,
        code: str,
        reason: str,
        readback: Any,
        finished_ns: int,
        old: Any = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """The outcome; the bound holds after it too (the reason and read-back add to the row)."""
        with self._durable() as db:
            self._audit_counters(db)
            before = self._row_bytes(db, row)
            db.execute(
                "UPDATE audit SET result=?, code=?, reason=?, readback=?, finished_ns=?, old=coalesce(old, ?)"
                " WHERE id=?",
                (result, code, reason, json_text(readback), _ns(finished_ns), json_text(old), row),
            )
            self._count(db, 0, self._row_bytes(db, row) - before)
            self._bound(db, max_rows, max_bytes, row)

    def audit_claim_id(self, source: str, cmd_id: str, cmd_ts_ns: int, now_ns: int, window_ns: int) -> int | None:
        """The duplicate check, atomic: None and the id recorded when (source, cmd_id) was not seen
        within `window_ns`; else when it was first seen. Expired ids are forgotten here."""
        with self._durable() as db:
            db.execute("DELETE FROM command_ids WHERE seen_ns < ?", (_ns(now_ns - window_ns),))
            got = db.execute("SELECT seen_ns FROM command_ids WHERE source=? AND cmd_id=?", (source, cmd_id)).fetchone()
            if got is not None:
                return int(got[0])
            db.execute("INSERT INTO command_ids VALUES(?,?,?,?)", (source, cmd_id, _ns(cmd_ts_ns), _ns(now_ns)))
        return None

    def audit_last_write(self, tag: str) -> int | None:
        """When a write to the tag last went to the wire (any outcome): min_interval counts from it."""
        row = self.db.execute(
            "SELECT max(t) FROM (SELECT max(written_ns) AS t FROM audit WHERE tag=?"
            " UNION ALL SELECT written_ns FROM command_writes WHERE tag=?)",
            (tag, tag),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def audit_rows(self, since_ns: int | None = None, until_ns: int | None = None) -> list[AuditRow]:
        """Audit rows received in [since, until), oldest first (none in a buffer made before them)."""
        try:
            rows = self.db.execute(
                "SELECT id, received_ns, source, user, cmd_id, tag, value, cmd_ts_ns, old, written_ns, result,"
                " code, reason, readback, finished_ns FROM audit WHERE received_ns >= ? AND received_ns < ?"
                " ORDER BY id",
                (since_ns if since_ns is not None else -(2**63), until_ns if until_ns is not None else INT64_MAX),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        out = []
        for r in rows:
            rid, received, source, user, cmd_id, tag, value, cmd_ts, old, written, result, code, reason, back, done = r
            value, old, back = _unjson(value), _unjson(old), _unjson(back)
            out.append(AuditRow(rid, received, source, user, cmd_id, tag, value, cmd_ts, old, written, result, code,
                                reason, back, done))  # fmt: skip
        return out

    def audit_trim(self, before_ns: int) -> int:
        """Delete audit rows received before `before_ns` (audit retention), and settled inbox rows."""
        with self.transaction() as db:
            self._audit_counters(db)
            freed = db.execute(f"SELECT total({_ROW_BYTES}) FROM audit WHERE received_ns < ?", (before_ns,))
            nbytes = int(freed.fetchone()[0])
            n = db.execute("DELETE FROM audit WHERE received_ns < ?", (before_ns,)).rowcount
            self._count(db, -n, -nbytes)
            db.execute(
                "DELETE FROM commands WHERE state <> 'pending' AND submitted_ns < ?",
                (time.time_ns() - 3_600_000_000_000,),
            )
        return int(n)

    # ------------------------------------------------------------------ the `edged write` inbox

    def inbox_submit(self, *, cmd_id: str, source: str, user: str | None, tag: str, value: Any, cmd_ts_ns: int) -> int:
        """`edged write` beside a running daemon: queue the command for the daemon to execute."""
        with self._durable() as db:
            cur = db.execute(
                "INSERT INTO commands(submitted_ns, cmd_id, source, user, tag, value, cmd_ts_ns) VALUES(?,?,?,?,?,?,?)",
                (time.time_ns(), cmd_id, source, user, tag, json_text(value), _ns(cmd_ts_ns)),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def inbox_take(self, limit: int = 20) -> list[InboxItem]:
        """Claim pending inbox commands (the daemon): each is taken once, then executed."""
        with self.transaction() as db:
            rows = db.execute(
                "UPDATE commands SET state='taken' WHERE id IN"
                " (SELECT id FROM commands WHERE state='pending' ORDER BY id LIMIT ?)"
                " RETURNING id, cmd_id, source, user, tag, value, cmd_ts_ns",
                (limit,),
            ).fetchall()
        return sorted(InboxItem(r[0], r[1], r[2], r[3], r[4], _unjson(r[5]), r[6]) for r in rows)

    def inbox_done(self, item: int, result: bytes) -> None:
        with self.transaction() as db:
            db.execute("UPDATE commands SET state='done', result=? WHERE id=?", (result.decode(), item))

    def inbox_state(self, item: int) -> tuple[str, bytes | None]:
        row = self.db.execute("SELECT state, result FROM commands WHERE id=?", (item,)).fetchone()
        if row is None:
            return ("gone", None)
        return (row[0], row[1].encode() if row[1] is not None else None)

    def inbox_cancel(self, item: int) -> bool:
        """Withdraw a command the daemon has not taken yet; False when it already has."""
        with self.transaction() as db:
            n = db.execute("UPDATE commands SET state='cancelled' WHERE id=? AND state='pending'", (item,)).rowcount
        return bool(n)
