"""Sparkplug B edge node against a real mosquitto: payloads decoded with the protobuf definitions,
sequence and session rules checked from a subscriber's point of view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from buffer import Buffer
from edged.config import BufferConfig, Config, parse
from edged.delivery import Sender
from edged.errors import ConfigError
from edged.model import Batch, Gap, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.mosquitto import Mosquitto
from uplink.sparkplug import Config as SpConfig
from uplink.sparkplug import Uplink as SpUplink
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


@dataclass
class Host:
    """A subscriber that decodes everything under spBv1.0/ and can act as the primary host."""

    port: int
    messages: list[Msg] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="sp-test-host", clean_session=False
                ) as client:
                    await client.subscribe(f"{NAMESPACE}/#", qos=1)
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
        self.messages.append(Msg(topic, kind, device, retain, qos, payload))

    def of(self, *kinds: str) -> list[Msg]:
        return [m for m in self.messages if m.kind in kinds]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="sp-test-cmd") as client:
            await client.publish(topic, payload, qos=1, retain=retain)

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


def daemon_config(tmp_path: Path, **uplink: Any) -> Config:
    return parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp_path)},
            "devices": [
                {"name": "boiler", "type": "sim", "tags": [{"name": "pressure", "unit": "bar"}, {"name": "level"}]},
                {"name": "pump", "type": "sim", "tags": [{"name": "speed", "unit": "rpm"}]},
            ],
            "uplinks": [{"name": "spb", "type": "sparkplug", "group_id": GROUP, **uplink}],
        }
    )


def ctx(cfg: Config, tmp_path: Path) -> PluginContext:
    return PluginContext(GW, tmp_path, logging.getLogger("test.sparkplug"), {"config": cfg})


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The shared broker, also queueing QoS 0 for the (persistent) test host across its reconnects."""
    mosquitto.conf.write_text(mosquitto.conf.read_text() + "queue_qos0_messages true\n")
    mosquitto.restart()
    return mosquitto


