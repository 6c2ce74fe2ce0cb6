"""The command gate on its own: every refusal, the check order, outcomes, the audit trail.

The device here is a recording fake behind the drivers' `write` interface (the real drivers are
exercised against real servers in tests/contract/test_commands.py); the buffer is a real Store.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from buffer.store import Store
from edged.commands import (
    STATUS,
    AuditTrail,
    Command,
    CommandGate,
    CommandResult,
    ReadbackMismatch,
    Result,
    Signature,
    canonical,
    export_audit,
    parse_value,
    same_value,
    sign,
    timestamp_ns,
)
from edged.config import Config, audit_max_bytes, parse
from edged.errors import ConfigError, Permanent, Transient
from edged.model import Sample, Status, Value
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import decode_command

NS = 1_000_000_000
T0 = 1_790_000_000 * NS

DEVICE = {
    "name": "press",
    "type": "modbus",
    "host": "127.0.0.1",
    "tags": [
        {"name": "setpoint", "address": 0, "type": "float32", "writable": True, "unit": "bar"},
        {"name": "mode", "address": 2, "writable": True},
        {"name": "enable", "address": 0, "table": "coil", "writable": True},
        {"name": "label", "address": 3, "type": "string", "length": 4, "writable": True},
        {"name": "speed", "address": 5, "writable": True},
        {"name": "pressure", "address": 6},
    ],
}
COMMANDS = {
    "enabled": True,
    "max_age": "30s",
    "timeout": "1s",
    "tags": [
        {"tag": "press/setpoint", "sources": ["cloud", "cli"], "min": 0, "max": 150,
         "max_step": 20, "min_interval": "5s"},
        {"tag": "press/mode", "sources": ["cloud"], "allowed": [0, 1, 2]},
        {"tag": "press/enable", "sources": ["cloud"]},
        {"tag": "press/label", "sources": ["cloud"]},
    ],
}  # fmt: skip


def config(commands: dict[str, Any] | None = COMMANDS, **device: Any) -> Config:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": "/tmp"},
        "devices": [DEVICE | device, {"name": "oven", "type": "sim", "tags": [{"name": "temp"}]}],
        "uplinks": [{"name": "cloud", "type": "mqtt"}, {"name": "scada", "type": "mqtt"}],
    }
    if commands is not None:
        raw["commands"] = commands
    return parse(raw)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class FakeDriver:
    """Records every write; answers with the value, or raises `fail`; can be slowed down."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Value]] = []
        self.fail: BaseException | None = None
        self.delay = 0.0
        self.active = 0
        self.max_active = 0
        self.started = asyncio.Event()

    async def write(self, tag: str, value: Value) -> Sample:
        self.active += 1
        self.started.set()
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.writes.append((tag, value))
            if self.fail is not None:
                raise self.fail
            return Sample(f"press/{tag}", T0, value)
        finally:
            self.active -= 1


class Rig:
    def __init__(self, tmp_path: Path, cfg: Config) -> None:
        self.store = Store(tmp_path / "buffer.db")
        self.clock = Clock()
        self.driver = FakeDriver()
        self.connected = True
        self.gate = CommandGate(cfg, AuditTrail.for_store(self.store), self._lookup, clock=self.clock)

    async def _lookup(self, device: str) -> FakeDriver | None:
        return self.driver if self.connected and device == "press" else None

    def seed(self, tag: str, value: Value, status: int = Status.GOOD, age_s: float = 1.0) -> None:
        self.store.append([Sample(tag, self.clock.now - int(age_s * NS), value, status, 100)])

    async def send(
        self, tag: str, value: Value, *, source: str = "cloud", age_s: float = 0.0, id: str | None = None
    ) -> CommandResult:
        cid = id or f"c{len(self.store.audit_rows()) + 1}"
        return await self.gate.submit(Command(cid, source, "tester", tag, value, self.clock.now - int(age_s * NS)))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, config())
    r.seed("press/setpoint", 110.0)
    try:
        yield r
    finally:
        r.store.close()


# ----------------------------------------------------------------------------------------- closed by default


@pytest.mark.parametrize("commands", [None, {"enabled": False, "tags": COMMANDS["tags"]}])
async def test_closed_by_default(tmp_path: Path, commands: dict[str, Any] | None) -> None:
    r = Rig(tmp_path, config(commands))
    res = await r.send("press/setpoint", 100.0)
    assert (res.result, res.code, res.reason) == (Result.REJECTED, "disabled", "commands are disabled")
    assert r.driver.writes == []
    (row,) = r.store.audit_rows()
    assert (row.result, row.written_ns, row.tag, row.value) == ("rejected", None, "press/setpoint", 100.0)
    assert r.gate.tags_for("cloud") == {}


# ----------------------------------------------------------------------------------------- accepted


