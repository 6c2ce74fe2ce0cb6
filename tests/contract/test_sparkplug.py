"""Sparkplug B edge node against a real mosquitto: payloads decoded with the protobuf definitions,
sequence and session rules checked from a subscriber's point of view. DCMD/NCMD writes go through a
real command gate to a real pymodbus server, and every refusal is checked at the device's registers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from buffer import Buffer
from buffer.store import Store
from drivers.modbus import Driver as ModbusDriver
from edged.commands import AuditTrail, CommandGate
from edged.config import BufferConfig, Config, Duration, parse
from edged.delivery import Sender
from edged.errors import ConfigError, Transient
from edged.model import Batch, Gap, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.modbus_server import ModbusPeer, Unit
from peers.mosquitto import Mosquitto
from peers.waiting import eventually
from uplink.sparkplug import Config as SpConfig
from uplink.sparkplug import Uplink as SpUplink
from uplink.sparkplug import command_value
from uplink.sparkplug import sparkplug_b_pb2 as pb

GW = "gw-test"
GROUP = "plant"
SEQ_KINDS = {"NBIRTH", "DBIRTH", "NDATA", "DDATA"}


@dataclass
class Msg:
    topic: str
    kind: str
    device: str | None
    retain: bool
    qos: int
    payload: Any  # pb.Payload, or the decoded JSON of a STATE message
    raw: bytes = b""


@dataclass
class Host:
    """A subscriber that decodes everything under spBv1.0/ and can act as the primary host."""

    port: int
    messages: list[Msg] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    connects: int = 0

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="sp-test-host", clean_session=False
                ) as client:
                    await client.subscribe(f"{NAMESPACE}/#", qos=1)
                    self.connects += 1
                    self.connected.set()
                    async for m in client.messages:
                        self._record(str(m.topic), bytes(m.payload), m.retain, m.qos)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def _record(self, topic: str, raw: bytes, retain: bool, qos: int) -> None:
        parts = topic.split("/")
        if parts[1] == "STATE":
            self.messages.append(Msg(topic, "STATE", None, retain, qos, json.loads(raw)))
            return
        kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
        try:
            payload = pb.Payload.FromString(raw)
        except Exception:  # the garbage NCMD a test sends on purpose
            payload = None
        self.messages.append(Msg(topic, kind, device, retain, qos, payload, raw))

    def of(self, *kinds: str) -> list[Msg]:
        return [m for m in self.messages if m.kind in kinds]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.publish_many(topic, [payload], retain=retain)

    async def publish_many(self, topic: str, payloads: list[bytes], *, retain: bool = False) -> None:
        """In this order, over one connection, each acknowledged by the broker (QoS 1)."""
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="sp-test-cmd") as client:
            for payload in payloads:
                await client.publish(topic, payload, qos=1, retain=retain)

    async def marker(self) -> None:
        """Publish a marker and wait until it comes back: what the broker took before it (a node's
        messages included) has then reached this host, since the broker keeps the order."""
        topic = f"{NAMESPACE}/{GROUP}/MARKER/{len(self.messages)}-{time.monotonic_ns()}"
        await self.publish(topic, b"")
        await eventually(lambda: any(m.topic == topic for m in self.messages), 15, "the marker")

    async def state(self, online: bool, ts: int) -> None:
        await self.publish(
            f"{NAMESPACE}/STATE/scada", json.dumps({"online": online, "timestamp": ts}).encode(), retain=True
        )


NAMESPACE = "spBv1.0"


def metric(p: Any, name: str) -> Any:
    (m,) = [m for m in p.metrics if m.name == name]
    return m


def props(m: Any) -> dict[str, Any]:
    out = {}
    for k, v in zip(m.properties.keys, m.properties.values, strict=True):
        out[k] = (v.type, getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None)
    return out


def check_session_rules(msgs: list[Msg]) -> dict[int, str]:
    """Seq +1 mod 256 from NBIRTH = 0; DATA only by aliases the births bound; returns alias -> name."""
    bound: dict[str | None, dict[int, str]] = {}  # per device (None: the node)
    expected: int | None = None
    for m in msgs:
        if m.kind not in SEQ_KINDS:
            continue
        p = m.payload
        assert p.HasField("seq") and p.HasField("timestamp"), m.topic
        if m.kind == "NBIRTH":
            assert p.seq == 0, "NBIRTH starts the session at seq 0"
            bound = {}
        else:
            assert expected is not None, f"{m.kind} before any NBIRTH"
            assert p.seq == expected, f"{m.topic}: seq {p.seq}, expected {expected}"
        expected = (p.seq + 1) % 256
        if m.kind in ("NBIRTH", "DBIRTH"):
            mine: dict[int, str] = {}
            for x in p.metrics:
                assert x.name and x.HasField("datatype"), "births carry names and datatypes"
                if x.HasField("alias"):
                    others = [a for d, a in bound.items() if d != m.device]
                    assert all(x.alias not in a for a in others), "aliases are unique across the node"
                    mine[x.alias] = x.name
            bound[m.device] = mine
        else:
            assert m.device in bound, f"{m.kind} for {m.device} before its birth"
            for x in p.metrics:
                assert not x.name and x.HasField("alias"), "DATA messages use aliases only"
                assert x.alias in bound[m.device], f"alias {x.alias} not bound by a birth"
                assert not x.HasField("datatype")
    return {a: n for mine in bound.values() for a, n in mine.items()}


SIM_DEVICES: list[dict[str, Any]] = [
    {"name": "boiler", "type": "sim", "tags": [{"name": "pressure", "unit": "bar"}, {"name": "level"}]},
    {"name": "pump", "type": "sim", "tags": [{"name": "speed", "unit": "rpm"}]},
]
# A Modbus device's tags say what they hold (TagBase.value_kind): a coil is a bool, a register a number;
# a sim tag says nothing, so its datatype is learnt from its values.
TYPED_DEVICES: list[dict[str, Any]] = [
    {"name": "plc", "type": "modbus", "host": "127.0.0.1", "port": 1502, "tags": [
        {"name": "running", "address": 0, "table": "coil"},
        {"name": "count", "address": 0, "type": "uint16"},
    ]},
    {"name": "boiler", "type": "sim", "tags": [{"name": "level"}]},
]  # fmt: skip


def check_live_values(msgs: list[Msg]) -> None:
    """From a birth on, per metric: a metric is live exactly when it is newer than the value the host
    holds as current (the born one, then the last live one), so the live tag never goes back. A metric
    born null (nothing known) takes any first value live."""
    held: dict[tuple[str | None, int], int] = {}
    for m in msgs:
        if m.kind in ("NBIRTH", "DBIRTH"):
            for x in m.payload.metrics:
                if x.HasField("alias"):
                    held[(m.device, x.alias)] = -1 if x.is_null else x.timestamp
        elif m.kind in ("NDATA", "DDATA"):
            for x in m.payload.metrics:
                key = (m.device, x.alias)
                if x.is_historical:
                    assert x.timestamp <= held[key], f"{m.topic}: a historical metric newer than the live value"
                else:
                    assert x.timestamp > held[key], f"{m.topic}: a live metric older than the live value"
                    held[key] = x.timestamp


def daemon_config(tmp_path: Path, devices: list[dict[str, Any]] | None = None, **uplink: Any) -> Config:
    return parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp_path)},
            "devices": SIM_DEVICES if devices is None else devices,
            "uplinks": [{"name": "spb", "type": "sparkplug", "group_id": GROUP, **uplink}],
        }
    )


def ctx(cfg: Config, tmp_path: Path, buf: Buffer | None = None) -> PluginContext:
    """As the daemon builds it: with `buf`, `latest` reads each tag's newest stored sample."""

    async def latest() -> list[Sample]:
        assert buf is not None
        return await buf.call(buf.store.latest)

    return PluginContext(
        GW, tmp_path, logging.getLogger("test.sparkplug"), config=cfg, latest=latest if buf is not None else None
    )


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The shared broker, also queueing QoS 0 for the (persistent) test host across its reconnects."""
    mosquitto.conf.write_text(mosquitto.conf.read_text() + "queue_qos0_messages true\n")
    mosquitto.restart()
    return mosquitto


@contextlib.asynccontextmanager
async def host_and_node(
    tmp_path: Path, port: int, *, batch_size: int = 500, devices: list[dict[str, Any]] | None = None, **uplink: Any
) -> AsyncIterator[tuple[Host, Buffer, Sender, asyncio.TaskGroup]]:
    cfg = daemon_config(tmp_path, devices, port=port, batch_size=batch_size, timeout="2s", **uplink)
    up = cfg.uplinks[0]
    assert isinstance(up, SpConfig)
    host = Host(port)
    buf = Buffer(tmp_path / "buffer.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
    async with buf, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(host.run(), name="host")]
        await eventually(host.connected.is_set, 15, "the test host")
        sender = Sender(
            buf, up, lambda: SpUplink(up, ctx(cfg, tmp_path, buf)), gateway_id=GW, log=logging.getLogger("test"),
            backoff=Backoff(initial=0.1, cap=0.3),
        )  # fmt: skip
        tasks += [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
        try:
            yield host, buf, sender, tg
        finally:
            for t in tasks:
                t.cancel()
            # bounded, so a cancellation lost inside the uplink fails here instead of hanging the run
            _, stuck = await asyncio.wait(tasks, timeout=15)
            assert not stuck, f"still running 15 s after cancel: {[(t.get_name(), t.cancelling()) for t in stuck]}"


async def produce(buf: Buffer, tags: list[str], rate_hz: float, stop: asyncio.Event, counter: list[int]) -> None:
    """Each tag's value counts up (as a float), so completeness can be checked per tag. Returns once
    all of them are committed (`Buffer.flush` returns at once while the writer's flush is under way, so
    a test's catch-up check could otherwise pass before the last ones are in the buffer)."""
    put = 0
    target = buf.stored
    while not stop.is_set():
        buf.put([Sample(t, time.time_ns(), float(counter[0])) for t in tags])
        counter[0] += 1
        put += len(tags)
        await asyncio.sleep(1 / rate_hz)
    await buf.flush()
    await eventually(lambda: buf.stored >= target + put, 15, "the produced samples committed")


def values(host: Host, alias_names: dict[int, str], *, historical: bool | None = None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for m in host.of("DDATA"):
        for x in m.payload.metrics:
            if historical is None or x.is_historical is historical:
                out.setdefault(f"{m.device}/{alias_names[x.alias]}", []).append(x.double_value)
    return out


# ----------------------------------------------------------------------------------------- session


async def test_births_data_aliases_and_quality(tmp_path: Path, broker: Mosquitto) -> None:
    async with host_and_node(tmp_path, broker.port) as (host, buf, _, _tg):
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        ts = time.time_ns()
        buf.put([
            Sample("boiler/pressure", ts, 12.5, Status.GOOD, 100, "bar"),
            Sample("pump/speed", ts, 1500, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 60, "rpm"),
            Sample("boiler/level", ts + 10**6, None, Status.BAD_SENSOR_FAILURE, 0),
        ])  # fmt: skip
        await eventually(lambda: len(host.of("DDATA")) == 2, 15, "data")
    nbirth, *_ = host.of("NBIRTH")
    assert host.messages[0] is nbirth and nbirth.qos == 0 and not nbirth.retain
    assert nbirth.topic == f"{NAMESPACE}/{GROUP}/NBIRTH/{GW}"
    bd = metric(nbirth.payload, "bdSeq")
    assert (bd.datatype, bd.long_value, bd.HasField("alias")) == (pb.Int64, 0, False), "first session: bdSeq 0"
    rebirth = metric(nbirth.payload, "Node Control/Rebirth")
    assert (rebirth.datatype, rebirth.boolean_value, rebirth.HasField("alias")) == (pb.Boolean, False, False)
    gap = metric(nbirth.payload, "edged/gap")
    assert gap.HasField("alias") and gap.datatype == pb.Int64
    births = {m.device: m.payload for m in host.of("DBIRTH")}
    assert set(births) == {"boiler", "pump"}
    assert [x.name for x in births["boiler"].metrics] == ["pressure", "level"]
    pressure = metric(births["boiler"], "pressure")
    assert pressure.is_null and pressure.datatype == pb.Double, "no value known yet: null"
    assert props(pressure) == {"engUnit": (pb.String, "bar")}
    names = check_session_rules(host.messages)
    data = {m.device: m.payload for m in host.of("DDATA")}
    p, lvl = data["boiler"].metrics
    assert (names[p.alias], p.double_value, p.timestamp, p.is_historical) == ("pressure", 12.5, ts // 10**6, False)
    assert props(p) == {"Quality": (pb.Int32, 192), "OpcUaStatusCode": (pb.UInt32, 0)}
    assert names[lvl.alias] == "level" and lvl.is_null
    assert props(lvl) == {"Quality": (pb.Int32, 0), "OpcUaStatusCode": (pb.UInt32, Status.BAD_SENSOR_FAILURE)}
    (speed,) = data["pump"].metrics
    assert (names[speed.alias], speed.double_value) == ("speed", 1500.0), "an int fits the Double birth type"
    assert props(speed)["Quality"] == (pb.Int32, 64)
    assert all(m.qos == 0 and not m.retain for m in host.messages), "Sparkplug: births and data QoS 0, not retained"


async def test_new_tag_or_type_is_announced_by_a_rebirth(tmp_path: Path, broker: Mosquitto) -> None:
    async with host_and_node(tmp_path, broker.port) as (host, buf, _, _tg):
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        buf.put([Sample("boiler/level", time.time_ns(), True), Sample("uptime", time.time_ns(), 42)])
        await eventually(lambda: host.of("NDATA"), 15, "node data")
        assert len(host.of("NBIRTH")) == 2, "one rebirth announced both changes"
        for n, v in enumerate(("ERR", False, 3.5), start=2):  # mixed types: a String once, not a rebirth per flip
            buf.put([Sample("boiler/level", time.time_ns(), v)])  # one batch each
            await eventually(lambda n=n: len(host.of("DDATA")) == n, 15, f"mixed value {v!r}")
    nbirths = host.of("NBIRTH")
    assert len(nbirths) == 3
    mixed = [m for m in host.of("DBIRTH") if m.device == "boiler"][-1]
    assert metric(mixed.payload, "level").datatype == pb.String
    assert [x.string_value for m in host.of("DDATA")[1:] for x in m.payload.metrics] == ["ERR", "False", "3.5"]
    uptime = metric(nbirths[1].payload, "uptime")
    assert uptime.datatype == pb.Int64, "a tag without a device is a node metric"
    boiler = [m for m in host.of("DBIRTH") if m.device == "boiler"][1]
    assert metric(boiler.payload, "level").datatype == pb.Boolean
    names = check_session_rules(host.messages[: host.messages.index(nbirths[2])])
    check_session_rules(host.messages)
    (lvl,) = host.of("DDATA")[0].payload.metrics
    assert (names[lvl.alias], lvl.boolean_value) == ("level", True)
    (up,) = host.of("NDATA")[0].payload.metrics
    assert (names[up.alias], up.long_value) == ("uptime", 42)
    aliases = {x.name: x.alias for m in host.of("NBIRTH", "DBIRTH") for x in m.payload.metrics if x.HasField("alias")}
    assert len(set(aliases.values())) == len(aliases), "aliases are unique across the node"


async def test_seq_wraps_from_255_to_0(tmp_path: Path, broker: Mosquitto) -> None:
    async with host_and_node(tmp_path, broker.port, batch_size=1) as (host, buf, _, _tg):
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        for i in range(300):
            buf.put([Sample("boiler/pressure", time.time_ns(), float(i))])
            if i % 50 == 0:
                await buf.flush()
        await eventually(lambda: len(host.of("DDATA")) == 300, 20, "300 DDATA")
    check_session_rules(host.messages)
    seqs = [m.payload.seq for m in host.of("NBIRTH", "DBIRTH", "DDATA")]
    assert seqs[:3] == [0, 1, 2] and seqs[255:258] == [255, 0, 1], "wraps 255 -> 0 without a new NBIRTH"
    assert [x.double_value for m in host.of("DDATA") for x in m.payload.metrics] == [float(i) for i in range(300)]


async def test_rebirth_on_ncmd(tmp_path: Path, broker: Mosquitto) -> None:
    async with host_and_node(tmp_path, broker.port) as (host, buf, _, _tg):
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        ts = time.time_ns()
        buf.put([Sample("boiler/pressure", ts, 7.25, unit="bar"), Sample("pump/speed", ts, 10.0)])
        await eventually(lambda: len(host.of("DDATA")) == 2, 15, "data")
        ncmd = f"{NAMESPACE}/{GROUP}/NCMD/{GW}"
        await host.publish(ncmd, b"\xff\x00 not protobuf")  # ignored, logged
        cmd = pb.Payload(timestamp=int(time.time() * 1000))
        cmd.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
        await host.publish(ncmd, cmd.SerializeToString())
        await eventually(
            lambda: len(host.of("DBIRTH")) == 4, 15, "rebirth (at most rebirth_min_interval after the birth)"
        )
        buf.put([Sample("boiler/pressure", time.time_ns(), 7.5)])
        await eventually(lambda: len(host.of("DDATA")) == 3, 15, "data after the rebirth")
    first, second = host.of("NBIRTH")
    assert metric(second.payload, "bdSeq").long_value == metric(first.payload, "bdSeq").long_value, "same session"
    check_session_rules(host.messages)
    boiler = [m for m in host.of("DBIRTH") if m.device == "boiler"][-1]
    pressure = metric(boiler.payload, "pressure")
    assert (pressure.double_value, pressure.timestamp) == (7.25, ts // 10**6), "births carry the latest value"
    assert props(pressure)["Quality"] == (pb.Int32, 192)
    assert host.of("DDATA")[-1].payload.seq == 3, "NBIRTH 0, DBIRTH 1-2, then DDATA 3"


# ----------------------------------------------------------------------------------------- death and bdSeq

NODE_SCRIPT = """
import asyncio, logging, sys
from pathlib import Path
from edged.plugin import PluginContext
from uplink.sparkplug import Config, Uplink

async def main() -> None:
    cfg = Config(name="spb", type="sparkplug", group_id="plant", port=int(sys.argv[1]))
    async with Uplink(cfg, PluginContext("gw-test", Path(sys.argv[2]), logging.getLogger("node"))):
        print("born", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_will_ndeath_on_abrupt_death_and_bdseq_across_restarts(tmp_path: Path, broker: Mosquitto) -> None:
    host = Host(broker.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(host.run(), name="host")
        await eventually(host.connected.is_set, 15, "the test host")
        for run in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", NODE_SCRIPT, str(broker.port), str(tmp_path), stdout=asyncio.subprocess.PIPE
            )
            try:
                assert proc.stdout is not None
                assert (await proc.stdout.readline()).strip() == b"born"
                await eventually(lambda r=run: len(host.of("NBIRTH")) == r + 1, 15, "NBIRTH")
            finally:
                proc.kill()  # SIGKILL: no NDEATH of its own, no DISCONNECT: the broker sends the Will
                await proc.wait()
            await eventually(lambda r=run: len(host.of("NDEATH")) == r + 1, 15, "the Will")
        task.cancel()
    births, deaths = host.of("NBIRTH"), host.of("NDEATH")
    assert [metric(m.payload, "bdSeq").long_value for m in births] == [0, 1], "bdSeq persisted and incremented"
    assert [metric(m.payload, "bdSeq").long_value for m in deaths] == [0, 1], "each NDEATH matches its NBIRTH"
    for d in deaths:
        assert not d.payload.HasField("seq"), "NDEATH has no seq"
        assert d.qos == 1 and not d.retain
    assert (tmp_path / "sparkplug-spb.bdseq").read_text().strip() == "1"


async def test_clean_close_publishes_ndeath_itself(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = SpConfig(name="spb", type="sparkplug", group_id=GROUP, port=broker.port)
    host = Host(broker.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(host.run(), name="host")
        await eventually(host.connected.is_set, 15, "the test host")
        async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))):
            await eventually(lambda: host.of("NBIRTH"), 15, "NBIRTH")
        await eventually(lambda: host.of("NDEATH"), 15, "NDEATH")
        await host.marker()  # a Will would have come before it
        task.cancel()
    (death,) = host.of("NDEATH")  # published before DISCONNECT, so the broker drops the Will
    assert metric(death.payload, "bdSeq").long_value == 0


async def test_broker_restart_new_session_and_no_loss(tmp_path: Path, broker: Mosquitto) -> None:
    stop, counter = asyncio.Event(), [0]
    tags = ["boiler/pressure", "pump/speed"]
    async with host_and_node(tmp_path, broker.port, batch_size=50) as (host, buf, sender, tg):
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        prod = tg.create_task(produce(buf, tags, 50, stop, counter), name="producer")
        await eventually(lambda: len(host.of("DDATA")) > 5, 15, "live data")
        bd0 = metric(host.of("NBIRTH")[0].payload, "bdSeq").long_value
        broker.restart()
        await eventually(lambda: len(host.of("NBIRTH")) >= 2, 15, "a new session")
        reborn_at = len(host.messages)
        await eventually(lambda: len([m for m in host.messages[reborn_at:] if m.kind == "DDATA"]) > 5, 15,
                         "live data in the new session")  # fmt: skip
        stop.set()
        await prod
        await eventually(lambda: not buf.store.unacked("spb", buf.head) and sender.stats.sent_live > 0, 15, "catch-up")
        await host.marker()  # QoS 0 is acknowledged once written: let the host receive the last ones
    bd1 = metric(host.of("NBIRTH")[-1].payload, "bdSeq").long_value
    assert bd1 != bd0, "a new CONNECT, a new bdSeq"
    reborn = [m for m in host.of("DBIRTH") if m.device == "boiler"][-1]
    assert not metric(reborn.payload, "pressure").is_null, "the new session's births carry the last values"
    assert host.of("NBIRTH")[-1].payload.seq == 0
    names = check_session_rules(host.messages[host.messages.index(host.of("NBIRTH")[-1]) :])
    names.update(check_session_rules(host.messages[: host.messages.index(host.of("NBIRTH")[1])]))
    got = values(host, names)
    for t in tags:
        assert set(got[t]) == {float(i) for i in range(counter[0])}, f"{t}: every value arrived"


async def test_idle_node_rebirths_after_a_broker_restart(tmp_path: Path, broker: Mosquitto) -> None:
    """No data flowing: the Sender notices the dead session on its own and the node is born again."""
    async with host_and_node(tmp_path, broker.port) as (host, _buf, sender, _tg):
        await eventually(lambda: len(host.of("NBIRTH")) == 1, 15, "the first birth")
        broker.restart()
        await eventually(lambda: len(host.of("NBIRTH")) >= 2, 15, "a new birth without any new sample")
        # the NBIRTH is published inside the uplink's __aenter__, before the Sender counts the connect
        await eventually(lambda: sender.stats.connects >= 2, 15, "the Sender's second connect")


async def test_a_cancel_aiomqtt_swallows_while_reconnecting_still_stops_the_sender(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hang of a Sender cancelled during a reconnect, made deterministic. On 3.11 aiomqtt's
    `asyncio.wait_for` returns the CONNACK instead of raising when the cancel lands in the same loop
    iteration the CONNACK arrives in: the Sender then sat in `Buffer.wait_beyond` forever with
    `cancelling() == 2`. The cancel is injected at exactly that moment (a done callback on aiomqtt's
    connect future, which runs before wait_for's own); the uplink must re-raise it."""
    real_connect = aiomqtt.Client.__aenter__
    armed: list[asyncio.Task[Any]] = []

    async def connect(client: aiomqtt.Client) -> aiomqtt.Client:
        if armed and client.identifier.startswith("edged-"):
            victim = armed.pop()
            client._connected.add_done_callback(lambda _: victim.cancel())
        return await real_connect(client)

    monkeypatch.setattr(aiomqtt.Client, "__aenter__", connect)
    async with host_and_node(tmp_path, broker.port) as (host, _buf, _sender, _tg):
        await eventually(lambda: len(host.of("NBIRTH")) == 1, 15, "the first birth")
        (sender_task,) = [t for t in asyncio.all_tasks() if t.get_name() == "sender"]
        armed.append(sender_task)
        broker.restart()
        await eventually(lambda: not armed, 15, "the reconnect")
        await eventually(sender_task.done, 15, "the Sender to stop on the cancel that came with the CONNACK")
        assert sender_task.cancelled()
        await host.marker()
    assert len(host.of("NBIRTH")) == 1, "no birth after the cancel"


# ----------------------------------------------------------------------------------------- primary host


def node_log(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == "test.sparkplug")


async def test_store_and_forward_while_primary_host_offline(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.sparkplug")
    waiting = "waiting for primary host scada to be online"
    stop, counter = asyncio.Event(), [0]
    tags = ["boiler/pressure", "pump/speed"]
    async with host_and_node(tmp_path, broker.port, primary_host_id="scada") as (host, buf, sender, tg):
        await eventually(lambda: node_log(caplog, waiting) >= 1, 15, "the node connected, waiting for the host")
        await host.marker()
        assert not host.of("NBIRTH"), "no birth before the primary host is online"
        await host.state(True, 1000)
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        prod = tg.create_task(produce(buf, tags, 40, stop, counter), name="producer")
        await eventually(lambda: len(host.of("DDATA")) >= 4, 15, "live data")

        await host.state(False, 2000)
        await eventually(lambda: host.of("NDEATH"), 15, "NDEATH on host offline")
        offline_at = len(host.messages)
        await eventually(lambda: node_log(caplog, waiting) >= 2, 15, "a new session waiting for the host")
        stale = json.dumps({"online": True, "timestamp": 1500}).encode()
        await host.publish(f"{NAMESPACE}/STATE/scada", stale)  # older than the offline STATE: ignored
        await eventually(lambda: node_log(caplog, "STATE older than the last one ignored") >= 1, 15, "stale STATE")
        await host.marker()
        others = [m for m in host.messages[offline_at:] if m.kind not in ("STATE", "MARKER")]
        assert not others, "nothing published while offline"
        assert buf.store.unacked("spb", buf.head), "the data waits in the buffer"

        await host.state(True, 3000)
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "births after the host is back")
        back_at = len(host.messages)
        await eventually(lambda: len([m for m in host.messages[back_at:] if m.kind == "DDATA"]) >= 4, 15,
                         "live data after the host is back")  # fmt: skip
        stop.set()
        await prod
        await eventually(lambda: not buf.store.unacked("spb", buf.head), 15, "catch-up")
        await host.marker()
    first, second = host.of("NBIRTH")
    (death,) = host.of("NDEATH")
    bd = metric(first.payload, "bdSeq").long_value
    assert metric(death.payload, "bdSeq").long_value == bd
    assert metric(second.payload, "bdSeq").long_value == (bd + 1) % 256
    i2 = host.messages.index(second)
    names = check_session_rules(host.messages[:i2])
    names.update(check_session_rules(host.messages[i2:]))
    historical = values(host, names, historical=True)
    assert historical, "the offline period came back as historical data"
    check_live_values(host.messages[i2:])
    got = values(host, names)
    for t in tags:
        assert set(got[t]) == {float(i) for i in range(counter[0])}, f"{t}: every value arrived"
    assert sender.stats.errors >= 1


async def test_births_after_the_host_returns_carry_the_newest_buffered_values(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A value that changed while the host was away reaches it in the DBIRTH (with its own timestamp),
    not only as history: a host files historical metrics without touching the live value."""
    caplog.set_level(logging.INFO, logger="test.sparkplug")
    waiting = "waiting for primary host scada to be online"
    async with host_and_node(tmp_path, broker.port, primary_host_id="scada") as (host, buf, _sender, _tg):
        await host.state(True, 1000)
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        t0 = time.time_ns()
        buf.put([Sample("boiler/pressure", t0, 1.0, unit="bar")])
        await eventually(lambda: host.of("DDATA"), 15, "the first value, live")
        await host.state(False, 2000)
        await eventually(lambda: host.of("NDEATH") and node_log(caplog, waiting) >= 2, 15, "a session waiting again")
        t1 = time.time_ns()
        buf.put([Sample("boiler/pressure", t1, 2.0, unit="bar"), Sample("boiler/pressure", t1 + 10**6, 3.0, unit="bar"),
                 Sample("pump/speed", t1, 1500.0, Status.UNCERTAIN, 50, "rpm")])  # fmt: skip
        await buf.flush()
        await host.state(True, 3000)
        await eventually(lambda: len(host.of("DBIRTH")) == 4, 15, "births after the host is back")
        await eventually(lambda: not buf.store.unacked("spb", buf.head), 15, "the replay")
        await host.marker()
    second = host.of("NBIRTH")[1]
    reborn = {m.device: m.payload for m in host.of("DBIRTH")[2:]}
    pressure, speed = metric(reborn["boiler"], "pressure"), metric(reborn["pump"], "speed")
    assert (pressure.double_value, pressure.timestamp) == (3.0, (t1 + 10**6) // 10**6), "the newest, not 1.0"
    assert props(pressure)["Quality"] == (pb.Int32, 192)
    assert (speed.double_value, speed.timestamp, props(speed)["Quality"]) == (1500.0, t1 // 10**6, (pb.Int32, 64))
    names = check_session_rules(host.messages[host.messages.index(second) :])
    check_live_values(host.messages[host.messages.index(second) :])
    replay = [
        (names[x.alias], x.double_value, x.is_historical) for m in host.of("DDATA")[1:] for x in m.payload.metrics
    ]
    assert sorted(replay) == [("pressure", 2.0, True), ("pressure", 3.0, True), ("speed", 1500.0, True)], (
        "the replay is history only: the live values are the born ones"
    )


async def test_a_fresh_start_is_born_once_with_datatypes_from_the_config(tmp_path: Path, broker: Mosquitto) -> None:
    """A coil Bad at start is born Boolean (null, with its quality), a register Double: the first
    values fit, so no second NBIRTH/DBIRTH follows them."""
    ts = time.time_ns()
    async with host_and_node(tmp_path, broker.port, devices=TYPED_DEVICES) as (host, buf, sender, _tg):
        buf.put([Sample("plc/running", ts, None, Status.BAD_NO_COMMUNICATION, 0),
                 Sample("plc/count", ts, None, Status.BAD_NO_COMMUNICATION, 0)])  # fmt: skip
        await eventually(lambda: host.of("DBIRTH"), 15, "births")
        await eventually(lambda: not buf.store.unacked("spb", buf.head), 15, "the Bad samples delivered")
        buf.put([Sample("plc/running", ts + 10**6, True), Sample("plc/count", ts + 10**6, 7)])
        await eventually(lambda: sum(not x.is_null for m in host.of("DDATA") if m.device == "plc"
                                     for x in m.payload.metrics) >= 2, 15, "the first good values")  # fmt: skip
        await host.marker()
        assert sender.stats.sent_live >= 2
    assert len(host.of("NBIRTH")) == 1, "born once"
    assert sorted(m.device for m in host.of("DBIRTH")) == ["boiler", "plc"], "one DBIRTH per device"
    (plc,) = [m.payload for m in host.of("DBIRTH") if m.device == "plc"]
    running, count = metric(plc, "running"), metric(plc, "count")
    assert (running.datatype, count.datatype) == (pb.Boolean, pb.Double)
    assert running.is_null and count.is_null
    if props(running):  # the birth found the Bad sample in the buffer: its quality is born with it
        assert props(running)["OpcUaStatusCode"] == (pb.UInt32, Status.BAD_NO_COMMUNICATION)
    live = [x for m in host.of("DDATA") if m.device == "plc" for x in m.payload.metrics]
    names = check_session_rules(host.messages)
    got = {names[x.alias]: x.boolean_value if names[x.alias] == "running" else x.double_value for x in live
           if not x.is_null}  # fmt: skip
    assert got == {"running": True, "count": 7.0}


async def test_datatypes_are_the_same_after_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    """Config datatypes never move; a learnt one (a sim tag: no kind in its config) is kept in the
    state file, so a tag born Double with an int value is not born Int64 after a restart."""
    births: list[dict[str, int]] = []
    for run in range(2):
        async with host_and_node(tmp_path, broker.port, devices=TYPED_DEVICES) as (host, buf, _sender, _tg):
            await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, f"births of run {run}")
            ts = time.time_ns()
            buf.put([Sample("boiler/level", ts, 5 + run), Sample("plc/running", ts, bool(run)),
                     Sample("plc/count", ts, 3 + run)])  # fmt: skip
            await eventually(lambda: len(host.of("DDATA")) == 2 and not buf.store.unacked("spb", buf.head), 15,
                             f"data of run {run}")  # fmt: skip
            await host.marker()
            assert len(host.of("NBIRTH")) == 1, f"run {run}: born once"
            births.append({f"{m.device}/{x.name}": x.datatype for m in host.of("DBIRTH") for x in m.payload.metrics})
            # the next run's birth takes the newest values from the buffer: an int for the learnt tag
            assert (tmp_path / "sparkplug-spb.state.json").exists()
    assert births[0] == births[1] == {"plc/running": pb.Boolean, "plc/count": pb.Double, "boiler/level": pb.Double}


# ----------------------------------------------------------------------------------------- QoS 0 confirmation


async def test_data_unconfirmed_when_the_broker_dies_arrives_as_history_after_the_reconnect(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QoS 0 has no acknowledgement: data the node wrote to a broker that then died (frozen with
    SIGSTOP, so nothing it was sent is read, then SIGKILLed) must not count as delivered. The node
    confirms each batch with an UNSUBACK; the unconfirmed ones come again, as history, after the
    reconnect, and the DBIRTH carries the newest value."""
    stop, counter = asyncio.Event(), [0]
    tags = ["boiler/pressure"]
    unconfirmed: list[Batch] = []  # published to the frozen broker, then not confirmed
    real_send = SpUplink.send

    async def send(self: SpUplink, batch: Batch) -> None:
        try:
            await real_send(self, batch)
        except Transient as exc:
            if "did not confirm" in str(exc):
                unconfirmed.append(batch)
            raise

    monkeypatch.setattr(SpUplink, "send", send)
    async with host_and_node(tmp_path, broker.port, batch_size=20, primary_host_id="scada") as (host, buf, sender, tg):
        await host.state(True, 1000)
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births")
        prod = tg.create_task(produce(buf, tags, 50, stop, counter), name="producer")
        await eventually(lambda: len(host.of("DDATA")) >= 5, 15, "live data")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # reads nothing from now on
        frozen_at = counter[0]
        await eventually(lambda: counter[0] >= frozen_at + 100, 15, "two more seconds of data")
        stop.set()
        await prod
        received_before = {x.double_value for m in host.of("DDATA") for x in m.payload.metrics}
        broker.proc.kill()  # SIGKILL: what sat in its socket buffers is gone
        broker.proc.wait()
        broker.proc = None
        connects = host.connects
        broker.start()
        await eventually(lambda: host.connects > connects, 15, "the host back on the new broker")
        await host.state(True, 3000)  # the retained STATE died with the broker
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "a new session")
        await eventually(lambda: not buf.store.unacked("spb", buf.head), 15, "the replay")
        await host.marker()
        confirmations = sender.tally.totals()["data_confirmations"]
    second = host.of("NBIRTH")[1]
    i2 = host.messages.index(second)
    names = check_session_rules(host.messages[:i2])
    names.update(check_session_rules(host.messages[i2:]))
    assert set(values(host, names)[tags[0]]) == {float(i) for i in range(counter[0])}, "every value arrived"
    check_live_values(host.messages[i2:])
    after = [
        (x.double_value, x.is_historical) for m in host.messages[i2:] if m.kind == "DDATA" for x in m.payload.metrics
    ]
    assert unconfirmed, "the node wrote a batch the frozen broker never read"
    in_flight = {s.value for s in unconfirmed[0].samples}
    assert not in_flight & received_before, "it died with the broker"
    assert in_flight <= {v for v, hist in after if hist}, "the unconfirmed batch came again, as history"
    unsent = {float(i) for i in range(frozen_at, counter[0])} - received_before
    assert unsent <= {v for v, hist in after if hist}, "everything since the freeze came as history"
    boiler = [m for m in host.of("DBIRTH") if m.device == "boiler"][-1]
    assert metric(boiler.payload, "pressure").double_value == float(counter[0] - 1), "born with the newest"
    assert confirmations >= len(host.of("DDATA")) // 2, "a confirmation per batch"


async def test_a_batch_is_acknowledged_only_after_the_broker_confirmed_it(tmp_path: Path, broker: Mosquitto) -> None:
    """Direct: with the broker frozen, `send` does not return; it raises Transient after `timeout`,
    and so does every send overlapping it (as a Sender with a window of batches would call them)."""
    cfg = SpConfig(name="spb", type="sparkplug", group_id=GROUP, port=broker.port, timeout=Duration(1.0))

    def batch(seq: int) -> Batch:
        return Batch(GW, seq, seq, False, [Sample("boiler/pressure", time.time_ns(), float(seq), seq=seq)])

    async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))) as up:
        await up.send(batch(1))
        assert up.counters()["data_confirmations"] == 1
        await asyncio.gather(*(up.send(batch(n)) for n in range(2, 6)))  # overlapping: each confirmed
        assert 2 <= up.counters()["data_confirmations"] <= 5
        assert up.session.confirmed_bytes == up.session.published_bytes
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(up.send(batch(n)) for n in range(6, 9)), return_exceptions=True)
            assert all(isinstance(r, Transient) for r in results), results
            assert "did not confirm" in str(results[0])
            assert time.monotonic() - started >= 0.9, "waited for the confirmation"
            assert up.is_closed(), "the session is over: the Sender reconnects and sends them again"
        finally:
            broker.proc.send_signal(signal.SIGCONT)


