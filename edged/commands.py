"""The command gate: the one way a setpoint or control write goes from SCADA/cloud down to a device.

Writing to a plant is the most dangerous thing the daemon does, so the gate is closed by default
and every source (MQTT command topic, Sparkplug NCMD/DCMD, the OPC UA server uplink, `edged write`)
goes through `CommandGate.submit`, which answers a `CommandResult` and never raises (except
cancellation). In this fixed order (docs/commands.md), the first failing check decides:

 1. enabled         commands are on ([commands] enabled = true)
 2. size            id, tag, user, reply_to and a text value within their limits (`too_large`)
 3. signature       a source that signs (MQTT, [commands.sources.<name>]) sent a valid HMAC-SHA256
                    over `canonical(cmd)` with one of its keys (`unsigned`, `bad_signature`)
 4. stale           the command's timestamp is within max_age of now, and at most max_future ahead
 5. duplicate       no earlier command with the same id from the same source within the
                    duplicate window (max_age + max_future; a table of its own, kept across restarts)
 6. known tag       the tag exists in the config
 7. listed          the tag is listed under [[commands.tags]] (and its driver can write, checked at load)
 8. authorised      the source (uplink name or "cli") is in the entry's `sources`
 9. type            the value is a number / boolean / string as the tag holds
10. allowed         the value is one of `allowed` (when given)
11. min/max         the value is within min..max (when given)
    -- from here on under the device's lock: one write per device at a time --
12. max_step        |value - last known value| <= max_step (when given; an unknown current value refuses)
13. min_interval    the last write to the tag went out at least min_interval ago (when given)
14. connected       the device's driver is connected now
then the driver writes and reads back. Nothing reaches the wire unless every check passed.

Every command is in the audit trail (the buffer database) from the moment it is received, before
any check (its text truncated to bounded sizes, within the audit trail's own row and byte bound);
the row records when it went to the wire and is completed with the outcome, so a crash in between
leaves a row showing the command was in flight. No audit row, no write.

Results: `accepted` (written and read back equal), `rejected` (nothing was written: refused by the
gate or cleanly by the device), `failed` (the write may or may not have reached the device: no
answer, connection lost, timeout) and `readback_mismatch` (written, but the device reads back
something else).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

import msgspec

from buffer.audit import AuditStats, InboxItem
from buffer.store import Store
from edged.config import (
    COMMAND_SOURCE_CLI,
    CommandsConfig,
    CommandSource,
    CommandTag,
    Config,
    DeviceBase,
    TagBase,
    audit_max_bytes,
    command_signing,
    command_value_kind,
)
from edged.errors import EdgedError, Permanent, ReadbackMismatch, StorageError, Transient
from edged.model import Sample, Severity, Value, severity

log = logging.getLogger("edged.commands")

Kind = Literal["number", "bool", "string"]


class Result(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    READBACK_MISMATCH = "readback_mismatch"


# code -> OPC UA StatusCode, what a SCADA client writing through the OPC UA server uplink receives.
STATUS: Final[dict[str, int]] = {
    "ok": 0x00000000,  # Good
    "disabled": 0x803B0000,  # BadNotWritable
    "malformed": 0x80070000,  # BadDecodingError
    "too_large": 0x80080000,  # BadEncodingLimitsExceeded
    "unsigned": 0x80130000,  # BadSecurityChecksFailed
    "bad_signature": 0x80130000,  # BadSecurityChecksFailed
    "stale": 0x80230000,  # BadInvalidTimestamp
    "duplicate": 0x80E40000,  # BadRequestNotAllowed
    "unknown_tag": 0x80340000,  # BadNodeIdUnknown
    "not_writable": 0x803B0000,  # BadNotWritable
    "unauthorised": 0x801F0000,  # BadUserAccessDenied
    "type": 0x80740000,  # BadTypeMismatch
    "not_allowed": 0x803C0000,  # BadOutOfRange
    "out_of_range": 0x803C0000,  # BadOutOfRange
    "no_current_value": 0x80320000,  # BadWaitingForInitialData
    "max_step": 0x803C0000,  # BadOutOfRange
    "min_interval": 0x80100000,  # BadTooManyOperations
    "audit_unavailable": 0x80040000,  # BadResourceUnavailable
    "device_down": 0x808A0000,  # BadNotConnected
    "device_refused": 0x803B0000,  # BadNotWritable, unless the device gave its own status
    "wire": 0x80050000,  # BadCommunicationError
    "timeout": 0x800A0000,  # BadTimeout
    "readback": 0x808B0000,  # BadDeviceFailure
    "stopping": 0x800C0000,  # BadShutdown
    "internal": 0x80020000,  # BadInternalError
}


class Signature(msgspec.Struct, frozen=True):
    """`sig` of a signed command: the key id and the hex HMAC-SHA256 of `canonical(cmd)`."""

    kid: str
    hmac: str


class Command(msgspec.Struct, frozen=True):
    """One write request. `ts_ns` is when the sender issued it (its clock), for the staleness check;
    `id` is the sender's id (duplicates from one source are refused); `user` is who asked, as the
    source knows it (authenticated for OPC UA sessions, self-declared in an MQTT payload, where the
    signature proves the whole command came from a key holder). `reply_to` is signed with it."""

    id: str
    source: str  # uplink name, or "cli"
    user: str | None
    tag: str  # device/tag
    value: Value
    ts_ns: int
    reply_to: str | None = None
    sig: Signature | None = None


# Sizes a command's fields may have; a command beyond them is refused as too_large (and audited
# truncated). Text in the audit trail, in answers and in logs is cut to these sizes as well.
MAX_ID, MAX_TAG, MAX_USER, MAX_REPLY_TO, MAX_TEXT_VALUE = 128, 256, 128, 256, 1024
AUDIT_VALUE_CHARS, MAX_REASON, LOG_VALUE_CHARS = 1024, 512, 120
INT64 = 2**63


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def oversized(cmd: Command) -> str | None:
    """Why the command is too large, or None: checked before anything else looks at it."""
    for name, text, limit in (
        ("id", cmd.id, MAX_ID),
        ("tag", cmd.tag, MAX_TAG),
        ("user", cmd.user, MAX_USER),
        ("reply_to", cmd.reply_to, MAX_REPLY_TO),
        ("value", cmd.value if isinstance(cmd.value, str) else None, MAX_TEXT_VALUE),
    ):
        if text is not None and len(text) > limit:
            return f"command too large: {name} has {len(text)} characters (at most {limit})"
    if isinstance(cmd.value, int) and not isinstance(cmd.value, bool) and not -INT64 <= cmd.value < INT64:
        return "command too large: the value does not fit 64 bits"
    return None


def canonical(
    cmd_id: str, tag: str, value: Value, ts_ns: int, user: str | None = None, reply_to: str | None = None
) -> bytes:
    """The bytes a signature covers: the UTF-8 of this JSON object, keys in this order, no spaces,
    non-ASCII as is, `ts` in integer nanoseconds (unix ms x 1000000), absent `user`/`reply_to` as
    null. This is what Python's `json.dumps(doc, separators=(",", ":"), ensure_ascii=False)` and
    JavaScript's `JSON.stringify(doc)` produce (docs/commands.md)."""
    doc = {"id": cmd_id, "tag": tag, "value": value, "ts": ts_ns, "user": user, "reply_to": reply_to}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(key: bytes, kid: str, cmd: Command) -> Signature:
    """The signature a sender holding `key` puts on `cmd` (for tests and Python senders)."""
    mac = hmac.new(key, canonical(cmd.id, cmd.tag, cmd.value, cmd.ts_ns, cmd.user, cmd.reply_to), hashlib.sha256)
    return Signature(kid, mac.hexdigest())