async def test_an_allowed_write_goes_to_the_driver_once_and_is_audited(rig: Rig) -> None:
    res = await rig.send("press/setpoint", 120.0)
    assert res.ok and res.code == "ok" and res.status == 0
    assert (res.old, res.new, res.readback) == (110.0, 120.0, 120.0)
    assert rig.driver.writes == [("setpoint", 120.0)]
    (row,) = rig.store.audit_rows()
    assert (row.source, row.user, row.cmd_id, row.tag, row.value) == ("cloud", "tester", "c1", "press/setpoint", 120.0)
    assert (row.result, row.code, row.old, row.readback) == ("accepted", "ok", 110.0, 120.0)
    assert row.received_ns == T0 and row.written_ns == T0 and row.finished_ns == T0


async def test_values_keep_their_kind(rig: Rig) -> None:
    assert (await rig.send("press/enable", True)).ok
    assert (await rig.send("press/mode", 2)).ok
    assert (await rig.send("press/label", "auto")).ok
    assert rig.driver.writes == [("enable", True), ("mode", 2), ("label", "auto")]
    assert [r.value for r in rig.store.audit_rows()] == [True, 2, "auto"]


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("tag", "value", "kw", "code", "reason"),
    [
        ("press/setpoint", 120.0, {"age_s": 31}, "stale", "31.0s old (max_age 30s): refused, never replayed late"),
        ("press/setpoint", 120.0, {"age_s": -6}, "stale", "6.0s in the future (max_future 5s): check the sender"),
        ("press/nope", 1, {}, "unknown_tag", "unknown tag 'press/nope'"),
        ("oven/temp", 1.0, {}, "not_writable", "oven/temp is not writable by commands"),
        ("press/speed", 1, {}, "not_writable", "press/speed is not writable by commands (not listed under [commands])"),
        ("press/pressure", 1, {}, "not_writable", "not listed under [commands]"),
        ("press/setpoint", 120.0, {"source": "scada"}, "unauthorised", "source 'scada' may not write press/setpoint"),
        ("press/mode", 1, {"source": "cli"}, "unauthorised", "(allowed: cloud)"),
        ("press/setpoint", "120", {}, "type", "press/setpoint takes a number, not '120'"),
        ("press/setpoint", True, {}, "type", "takes a number, not True"),
        ("press/setpoint", float("nan"), {}, "type", "not a finite number"),
        ("press/setpoint", None, {}, "type", "is not a number, a boolean or a string"),
        ("press/enable", 1, {}, "type", "press/enable takes a boolean (true/false), not 1"),
        ("press/label", 5, {}, "type", "takes a string"),
        ("press/mode", 3, {}, "not_allowed", "3 is not one of the allowed values (0, 1, 2)"),
        ("press/mode", 1.5, {}, "not_allowed", "not one of the allowed values"),
        ("press/setpoint", -0.5, {}, "out_of_range", "-0.5 is below the minimum 0"),
        ("press/setpoint", 150.5, {}, "out_of_range", "150.5 is above the maximum 150"),
        ("press/setpoint", 131.0, {}, "max_step", "a change of 21 from the last known value 110.0 exceeds max_step 20"),
    ],
)
async def test_each_refusal_has_a_clear_reason_and_writes_nothing(
    rig: Rig, tag: str, value: Value, kw: dict[str, Any], code: str, reason: str
) -> None:
    res = await rig.send(tag, value, **kw)
    assert res.result is Result.REJECTED
    assert res.code == code
    assert reason in res.reason
    assert res.status == STATUS[code]
    assert rig.driver.writes == []
    (row,) = rig.store.audit_rows()
    assert (row.result, row.code, row.reason, row.written_ns) == ("rejected", code, res.reason, None)


async def test_max_step_needs_a_known_current_value(tmp_path: Path) -> None:
    r = Rig(tmp_path, config())
    res = await r.send("press/setpoint", 10.0)  # nothing stored yet
    assert (res.code, res.result) == ("no_current_value", Result.REJECTED)
    assert "has no known current value" in res.reason
    r.seed("press/setpoint", None, Status.BAD_NO_COMMUNICATION)  # the device is down: the value is unknown
    assert (await r.send("press/setpoint", 10.0)).code == "no_current_value"
    r.seed("press/setpoint", 5.0, age_s=0.5)
    assert (await r.send("press/setpoint", 10.0)).ok
    assert r.driver.writes == [("setpoint", 10.0)]


async def test_max_step_counts_from_the_last_read_back_when_it_is_newer(rig: Rig) -> None:
    assert (await rig.send("press/setpoint", 130.0)).ok  # 110 -> 130
    rig.clock.now += 6 * NS
    res = await rig.send("press/setpoint", 150.0)  # 130 -> 150: within the step of the read-back
    assert res.ok and res.old == 130.0


async def test_min_interval_counts_from_the_last_write_that_went_out(rig: Rig) -> None:
    assert (await rig.send("press/setpoint", 115.0)).ok
    rig.clock.now += 4 * NS
    res = await rig.send("press/setpoint", 116.0)
    assert res.code == "min_interval" and "was written 4.0s ago; min_interval is 5s" in res.reason
    rig.clock.now += 1 * NS
    assert (await rig.send("press/setpoint", 116.0)).ok
    assert rig.driver.writes == [("setpoint", 115.0), ("setpoint", 116.0)]