# ----------------------------------------------------------------------------------------- UInt32 encoding


def wire(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Protobuf wire format decoded by hand (varint and length-delimited fields only, which is all
    Sparkplug payloads here use besides fixed64 doubles): an independent check of the encoding."""
    out: list[tuple[int, int | bytes]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(buf):
        key = varint()
        field_no, kind = key >> 3, key & 7
        if kind == 0:
            out.append((field_no, varint()))
        elif kind == 2:
            n = varint()
            out.append((field_no, buf[i : i + n]))
            i += n
        elif kind == 1:
            out.append((field_no, buf[i : i + 8]))
            i += 8
        else:
            raise AssertionError(f"wire type {kind} not expected")
    return out


@pytest.mark.parametrize(
    ("setting", "golden"),
    [
        (None, bytes.fromhex("0807 20 8080b08408")),  # default: long_value (field 4), as Tahu and Ignition read it
        ("long_value", bytes.fromhex("0807 20 8080b08408")),
        ("int_value", bytes.fromhex("0807 18 8080b08408")),  # the specification's uint32 field (3)
    ],
)
async def test_uint32_status_code_field(tmp_path: Path, broker: Mosquitto, setting: str | None, golden: bytes) -> None:
    """OpcUaStatusCode (UInt32 = 7) 0x808C0000 is the varint 80 80 B0 84 08, in long_value or int_value."""
    extra = {} if setting is None else {"uint32_field": setting}
    cfg = SpConfig(name="spb", type="sparkplug", group_id=GROUP, port=broker.port, **extra)  # type: ignore[arg-type]
    host = Host(broker.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(host.run(), name="host")
        await eventually(host.connected.is_set, 15, "the test host")
        async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))) as up:
            bad = Sample("boiler/pressure", time.time_ns(), None, Status.BAD_SENSOR_FAILURE, 0, seq=1)
            await up.send(Batch(GW, 1, 1, False, [bad]))
            await eventually(lambda: host.of("DDATA"), 15, "data")
        task.cancel()
    (ddata,) = host.of("DDATA")
    metrics = [v for f, v in wire(ddata.raw) if f == 2]  # Payload.metrics
    assert len(metrics) == 1 and isinstance(metrics[0], bytes)
    (props_raw,) = [v for f, v in wire(metrics[0]) if f == 9]  # Metric.properties
    assert isinstance(props_raw, bytes)
    fields = wire(props_raw)
    assert [v for f, v in fields if f == 1] == [b"Quality", b"OpcUaStatusCode"]  # PropertySet.keys
    quality, status = (v for f, v in fields if f == 2)  # PropertySet.values
    assert quality == bytes.fromhex("0803 1800"), "Int32 (3) 0 in int_value: Bad in opc_da codes"
    assert status == golden
    assert dict(wire(status)) == {1: 7, 4 if golden[2] == 0x20 else 3: 0x808C0000}
    decoded = props(ddata.payload.metrics[0])["OpcUaStatusCode"]  # and the protobuf library agrees
    assert decoded == (pb.UInt32, 0x808C0000)


# ----------------------------------------------------------------------------------------- direct


async def test_gaps_and_ignition_quality_codes(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = SpConfig(name="spb", type="sparkplug", group_id=GROUP, port=broker.port, quality_codes="ignition8")
    host = Host(broker.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(host.run(), name="host")
        await eventually(host.connected.is_set, 15, "the test host")
        async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))) as up:
            ts = time.time_ns()
            await up.send(Batch(GW, 5, 9, True, [], [Gap(5, 9, ts - 10**9, ts, 5)]))
            bad = Sample("boiler/pressure", ts, 1.0, Status.BAD, 0, seq=10)
            await up.send(
                Batch(GW, 10, 11, False, [bad, Sample("boiler/pressure", ts, 2.0, Status.UNCERTAIN, 0, seq=11)])
            )
            await eventually(lambda: host.of("DDATA"), 15, "data")
        task.cancel()
    names = check_session_rules(host.messages)
    (gap,) = host.of("NDATA")[0].payload.metrics
    assert names[gap.alias] == "edged/gap" and gap.long_value == 5
    assert props(gap) == {
        "lo_seq": (pb.UInt64, 5), "hi_seq": (pb.UInt64, 9),
        "lo_ts": (pb.DateTime, (ts - 10**9) // 10**6), "hi_ts": (pb.DateTime, ts // 10**6),
    }  # fmt: skip
    bad, unc = host.of("DDATA")[0].payload.metrics
    assert props(bad)["Quality"] == (pb.Int32, 0x80000200), "Ignition 8 Bad (-2147483136 as Int32)"
    assert props(unc)["Quality"] == (pb.Int32, 0x40000100)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, r"uplinks\[0\] \(spb\): missing required key `group_id`"),
        ({"group_id": "a/b"}, "group_id 'a/b' must be non-empty without"),
        ({"group_id": "g", "primary_host_id": "h#"}, "primary_host_id"),
        ({"group_id": "g", "edge_node_id": ""}, "edge_node_id"),
        ({"group_id": "g", "data_qos": 2}, r"data_qos"),
        ({"group_id": "g", "ca_file": "/x"}, "tls = false"),
    ],
)
def test_config_errors_name_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"uplinks": [{"name": "spb", "type": "sparkplug", **entry}]})


def test_sample_config_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    (tmp_path / "mqtt-password").write_text("pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    raw = tomllib.loads((Path(__file__).parents[2] / "uplink/sparkplug/sample.toml").read_text())
    assert [u.type for u in parse(raw, base_dir=Path("/tmp")).uplinks] == ["sparkplug"]


# ----------------------------------------------------------------------------------------- commands (DCMD/NCMD)

SP, MODE, PRESSURE = 0, 2, 3  # holding registers of the press
DCMD = f"{NAMESPACE}/{GROUP}/DCMD/{GW}/press"
NCMD = f"{NAMESPACE}/{GROUP}/NCMD/{GW}"


def f32(value: float) -> list[int]:
    """A float32 as two registers, most significant word first (written independently of the codec)."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


@pytest.fixture
async def press() -> AsyncIterator[ModbusPeer]:
    unit = Unit(1, holding={SP: f32(110.0)[0], SP + 1: f32(110.0)[1], MODE: 1, PRESSURE: 77})
    unit.coils = {0: False}
    peer = ModbusPeer([unit])
    await peer.start_tcp(0)
    try:
        yield peer
    finally:
        await peer.stop()


def press_state(peer: ModbusPeer) -> tuple[list[int], list[int]]:
    return peer.registers(1, "h", 0, 4), peer.registers(1, "c", 0)


def command_config(
    tmp_path: Path, broker_port: int, modbus_port: int, device_timeout: str = "500ms", *, spb_allowed: bool = True,
    commands_enabled: bool = True, **uplink: Any,
) -> Config:  # fmt: skip
    sources = ["spb"] if spb_allowed else ["cloud"]
    uplink.setdefault("rebirth_min_interval", "0s")
    return parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp_path)},
            "devices": [
                {
                    "name": "press", "type": "modbus", "host": "127.0.0.1", "port": modbus_port,
                    "timeout": device_timeout, "retries": 0,
                    "tags": [
                        {"name": "setpoint", "address": SP, "type": "float32", "writable": True, "unit": "bar"},
                        {"name": "mode", "address": MODE, "writable": True},
                        {"name": "pressure", "address": PRESSURE},
                        {"name": "pump", "address": 0, "table": "coil", "writable": True},
                    ],
                },
            ],
            "uplinks": [
                {"name": "spb", "type": "sparkplug", "group_id": GROUP, "port": broker_port, "timeout": "2s",
                 "primary_host_id": "scada", **uplink},
                {"name": "cloud", "type": "mqtt", "port": broker_port},
            ],
            "commands": {
                "enabled": commands_enabled,
                "max_age": "30s",
                "timeout": "3s",
                "tags": [
                    {"tag": "press/setpoint", "sources": sources, "min": 0.0, "max": 150.0},
                    {"tag": "press/mode", "sources": ["cloud"], "allowed": [0, 1, 2]},  # not this uplink
                    {"tag": "press/pump", "sources": sources},
                ],
            },
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def gated_node(
    tmp_path: Path,
    broker: Mosquitto,
    peer: ModbusPeer,
    *,
    with_gate: bool = True,
    retained: bytes | None = None,
    device_timeout: str = "500ms",
    while_offline: Callable[[Host, Store], Awaitable[None]] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Host, Store, SpUplink]]:
    """A Sparkplug node (primary host "scada" online) whose writes go through a gate in front of a
    really connected Modbus driver, auditing into a real buffer file; a host recording everything.
    `retained`: a DCMD left retained on the broker, handed to the node when it subscribes.
    `while_offline`: runs while the node waits for the primary host, and must bring it online.
    `options`: for command_config (spb_allowed, uplink keys)."""
    cfg = command_config(tmp_path, broker.port, peer.port, device_timeout, **options)
    up = cfg.uplinks[0]
    assert isinstance(up, SpConfig)
    host = Host(broker.port)
    log = logging.getLogger("test.sparkplug.commands")
    with Store(tmp_path / "buffer.db") as store:
        async with ModbusDriver(cfg.devices[0], PluginContext(GW, tmp_path, log)) as drv:  # type: ignore[arg-type]

            async def lookup(name: str) -> ModbusDriver | None:
                return drv if name == "press" else None

            extra: dict[str, Any] = {"config": cfg}
            if with_gate:
                extra["commands"] = CommandGate(cfg, AuditTrail.for_store(store), lookup)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(host.run(), name="host")
                await eventually(host.connected.is_set, 15, "the test host")
                if while_offline is None:
                    await host.state(True, 1000)
                else:
                    tg.create_task(while_offline(host, store), name="while-offline")
                if retained is not None:
                    await host.publish(DCMD, retained, retain=True)
                async with SpUplink(up, PluginContext(GW, tmp_path, log, **extra)) as node:
                    await eventually(lambda: host.of("DBIRTH"), 15, "births")
                    yield host, store, node
                task.cancel()


