"""Acknowledge and shelve from the OPC UA server uplink: a real asyncua client calls Part 9's
methods on a condition; each call goes through a real command gate (audited in a real buffer) to a
real alarm engine, whose event comes back to the client as the next AlarmConditionType event, and
`edged alarms` (alarm_rows, from the buffer) shows the new state. A viewer is refused
BadUserAccessDenied (audited), and so on for each refusal. After a restart the condition not normal
is back at once: ConditionRefresh lists it and it can be acknowledged.

Independent of asyncua's enumerations: the methods, the Server object and ConditionRefresh are
called by the numeric NodeIds of the spec, and the StatusCodes compared with the numbers of
OPC 10000-4/-9 (Part 9 Table 97 and Part 4 Table 184)."""

from __future__ import annotations

import logging
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Store
from edged import config as edged_config
from edged.alarms.control import alarm_rows
from edged.alarms.engine import AlarmEngine
from edged.commands import AuditTrail, CommandGate
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from peers.opcua_server import free_port
from peers.waiting import eventually
from uplink.opcua import Config, Uplink

GATEWAY = "gw1"
NS = 1_000_000_000
PATH = "boiler/pressure#alarm/hihi"
# OPC 10000-5 / -9 NodeIds
SERVER_OBJECT, ALARM_CONDITION_TYPE, CONDITION_TYPE = 2253, 2915, 2782
ACKNOWLEDGE, UNSHELVE, ONE_SHOT_SHELVE, TIMED_SHELVE = 9111, 2947, 2948, 2949
CONDITION_REFRESH, GET_MONITORED_ITEMS = 3875, 11492
# OPC 10000-4 / -9 StatusCodes
GOOD = 0
BAD_USER_ACCESS_DENIED = 0x801F0000
BAD_NODE_ID_UNKNOWN = 0x80340000
BAD_EVENT_ID_UNKNOWN = 0x809A0000
BAD_CONDITION_BRANCH_ALREADY_ACKED = 0x80CF0000
BAD_CONDITION_NOT_SHELVED = 0x80D20000
BAD_SHELVING_TIME_OUT_OF_RANGE = 0x80D30000
BAD_NOT_SUPPORTED = 0x803D0000
BAD_ARGUMENTS_MISSING = 0x80760000

CONFIG = """
[gateway]
id = "gw1"
data_dir = "{tmp}"
[[devices]]
name = "boiler"
type = "sim"
tags = [{{ name = "pressure", unit = "bar" }}]
[[uplinks]]
name = "scada"
type = "opcua"
endpoint = "{endpoint}"
security_policies = ["None"]
users = {{ operator = "op-pw", viewer = "view-pw" }}
command_users = ["operator"]
[commands]
enabled = true
[alarms]
sources = ["scada"]
max_shelve = "8h"
[[alarms.tags]]
tag = "boiler/pressure"
type = "hihi"
limit = 12.0
priority = "urgent"
message = "drum pressure very high"
"""


class Handler:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


class Env:
    """An uplink with a gate and an alarm engine, the buffer the gate audits into and the events go to."""

    def __init__(self, cfg: edged_config.Config, store: Store, engine: AlarmEngine, up: Uplink) -> None:
        self.cfg, self.store, self.engine, self.up = cfg, store, engine, up
        self.made: list[Sample] = []  # events the engine made for a command, stored and sent by `send_made`

    async def deliver(self, samples: list[Sample]) -> None:
        """Store the samples and the events they (or a command) made, and send them, as the daemon does."""
        first, _ = self.store.append(samples)
        numbered = [
            Sample(s.tag, s.ts_ns, s.value, s.status, s.score, s.unit, first + i) for i, s in enumerate(samples)
        ]
        await self.up.send(Batch(GATEWAY, numbered[0].seq or 0, numbered[-1].seq or 0, False, numbered))

    def state(self) -> str:
        return {r["path"]: r for r in alarm_rows(self.cfg, self.store)}[PATH]["state"]


def parse(tmp: Path) -> edged_config.Config:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    return edged_config.parse(tomllib.loads(CONFIG.format(tmp=tmp, endpoint=endpoint)))


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cfg = parse(tmp_path)
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    made: list[Sample] = []

    async def no_driver(name: str) -> None:
        return None

    with Store(tmp_path / "buffer.db") as store:
        engine = AlarmEngine(cfg.alarms)
        engine.recover(store)

        async def on_alarm(path: str, action: str, seconds: float | None, user: str | None, source: str) -> Any:
            before, after, event = engine.command(path, action, seconds, user=user, source=source)
            made.append(event)
            return before, after

        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver, alarms=on_alarm)

        async def latest() -> list[Sample]:
            return store.latest()

        ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("edged.uplink.scada"), config=cfg, commands=gate,
                            latest=latest)  # fmt: skip
        async with Uplink(up_cfg, ctx) as up:
            e = Env(cfg, store, engine, up)
            e.made = made
            yield e