async def test_min_interval_survives_a_restart_through_the_audit_trail(rig: Rig) -> None:
    assert (await rig.send("press/setpoint", 115.0)).ok
    rig.gate = CommandGate(config(), AuditTrail.for_store(rig.store), rig._lookup, clock=rig.clock)
    rig.clock.now += 2 * NS
    assert (await rig.send("press/setpoint", 116.0)).code == "min_interval"


async def test_a_device_that_is_down_fails_the_command(rig: Rig) -> None:
    rig.connected = False
    res = await rig.send("press/setpoint", 120.0)
    assert (res.result, res.code, res.reason) == (Result.FAILED, "device_down", "device not connected: press")
    assert res.status == 0x808A0000  # BadNotConnected
    assert rig.store.audit_rows()[0].written_ns is None


async def test_duplicate_ids_from_one_source_are_refused(rig: Rig) -> None:
    assert (await rig.send("press/setpoint", 115.0, id="job-7")).ok
    rig.clock.now += 10 * NS
    dup = await rig.send("press/setpoint", 115.0, id="job-7")
    assert dup.code == "duplicate" and "duplicate command id 'job-7' from cloud" in dup.reason
    assert (await rig.send("press/mode", 1, id="job-8")).ok
    assert (await rig.send("press/setpoint", 116.0, id="job-7", source="cli")).ok  # another source's ids
    assert len(rig.driver.writes) == 3


# ----------------------------------------------------------------------------------------- check order


@pytest.mark.parametrize(
    ("tag", "value", "kw", "first"),
    [
        ("press/nope", "x", {"age_s": 60, "source": "nobody"}, "stale"),  # stale beats everything below
        ("press/nope", "x", {"source": "nobody"}, "unknown_tag"),
        ("press/speed", "x", {"source": "nobody"}, "not_writable"),
        ("press/setpoint", "x", {"source": "scada"}, "unauthorised"),  # before the value is looked at
        ("press/mode", 7.5, {}, "not_allowed"),
        ("press/setpoint", 500.0, {}, "out_of_range"),  # also a step of 390 and no min_interval yet
    ],
)
async def test_checks_run_in_the_documented_order(
    rig: Rig, tag: str, value: Value, kw: dict[str, Any], first: str
) -> None:
    assert (await rig.send(tag, value, **kw)).code == first
    assert rig.driver.writes == []


async def test_disabled_comes_first(tmp_path: Path) -> None:
    r = Rig(tmp_path, config({"enabled": False}))
    assert (await r.send("press/nope", None, age_s=99, source="nobody")).code == "disabled"


# ----------------------------------------------------------------------------------------- write outcomes


@pytest.mark.parametrize(
    ("error", "result", "code", "reason"),
    [
        (Transient("no answer"), Result.FAILED, "wire", "no answer (the write may or may not have reached"),
        (OSError("connection reset"), Result.FAILED, "wire", "connection reset"),
        (ReadbackMismatch("wrote 120.0 but read back 100.0", 100.0), Result.READBACK_MISMATCH, "readback", "read back"),
        (Permanent("press/setpoint: wrote 120.0 but read back 100"), Result.READBACK_MISMATCH, "readback", "100"),
        (Permanent("press/setpoint: read-back failed: timeout"), Result.FAILED, "wire", "acknowledged"),
        (Permanent("illegal data address"), Result.REJECTED, "device_refused", "not written: illegal data"),
        (RuntimeError("driver bug"), Result.FAILED, "internal", "driver error RuntimeError: driver bug"),
    ],
)
async def test_driver_errors_become_answers(
    rig: Rig, error: BaseException, result: Result, code: str, reason: str
) -> None:
    rig.driver.fail = error
    res = await rig.send("press/setpoint", 120.0)
    assert (res.result, res.code) == (result, code)
    assert reason in res.reason
    (row,) = rig.store.audit_rows()
    assert row.written_ns is not None  # it went to the wire
    assert (row.result, row.code) == (result.value, code)


async def test_a_device_refusal_carries_the_device_status(rig: Rig) -> None:
    class Refused(Permanent):
        status = 0x801F0000

    rig.driver.fail = Refused("BadUserAccessDenied")
    res = await rig.send("press/setpoint", 120.0)
    assert res.code == "device_refused" and res.status == 0x801F0000


async def test_a_write_that_hangs_times_out(rig: Rig) -> None:
    rig.driver.delay = 5.0
    res = await rig.send("press/setpoint", 120.0)
    assert (res.result, res.code) == (Result.FAILED, "timeout")
    assert "no answer within 1s" in res.reason


async def test_writes_to_one_device_are_serialised(rig: Rig) -> None:
    rig.driver.delay = 0.05
    results = await asyncio.gather(rig.send("press/mode", 1, id="a"), rig.send("press/enable", True, id="b"))
    assert all(r.ok for r in results)
    assert rig.driver.max_active == 1