def write_payload(
    value: Any, *, name: str | None = None, alias: int | None = None, datatype: int = pb.Double,
    age_s: float = 0.0, metric_ts: bool = True, payload_ts: bool = True,
) -> bytes:  # fmt: skip
    now_ms = int((time.time() - age_s) * 1000)
    p = pb.Payload(timestamp=now_ms) if payload_ts else pb.Payload()
    m = p.metrics.add(datatype=datatype)
    if name is not None:
        m.name = name
    if alias is not None:
        m.alias = alias
    if metric_ts:
        m.timestamp = now_ms
    if value is None:
        m.is_null = True
    else:
        field = {pb.Double: "double_value", pb.Float: "float_value", pb.Boolean: "boolean_value",
                 pb.Int32: "int_value", pb.Int64: "long_value", pb.String: "string_value"}[datatype]  # fmt: skip
        setattr(m, field, value)
    return p.SerializeToString()


async def audited(store: Store, n: int) -> None:
    await eventually(lambda: len(store.audit_rows()) >= n and all(r.result for r in store.audit_rows()), 15,
                     f"{n} audit rows with an outcome")  # fmt: skip


async def settled(host: Host, node: SpUplink) -> None:
    """The node's command tasks are finished (read-backs published) and the host has what it sent."""
    await eventually(lambda: node.counters()["commands_in_flight"] == 0, 15, "the node's commands to finish")
    await host.marker()