def signature_problem(cmd: Command, rule: CommandSource) -> tuple[str, str] | None:
    """(code, reason) when `cmd` does not meet its source's signing rule, else None."""
    if cmd.sig is None:
        if rule.require_signature:
            return "unsigned", f"unsigned command: source {cmd.source} requires a signature (sig)"
        return None
    if not rule.keys:
        return None  # broker ACLs only: there is nothing to check a signature against
    key = rule.keys.get(cmd.sig.kid)
    if key is None:
        return "bad_signature", f"unknown key id {cut(cmd.sig.kid, 64)!r} for source {cmd.source}"
    try:
        given = bytes.fromhex(cmd.sig.hmac)
        body = canonical(cmd.id, cmd.tag, cmd.value, cmd.ts_ns, cmd.user, cmd.reply_to)
    except (ValueError, TypeError):
        return "bad_signature", "bad signature: hmac is not a hex HMAC-SHA256 of the command"
    expected = hmac.new(key.reveal().encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        return "bad_signature", f"bad signature (key {cmd.sig.kid}): the command was altered or signed otherwise"
    return None


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on the command's reply channel, and what the audit trail records."""

    id: str | None
    tag: str | None
    result: Result
    code: str  # machine-readable reason: a key of STATUS
    reason: str  # for people: why, in words
    old: Value = None  # last known value before the write (None: unknown)
    new: Value = None  # the value asked for
    readback: Value = None  # what the device reads back after the write
    ts_ns: int = 0  # when the outcome was decided
    device_status: int | None = None  # the device's own StatusCode for a refusal, when it gave one

    @property
    def ok(self) -> bool:
        return self.result is Result.ACCEPTED

    @property
    def status(self) -> int:
        """As an OPC UA StatusCode."""
        if self.device_status is not None and self.code == "device_refused":
            return self.device_status
        return STATUS.get(self.code, STATUS["internal"])


class Writer(Protocol):
    """What the gate needs of a driver: write one tag (engineering units) and read it back.
    Returns the read-back Sample (or the bare value). Raises Permanent (with `.status`, an OPC UA
    StatusCode, when it has one) for a refusal, ReadbackMismatch, or Transient when the device did
    not answer."""

    async def write(self, tag: str, value: Value) -> Sample | Value: ...


DriverLookup = Callable[[str], Awaitable[Writer | None]]


# ----------------------------------------------------------------------------------------- outcomes


def write_outcome(exc: BaseException, timeout_s: float) -> tuple[Result, str, str, Value, int | None]:
    """The one place a driver's write exception becomes (result, code, reason, readback, status).

    Rejected means nothing was written (the device refused cleanly); failed means it may or may not
    have been. The Modbus driver's WriteError tells its stages apart only in the message ("read-back
    failed", "but read back"), hence the two text checks.
    """
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ReadbackMismatch):
        return Result.READBACK_MISMATCH, "readback", msg, exc.readback, None
    if isinstance(exc, TimeoutError):
        return (
            Result.FAILED,
            "timeout",
            f"no answer within {timeout_s:g}s: the write may or may not have reached the device",
            None,
            None,
        )
    if isinstance(exc, Permanent):
        if " but read back " in msg:
            return Result.READBACK_MISMATCH, "readback", msg, None, None
        if "read-back failed" in msg:
            return Result.FAILED, "wire", f"{msg} (the write itself was acknowledged)", None, None
        status = getattr(exc, "status", None)
        return Result.REJECTED, "device_refused", f"not written: {msg}", None, _int_or_none(status)
    if isinstance(exc, Transient | OSError | EdgedError):
        return Result.FAILED, "wire", f"{msg} (the write may or may not have reached the device)", None, None
    log.error("driver write failed unexpectedly", exc_info=exc)
    return Result.FAILED, "internal", f"driver error {type(exc).__name__}: {msg}", None, None