async def test_cancellation_is_recorded_and_propagates(rig: Rig) -> None:
    rig.driver.delay = 5.0
    task = asyncio.create_task(rig.send("press/setpoint", 120.0))
    await rig.driver.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (row,) = rig.store.audit_rows()
    assert (row.result, row.code) == ("failed", "stopping")
    assert "may or may not have reached the device" in (row.reason or "")


async def test_no_audit_trail_no_write(rig: Rig) -> None:
    rig.store.close()
    res = await rig.send("press/setpoint", 120.0, id="x")
    assert (res.result, res.code) == (Result.REJECTED, "audit_unavailable")
    assert rig.driver.writes == []


async def test_refuse_audits_what_a_source_refused_itself(rig: Rig) -> None:
    res = await rig.gate.refuse(Command("", "cloud", None, "", None, 0), "malformed", "malformed JSON: x")
    assert (res.result, res.code, res.id, res.tag) == (Result.REJECTED, "malformed", None, None)
    (row,) = rig.store.audit_rows()
    assert (row.tag, row.cmd_id, row.reason) == (None, None, "malformed JSON: x")


async def test_refuse_without_an_audit_trail_answers_like_submit_and_counts_once(rig: Rig) -> None:
    rig.store.close()
    res = await rig.gate.refuse(Command("m1", "cloud", None, "press/setpoint", None, T0), "malformed", "bad JSON")
    assert (res.result, res.code) == (Result.REJECTED, "audit_unavailable")
    assert sum(rig.gate.outcomes.values()) == 1 and dict(rig.gate.refusals) == {("cloud", "audit_unavailable"): 1}


# ----------------------------------------------------------------------------------------- inbox, export


async def test_the_inbox_runs_cli_commands_for_a_daemon(rig: Rig) -> None:
    item = rig.store.inbox_submit(cmd_id="x1", source="cli", user="op", tag="press/setpoint", value=118.0,
                                  cmd_ts_ns=T0)  # fmt: skip
    task = asyncio.create_task(rig.gate.serve_inbox(poll_s=0.01))
    try:
        for _ in range(500):
            state, raw = rig.store.inbox_state(item)
            if state == "done":
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert raw is not None
    assert json.loads(raw)["result"] == "accepted"
    assert rig.driver.writes == [("setpoint", 118.0)]
    assert rig.store.inbox_cancel(item) is False  # taken: too late to withdraw


def test_export_audit_csv_and_jsonl(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as s:
        a = s.audit_begin(received_ns=T0, source="cli", user="op", cmd_id="1", tag="p/s", value=True, cmd_ts_ns=T0)
        s.audit_wire(a, old=False, written_ns=T0 + 1)
        s.audit_finish(a, result="accepted", code="ok", reason="written and read back", readback=True,
                       finished_ns=T0 + 2)  # fmt: skip
        s.audit_begin(received_ns=T0 + 5, source="cloud", user=None, cmd_id="2", tag="p/s", value=1, cmd_ts_ns=T0)
        rows = s.audit_rows()
    out = io.StringIO()
    assert export_audit(rows, out, "csv") == 2
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["value"], r["result"], r["old"]) for r in table] == [
        ("true", "accepted", "false"),
        ("1", "in_flight", ""),
    ]
    assert table[0]["received"] == "2026-09-21T14:13:20.000Z"
    out = io.StringIO()
    export_audit(rows, out, "jsonl")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[1]["result"] == "in_flight" and docs[1]["written"] is None


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"tag": "press/nope", "sources": ["cli"]}, "commands.tags[0] (press/nope).tag: unknown tag 'press/nope'"),
        ({"tag": "press/pressure", "sources": ["cli"]}, "tag 'pressure' is not writable: set writable = true"),
        ({"tag": "oven/temp", "sources": ["cli"]}, "the sim driver of device 'oven' cannot write"),
        ({"tag": "press/setpoint", "sources": ["erp"]}, "unknown source 'erp': a source is an uplink name or 'cli'"),
        ({"tag": "press/setpoint", "sources": []}, "sources must list who may write this tag"),
        ({"tag": "press/setpoint", "sources": ["cli"], "min": 5, "max": 1}, "min (5.0) must not be above max (1.0)"),
        ({"tag": "press/setpoint", "sources": ["cli"], "max": 10, "allowed": [20]}, "allowed value 20 is outside"),
        ({"tag": "press/setpoint", "sources": ["cli"], "max_step": 0}, "max_step must be a positive number"),
        ({"tag": "press/setpoint", "sources": ["cli"], "min_interval": "0s"}, "min_interval must be a positive"),
        ({"tag": "press/enable", "sources": ["cli"], "max": 1}, "min, max and max_step apply to numbers"),
        ({"tag": "setpoint", "sources": ["cli"]}, "write the full path, device/tag"),
        ({"tag": "press/setpoint", "sources": ["cli"], "limit": 3}, "unknown key `limit`"),
    ],
)
def test_config_errors_name_the_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="commands") as err:
        config({"enabled": True, "tags": [entry]})
    assert message in str(err.value)