async def test_dcmd_write_lands_and_the_readback_follows_in_ddata(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer
) -> None:
    async with gated_node(tmp_path, broker, press) as (host, store, node):
        names = check_session_rules(host.messages)
        alias = {n: a for a, n in names.items()}
        await host.publish(DCMD, write_payload(120.5, name="setpoint"))
        await eventually(lambda: host.of("DDATA"), 15, "the read-back DDATA")
        assert press.registers(1, "h", SP, 2) == f32(120.5), "written to the device"
        # by alias, a Float value with only the payload's timestamp
        await host.publish(DCMD, write_payload(121.25, alias=alias["setpoint"], datatype=pb.Float, metric_ts=False))
        await eventually(lambda: len(host.of("DDATA")) == 2, 15, "the second read-back")
        # a coil: born Boolean from its config (no value known yet), so its read-back follows too
        await host.publish(DCMD, write_payload(True, name="pump", datatype=pb.Boolean))
        await eventually(lambda: len(host.of("DDATA")) == 3, 15, "the coil's read-back")
        await audited(store, 3)
        await settled(host, node)
        rows = store.audit_rows()
    assert press.registers(1, "h", SP, 2) == f32(121.25)
    assert press.registers(1, "c", 0) == [1]
    first, second, coil = (m.payload.metrics for m in host.of("DDATA"))
    assert [(x.alias, x.double_value, x.is_historical) for x in [*first, *second]] == [
        (alias["setpoint"], 120.5, False), (alias["setpoint"], 121.25, False),
    ]  # fmt: skip
    assert [(x.alias, x.boolean_value, x.is_historical) for x in coil] == [(alias["pump"], True, False)]
    assert props(first[0]) == {"Quality": (pb.Int32, 192), "OpcUaStatusCode": (pb.UInt32, 0)}
    (birth,) = host.of("DBIRTH")
    assert metric(birth.payload, "pump").datatype == pb.Boolean, "from the config: a coil"
    check_session_rules(host.messages)  # the read-back DDATA continues the session's seq
    assert [(r.source, r.user, r.tag, r.value, r.result, r.readback) for r in rows] == [
        ("spb", "scada", "press/setpoint", 120.5, "accepted", 120.5),
        ("spb", "scada", "press/setpoint", 121.25, "accepted", 121.25),
        ("spb", "scada", "press/pump", True, "accepted", True),
    ]  # fmt: skip
    assert len({r.cmd_id for r in rows}) == 3, "each write its own id (Sparkplug seq wraps at 256)"