async def session(env: Env, user: str, password: str) -> tuple[Client, Handler, Any]:
    c = Client(env.up.config.endpoint, timeout=10)
    c.set_user(user)
    c.set_password(password)
    await c.connect()
    handler = Handler()
    sub = await c.create_subscription(50, handler)
    await sub.subscribe_events(c.get_node(ua.NodeId(SERVER_OBJECT)), c.get_node(ua.NodeId(ALARM_CONDITION_TYPE)))
    return c, handler, sub


async def call(c: Client, objectid: ua.NodeId, method: int, *args: ua.Variant) -> int:
    """A Call, answered by its StatusCode (not raised)."""
    req = ua.CallMethodRequest(ObjectId=objectid, MethodId=ua.NodeId(method), InputArguments=list(args))
    (res,) = await c.uaclient.call([req])
    return int(res.StatusCode.value)


def ack_args(event_id: bytes, comment: str = "seen") -> tuple[ua.Variant, ua.Variant]:
    return ua.Variant(event_id, ua.VariantType.ByteString), ua.Variant(
        ua.LocalizedText(comment), ua.VariantType.LocalizedText
    )


def pressure(t0: int, t: float, value: float) -> Sample:
    return Sample("boiler/pressure", t0 + int(t * NS), value, 0, 100, "bar")


async def raise_alarm(env: Env, handler: Handler) -> Any:
    t0 = time.time_ns() - 10 * NS
    samples = [pressure(t0, 0, 10.0), pressure(t0, 1, 12.5)]
    await env.deliver([*samples, *env.engine.feed(samples)])
    await eventually(lambda: handler.events, 10, "the active event")
    return handler.events[-1]


async def send_made(env: Env) -> None:
    events, env.made[:] = list(env.made), []
    await env.deliver(events)


@pytest.mark.asyncio
async def test_operator_acknowledges_viewer_is_refused(env: Env) -> None:
    op, events, _ = await session(env, "operator", "op-pw")
    viewer, _, _ = await session(env, "viewer", "view-pw")
    try:
        active = await raise_alarm(env, events)
        assert getattr(active, "AckedState/Id") is False
        cond = ua.NodeId(PATH, env.up.ns)  # the ConditionId: ns=<ns>;s=<alarm path>
        event_id = active.EventId

        assert await call(viewer, cond, ACKNOWLEDGE, *ack_args(event_id)) == BAD_USER_ACCESS_DENIED
        assert await call(op, cond, ACKNOWLEDGE, *ack_args(b"no-such-event")) == BAD_EVENT_ID_UNKNOWN
        assert await call(op, cond, ACKNOWLEDGE, ack_args(event_id)[0]) == BAD_ARGUMENTS_MISSING
        assert env.state() == "unack"  # nothing refused changed anything

        n = len(events.events)
        assert await call(op, cond, ACKNOWLEDGE, *ack_args(event_id, "on my way")) == GOOD
        await send_made(env)  # the engine's ack event, stored and delivered like any event
        await eventually(lambda: len(events.events) > n, 10, "the ack event")
        acked = events.events[-1]
        assert getattr(acked, "AckedState/Id") is True and getattr(acked, "ActiveState/Id") is True
        assert acked.ClientUserId == "operator" and "via scada" in acked.Comment.Text
        assert env.state() == "acked"  # as `edged alarms` shows it, from the buffer
        assert await call(op, cond, ACKNOWLEDGE, *ack_args(acked.EventId)) == BAD_CONDITION_BRANCH_ALREADY_ACKED

        unknown = ua.NodeId("boiler/pressure#alarm/nope", env.up.ns)
        assert await call(op, unknown, ACKNOWLEDGE, *ack_args(event_id)) == BAD_NODE_ID_UNKNOWN
        # any other method stays refused, unaudited
        assert await call(op, ua.NodeId(SERVER_OBJECT), GET_MONITORED_ITEMS, ua.Variant(1, ua.VariantType.UInt32)) == (
            BAD_USER_ACCESS_DENIED
        )
    finally:
        await op.disconnect()
        await viewer.disconnect()
    rows = [(r.source, r.user, r.tag, r.value, r.result, r.code) for r in env.store.audit_rows()]
    assert rows == [
        ("scada", "viewer", PATH, "ack", "rejected", "unauthorised"),
        ("scada", "operator", PATH, "ack", "rejected", "unknown_event"),
        ("scada", "operator", PATH, "ack", "rejected", "missing_arguments"),
        ("scada", "operator", PATH, "ack", "accepted", "ok"),
        ("scada", "operator", PATH, "ack", "rejected", "not_allowed"),
        ("scada", "operator", "boiler/pressure#alarm/nope", "ack", "rejected", "unknown_tag"),
    ]