def test_config_refuses_duplicates_converted_tags_and_bad_durations() -> None:
    twice = {"tags": [{"tag": "press/mode", "sources": ["cli"]}, {"tag": "press/mode", "sources": ["cli"]}]}
    with pytest.raises(ConfigError, match=r"commands.tags\[1\] \(press/mode\): tag listed twice"):
        config(twice)
    converted = {"tags": [{"tag": "press/setpoint", "sources": ["cli"]}]}
    with pytest.raises(ConfigError, match="source_unit or calibration cannot be commanded"):
        config(
            converted, tags=[{"name": "setpoint", "address": 0, "writable": True, "unit": "bar", "source_unit": "psi"}]
        )
    with pytest.raises(ConfigError, match=r"commands\.max_age: invalid duration"):
        config({"max_age": "soon"})
    with pytest.raises(ConfigError, match="audit_retention must be at least 1d"):
        config({"audit_retention": "1h"})
    assert config(None).commands.enabled is False


# ----------------------------------------------------------------------------------------- parsing


def test_parse_value_follows_the_tag_kind() -> None:
    assert parse_value("120", "number") == 120 and parse_value("12.5", "number") == 12.5
    assert parse_value("on", "bool") is True and parse_value("0", "bool") is False
    assert parse_value("007", "string") == "007"
    assert parse_value("true", None) is True and parse_value("auto", None) == "auto"
    for text, kind in (("abc", "number"), ("maybe", "bool"), ("inf", "number")):
        with pytest.raises(ValueError, match="not a"):
            parse_value(text, kind)  # type: ignore[arg-type]


def test_same_value_keeps_bools_apart() -> None:
    assert same_value(1, 1.0) and not same_value(True, 1) and not same_value(0, False) and same_value(True, True)


def test_timestamps() -> None:
    assert timestamp_ns(1_790_000_000_123) == 1_790_000_000_123_000_000
    assert timestamp_ns("2026-09-21T14:13:20.5Z") == T0 + NS // 2
    assert timestamp_ns("2026-09-21T16:13:20+02:00") == T0
    for bad, why in ((1_790_000_000, "not unix milliseconds"), ("2026-09-21T14:13:20", "no time zone"),
                     ("yesterday", "not ISO 8601"), (True, "must be unix milliseconds")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            timestamp_ns(bad)


PREFIX = "edged/gw/cmd/reply/"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"{not json", "malformed JSON: "),
        (b"[1, 2]", "malformed command: expected a JSON object"),
        (b'{"id": "a", "tag": "p/s", "value": 1}', "malformed command: Object missing required field `ts`"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000, "x": 1}', "unknown field `x`"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000}', "is not unix milliseconds"),
        (b'{"id": "a", "tag": "p/s", "value": null, "ts": 1790000000000}', "Expected `bool | int | float | str`"),
        (b'{"id": "", "tag": "p/s", "value": 1, "ts": 1790000000000}', "id must be 1 to 128 characters"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "reply_to": "a/#"}', "reply_to 'a/#'"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "reply_to": "edged/gw/cmd"}', "reply_to"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "reply_to": "edged/gw/live"}', "not under"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "reply_to": "edged/gw/cmd/replyX"}', "not under"),
        (b'{"id": "a", "value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "malformed"),  # RecursionError before
        (b'{"id": "a", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": "9999-12-31T23:59:59Z"}', "outside 1973..2262"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": "0001-01-01T00:00:00+01:00"}', "outside 1973..2262"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 99999999999999}', "not unix milliseconds"),
        (b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "sig": "x"}', "Expected `object"),
    ],
)
def test_mqtt_command_payloads(payload: bytes, problem: str) -> None:
    got = decode_command(payload, "cloud", reply_prefix=PREFIX, max_bytes=300_000)
    assert got.problem is not None and problem in got.problem
    assert got.code == "malformed" and len(got.problem) <= 400
    assert got.cmd.source == "cloud" and got.cmd.value is None
    assert got.reply_to is None


def test_mqtt_command_payload_ok_partial_ids_and_size() -> None:
    good = (
        b'{"id": "j1", "tag": "p/s", "value": 120.0, "ts": "2026-09-21T14:13:20Z", "user": "opt",'
        b' "reply_to": "edged/gw/cmd/reply/opt", "sig": {"kid": "k1", "hmac": "00"}}'
    )
    got = decode_command(good, "cloud", reply_prefix=PREFIX)
    assert got.problem is None and got.reply_to == "edged/gw/cmd/reply/opt"
    assert got.cmd == Command("j1", "cloud", "opt", "p/s", 120.0, T0, "edged/gw/cmd/reply/opt", Signature("k1", "00"))
    got = decode_command(
        b'{"id": "j2", "tag": "p/s", "reply_to": "edged/gw/cmd/reply/2"}', "cloud", reply_prefix=PREFIX
    )
    assert (got.cmd.id, got.cmd.tag, got.reply_to) == ("j2", "p/s", "edged/gw/cmd/reply/2") and got.problem
    big = decode_command(b'{"id": "j3", "value": "' + b"x" * 9000 + b'"}', "cloud", reply_prefix=PREFIX)
    assert (big.code, big.cmd.id, big.reply_to) == ("too_large", "", None)
    assert big.problem == "command too large: 9025 bytes (max_command_size 8192): not read"