def _int_or_none(v: object) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


# ----------------------------------------------------------------------------------------- values


def _type_problem(tag: str, value: object, kind: Kind | None) -> str | None:
    if value is None or not isinstance(value, bool | int | float | str):
        return f"value {value!r} is not a number, a boolean or a string"
    if isinstance(value, float) and not math.isfinite(value):
        return f"value {value!r} is not a finite number"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"{tag} takes a number, not {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"{tag} takes a boolean (true/false), not {value!r}"
    if kind == "string" and not isinstance(value, str):
        return f"{tag} takes a string, not {value!r}"
    return None


def same_value(a: object, b: object) -> bool:
    """Equality that keeps True apart from 1 (Python's `True == 1` would let a bool pass for a number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_value(text: str, kind: Kind | None) -> Value:
    """A command line VALUE as the tag's kind: 'true'/'on'/'1' for booleans; numbers; strings as typed."""
    t = text.strip()
    low = t.lower()
    if kind == "string":
        return text
    if kind == "bool" or (kind is None and low in ("true", "false")):
        if low in ("true", "on", "1"):
            return True
        if low in ("false", "off", "0"):
            return False
        raise ValueError(f"{text!r} is not a boolean: use true or false")
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        number = float(t)
    except ValueError:
        if kind == "number":
            raise ValueError(f"{text!r} is not a number") from None
        return text
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


_MIN_MS = 10**11  # 1973 in unix ms: anything smaller is almost certainly seconds, not milliseconds
_MAX_MS = (INT64 - 1) // 1_000_000  # 2262: the last millisecond a 64-bit nanosecond count holds


