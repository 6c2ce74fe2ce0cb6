"""Alarm events on the OPC UA server uplink: a real asyncua client subscribed to the Server object
receives AlarmConditionType events with the state fields set, made by a real alarm engine from
samples crossing a limit; an acknowledge and a replayed (historical) event; no variable for them.
Independent of asyncua's enumerations: the event type, condition class and Server object are
checked against the numeric NodeIds of the spec (OPC 10000-5/-9: i=2915, i=11164, i=2253)."""

from __future__ import annotations

import asyncio
import logging
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua

sys.path.insert(0, str(Path(__file__).parents[1]))

from edged import config as edged_config
from edged.alarms.engine import AlarmEngine
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from peers.opcua_server import free_port
from peers.waiting import eventually
from uplink.opcua import Config, Uplink

module_loop = pytest.mark.asyncio(loop_scope="module")
GATEWAY = "gw1"
NS = 1_000_000_000
T0 = 1_790_000_000 * NS
ALARM_CONDITION_TYPE, PROCESS_CONDITION_CLASS, SERVER_OBJECT = 2915, 11164, 2253  # OPC 10000-9, -5

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
allow_anonymous = true
security_policies = ["None"]
[alarms]
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
    def __init__(self, up: Uplink, engine: AlarmEngine, client: Client, handler: Handler) -> None:
        self.up, self.engine, self.client, self.handler = up, engine, client, handler


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("alarms")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    cfg = edged_config.parse(tomllib.loads(CONFIG.format(tmp=tmp, endpoint=endpoint)))
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    ctx = PluginContext(GATEWAY, tmp, logging.getLogger("edged.uplink.scada"), config=cfg)
    clock = [T0]
    engine = AlarmEngine(cfg.alarms, clock=lambda: clock[0])
    async with Uplink(up_cfg, ctx) as up:
        client = Client(endpoint, timeout=10)
        async with client:
            handler = Handler()
            sub = await client.create_subscription(50, handler)
            condition_type = client.get_node(ua.NodeId(ALARM_CONDITION_TYPE))
            await sub.subscribe_events(client.get_node(ua.NodeId(SERVER_OBJECT)), condition_type)
            yield Env(up, engine, client, handler)


def sample(t: float, value: float) -> Sample:
    return Sample("boiler/pressure", T0 + int(t * NS), value, 0, 100, "bar")


async def deliver(env: Env, samples: list[Sample], *, historical: bool = False, seq: int = 1) -> list[Sample]:
    events = env.engine.feed(samples)
    batch = [*samples, *events]
    numbered = [Sample(s.tag, s.ts_ns, s.value, s.status, s.score, s.unit, seq + i) for i, s in enumerate(batch)]
    await env.up.send(Batch(GATEWAY, seq, seq + len(batch) - 1, historical, numbered))
    return events


@module_loop
async def test_active_event_carries_the_state_fields(env: Env) -> None:
    await deliver(env, [sample(0, 10.0)])
    await deliver(env, [sample(1, 12.5)], seq=10)
    await eventually(lambda: env.handler.events, 10, "an alarm event at the client")
    ev = env.handler.events[-1]
    assert ev.EventType == ua.NodeId(ALARM_CONDITION_TYPE)  # the spec's numeric id
    assert ev.ConditionClassId == ua.NodeId(PROCESS_CONDITION_CLASS)
    assert ev.SourceName == "boiler/pressure" and ev.ConditionName == "hihi"
    assert ev.Severity == 900 and ev.Message.Text == "drum pressure very high"
    assert getattr(ev, "ActiveState/Id") is True and ev.ActiveState.Text == "Active"
    assert getattr(ev, "AckedState/Id") is False and ev.AckedState.Text == "Unacknowledged"
    assert getattr(ev, "EnabledState/Id") is True
    assert ev.Retain is True and ev.SuppressedOrShelved is False
    assert ev.Time.timestamp() == pytest.approx((T0 + NS) / 1e9)
    assert getattr(ev, "ActiveState/TransitionTime").timestamp() == pytest.approx((T0 + NS) / 1e9)
    # the source is the tag's own variable in the uplink's namespace
    assert ev.SourceNode.Identifier == "boiler/pressure"
    # an alarm path never becomes a variable
    names = [(await n.read_browse_name()).Name for n in await env.client.nodes.objects.get_children()]
    assert not any("#alarm" in n for n in names)


@module_loop
async def test_acknowledge_and_return_to_normal(env: Env) -> None:
    n = len(env.handler.events)
    _, _, ack = env.engine.command("boiler/pressure#alarm/hihi", "ack", None, user="op", source="cli")
    await env.up.send(Batch(GATEWAY, 20, 20, False, [Sample(ack.tag, ack.ts_ns, ack.value, 0, 100, None, 20)]))
    await eventually(lambda: len(env.handler.events) > n, 10, "the ack event")
    ev = env.handler.events[-1]
    assert getattr(ev, "AckedState/Id") is True and getattr(ev, "ActiveState/Id") is True
    assert ev.ClientUserId == "op" and "ack by op via cli" in ev.Comment.Text
    await deliver(env, [sample(5, 9.0)], seq=30)
    await eventually(lambda: len(env.handler.events) > n + 1, 10, "the cleared event")
    ev = env.handler.events[-1]
    assert getattr(ev, "ActiveState/Id") is False and getattr(ev, "AckedState/Id") is True
    assert ev.Retain is False  # normal again: nothing left for the operator


@module_loop
async def test_replayed_event_is_marked_historical(env: Env) -> None:
    n = len(env.handler.events)
    await deliver(env, [sample(6, 13.0)], historical=True, seq=40)
    await eventually(lambda: len(env.handler.events) > n, 10, "the replayed event")
    ev = env.handler.events[-1]
    assert ev.Message.Text.endswith("(historical)")
    assert ev.Time.timestamp() == pytest.approx((T0 + 6 * NS) / 1e9)  # its own time, not the replay's
    await asyncio.sleep(0)