async def test_a_timestamp_beyond_64_bits_is_answered_and_audited(rig: Rig) -> None:
    for ts in (10**30, -(10**30)):
        res = await rig.gate.submit(Command(f"t{ts > 0}", "cloud", None, "press/setpoint", 120.0, ts))
        assert (res.result, res.code) == (Result.REJECTED, "stale")
    assert [(r.code, r.cmd_ts_ns) for r in rig.store.audit_rows()] == [("stale", None), ("stale", None)]
    res = await rig.send("press/setpoint", 2**70)
    assert (res.code, res.reason) == ("too_large", "command too large: the value does not fit 64 bits")
    assert rig.store.audit_rows()[-1].value == 2**70 and rig.driver.writes == []


async def test_outcomes_are_counted_for_metrics(rig: Rig) -> None:
    await rig.send("press/setpoint", 100.0)
    await rig.send("press/setpoint", 10_000.0)
    await rig.send("press/setpoint", 100.0, source="intruder")
    assert rig.gate.outcomes[("cloud", "accepted")] == 1
    assert rig.gate.outcomes[("cloud", "rejected")] == 1
    assert rig.gate.outcomes[("intruder", "rejected")] == 1


# ----------------------------------------------------------------------------------------- signatures

KEY = "0123456789abcdef-cloud-key"
SIGNED = {"name": "cloud", "type": "mqtt", "commands": True}


def signed_config(**source: Any) -> Config:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": "/tmp"},
        "devices": [DEVICE],
        "uplinks": [SIGNED, {"name": "scada", "type": "mqtt"}],
        "commands": COMMANDS | {"sources": {"cloud": source or {"keys": {"k1": KEY, "k2": "another-key-0123456"}}}},
    }
    return parse(raw)


def test_canonical_form_is_fixed_order_compact_json() -> None:
    got = canonical("j1", "press/setpoint", 120.0, T0, "opt", "edged/gw/cmd/reply/x")
    assert got == (
        b'{"id":"j1","tag":"press/setpoint","value":120.0,"ts":1790000000000000000,"user":"opt",'
        b'"reply_to":"edged/gw/cmd/reply/x"}'
    )
    assert (
        canonical("j", "p/s", True, 1, None, None)
        == b'{"id":"j","tag":"p/s","value":true,"ts":1,"user":null,"reply_to":null}'
    )
    assert (
        canonical("j", "p/s", "Grüße\n", 1)
        == '{"id":"j","tag":"p/s","value":"Grüße\\n","ts":1,"user":null,"reply_to":null}'.encode()
    )
    expected = hmac.new(KEY.encode(), got, hashlib.sha256).hexdigest()
    cmd = Command("j1", "cloud", "opt", "press/setpoint", 120.0, T0, "edged/gw/cmd/reply/x")
    assert sign(KEY.encode(), "k1", cmd) == Signature("k1", expected)


def signed(rig: Rig, cid: str, value: Value, *, key: str = KEY, kid: str = "k1", age_s: float = 0.0) -> Command:
    cmd = Command(cid, "cloud", "opt", "press/setpoint", value, rig.clock.now - int(age_s * NS))
    return msgspec.structs.replace(cmd, sig=sign(key.encode(), kid, cmd))


@pytest.fixture
def srig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, signed_config())
    r.seed("press/setpoint", 110.0)
    try:
        yield r
    finally:
        r.store.close()


async def test_signed_commands_pass_and_every_other_is_refused(srig: Rig) -> None:
    assert (await srig.gate.submit(signed(srig, "s1", 115.0))).ok
    srig.clock.now += 6 * NS
    assert (await srig.gate.submit(signed(srig, "s2", 116.0, kid="k2", key="another-key-0123456"))).ok
    cases = [
        (Command("s3", "cloud", "opt", "press/setpoint", 117.0, srig.clock.now), "unsigned", "requires a signature"),
        (signed(srig, "s4", 117.0, key="not-the-key-0123456"), "bad_signature", "altered or signed otherwise"),
        (signed(srig, "s5", 117.0, kid="k9"), "bad_signature", "unknown key id 'k9'"),
        (msgspec.structs.replace(signed(srig, "s6", 117.0), value=140.0), "bad_signature", "altered"),
        (msgspec.structs.replace(signed(srig, "s7", 117.0), reply_to="x/y"), "bad_signature", "altered"),
        (msgspec.structs.replace(signed(srig, "s8", 117.0), sig=Signature("k1", "zz")), "bad_signature", "not a hex"),
    ]
    for cmd, code, reason in cases:
        res = await srig.gate.submit(cmd)
        assert (res.result, res.code) == (Result.REJECTED, code) and reason in res.reason, res.reason
        assert res.status == 0x80130000  # BadSecurityChecksFailed
    assert srig.driver.writes == [("setpoint", 115.0), ("setpoint", 116.0)]
    assert [r.code for r in srig.store.audit_rows()] == ["ok", "ok"] + [c for _, c, _ in cases]
    assert srig.gate.refusals[("cloud", "bad_signature")] == 5 and srig.gate.refusals[("cloud", "unsigned")] == 1
    # a badly signed command does not burn its id: the real one still goes through
    srig.clock.now += 6 * NS
    assert (await srig.gate.submit(signed(srig, "s4", 117.0))).ok