@contextlib.asynccontextmanager
async def host_and_node(
    tmp_path: Path, port: int, *, batch_size: int = 500, **uplink: Any
) -> AsyncIterator[tuple[Host, Buffer, Sender, asyncio.TaskGroup]]:
    cfg = daemon_config(tmp_path, port=port, batch_size=batch_size, timeout="2s", **uplink)
    up = cfg.uplinks[0]
    assert isinstance(up, SpConfig)
    host = Host(port)
    buf = Buffer(tmp_path / "buffer.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
    async with buf, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(host.run(), name="host")]
        await asyncio.wait_for(host.connected.wait(), 5)
        sender = Sender(
            buf, up, lambda: SpUplink(up, ctx(cfg, tmp_path)), gateway_id=GW, log=logging.getLogger("test"),
            backoff=Backoff(initial=0.1, cap=0.3),
        )  # fmt: skip
        tasks += [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
        try:
            yield host, buf, sender, tg
        finally:
            for t in tasks:
                t.cancel()


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def produce(buf: Buffer, tags: list[str], rate_hz: float, stop: asyncio.Event, counter: list[int]) -> None:
    """Each tag's value counts up (as a float), so completeness can be checked per tag."""
    while not stop.is_set():
        buf.put([Sample(t, time.time_ns(), float(counter[0])) for t in tags])
        counter[0] += 1
        await asyncio.sleep(1 / rate_hz)
    await buf.flush()


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
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        ts = time.time_ns()
        buf.put([
            Sample("boiler/pressure", ts, 12.5, Status.GOOD, 100, "bar"),
            Sample("pump/speed", ts, 1500, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 60, "rpm"),
            Sample("boiler/level", ts + 10**6, None, Status.BAD_SENSOR_FAILURE, 0),
        ])  # fmt: skip
        await wait_for(lambda: len(host.of("DDATA")) == 2, 5, "data")
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
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        buf.put([Sample("boiler/level", time.time_ns(), True), Sample("uptime", time.time_ns(), 42)])
        await wait_for(lambda: host.of("NDATA"), 5, "node data")
        assert len(host.of("NBIRTH")) == 2, "one rebirth announced both changes"
        for v in ("ERR", False, 3.5):  # a tag of mixed types becomes a String once, not a rebirth per flip
            buf.put([Sample("boiler/level", time.time_ns(), v)])
            await buf.flush()
            await asyncio.sleep(0.1)
        await wait_for(lambda: len(host.of("DDATA")) == 4, 5, "mixed values")
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
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        for i in range(300):
            buf.put([Sample("boiler/pressure", time.time_ns(), float(i))])
            if i % 50 == 0:
                await buf.flush()
        await wait_for(lambda: len(host.of("DDATA")) == 300, 20, "300 DDATA")
    check_session_rules(host.messages)
    seqs = [m.payload.seq for m in host.of("NBIRTH", "DBIRTH", "DDATA")]
    assert seqs[:3] == [0, 1, 2] and seqs[255:258] == [255, 0, 1], "wraps 255 -> 0 without a new NBIRTH"
    assert [x.double_value for m in host.of("DDATA") for x in m.payload.metrics] == [float(i) for i in range(300)]


async def test_rebirth_on_ncmd(tmp_path: Path, broker: Mosquitto) -> None:
    async with host_and_node(tmp_path, broker.port) as (host, buf, _, _tg):
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        ts = time.time_ns()
        buf.put([Sample("boiler/pressure", ts, 7.25, unit="bar"), Sample("pump/speed", ts, 10.0)])
        await wait_for(lambda: len(host.of("DDATA")) == 2, 5, "data")
        ncmd = f"{NAMESPACE}/{GROUP}/NCMD/{GW}"
        await host.publish(ncmd, b"\xff\x00 not protobuf")  # ignored, logged
        cmd = pb.Payload(timestamp=int(time.time() * 1000))
        cmd.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
        await host.publish(ncmd, cmd.SerializeToString())
        await wait_for(lambda: len(host.of("DBIRTH")) == 4, 5, "rebirth")
        buf.put([Sample("boiler/pressure", time.time_ns(), 7.5)])
        await wait_for(lambda: len(host.of("DDATA")) == 3, 5, "data after the rebirth")
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
        await asyncio.wait_for(host.connected.wait(), 5)
        for run in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", NODE_SCRIPT, str(broker.port), str(tmp_path), stdout=asyncio.subprocess.PIPE
            )
            try:
                assert proc.stdout is not None
                assert (await proc.stdout.readline()).strip() == b"born"
                await wait_for(lambda r=run: len(host.of("NBIRTH")) == r + 1, 5, "NBIRTH")
            finally:
                proc.kill()  # SIGKILL: no NDEATH of its own, no DISCONNECT: the broker sends the Will
                await proc.wait()
            await wait_for(lambda r=run: len(host.of("NDEATH")) == r + 1, 5, "the Will")
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
        await asyncio.wait_for(host.connected.wait(), 5)
        async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))):
            await wait_for(lambda: host.of("NBIRTH"), 5, "NBIRTH")
        await wait_for(lambda: host.of("NDEATH"), 5, "NDEATH")
        await asyncio.sleep(0.3)
        task.cancel()
    (death,) = host.of("NDEATH")  # published before DISCONNECT, so the broker drops the Will
    assert metric(death.payload, "bdSeq").long_value == 0