async def test_refused_writes_write_nothing_and_ncmd_rebirth_still_works(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer
) -> None:
    before = press_state(press)
    cases: list[tuple[str, bytes, str, str]] = [
        (DCMD, b"(retained before the node subscribed)", "malformed", "retained DCMD refused"),
        (DCMD, write_payload(500.0, name="setpoint"), "out_of_range", "500.0 is above the maximum 150"),
        (DCMD, write_payload(1.0, name="nope"), "unknown_tag", "'nope' is not a metric of device press"),
        (DCMD, write_payload(1.0, alias=999), "unknown_tag", "alias 999 is not a metric of device press"),
        (DCMD, write_payload(2, name="mode", datatype=pb.Int64), "unauthorised",
         "source 'spb' may not write press/mode"),
        (DCMD, write_payload(120.0, name="setpoint", age_s=60), "stale", "old (max_age 30s)"),
        (DCMD, write_payload(None, name="setpoint"), "malformed", "'setpoint': the value is null"),
        (DCMD, write_payload(120.0, name="setpoint", metric_ts=False, payload_ts=False), "malformed",
         "no timestamp (neither the metric nor the payload)"),
        (DCMD, b"\xff\x00 not protobuf", "malformed", "undecodable DCMD payload"),
        (NCMD, write_payload(120.0, name="press/setpoint"), "unknown_tag",
         "'press/setpoint' is not a node metric: write it with a DCMD to device press"),
    ]  # fmt: skip
    retained = write_payload(120.0, name="setpoint")
    async with gated_node(tmp_path, broker, press, retained=retained) as (host, store, node):
        await audited(store, 1)
        await host.publish(DCMD, b"", retain=True)  # clear it from the broker
        for i, (topic, payload, _, _) in enumerate(cases[1:], start=2):
            await host.publish(topic, payload)
            await audited(store, i)
        # Node Control is handled first; a write beside it in the same NCMD is still judged
        rebirth = pb.Payload(timestamp=int(time.time() * 1000))
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
        rebirth.metrics.add(name="edged/gap", datatype=pb.Int64, long_value=0, timestamp=rebirth.timestamp)
        await host.publish(NCMD, rebirth.SerializeToString())
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "rebirth")
        await audited(store, len(cases) + 1)
        await settled(host, node)
        rows = store.audit_rows()
    assert press_state(press) == before, "nothing reached the device"
    assert not host.of("DDATA"), "no read-back for a refused write"
    for row, (_, _, code, reason) in zip(rows, cases, strict=False):
        assert (row.source, row.result, row.code, row.written_ns) == ("spb", "rejected", code, None)
        assert row.reason is not None and reason in row.reason, (code, row.reason)
    assert (rows[-1].code, rows[-1].result) == ("not_writable", "rejected")
    assert rows[-1].reason is not None and "'edged/gap' is a node metric" in rows[-1].reason
    assert rows[-1].tag == "edged/gap"
    assert [r.tag for r in rows[2:4]] == ["press/nope", None], "an unknown alias names no tag"
    check_session_rules(host.messages)
    assert len(host.of("DBIRTH")) == 2 and host.of("NBIRTH")[1].payload.seq == 0


