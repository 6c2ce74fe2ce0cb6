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
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from buffer.audit import AuditStats, InboxItem
from buffer.store import Store
from edged.alarms.config import is_alarm_path
from edged.commands.model import (
    INT64,
    LOG_VALUE_CHARS,
    MAX_ID,
    MAX_TAG,
    MAX_USER,
    Command,
    CommandResult,
    Result,
    answer,
    audit_value,
    cut,
    oversized,
)
from edged.commands.signing import signature_problem
from edged.commands.values import Kind, is_number, same_value, type_problem
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
)
from edged.errors import EdgedError, Permanent, ReadbackMismatch, StorageError, Transient
from edged.model import Sample, Severity, Value, severity
from edged.plugin import Writable

log = logging.getLogger("edged.commands")


# What the gate needs of a driver: the Writable capability (edged.plugin), by its role here.
Writer = Writable


DriverLookup = Callable[[str], Awaitable[Writer | None]]

# An alarm command (edged.alarms): (alarm path, "ack" | "shelve" | "unshelve", shelve seconds, user,
# source) -> (state before, state after); raises edged.alarms.engine.Refused.
AlarmHandler = Callable[[str, str, float | None, str | None, str], Awaitable[tuple[str, str]]]

# What the gate decides for one command, given (cmd, received_ns, audit row, state): `CommandGate._run`.
Decide = Callable[[Command, int, int, dict[str, Value]], Awaitable[CommandResult]]

MAYBE_WRITTEN: Final = " (the write may or may not have reached the device)"


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
        return Result.FAILED, "wire", f"{msg}{MAYBE_WRITTEN}", None, None
    log.error("driver write failed unexpectedly", exc_info=exc)
    return Result.FAILED, "internal", f"driver error {type(exc).__name__}: {msg}", None, None


def _int_or_none(v: object) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


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
        alarms: AlarmHandler | None = None,
    ) -> None:
        self._audit = audit
        self._drivers = drivers
        self._alarms = alarms  # acknowledge / shelve (edged.alarms): None where no alarm engine runs
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
            dev.tag_path(t): (dev, t) for dev in [*config.devices, *config.computed] for t in dev.tags
        }  # a computed group's totalizers can be reset (edged.compute)
        self._entries: dict[str, CommandTag] = {e.tag: e for e in config.commands.tags}
        self._signing: dict[str, CommandSource] = command_signing(config)
        self._audit_bound = (config.commands.audit_max_rows, audit_max_bytes(config))
        self._alarm_cfg = config.alarms  # an alarm path as the tag: acknowledge or shelve (edged.alarms)
        self._alarm_paths = {a.path for a in config.alarms.tags}

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
        kind = found[1].value_kind()
        entry = self._entries.get(tag)
        if kind is None and entry is not None and (entry.min, entry.max, entry.max_step) != (None, None, None):
            return "number"
        return kind

    # ------------------------------------------------------------------ entry points

    async def submit(self, cmd: Command) -> CommandResult:
        """Check, write and audit one command; never raises (but cancellation)."""
        return await self._audited(cmd, self._run)

    async def refuse(self, cmd: Command, code: str, reason: str) -> CommandResult:
        """Record and answer a command its source already refused (malformed payload, a user the
        uplink does not let write): audited, answered and counted like any other, as if its first
        check had failed."""

        async def refused(cmd: Command, received: int, row: int, state: dict[str, Value]) -> CommandResult:
            raise _Refused(code, reason)

        return await self._audited(cmd, refused)

    async def _audited(self, cmd: Command, decide: Decide) -> CommandResult:
        """The audit row before anything else (no row, no write), then `decide`: whatever it ends
        in (an answer, a refusal, a bug, cancellation) completes the row and is logged and counted
        once. `decide` notes in `state` the last known value ("old") and that the write went out
        ("wire")."""
        received = self._clock()
        row = await self._begin(cmd, received)
        if isinstance(row, CommandResult):
            return row
        state: dict[str, Value] = {}
        try:
            try:
                result = await decide(cmd, received, row, state)
            except _Refused as r:
                result = answer(cmd, r.result, r.code, r.reason, self._clock(), old=state.get("old"))
            except Exception as exc:  # a bug must become an answer, never an unanswered command
                log.exception("command %s: the gate failed unexpectedly", cut(cmd.id, MAX_ID))
                maybe = MAYBE_WRITTEN if "wire" in state else ""
                reason = f"internal error {type(exc).__name__}{maybe}"
                result = answer(cmd, Result.FAILED if maybe else Result.REJECTED, "internal", reason, self._clock())
        except asyncio.CancelledError:
            maybe = MAYBE_WRITTEN if "wire" in state else ""
            reason = f"interrupted: the gateway is stopping{maybe}"
            result = answer(cmd, Result.FAILED, "stopping", reason, self._clock(), old=state.get("old"))
            self._log(cmd, result)
            with contextlib.suppress(Exception):
                await self._finish(row, result)
            raise
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
        if is_alarm_path(cmd.tag):
            return await self._alarm(cmd)
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
        problem = type_problem(cmd.tag, value, self.kind(cmd.tag))
        if problem is not None:
            raise _Refused("type", problem)
        if entry.allowed is not None and not any(same_value(value, a) for a in entry.allowed):
            allowed = ", ".join(repr(a) for a in entry.allowed)
            raise _Refused("not_allowed", f"{value!r} is not one of the allowed values ({allowed})")
        if is_number(value):
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
                if not is_number(old):
                    raise _Refused(
                        "no_current_value",
                        f"{cmd.tag} has no known current value to limit the step against (max_step {entry.max_step:g})",
                    )
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
                return answer(
                    cmd, result, code, reason, self._clock(), old=old, readback=readback, device_status=status
                )
        readback = back.value if isinstance(back, Sample) else back
        self._readback[cmd.tag] = (self._clock(), readback)
        return answer(cmd, Result.ACCEPTED, "ok", "written and read back", self._clock(), old=old, readback=readback)

    async def _alarm(self, cmd: Command) -> CommandResult:
        """Acknowledge or shelve an alarm (the tag is its path): checks 1-5 passed as for any
        command; then the alarm exists, the source is in [alarms] sources, the action parses."""
        from edged.alarms.engine import Refused
        from edged.alarms.model import parse_action

        if cmd.tag not in self._alarm_paths:
            raise _Refused("unknown_tag", f"unknown alarm {cmd.tag!r}")
        sources = self._alarm_cfg.sources
        if cmd.source not in sources:
            raise _Refused("unauthorised", f"source {cmd.source!r} may not acknowledge or shelve alarms "
                           f"(allowed: {', '.join(sources)})")  # fmt: skip
        action = parse_action(cmd.value, float(self._alarm_cfg.max_shelve))
        if isinstance(action, str):
            raise _Refused("type", action)
        if self._alarms is None:
            raise _Refused("device_down", "no alarm engine runs here", Result.FAILED)
        try:
            before, after = await self._alarms(cmd.tag, action[0], action[1], cmd.user, cmd.source)
        except Refused as r:
            raise _Refused(r.code, r.reason) from None
        return answer(cmd, Result.ACCEPTED, "ok", f"{action[0]}: {before} -> {after}", self._clock(), old=before,
                      readback=after)  # fmt: skip

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
            result = answer(cmd, Result.REJECTED, r.code, r.reason, self._clock())
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