@pytest.mark.asyncio
async def test_timed_shelve_and_unshelve(env: Env) -> None:
    op, events, _ = await session(env, "operator", "op-pw")
    try:
        await raise_alarm(env, events)
        shelving = ua.NodeId(PATH + "/ShelvingState", env.up.ns)
        hour_ms = ua.Variant(3600_000.0, ua.VariantType.Double)
        too_long = ua.Variant(9 * 3600_000.0, ua.VariantType.Double)  # beyond max_shelve (MaxTimeShelved)
        assert await call(op, shelving, TIMED_SHELVE, too_long) == BAD_SHELVING_TIME_OUT_OF_RANGE
        assert await call(op, shelving, ONE_SHOT_SHELVE) == BAD_NOT_SUPPORTED
        n = len(events.events)
        assert await call(op, shelving, TIMED_SHELVE, hour_ms) == GOOD
        await send_made(env)
        await eventually(lambda: len(events.events) > n, 10, "the shelved event")
        shelved = events.events[-1]
        assert shelved.SuppressedOrShelved is True and shelved.MaxTimeShelved == 8 * 3600_000.0
        n = len(events.events)
        assert await call(op, ua.NodeId(PATH, env.up.ns), UNSHELVE) == GOOD  # the ConditionId works too
        await send_made(env)
        await eventually(lambda: len(events.events) > n, 10, "the unshelved event")
        assert events.events[-1].SuppressedOrShelved is False
        assert await call(op, shelving, UNSHELVE) == BAD_CONDITION_NOT_SHELVED
    finally:
        await op.disconnect()
    rows = [(r.user, r.value, r.code) for r in env.store.audit_rows()]
    assert rows == [
        ("operator", "shelve 32400000ms", "type"),
        ("operator", "shelve one-shot", "not_supported"),
        ("operator", "shelve 3600000ms", "ok"),
        ("operator", "unshelve", "ok"),
        ("operator", "unshelve", "not_allowed"),
    ]


@pytest.mark.asyncio
async def test_condition_is_back_after_a_restart(tmp_path: Path) -> None:
    """The active alarm stored before a restart: the new server lists it on ConditionRefresh before
    any new event, and an operator acknowledges it by that EventId."""
    cfg = parse(tmp_path)
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    t0 = time.time_ns() - 10 * NS
    with Store(tmp_path / "buffer.db") as store:
        before = AlarmEngine(cfg.alarms)  # the previous run
        samples = [pressure(t0, 0, 10.0), pressure(t0, 1, 12.5)]
        store.append([*samples, *before.feed(samples)])

        engine = AlarmEngine(cfg.alarms)  # this run: state from the buffer, as the daemon recovers
        assert engine.recover(store) == 1

        async def on_alarm(path: str, action: str, seconds: float | None, user: str | None, source: str) -> Any:
            b, a, event = engine.command(path, action, seconds, user=user, source=source)
            store.append([event])
            return b, a

        async def no_driver(name: str) -> None:
            return None

        async def latest() -> list[Sample]:
            return store.latest()

        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver, alarms=on_alarm)
        ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("edged.uplink.scada"), config=cfg, commands=gate,
                            latest=latest)  # fmt: skip
        async with Uplink(up_cfg, ctx) as up:
            e = Env(cfg, store, engine, up)
            op, events, sub = await session(e, "operator", "op-pw")
            try:
                assert await call(op, ua.NodeId(CONDITION_TYPE), CONDITION_REFRESH,
                                  ua.Variant(sub.subscription_id, ua.VariantType.UInt32)) == GOOD  # fmt: skip
                await eventually(lambda: any(getattr(ev, "ConditionName", None) == "hihi" for ev in events.events),
                                 10, "the restored condition on ConditionRefresh")  # fmt: skip
                ev = next(ev for ev in events.events if getattr(ev, "ConditionName", None) == "hihi")
                assert getattr(ev, "ActiveState/Id") is True and getattr(ev, "AckedState/Id") is False
                assert ev.Retain is True and ev.Time.timestamp() == pytest.approx((t0 + NS) / 1e9)
                assert await call(op, ua.NodeId(PATH, up.ns), ACKNOWLEDGE, *ack_args(ev.EventId)) == GOOD
            finally:
                await op.disconnect()
            assert e.state() == "acked"