async def test_broker_acls_only_is_an_explicit_opt_out(tmp_path: Path) -> None:
    r = Rig(tmp_path, signed_config(require_signature=False))
    r.seed("press/setpoint", 110.0)
    assert (await r.gate.submit(Command("u1", "cloud", "opt", "press/setpoint", 115.0, r.clock.now))).ok


def test_every_mqtt_command_source_says_how_it_is_authenticated(monkeypatch: pytest.MonkeyPatch) -> None:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": "/tmp"},
        "devices": [DEVICE],
        "uplinks": [SIGNED],
        "commands": {"enabled": True, "tags": [{"tag": "press/mode", "sources": ["cloud"]}]},
    }
    with pytest.raises(ConfigError, match=r"source 'cloud' receives MQTT commands: say how they are authenticated"):
        parse(raw)
    with pytest.raises(ConfigError, match=r"commands.sources.cloud: give the signing keys"):
        parse(raw | {"commands": raw["commands"] | {"sources": {"cloud": {}}}})
    with pytest.raises(ConfigError, match="too short"):
        parse(raw | {"commands": raw["commands"] | {"sources": {"cloud": {"keys": {"k1": "short"}}}}})
    with pytest.raises(ConfigError, match="'erp' is not an MQTT uplink"):
        parse(raw | {"commands": raw["commands"] | {"sources": {"erp": {"require_signature": False}}}})
    monkeypatch.setenv("EDGED_TEST_KEY", KEY)
    cfg = parse(
        raw | {"commands": raw["commands"] | {"sources": {"cloud": {"keys": {"k1": {"env": "EDGED_TEST_KEY"}}}}}}
    )
    assert "EDGED_TEST_KEY" in repr(cfg.commands.sources["cloud"].keys["k1"]) and KEY not in repr(cfg.commands)


async def test_an_mqtt_source_with_commands_but_no_rule_is_refused_unsigned(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": "/tmp"},
        "devices": [DEVICE],
        "uplinks": [SIGNED, {"name": "other", "type": "mqtt"}],
        "commands": {"enabled": True, "tags": [{"tag": "press/mode", "sources": ["other"]}]},
    }
    r = Rig(tmp_path, parse(raw))
    res = await r.gate.submit(Command("x", "cloud", None, "press/mode", 1, r.clock.now))
    assert res.code == "unsigned"


# ----------------------------------------------------------------------------------------- size, replay


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("id", "i" * 129, "id has 129 characters (at most 128)"),
        ("user", "u" * 129, "user has 129 characters"),
        ("tag", "press/" + "t" * 251, "tag has 257 characters"),
        ("reply_to", "r" * 257, "reply_to has 257 characters"),
        ("value", "v" * 60_000, "value has 60000 characters (at most 1024)"),
    ],
)
async def test_oversized_commands_are_refused_and_audited_cut(rig: Rig, field: str, value: str, why: str) -> None:
    cmd = msgspec.structs.replace(Command("big", "cloud", "u", "press/label", "x", rig.clock.now), **{field: value})
    res = await rig.gate.submit(cmd)
    assert (res.result, res.code) == (Result.REJECTED, "too_large")
    assert res.reason.startswith(f"command too large: {why}")
    assert res.status == 0x80080000 and rig.driver.writes == []
    (row,) = rig.store.audit_rows()
    assert row.code == "too_large"
    assert max(len(str(v)) for v in (row.cmd_id, row.user, row.tag, row.value)) < 1100


async def test_a_future_stamped_command_replayed_after_max_age_is_a_duplicate(rig: Rig) -> None:
    first = Command("f1", "cloud", "opt", "press/setpoint", 120.0, rig.clock.now + 4 * NS)  # within max_future
    assert (await rig.gate.submit(first)).ok
    rig.clock.now += 31_500_000_000  # replayed 31.5 s later: the stamp is only 27.5 s old
    again = await rig.gate.submit(first)
    assert again.code == "duplicate" and "first seen 31.5s ago" in again.reason
    rig.clock.now += 4 * NS  # now older than max_age: stale, and the id may be forgotten
    assert (await rig.gate.submit(first)).code == "stale"
    assert rig.driver.writes == [("setpoint", 120.0)]