async def test_broker_restart_new_session_and_no_loss(tmp_path: Path, broker: Mosquitto) -> None:
    stop, counter = asyncio.Event(), [0]
    tags = ["boiler/pressure", "pump/speed"]
    async with host_and_node(tmp_path, broker.port, batch_size=50) as (host, buf, sender, tg):
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        prod = tg.create_task(produce(buf, tags, 50, stop, counter), name="producer")
        await wait_for(lambda: len(host.of("DDATA")) > 5, 5, "live data")
        bd0 = metric(host.of("NBIRTH")[0].payload, "bdSeq").long_value
        broker.restart()
        await wait_for(lambda: len(host.of("NBIRTH")) >= 2, 10, "a new session")
        await asyncio.sleep(0.5)
        stop.set()
        await prod
        await wait_for(lambda: not buf.store.unacked("spb", buf.head) and sender.stats.sent_live > 0, 10, "catch-up")
        await asyncio.sleep(0.2)
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
        await wait_for(lambda: len(host.of("NBIRTH")) == 1, 5, "the first birth")
        broker.restart()
        await wait_for(lambda: len(host.of("NBIRTH")) >= 2, 10, "a new birth without any new sample")
        assert sender.stats.connects >= 2


# ----------------------------------------------------------------------------------------- primary host


async def test_store_and_forward_while_primary_host_offline(tmp_path: Path, broker: Mosquitto) -> None:
    stop, counter = asyncio.Event(), [0]
    tags = ["boiler/pressure", "pump/speed"]
    async with host_and_node(tmp_path, broker.port, primary_host_id="scada") as (host, buf, sender, tg):
        await asyncio.sleep(0.5)
        assert not host.of("NBIRTH"), "no birth before the primary host is online"
        await host.state(True, 1000)
        await wait_for(lambda: len(host.of("DBIRTH")) == 2, 5, "births")
        prod = tg.create_task(produce(buf, tags, 40, stop, counter), name="producer")
        await wait_for(lambda: len(host.of("DDATA")) >= 4, 5, "live data")

        await host.state(False, 2000)
        await wait_for(lambda: host.of("NDEATH"), 5, "NDEATH on host offline")
        offline_at = len(host.messages)
        await wait_for(lambda: sender.stats.state == "connecting", 5, "a new session waiting for the host")
        await asyncio.sleep(0.3)
        stale = json.dumps({"online": True, "timestamp": 1500}).encode()
        await host.publish(f"{NAMESPACE}/STATE/scada", stale)  # older than the offline STATE: ignored
        await asyncio.sleep(1.0)
        assert not [m for m in host.messages[offline_at:] if m.kind != "STATE"], "nothing published while offline"
        assert buf.store.unacked("spb", buf.head), "the data waits in the buffer"

        await host.state(True, 3000)
        await wait_for(lambda: len(host.of("NBIRTH")) == 2, 5, "births after the host is back")
        await asyncio.sleep(0.3)
        stop.set()
        await prod
        await wait_for(lambda: not buf.store.unacked("spb", buf.head), 10, "catch-up")
        await asyncio.sleep(0.2)
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
    for m in host.messages[i2:]:
        if m.kind == "DDATA" and any(x.is_historical for x in m.payload.metrics):
            assert all(x.is_historical for x in m.payload.metrics), "every metric of a replayed batch"
    got = values(host, names)
    for t in tags:
        assert set(got[t]) == {float(i) for i in range(counter[0])}, f"{t}: every value arrived"
    assert sender.stats.errors >= 1


# ----------------------------------------------------------------------------------------- direct


async def test_gaps_and_ignition_quality_codes(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = SpConfig(name="spb", type="sparkplug", group_id=GROUP, port=broker.port, quality_codes="ignition8")
    host = Host(broker.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(host.run(), name="host")
        await asyncio.wait_for(host.connected.wait(), 5)
        async with SpUplink(cfg, PluginContext(GW, tmp_path, logging.getLogger("test"))) as up:
            ts = time.time_ns()
            await up.send(Batch(GW, 5, 9, True, [], [Gap(5, 9, ts - 10**9, ts, 5)]))
            bad = Sample("boiler/pressure", ts, 1.0, Status.BAD, 0, seq=10)
            await up.send(
                Batch(GW, 10, 11, False, [bad, Sample("boiler/pressure", ts, 2.0, Status.UNCERTAIN, 0, seq=11)])
            )
            await wait_for(lambda: host.of("DDATA"), 5, "data")
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