async def test_a_rebirth_does_not_wait_for_a_device_that_stopped_answering(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer
) -> None:
    """The write runs beside the listener, outside the publish lock: the NCMD is served meanwhile."""
    async with gated_node(tmp_path, broker, press, device_timeout="2s") as (host, store, _node):
        press.fault = "mute"
        await host.publish(DCMD, write_payload(120.0, name="setpoint"))
        await eventually(lambda: [r for r in store.audit_rows() if r.written_ns], 15, "the write on the wire")
        rebirth = pb.Payload(timestamp=int(time.time() * 1000))
        rebirth.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
        await host.publish(NCMD, rebirth.SerializeToString())
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "the rebirth")
        (row,) = store.audit_rows()
        assert row.result is None, "reborn while the device had not answered yet"
        await audited(store, 1)
        press.fault = "ok"
        (row,) = store.audit_rows()
    assert (row.result, row.code) == ("failed", "wire")
    assert not host.of("DDATA")


async def test_without_a_gate_dcmd_is_not_subscribed_and_ncmd_writes_are_refused_with_a_log_line(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, caplog: pytest.LogCaptureFixture
) -> None:
    before = press_state(press)
    caplog.set_level(logging.INFO, logger="test.sparkplug.commands")
    async with gated_node(tmp_path, broker, press, with_gate=False) as (host, store, node):
        await host.publish(DCMD, write_payload(120.0, name="setpoint"))  # subscribed, it would come first
        await host.publish(NCMD, write_payload(120.0, name="setpoint"))
        await eventually(lambda: "no command gate" in caplog.text, 15, "the refusal in the log")
        await settled(host, node)
        assert store.audit_rows() == []
    assert "DCMD not subscribed" in caplog.text
    assert "NCMD write to 'setpoint' refused: commands are not available here" in caplog.text
    assert "DCMD write" not in caplog.text
    assert press_state(press) == before and not host.of("DDATA")