async def test_the_duplicate_window_survives_a_restart_and_the_audit_bound(tmp_path: Path) -> None:
    cfg = config(COMMANDS | {"audit_max_rows": 10})
    r = Rig(tmp_path, cfg)
    r.seed("press/setpoint", 110.0)
    assert (await r.send("press/setpoint", 120.0, id="keep")).ok
    for i in range(30):  # pushes the accepted row out of the bounded audit trail
        await r.send("press/nope", 1, id=f"n{i}")
    assert "keep" not in [row.cmd_id for row in r.store.audit_rows()]
    r.store.close()
    r.store = Store(tmp_path / "buffer.db")  # a restart
    r.gate = CommandGate(cfg, AuditTrail.for_store(r.store), r._lookup, clock=r.clock)
    r.clock.now += 2 * NS
    assert (await r.send("press/setpoint", 121.0, id="keep")).code == "duplicate"
    assert (await r.send("press/setpoint", 121.0, id="other")).code == "min_interval"  # from command_writes
    assert r.store.audit_stats().dropped == 23  # 33 rows, 10 kept


def test_the_audit_trail_is_bounded_in_rows_and_bytes(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as s:
        for i in range(50):
            row = s.audit_begin(received_ns=T0 + i, source="cloud", user="u", cmd_id=f"c{i}", tag="p/s",
                                value="x" * 1000, cmd_ts_ns=T0, max_rows=1000, max_bytes=20_000)  # fmt: skip
            s.audit_finish(row, result="rejected", code="type", reason="r" * 400, readback=None, finished_ns=T0,
                           max_rows=1000, max_bytes=20_000)  # fmt: skip
        stats = s.audit_stats()
        rows = s.audit_rows()
        assert 18_000 < stats.bytes <= 20_000 and stats.rows == len(rows) < 20
        assert stats.dropped == 50 - len(rows) and rows[-1].cmd_id == "c49"
        for i in range(50, 80):
            s.audit_begin(received_ns=T0 + i, source="cloud", user=None, cmd_id=f"c{i}", tag="p/s", value=1,
                          cmd_ts_ns=T0, max_rows=10, max_bytes=1_000_000)  # fmt: skip
        stats = s.audit_stats()
        assert stats.rows == 10 == len(s.audit_rows()) and stats.dropped == 70
        assert stats.bytes == sum(
            64 + len("cloud") + len(r.cmd_id or "") + len("p/s") + len("1") for r in s.audit_rows()
        )
        assert s.audit_trim(T0 + 75) == 5 and s.audit_stats().rows == 5


async def test_an_inbox_row_runs_as_cli_whatever_source_it_claims(rig: Rig) -> None:
    item = rig.store.inbox_submit(cmd_id="x2", source="cloud", user="mallory", tag="press/mode", value=1,
                                  cmd_ts_ns=T0)  # fmt: skip
    task = asyncio.create_task(rig.gate.serve_inbox(poll_s=0.01))
    try:
        async with asyncio.timeout(10):
            while rig.store.inbox_state(item)[0] != "done":  # noqa: ASYNC110 - the gate polls the table
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (row,) = rig.store.audit_rows()
    assert (row.source, row.code) == ("cli", "unauthorised")  # press/mode may be written by cloud only
    assert row.user == "mallory (inbox row claimed source 'cloud')"
    assert rig.driver.writes == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # the first of the gateway's topics it covers, in order: alarm (edged.alarms), cmd, gap, ...
        ({"reply_to_prefix": "edged/{gateway}/"}, "replies could land on the gateway's own topic 'edged/g/alarm'"),
        ({"reply_topic": "edged/{gateway}/live"}, "replies could land on the gateway's own topic 'edged/g/live'"),
        ({"reply_to_prefix": "a/#"}, "reply_to_prefix must be a topic prefix without wildcards"),
        ({"reply_to_prefix": "r/{site}/"}, "reply_to_prefix: unknown placeholder 'site'"),
        ({"max_command_size": "1MiB"}, "max_command_size must be between 256 and 65536 bytes"),
    ],
)
def test_mqtt_reply_and_size_settings_are_checked_at_load(settings: dict[str, Any], message: str) -> None:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": "/tmp"},
        "devices": [DEVICE],
        "uplinks": [SIGNED | settings],
    }
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert message in str(err.value)
    ok = parse(raw | {"uplinks": [SIGNED | {"reply_to_prefix": "cloud/answers/{gateway}/"}]}).uplinks[0]
    assert isinstance(ok, MqttConfig) and ok.reply_prefix("gw") == "cloud/answers/gw/"
    answered = b'{"id": "a", "tag": "p/s", "value": 1, "ts": 1790000000000, "reply_to": "cloud/answers/gw/x"}'
    assert decode_command(answered, "cloud", reply_prefix=ok.reply_prefix("gw")).problem is None


def test_the_audit_byte_bound_follows_the_buffer_and_leaves_it_room() -> None:
    raw: dict[str, Any] = {"gateway": {"id": "gw", "data_dir": "/tmp"}, "devices": [DEVICE], "uplinks": []}
    assert audit_max_bytes(parse(raw | {"buffer": {"max_bytes": "8MiB"}})) == 512 * 1024
    assert audit_max_bytes(parse(raw)) == 16 * 1024**2  # 1 GiB buffer: capped
    with pytest.raises(ConfigError, match=r"audit_max_bytes \(4194304\) must be at most a quarter of"):
        parse(raw | {"buffer": {"max_bytes": "8MiB"}, "commands": {"audit_max_bytes": "4MiB"}})