def timestamp_ns(value: object) -> int:
    """A command's `ts`: unix milliseconds (number) or ISO 8601 with a time zone, 1973..2262 (what
    a 64-bit nanosecond count, and so SQLite, holds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not _MIN_MS <= value <= _MAX_MS:
            raise ValueError(f"ts {cut(repr(value), 40)} is not unix milliseconds (e.g. {time.time_ns() // 1_000_000})")
        return int(value * 1_000_000)
    if isinstance(value, str):
        text = cut(value, 40)
        try:
            t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ts {text!r} is not ISO 8601 (e.g. 2026-11-24T06:00:00Z)") from None
        if t.tzinfo is None:
            raise ValueError(f"ts {text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
        try:
            seconds = int(t.timestamp())
        except (OverflowError, ValueError):
            seconds = -1
        ns = seconds * 1_000_000_000 + t.microsecond * 1000
        if not _MIN_MS * 1_000_000 <= ns <= _MAX_MS * 1_000_000:
            raise ValueError(f"ts {text!r} is outside 1973..2262")
        return ns
    raise ValueError("ts must be unix milliseconds or an ISO 8601 string")


# ----------------------------------------------------------------------------------------- audit


async def _inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class AuditTrail:
    """The gate's access to the buffer database (audit, last values, inbox). `call` runs a Store
    method where that Store lives: the buffer thread in the daemon, inline in the CLI."""

    def __init__(self, store: Callable[[], Store], call: Callable[..., Awaitable[Any]] = _inline) -> None:
        self._store = store
        self._call = call

    @classmethod
    def for_store(cls, store: Store) -> AuditTrail:
        return cls(lambda: store)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._call(getattr(self._store(), name), *args, **kwargs)


# ----------------------------------------------------------------------------------------- the gate


class _Refused(Exception):
    """A check failed: (result, code, reason); internal to the gate."""

    def __init__(self, code: str, reason: str, result: Result = Result.REJECTED) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.result = result


class CommandGate:
    """Checks, serialises per device, writes through the live driver, audits. One per daemon."""

    def __init__(
        self,
        config: Config,
        audit: AuditTrail,
        drivers: DriverLookup,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._audit = audit
        self._drivers = drivers
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._written: dict[str, int] = {}  # tag -> when a write last went to the wire (this process)
        self._readback: dict[str, tuple[int, Value]] = {}  # tag -> (when, value) of the last accepted write
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()  # (source, result) -> n
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()  # (source, code) -> n
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)load the command rules, e.g. on SIGHUP; in-flight commands finish under the old ones."""
        self.config: CommandsConfig = config.commands
        self._tags: dict[str, tuple[DeviceBase, TagBase]] = {
            dev.tag_path(t): (dev, t) for dev in config.devices for t in dev.tags
        }
        self._entries: dict[str, CommandTag] = {e.tag: e for e in config.commands.tags}
        self._signing: dict[str, CommandSource] = command_signing(config)
        self._audit_bound = (config.commands.audit_max_rows, audit_max_bytes(config))

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def tags_for(self, source: str) -> dict[str, CommandTag]:
        """The tags `source` may write (empty while commands are disabled): what an uplink offers."""
        if not self.config.enabled:
            return {}
        return {t: e for t, e in self._entries.items() if source in e.sources and t in self._tags}

    def kind(self, tag: str) -> Kind | None:
        """number / bool / string where the config says; None when only the device knows."""
        found = self._tags.get(tag)
        if found is None:
            return None
        kind = command_value_kind(found[1])
        entry = self._entries.get(tag)
        if kind is None and entry is not None and (entry.min, entry.max, entry.max_step) != (None, None, None):
            return "number"
        return kind

    # ------------------------------------------------------------------ entry points

    async def submit(self, cmd: Command) -> CommandResult:
        """Check, write and audit one command; never raises (but cancellation)."""
        received = self._clock()
        row = await self._begin(cmd, received)
        if isinstance(row, CommandResult):
            return row
        state: dict[str, Value] = {}
        try:
            try:
                result = await self._run(cmd, received, row, state)
            except _Refused as r:
                result = self._result(cmd, r.result, r.code, r.reason, old=state.get("old"))
            except Exception as exc:  # a bug must become an answer, never an unanswered command
                log.exception("command %s: the gate failed unexpectedly", cut(cmd.id, MAX_ID))
                maybe = " (the write may or may not have reached the device)" if "wire" in state else ""
                reason = f"internal error {type(exc).__name__}{maybe}"
                result = self._result(cmd, Result.FAILED if maybe else Result.REJECTED, "internal", reason)
        except asyncio.CancelledError:
            result = self._result(
                cmd,
                Result.FAILED,
                "stopping",
                "interrupted: the gateway is stopping"
                + (" (the write may or may not have reached the device)" if "wire" in state else ""),
                old=state.get("old"),
            )
            self._log(cmd, result)
            with contextlib.suppress(Exception):
                await self._finish(row, result)
            raise
        await self._finish(row, result)
        self._log(cmd, result)
        return result

    async def refuse(self, cmd: Command, code: str, reason: str) -> CommandResult:
        """Record and answer a command its source already refused (malformed payload, a user the
        uplink does not let write): it is audited like any other."""
        row = await self._begin(cmd, self._clock())
        result = self._result(cmd, Result.REJECTED, code, reason)
        if not isinstance(row, CommandResult):
            await self._finish(row, result)
        self._log(cmd, result)
        return result

    # ------------------------------------------------------------------ checks

    async def _run(self, cmd: Command, received: int, row: int, state: dict[str, Value]) -> CommandResult:
        c = self.config
        if not c.enabled:
            raise _Refused("disabled", "commands are disabled")
        too_large = oversized(cmd)
        if too_large is not None:
            raise _Refused("too_large", too_large)
        rule = self._signing.get(cmd.source)
        if rule is not None:
            unsigned = signature_problem(cmd, rule)
            if unsigned is not None:
                raise _Refused(*unsigned)
        self._check_age(cmd, received)
        if cmd.id:
            window_ns = int(c.duplicate_window * 1e9)
            earlier = await self._db("audit_claim_id", cmd.source, cmd.id, cmd.ts_ns, received, window_ns)
            if earlier is not None:
                ago = (received - earlier) / 1e9
                raise _Refused(
                    "duplicate", f"duplicate command id {cmd.id!r} from {cmd.source} (first seen {ago:.1f}s ago)"
                )
        found = self._tags.get(cmd.tag)
        if found is None:
            raise _Refused("unknown_tag", f"unknown tag {cmd.tag!r}")
        device, tag_cfg = found
        entry = self._entries.get(cmd.tag)
        if entry is None:
            raise _Refused("not_writable", f"{cmd.tag} is not writable by commands (not listed under [commands])")
        if cmd.source not in entry.sources:
            raise _Refused(
                "unauthorised", f"source {cmd.source!r} may not write {cmd.tag} (allowed: {', '.join(entry.sources)})"
            )
        value = cmd.value
        problem = _type_problem(cmd.tag, value, self.kind(cmd.tag))
        if problem is not None:
            raise _Refused("type", problem)
        if entry.allowed is not None and not any(same_value(value, a) for a in entry.allowed):
            allowed = ", ".join(repr(a) for a in entry.allowed)
            raise _Refused("not_allowed", f"{value!r} is not one of the allowed values ({allowed})")
        if _is_number(value):
            assert isinstance(value, int | float)
            if entry.min is not None and value < entry.min:
                raise _Refused("out_of_range", f"{value!r} is below the minimum {entry.min:g}")
            if entry.max is not None and value > entry.max:
                raise _Refused("out_of_range", f"{value!r} is above the maximum {entry.max:g}")
        lock = self._locks.setdefault(device.name, asyncio.Lock())
        async with lock:
            now = self._clock()
            self._check_age(cmd, now)  # it may have waited behind a slow write
            old = state["old"] = await self._last_known(cmd.tag)
            if entry.max_step is not None:
                assert isinstance(value, int | float)
                if not _is_number(old):
                    raise _Refused(
                        "no_current_value",
                        f"{cmd.tag} has no known current value to limit the step against (max_step {entry.max_step:g})",
                    )
                assert isinstance(old, int | float)
                if abs(value - old) > entry.max_step:
                    raise _Refused(
                        "max_step",
                        f"a change of {abs(value - old):g} from the last known value {old!r} exceeds max_step "
                        f"{entry.max_step:g}",
                    )
            if entry.min_interval is not None:
                last = [t for t in (await self._db("audit_last_write", cmd.tag), self._written.get(cmd.tag)) if t]
                if last and now - max(last) < entry.min_interval * 1e9:
                    ago = (now - max(last)) / 1e9
                    raise _Refused(
                        "min_interval",
                        f"{cmd.tag} was written {ago:.1f}s ago; min_interval is {float(entry.min_interval):g}s",
                    )
            try:
                writer = await self._drivers(device.name)
            except (EdgedError, OSError, TimeoutError) as exc:
                raise _Refused("device_down", f"device not connected: {device.name}: {exc}", Result.FAILED) from None
            if writer is None:
                raise _Refused("device_down", f"device not connected: {device.name}", Result.FAILED)
            await self._db("audit_wire", row, old=old, written_ns=now, tag=cmd.tag)
            state["wire"] = True
            self._written[cmd.tag] = now
            try:
                async with asyncio.timeout(float(c.timeout)):
                    back = await writer.write(tag_cfg.name, value)
            except Exception as exc:  # every driver error becomes an answer, never a crash
                result, code, reason, readback, status = write_outcome(exc, float(c.timeout))
                return self._result(cmd, result, code, reason, old=old, readback=readback, device_status=status)
        readback = back.value if isinstance(back, Sample) else back
        self._readback[cmd.tag] = (self._clock(), readback)
        return self._result(cmd, Result.ACCEPTED, "ok", "written and read back", old=old, readback=readback)

    def _check_age(self, cmd: Command, now: int) -> None:
        age = (now - cmd.ts_ns) / 1e9
        max_age, max_future = float(self.config.max_age), float(self.config.max_future)
        if age > max_age:
            raise _Refused("stale", f"command is {age:.1f}s old (max_age {max_age:g}s): refused, never replayed late")
        if -age > max_future:
            raise _Refused(
                "stale",
                f"command timestamp is {-age:.1f}s in the future (max_future {max_future:g}s): "
                "check the sender's clock",
            )

    async def _last_known(self, tag: str) -> Value:
        """The newer of the buffer's newest sample and this gate's last read-back; a Bad sample
        means the current value is unknown (None)."""
        sample: Sample | None = await self._db("newest_sample", tag)
        mine = self._readback.get(tag)
        if mine is not None and (sample is None or mine[0] >= sample.ts_ns):
            return mine[1]
        if sample is None or severity(sample.status) == Severity.BAD:
            return None
        return sample.value

    # ------------------------------------------------------------------ audit

    async def _db(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._audit.call(name, *args, **kwargs)
        except (StorageError, sqlite3.Error, OSError, RuntimeError, OverflowError, ValueError) as exc:
            log.error("command audit: %s failed: %s", name, exc)
            reason = f"the audit trail cannot be written ({exc}): nothing was written"
            raise _Refused("audit_unavailable", reason) from exc

    async def _begin(self, cmd: Command, received: int) -> int | CommandResult:
        """The audit row, written before any check, with every text cut to a bounded size: a flood of
        large commands cannot grow the trail beyond its bound (rows and bytes)."""
        max_rows, max_bytes = self._audit_bound
        try:
            row: int = await self._db(
                "audit_begin",
                received_ns=received,
                source=cut(cmd.source, MAX_ID),
                user=cut(cmd.user, MAX_USER) if cmd.user is not None else None,
                cmd_id=cut(cmd.id, MAX_ID) or None,
                tag=cut(cmd.tag, MAX_TAG) or None,
                value=audit_value(cmd.value),
                cmd_ts_ns=cmd.ts_ns if cmd.ts_ns and -INT64 < cmd.ts_ns < INT64 else None,
                max_rows=max_rows,
                max_bytes=max_bytes,
            )
        except _Refused as r:
            result = self._result(cmd, Result.REJECTED, r.code, r.reason)
            self._log(cmd, result)
            return result
        return row

    async def _finish(self, row: int, result: CommandResult) -> None:
        with contextlib.suppress(_Refused):  # logged by _db; the answer stands, the row stays in flight
            await self._db(
                "audit_finish",
                row,
                result=result.result.value,
                code=result.code,
                reason=result.reason,
                readback=audit_value(result.readback),
                finished_ns=result.ts_ns,
                old=audit_value(result.old),
                max_rows=self._audit_bound[0],
                max_bytes=self._audit_bound[1],
            )

    def _result(
        self,
        cmd: Command,
        result: Result,
        code: str,
        reason: str,
        *,
        old: Value = None,
        readback: Value = None,
        device_status: int | None = None,
    ) -> CommandResult:
        return CommandResult(
            id=cut(cmd.id, MAX_ID) or None,
            tag=cut(cmd.tag, MAX_TAG) or None,
            result=result,
            code=code,
            reason=cut(reason, MAX_REASON),
            old=old,
            new=audit_value(cmd.value),
            readback=readback,
            ts_ns=self._clock(),
            device_status=device_status,
        )

    def _log(self, cmd: Command, res: CommandResult) -> None:
        self.outcomes[(cmd.source, res.result.value)] += 1
        if not res.ok:
            self.refusals[(cmd.source, res.code)] += 1
        level = logging.INFO if res.ok else logging.WARNING
        cid = cut(cmd.id, 64)
        log.log(
            level,
            "command %s from %s (user %s): %s = %s: %s: %s",
            cid, cmd.source, cut(cmd.user or "-", 64), cut(cmd.tag or "-", 128),
            cut(repr(cmd.value), LOG_VALUE_CHARS), res.result.value, res.reason,
            extra={"command": cid, "source": cmd.source},
        )  # fmt: skip

    async def audit_stats(self) -> AuditStats:
        stats: AuditStats = await self._audit.call("audit_stats")
        return stats

    # ------------------------------------------------------------------ `edged write` inbox

    async def serve_inbox(self, *, poll_s: float = 0.2, trim_every_s: float = 3600.0) -> None:
        """Execute commands `edged write` queued in the buffer database, and apply the audit
        retention; runs as a daemon task until cancelled."""
        loop = asyncio.get_running_loop()
        next_trim = loop.time()
        dropped: int | None = None
        async with asyncio.TaskGroup() as tg:
            while True:
                try:
                    items: list[InboxItem] = await self._audit.call("inbox_take")
                    for item in items:
                        tg.create_task(self._inbox_one(item), name=f"commands:inbox:{item.id}")
                    if loop.time() >= next_trim:
                        next_trim = loop.time() + trim_every_s
                        cutoff = self._clock() - int(self.config.audit_retention * 1e9)
                        trimmed = await self._audit.call("audit_trim", cutoff)
                        if trimmed:
                            log.info("command audit: %d rows older than the audit retention deleted", trimmed)
                        stats = await self.audit_stats()
                        if dropped is not None and stats.dropped > dropped:
                            log.warning(
                                "command audit: %d oldest rows dropped by its bound (%d rows, %d bytes): a "
                                "flood of commands? see edged export --audit",
                                stats.dropped - dropped, self._audit_bound[0], self._audit_bound[1],
                            )  # fmt: skip
                        dropped = stats.dropped
                except (StorageError, sqlite3.Error, OSError, RuntimeError) as exc:
                    log.warning("command inbox: %s", exc)
                except Exception:  # a bug here must not take the daemon down
                    log.exception("command inbox failed unexpectedly")
                await asyncio.sleep(poll_s)

    async def _inbox_one(self, item: InboxItem) -> None:
        """An inbox row runs as source `cli`, whatever it claims: any local process that can write
        the buffer file can add one, so it gets exactly the rights of `edged write`."""
        user = item.user
        if item.source != COMMAND_SOURCE_CLI:
            claimed = cut(str(item.source), 64)
            log.warning("command inbox: row %d claims source %r: executed as source cli", item.id, claimed)
            user = f"{user or '-'} (inbox row claimed source {claimed!r})"
        cmd = Command(str(item.cmd_id), COMMAND_SOURCE_CLI, user, str(item.tag), item.value, int(item.cmd_ts_ns))
        result = await self.submit(cmd)
        try:
            await self._audit.call("inbox_done", item.id, msgspec.json.encode(result))
        except (StorageError, sqlite3.Error, OSError, RuntimeError) as exc:
            log.error("command inbox: cannot store the result of %s: %s", item.cmd_id, exc)


def new_id() -> str:
    return uuid.uuid4().hex


def audit_value(value: Value) -> Value:
    """A value as the audit trail and the answers hold it: a long text cut (it was refused anyway)."""
    if isinstance(value, str) and len(value) > AUDIT_VALUE_CHARS:
        return cut(value, AUDIT_VALUE_CHARS)
    return value


# ----------------------------------------------------------------------------------------- `edged write`


async def write_standalone(config: Config, store: Store, cmd: Command) -> CommandResult:
    """No daemon runs on this buffer: connect the tag's device only after every check passed
    (the gate asks for the driver last), write through the same gate, disconnect."""
    from edged import registry  # local: the driver packages import their libraries
    from edged.plugin import PluginContext

    devices = {d.name: d for d in config.devices}

    async with contextlib.AsyncExitStack() as stack:

        async def connect(name: str) -> Writer | None:
            dev = devices.get(name)
            if dev is None or not dev.enabled:
                return None
            ctx = PluginContext(
                config.gateway.id, config.data_dir, logging.getLogger(f"edged.device.{name}"), config=config
            )
            driver: Writer = await stack.enter_async_context(registry.driver_module(dev.type).Driver(dev, ctx))
            return driver

        return await CommandGate(config, AuditTrail.for_store(store), connect).submit(cmd)


def write_via_daemon(store: Store, cmd: Command, config: CommandsConfig, *, poll_s: float = 0.05) -> CommandResult:
    """A daemon runs on this buffer: hand it the command through the inbox table (it polls it) and
    wait for its answer. Never a second connection to the device behind the daemon's back. A
    command the daemon does not take in time is withdrawn, so it can never run late. An oversized
    command is refused before anything is stored."""
    too_large = oversized(cmd)
    if too_large is not None:
        return CommandResult(id=cut(cmd.id, MAX_ID), tag=cut(cmd.tag, MAX_TAG), result=Result.REJECTED,
                             code="too_large", reason=too_large, new=audit_value(cmd.value),
                             ts_ns=time.time_ns())  # fmt: skip
    item = store.inbox_submit(
        cmd_id=cmd.id, source=cmd.source, user=cmd.user, tag=cmd.tag, value=cmd.value, cmd_ts_ns=cmd.ts_ns
    )
    take_by = time.monotonic() + float(config.max_age) + 2.0
    answer_by = take_by + float(config.timeout) + 10.0
    while True:
        state, raw = store.inbox_state(item)
        if state == "done" and raw is not None:
            return msgspec.json.decode(raw, type=CommandResult)
        now = time.monotonic()
        if state == "pending" and now > take_by and store.inbox_cancel(item):
            reason = "the daemon did not take the command in time: withdrawn, nothing was written"
            return CommandResult(id=cmd.id, tag=cmd.tag, result=Result.REJECTED, code="stale", reason=reason,
                                 new=cmd.value, ts_ns=time.time_ns())  # fmt: skip
        if now > answer_by:
            reason = "the daemon took the command but did not answer in time: see `edged export --audit`"
            return CommandResult(id=cmd.id, tag=cmd.tag, result=Result.FAILED, code="timeout", reason=reason,
                                 new=cmd.value, ts_ns=time.time_ns())  # fmt: skip
        time.sleep(poll_s)


def describe(r: CommandResult) -> str:
    """One line for a terminal."""
    head = f"{r.result.value}: {r.tag or '?'} = {r.new!r}"
    if r.ok:
        return f"{head} (was {r.old!r}, read back {r.readback!r})"
    return f"{head}: {r.reason}"


# ----------------------------------------------------------------------------------------- `edged export --audit`


class AuditExport(msgspec.Struct):
    id: int
    received: str
    source: str
    user: str | None
    cmd_id: str | None
    tag: str | None
    value: Any
    command_ts: str | None
    old: Any
    written: str | None  # when the write went to the device; empty: it never did
    result: str  # accepted | rejected | failed | readback_mismatch | in_flight (no outcome recorded)
    code: str | None
    reason: str | None
    readback: Any
    finished: str | None


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_audit(rows: list[Any], out: Any, fmt: str) -> int:
    """The audit trail as CSV (values as JSON, so true, 1 and "1" stay apart) or JSON lines."""
    import csv

    records = [
        AuditExport(
            r.id,
            _iso(r.received_ns) or "",
            r.source,
            r.user,
            r.cmd_id,
            r.tag,
            r.value,
            _iso(r.cmd_ts_ns),
            r.old,
            _iso(r.written_ns),
            r.result or "in_flight",
            r.code,
            r.reason,
            r.readback,
            _iso(r.finished_ns),
        )
        for r in rows
    ]
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(AuditExport.__struct_fields__)
        for rec in records:
            row = msgspec.structs.astuple(rec)
            w.writerow(
                [
                    msgspec.json.encode(v).decode() if name in ("value", "old", "readback") and v is not None else v
                    for name, v in zip(AuditExport.__struct_fields__, row, strict=True)
                ]
            )
    else:
        for rec in records:
            out.write(msgspec.json.encode(rec).decode() + "\n")
    return len(records)
