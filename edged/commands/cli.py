"""`edged write`: one command through the gate, either in this process (no daemon runs on the
buffer: connect the device, write, disconnect) or handed to the daemon through the inbox table."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import msgspec

from buffer.store import Store
from edged.commands.gate import AuditTrail, CommandGate, Writer
from edged.commands.model import Command, CommandResult, Result, answer, oversized
from edged.config import CommandsConfig, Config
from edged.errors import Permanent
from edged.model import Sample, Status, Value


async def write_standalone(config: Config, store: Store, cmd: Command) -> CommandResult:
    """No daemon runs on this buffer: connect the tag's device only after every check passed
    (the gate asks for the driver last), write through the same gate, disconnect."""
    from edged import registry  # local: the driver packages import their libraries
    from edged.plugin import PluginContext, Writable

    devices = {d.name: d for d in config.devices}
    groups = {g.name for g in config.computed if g.enabled}

    async with contextlib.AsyncExitStack() as stack:

        async def connect(name: str) -> Writer | None:
            if name in groups:  # a totalizer reset: the new total is stored, the daemon resumes from it
                return _StoredTotal(store, name, config)
            dev = devices.get(name)
            if dev is None or not dev.enabled:
                return None
            ctx = PluginContext(
                config.gateway.id, config.data_dir, logging.getLogger(f"edged.device.{name}"), config=config
            )
            driver = await stack.enter_async_context(registry.driver_spec(dev.type).driver(dev, ctx))
            if not isinstance(driver, Writable):  # check-config refuses such a tag; kept for the types
                return None
            return driver

        return await CommandGate(config, AuditTrail.for_store(store), connect).submit(cmd)


class _StoredTotal:
    """`edged write` to a totalizer while no daemon runs: the reset is a stored sample, stamped after
    the newest stored total, which is what the daemon resumes from at its next start (edged.compute)."""

    def __init__(self, store: Store, group: str, config: Config) -> None:
        self._store = store
        self._group = group
        self._units = {g.tag_path(t): t.unit for g in config.computed for t in g.tags}

    async def write(self, tag: str, value: Value) -> Sample | Value:
        path = f"{self._group}/{tag}"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Permanent(f"a totalizer is set to a finite number (0 to reset), not {value!r}")
        newest = self._store.newest_of(path)
        ts = max(time.time_ns(), newest.ts_ns + 1 if newest is not None else 0)
        sample = Sample(path, ts, float(value), Status.GOOD, 100, self._units.get(path))
        self._store.append([sample])
        return sample


def write_via_daemon(store: Store, cmd: Command, config: CommandsConfig, *, poll_s: float = 0.05) -> CommandResult:
    """A daemon runs on this buffer: hand it the command through the inbox table (it polls it) and
    wait for its answer. Never a second connection to the device behind the daemon's back. A
    command the daemon does not take in time is withdrawn, so it can never run late. An oversized
    command is refused before anything is stored."""
    too_large = oversized(cmd)
    if too_large is not None:
        return answer(cmd, Result.REJECTED, "too_large", too_large, time.time_ns())
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
            return answer(cmd, Result.REJECTED, "stale", reason, time.time_ns())
        if now > answer_by:
            reason = "the daemon took the command but did not answer in time: see `edged export --audit`"
            return answer(cmd, Result.FAILED, "timeout", reason, time.time_ns())
        time.sleep(poll_s)


def describe(r: CommandResult) -> str:
    """One line for a terminal."""
    head = f"{r.result.value}: {r.tag or '?'} = {r.new!r}"
    if r.ok:
        return f"{head} (was {r.old!r}, read back {r.readback!r})"
    return f"{head}: {r.reason}"