@pytest.mark.parametrize("required", [True, False])
async def test_writes_wait_for_the_primary_host_unless_configured_otherwise(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, caplog: pytest.LogCaptureFixture, required: bool
) -> None:
    caplog.set_level(logging.INFO, logger="test.sparkplug.commands")

    async def while_offline(host: Host, store: Store) -> None:
        await eventually(lambda: "waiting for primary host scada" in caplog.text, 15, "the node subscribed")
        await host.publish(DCMD, write_payload(120.0, name="setpoint"))
        await audited(store, 1)
        await host.state(True, 1000)

    options = {"while_offline": while_offline, "commands_require_primary_host": required}
    async with gated_node(tmp_path, broker, press, **options) as (host, store, node):
        await host.publish(DCMD, write_payload(121.0, name="setpoint"))
        await audited(store, 2)
        await settled(host, node)
        rows = store.audit_rows()
    first = (120.0, "rejected", "unauthorised") if required else (120.0, "accepted", "ok")
    assert [(r.value, r.result, r.code) for r in rows] == [first, (121.0, "accepted", "ok")]
    if required:
        assert rows[0].reason is not None and "primary host scada is not online" in rows[0].reason
    assert press.registers(1, "h", SP, 2) == f32(121.0)


def rebirth_request() -> bytes:
    p = pb.Payload(timestamp=int(time.time() * 1000))
    p.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
    return p.SerializeToString()


@pytest.mark.parametrize("options", [{"spb_allowed": False}, {"commands_enabled": False}], ids=["not-listed", "off"])
async def test_dcmd_is_not_even_subscribed_unless_the_gate_lets_this_uplink_write(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, options: dict[str, Any]
) -> None:
    """Sparkplug proves no sender: without an allow-list entry for this source the node does not
    take DCMDs at all (nothing decoded, nothing audited)."""
    before = press_state(press)
    async with gated_node(tmp_path, broker, press, **options) as (host, store, node):
        await host.publish(DCMD, write_payload(120.0, name="setpoint"))
        await host.publish(NCMD, rebirth_request())  # the node reads it after the DCMD, had it subscribed
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "the rebirth")
        await settled(host, node)
        assert store.audit_rows() == []
    assert press_state(press) == before and not host.of("DDATA")


async def test_a_replayed_dcmd_is_refused_as_a_duplicate(tmp_path: Path, broker: Mosquitto, press: ModbusPeer) -> None:
    async with gated_node(tmp_path, broker, press) as (host, store, node):
        captured = write_payload(120.0, name="setpoint")
        await host.publish(DCMD, captured)
        await audited(store, 1)
        await host.publish(DCMD, write_payload(100.0, name="setpoint"))  # a new command: a new timestamp
        await audited(store, 2)
        await host.publish(DCMD, captured)  # replayed within max_age
        await audited(store, 3)
        await settled(host, node)
        rows = store.audit_rows()
    assert [(r.value, r.result, r.code) for r in rows] == [
        (120.0, "accepted", "ok"), (100.0, "accepted", "ok"), (120.0, "rejected", "duplicate"),
    ]  # fmt: skip
    assert rows[2].cmd_id == rows[0].cmd_id != rows[1].cmd_id
    assert rows[2].reason is not None and "duplicate command id" in rows[2].reason
    assert press.registers(1, "h", SP, 2) == f32(100.0), "the replay did not run again"
    assert len(host.of("DDATA")) == 2, "a read-back for each accepted write only"


async def test_oversized_commands_are_dropped_undecoded_and_logged_once(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, caplog: pytest.LogCaptureFixture
) -> None:
    before = press_state(press)
    big = write_payload("x" * 70_000, name="setpoint", datatype=pb.String)
    caplog.set_level(logging.WARNING, logger="test.sparkplug.commands")
    async with gated_node(tmp_path, broker, press) as (host, store, node):
        await host.publish_many(DCMD, [big] * 20)
        await host.publish_many(NCMD, [big] * 2)
        await eventually(lambda: node.counters()["commands_oversized"] == 22, 15, "22 oversized payloads")
        await host.publish(DCMD, write_payload(120.0, name="setpoint"))  # the node still takes commands
        await audited(store, 1)
        await settled(host, node)
        rows = store.audit_rows()
    assert [(r.value, r.result) for r in rows] == [(120.0, "accepted")], "nothing stored of the oversized ones"
    assert press_state(press) != before
    lines = [r.getMessage() for r in caplog.records if "oversized" in r.getMessage()]
    assert len(lines) == 1, "one log line for the burst"
    assert "1 oversized NCMD/DCMD payload(s) dropped undecoded" in lines[0] and "max_command_bytes 65536" in lines[0]


@pytest.mark.timeout(90)
async def test_a_rebirth_flood_gives_a_bounded_number_of_births(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 3.0
    caplog.set_level(logging.WARNING, logger="test.sparkplug.commands")
    async with gated_node(tmp_path, broker, press, rebirth_min_interval=f"{interval:g}s") as (host, store, node):
        start = time.monotonic()
        await host.publish_many(NCMD, [rebirth_request() for _ in range(300)])
        await eventually(lambda: node.counters()["rebirth_requests"] == 300, 30, "300 rebirth requests read")
        elapsed = time.monotonic() - start
        await eventually(lambda: node.counters()["rebirth_pending"] == 0, 30, "the coalesced rebirth")
        await host.marker()
        counters = node.counters()
        assert store.audit_rows() == [], "Node Control is not a write"
    births = len(host.of("NBIRTH")) - 1
    assert 1 <= births <= 2 + int(elapsed / interval), (births, elapsed)
    assert len(host.of("DBIRTH")) == births + 1, "one DBIRTH (one device) per NBIRTH"
    assert counters["rebirths_coalesced"] >= 300 - births
    check_session_rules(host.messages)
    lines = [r.getMessage() for r in caplog.records if "coalesced into one rebirth" in r.getMessage()]
    assert 1 <= len(lines) <= 1 + int(elapsed / 60)


FLT_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]


async def test_a_malformed_metric_is_refused_alone_and_the_rest_of_the_message_stands(
    tmp_path: Path, broker: Mosquitto, press: ModbusPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that is not UTF-8, a Float at FLT_MAX, timestamps beyond what an int64 of nanoseconds
    (SQLite, datetime) holds, an overlong string: each refused and audited on its own, without a
    traceback, while the Rebirth beside them and the good write in the same DCMD are carried out."""
    caplog.set_level(logging.INFO)
    long_text = "x" * 5000
    async with gated_node(tmp_path, broker, press) as (host, store, node):
        now = int(time.time() * 1000)
        ncmd = pb.Payload(timestamp=now)
        ncmd.metrics.add(name="BADNAME", datatype=pb.Double, double_value=1.0, timestamp=now)
        ncmd.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
        await host.publish(NCMD, ncmd.SerializeToString().replace(b"BADNAME", b"\xff\xfeBADNA"))
        dcmd = pb.Payload(timestamp=now)
        dcmd.metrics.add(name="setpoint", datatype=pb.Float, float_value=FLT_MAX, timestamp=now)
        dcmd.metrics.add(name="BADNAME", datatype=pb.Double, double_value=1.0, timestamp=now)
        dcmd.metrics.add(name="setpoint", datatype=pb.Double, double_value=1.0, timestamp=2**64 - 1)
        dcmd.metrics.add(name="setpoint", datatype=pb.Double, double_value=1.0, timestamp=10**13)  # year 2286
        dcmd.metrics.add(name="setpoint", datatype=pb.String, string_value=long_text, timestamp=now)
        dcmd.metrics.add(name="setpoint", datatype=pb.Double, double_value=120.0, timestamp=now)
        await host.publish(DCMD, dcmd.SerializeToString().replace(b"BADNAME", b"\xff\xfeBADNA"))
        await eventually(lambda: len(host.of("NBIRTH")) == 2, 15, "the rebirth beside the bad metric")
        await audited(store, 7)
        await settled(host, node)
        rows = store.audit_rows()
    got = sorted((r.code or "", r.reason or "") for r in rows)
    assert [code for code, _ in got] == ["malformed"] * 5 + ["ok", "out_of_range"], got
    reasons = " | ".join(reason for _, reason in got)
    assert reasons.count("a name must be UTF-8 text") == 2, "NCMD and DCMD"
    assert f"timestamp {2**64 - 1}" in reasons and f"timestamp {10**13}" in reasons
    assert "a string of 5000 characters (at most 1024)" in reasons
    (long_row,) = [r for r in rows if isinstance(r.value, str)]
    assert long_row.value == "x" * 64 + "... (5000 characters)", "the audit keeps a truncated value"
    assert press.registers(1, "h", SP, 2) == f32(120.0), "the good write of the same DCMD landed"
    assert len(host.of("DDATA")) == 1
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert node.counters()["commands_malformed_metrics"] == 5


@pytest.mark.parametrize(
    ("fields", "datatype", "expected"),
    [
        ({"int_value": 2**32 - 5}, pb.Int32, (-5, None)),
        ({"int_value": 2**32 - 5}, pb.UInt32, (2**32 - 5, None)),
        ({"long_value": 2**64 - 1}, pb.Unknown, (-1, None)),
        ({"long_value": 2**64 - 1}, pb.UInt64, (2**64 - 1, None)),
        ({"float_value": 0.1}, pb.Float, (0.1, None)),
        ({"float_value": FLT_MAX}, pb.Float, (3.4028235e38, None)),  # shortest decimal, not an OverflowError
        ({"double_value": 0.1}, pb.Double, (0.1, None)),
        ({"boolean_value": True}, pb.Boolean, (True, None)),
        ({"string_value": "auto"}, pb.String, ("auto", None)),
        ({"is_null": True}, pb.Double, (None, "the value is null")),
        ({}, pb.Double, (None, "the metric has no value")),
        ({"bytes_value": b"x"}, pb.Bytes, (None, "bytes values are not supported (a number, a boolean or a string)")),
    ],
)
def test_command_values(fields: dict[str, Any], datatype: int, expected: tuple[Any, str | None]) -> None:
    """Integers are two's complement in unsigned fields; a Float is the decimal the sender meant."""
    m = pb.Payload.Metric(**fields)
    got = command_value(m, datatype)
    assert got == expected and type(got[0]) is type(expected[0])


# ----------------------------------------------------------------------------------------- alarms

ALARM = "pressure#alarm/hihi"  # the metric of boiler's alarm: its path under the device
ALARM_DCMD = f"{NAMESPACE}/{GROUP}/DCMD/{GW}/boiler"


@contextlib.asynccontextmanager
async def alarm_node(
    tmp_path: Path, port: int
) -> AsyncIterator[tuple[Host, Buffer, Any, Callable[[list[Sample]], None]]]:
    """A node delivering from a real buffer (Sender) with a HIHI alarm on boiler/pressure, its
    acknowledge / shelve through a real gate auditing into that buffer and a real alarm engine, whose
    events are stored like the daemon stores them. Yields (host, buffer, engine, put)."""
    from edged.alarms.engine import AlarmEngine

    cfg = parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp_path)},
            "devices": [{"name": "boiler", "type": "sim", "tags": [{"name": "pressure", "unit": "bar"}]}],
            "uplinks": [{"name": "spb", "type": "sparkplug", "group_id": GROUP, "port": port, "timeout": "2s",
                         "primary_host_id": "scada"}],
            "commands": {"enabled": True},
            "alarms": {"sources": ["spb"], "tags": [{"tag": "boiler/pressure", "type": "hihi", "limit": 12.0,
                                                     "message": "drum pressure very high"}]},
        }
    )  # fmt: skip
    up = cfg.uplinks[0]
    assert isinstance(up, SpConfig)
    host = Host(port)
    buf = Buffer(tmp_path / "buffer.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
    engine = AlarmEngine(cfg.alarms)

    def put(samples: list[Sample]) -> None:  # as the daemon's _store: the events in the same list
        buf.put([*samples, *engine.feed(samples)])

    async def on_alarm(path: str, action: str, seconds: float | None, user: str | None, source: str) -> Any:
        before, after, event = engine.command(path, action, seconds, user=user, source=source)
        buf.put([event])
        return before, after

    async def no_driver(name: str) -> None:
        return None

    async with buf, asyncio.TaskGroup() as tg:
        gate = CommandGate(cfg, AuditTrail(lambda: buf.store, buf.call), no_driver, alarms=on_alarm)

        def make() -> SpUplink:
            c = ctx(cfg, tmp_path, buf)
            return SpUplink(up, PluginContext(c.gateway_id, c.data_dir, c.log, config=cfg, commands=gate,
                                              latest=c.latest))  # fmt: skip

        tasks = [tg.create_task(host.run(), name="host")]
        await eventually(host.connected.is_set, 15, "the test host")
        sender = Sender(
            buf, up, make, gateway_id=GW, log=logging.getLogger("test"), backoff=Backoff(initial=0.1, cap=0.3)
        )
        tasks += [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
        try:
            yield host, buf, engine, put
        finally:
            for t in tasks:
                t.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=15)
            assert not stuck, f"still running 15 s after cancel: {[t.get_name() for t in stuck]}"


def alarm_events(host: Host, names: dict[int, str], *, since: int = 0) -> list[tuple[dict[str, Any], bool]]:
    """(the event, is_historical) of every alarm metric in DDATA, checked to be String JSON."""
    out = []
    for m in host.messages[since:]:
        if m.kind != "DDATA":
            continue
        for x in m.payload.metrics:
            if names.get(x.alias) == ALARM:
                assert x.WhichOneof("value") == "string_value"
                out.append((json.loads(x.string_value), x.is_historical))
    return out


def string_command(name: str, value: str) -> bytes:
    return write_payload(value, name=name, datatype=pb.String)


async def test_dcmd_acknowledges_and_shelves_an_alarm_through_the_gate(tmp_path: Path, broker: Mosquitto) -> None:
    async with alarm_node(tmp_path, broker.port) as (host, buf, engine, put):
        await host.state(True, 1000)
        await eventually(lambda: host.of("DBIRTH"), 15, "births")
        (birth,) = host.of("DBIRTH")
        born = metric(birth.payload, ALARM)
        assert born.datatype == pb.String and born.is_null, "in the DBIRTH before any event"
        assert metric(birth.payload, "#alarm/flood").datatype == pb.String
        names = check_session_rules(host.messages)

        t0 = time.time_ns()
        put([Sample("boiler/pressure", t0, 10.0, unit="bar"), Sample("boiler/pressure", t0 + 10**6, 12.5, unit="bar")])
        await eventually(lambda: alarm_events(host, names), 15, "the active event")
        ((active, hist),) = alarm_events(host, names)
        # the stored event's JSON: fields at their default (acked true, active false, ...) are left out
        assert (active["event"], active["state"], active["acked"], hist) == ("active", "unack", False, False)

        await host.publish(ALARM_DCMD, string_command(ALARM, "ack"))
        await eventually(lambda: len(alarm_events(host, names)) == 2, 15, "the ack event")
        ack = alarm_events(host, names)[-1][0]
        assert (ack["event"], ack["state"], ack.get("acked", True), ack["source"], ack["user"]) == (
            "ack", "acked", True, "spb", "scada",
        )  # fmt: skip
        await host.publish(ALARM_DCMD, string_command("pressure#alarm/nope", "ack"))  # no such alarm
        await host.publish(ALARM_DCMD, string_command(ALARM, "shelve 1h"))
        await eventually(lambda: len(alarm_events(host, names)) == 3, 15, "the shelved event")
        shelved = alarm_events(host, names)[-1][0]
        assert shelved["event"] == "shelved" and shelved["shelved_until_ns"] > time.time_ns() + 3000 * 10**9
        await eventually(lambda: len(buf.store.audit_rows()) == 3 and all(r.result for r in buf.store.audit_rows()),
                         15, "three audit rows")  # fmt: skip
        rows = buf.store.audit_rows()
        assert engine.alarms["boiler/" + ALARM].state.value == "acked"
    check_session_rules(host.messages)
    assert [(r.source, r.user, r.tag, r.value, r.result, r.code) for r in rows] == [
        ("spb", "scada", "boiler/" + ALARM, "ack", "accepted", "ok"),
        ("spb", "scada", "boiler/pressure#alarm/nope", "ack", "rejected", "unknown_tag"),
        ("spb", "scada", "boiler/" + ALARM, "shelve 1h", "accepted", "ok"),
    ]


async def test_alarm_events_replayed_after_the_host_was_away_are_historical_strings(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with alarm_node(tmp_path, broker.port) as (host, buf, _engine, put):
        await host.state(True, 1000)
        await eventually(lambda: host.of("DBIRTH"), 15, "births")
        await host.state(False, 2000)
        await eventually(lambda: host.of("NDEATH"), 15, "NDEATH on host offline")
        t0 = time.time_ns()
        put([Sample("boiler/pressure", t0, 13.0, unit="bar")])
        put([Sample("boiler/pressure", t0 + 10**6, 9.0, unit="bar")])  # active, then cleared, while away
        await buf.flush()
        await host.state(True, 3000)
        await eventually(lambda: len(host.of("DBIRTH")) == 2, 15, "births after the host is back")
        await eventually(lambda: not buf.store.unacked("spb", buf.head), 15, "the replay")
        await host.marker()
    second = host.of("NBIRTH")[1]
    since = host.messages.index(second)
    names = check_session_rules(host.messages[since:])
    reborn = metric(host.of("DBIRTH")[1].payload, ALARM)
    assert reborn.datatype == pb.String and json.loads(reborn.string_value)["event"] == "cleared", "the newest"
    replay = [(ev["event"], ev["state"], hist) for ev, hist in alarm_events(host, names, since=since)]
    assert replay == [("active", "unack", True), ("cleared", "rtn_unack", True)]
