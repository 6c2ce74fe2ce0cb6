"""MQTT uplink + live-first delivery against a real mosquitto that the tests stop and restart."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import gzip
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from buffer import Buffer
from edged.config import BufferConfig, Secret, parse
from edged.delivery import Sender
from edged.errors import Permanent
from edged.model import Sample, Status
from edged.plugin import Backoff, PluginContext
from edged.protocols.payload import decode_columns
from peers.delivery import sender_running
from peers.mosquitto import Mosquitto
from peers.waiting import eventually
from peers.wanproxy import WanProxy
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import Uplink as MqttUplink

GW = "gw-test"


@dataclass
class Received:
    topic: str
    at: float
    doc: dict[str, Any]


@dataclass
class Collector:
    """A persistent-session QoS 1 subscriber that survives broker restarts (mosquitto persistence)."""

    port: int
    messages: list[Received] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="edged-test-collector", clean_session=False
                ) as client:
                    await client.subscribe("edged/#", qos=1)
                    self.connected.set()
                    async for msg in client.messages:
                        payload = bytes(msg.payload)  # type: ignore[arg-type]
                        if payload[:2] == b"\x1f\x8b":
                            payload = gzip.decompress(payload)
                        if payload[:4] == b"\x28\xb5\x2f\xfd" or b'"columns"' in payload[:64]:  # zstd / columns
                            doc = decode_columns(payload)  # the reference decoder of docs/payload.md
                        else:
                            doc = msgspec.json.decode(payload)
                        self.messages.append(Received(str(msg.topic), time.monotonic(), doc))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def seqs(self, kind: str | None = None) -> list[int]:
        return [s[6] for m in self.messages if kind is None or m.topic.endswith(kind) for s in m.doc["samples"]]


def mqtt_config(port: int, **kw: Any) -> MqttConfig:
    return MqttConfig(name="broker", type="mqtt", host="127.0.0.1", port=port, timeout=2.0, **kw)  # type: ignore[arg-type]


def ctx() -> PluginContext:
    return PluginContext(GW, Path("."), logging.getLogger("test.mqtt"))


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, port: int, *, batch_size: int = 500, **kw: Any
) -> AsyncIterator[tuple[Buffer, Sender]]:
    cfg = mqtt_config(port, batch_size=batch_size, **kw)
    async with sender_running(
        tmp_path, cfg, lambda: MqttUplink(cfg, ctx()), gateway=GW, backoff=Backoff(initial=0.2, cap=0.5)
    ) as running:
        yield running


async def produce(buf: Buffer, n_tags: int, rate_hz: float, counter: list[int], stop: asyncio.Event) -> None:
    """Each tag's value counts up, so order and completeness can be checked per tag."""
    i = 0
    while not stop.is_set():
        ts = time.time_ns()
        buf.put([Sample(f"dev/t{k}", ts, i, Status.GOOD, 100) for k in range(n_tags)])
        counter[0] += n_tags
        i += 1
        await asyncio.sleep(1 / rate_hz)


def check_order(messages: list[Received], kind: str, *, repeats: bool = False) -> None:
    """Within one stream, each tag's values arrive in increasing order; with `repeats`, a sample
    seen before (a re-sent batch the broker had already taken) is left out of the check."""
    last: dict[str, int] = {}
    seen: set[int] = set()
    for m in messages:
        if not m.topic.endswith(kind):
            continue
        for s in m.doc["samples"]:
            if repeats and s[6] in seen:
                continue
            seen.add(s[6])
            tag, value = s[0], s[2]
            assert value > last.get(tag, -1), f"{kind}: {tag} went {last.get(tag)} -> {value}"
            last[tag] = value


async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await asyncio.wait_for(col.connected.wait(), 5)
        async with running(tmp_path, mosquitto.port, batch_size=200) as (buf, sender):
            stop, produced = asyncio.Event(), [0]
            prod = tg.create_task(produce(buf, 20, 50, produced, stop), name="producer")
            await eventually(lambda: len(col.seqs()) > 500, 10, "first live data")
            mosquitto.stop()
            await eventually(lambda: sender.stats.state in ("backoff", "connecting"), 10, "the sender to notice")
            down_at = produced[0]
            await eventually(lambda: produced[0] >= down_at + 2000, 20, "2000 samples produced while down")
            mosquitto.start()
            connects = sender.stats.connects
            await eventually(lambda: sender.stats.connects > connects, 20, "the reconnect")
            stop.set()
            await prod
            await buf.flush()
            head = buf.head
            await eventually(
                lambda: max(col.seqs(), default=0) >= head and not buf.store.unacked("broker", head), 20, "catch-up"
            )
        col_task.cancel()
    seqs = col.seqs()
    stored = buf.stored
    assert stored == produced[0]
    first = min(seqs)
    assert set(seqs) == set(range(first, first + stored)), "every stored sample arrived"
    assert col.seqs("historical"), "the outage was replayed as historical"
    check_order(col.messages, "live")
    check_order(col.messages, "historical")
    dupes = len(seqs) - len(set(seqs))
    assert dupes <= 2 * 200, f"duplicates only from batches in flight at the outage ({dupes})"
    for m in col.messages:
        assert m.doc["gateway"] == GW
        assert m.doc["historical"] is m.topic.endswith("historical")


async def test_live_data_flows_first_while_backlog_drains(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # A large backlog in the buffer before the uplink ever connects.
    pre = Buffer(tmp_path / "buffer.db", BufferConfig())
    async with pre:
        t0 = time.time_ns() - 3600 * 10**9
        for chunk in range(40):
            pre.put([Sample(f"old/t{k % 50}", t0 + (chunk * 5000 + k) * 10**6, chunk * 5000 + k) for k in range(5000)])
            await pre.flush()
    backlog = 200_000
    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await asyncio.wait_for(col.connected.wait(), 5)
        async with running(tmp_path, mosquitto.port, batch_size=1000, backfill_share=0.5) as (buf, sender):
            await eventually(lambda: sender.stats.connects >= 1, 5, "connect")
            connected_at = time.monotonic()
            stop, produced = asyncio.Event(), [0]
            prod = tg.create_task(produce(buf, 10, 20, produced, stop), name="producer")
            await eventually(lambda: col.seqs("live"), 5, "first live batch")
            first_live_at = min(m.at for m in col.messages if m.topic.endswith("live"))
            hist_before = len(col.seqs("historical"))
            await eventually(lambda: len(col.seqs("historical")) >= backlog, 60, "backlog drained")
            stop.set()
            await prod
        col_task.cancel()
    assert first_live_at - connected_at < 1.0, "new samples within a second of reconnecting"
    assert hist_before < backlog, "live data went out while the backlog was still draining"
    hist = col.seqs("historical")
    assert sorted(set(hist)) == hist[: len(set(hist))] or hist == sorted(hist), "backlog drained oldest-first"
    assert len(set(hist)) == backlog


async def test_compression_and_topic_template(tmp_path: Path, mosquitto: Mosquitto) -> None:
    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await asyncio.wait_for(col.connected.wait(), 5)
        async with running(
            tmp_path, mosquitto.port, compression="gzip", topic="edged/site1/{gateway}/{uplink}/{kind}"
        ) as (buf, _):
            buf.put([Sample("a/b", time.time_ns(), 1.25, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 55, "bar")])
            await eventually(lambda: col.messages, 5, "message")
        col_task.cancel()
    m = col.messages[0]
    assert m.topic == f"edged/site1/{GW}/broker/live"
    tag, _ts, value, status, score, unit, seq = m.doc["samples"][0]
    assert (tag, value, status, score, unit) == ("a/b", 1.25, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 55, "bar")
    assert seq == m.doc["lo_seq"] == m.doc["hi_seq"]


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_columns_encoding_through_a_broker_decodes_to_the_rows(
    tmp_path: Path, mosquitto: Mosquitto, compression: str
) -> None:
    """`encoding = "columns"` over a real broker: the reference decoder gives back every sample
    exactly as the rows encoding carries it, types and per-sample status included."""
    col = Collector(mosquitto.port)
    now = time.time_ns()
    samples = [Sample(f"dev/t{i % 7}", now + i * 1000, float(i) / 8, Status.GOOD, 100, "bar") for i in range(200)]
    samples += [Sample("dev/flag", now + 5, True, Status.BAD_NO_COMMUNICATION, 0), Sample("dev/n", now, 7, 0, 90)]
    async with asyncio.TaskGroup() as tg:
        col_task = tg.create_task(col.run(), name="collector")
        await eventually(col.connected.is_set, 10, "the collector")
        async with running(tmp_path, mosquitto.port, encoding="columns", compression=compression) as (buf, _sender):
            buf.put(samples)
            await eventually(lambda: len(col.seqs()) == len(samples), 10, "every sample")
        col_task.cancel()
    got = sorted((tuple(s) for m in col.messages for s in m.doc["samples"]), key=lambda r: r[6])
    want = [(s.tag, s.ts_ns, s.value, s.status, s.score, s.unit) for s in samples]
    assert [r[:6] for r in got] == want
    assert [type(r[2]) for r in got] == [type(s.value) for s in samples]


async def test_refused_credentials_are_permanent(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\nuser {getpass.getuser()}\n"
    )
    broker.start()
    try:
        cfg = mqtt_config(broker.port, username="nobody", password=Secret("wrong"))
        with pytest.raises(Permanent, match="refused"):
            async with MqttUplink(cfg, ctx()):
                pass
    finally:
        broker.stop()


def test_config_errors_name_the_key() -> None:
    from edged.errors import ConfigError

    base = {"uplinks": [{"name": "m", "type": "mqtt", "topic": "x/{nope}"}]}
    with pytest.raises(ConfigError, match=r"uplinks\[0\] \(m\): topic template 'x/\{nope\}': unknown placeholder"):
        parse(base)
    with pytest.raises(ConfigError, match="TLS options are set but tls = false"):
        parse({"uplinks": [{"name": "m", "type": "mqtt", "ca_file": "/etc/ssl/ca.pem"}]})


async def test_a_window_in_flight_over_a_long_link_survives_a_broker_crash(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Through a 60 ms round trip, several QoS 1 publishes are outstanding at once; the broker goes
    down mid-window and comes back: nothing is lost, per-tag order holds within each stream, and
    only the batches still unacknowledged at the crash went out twice."""
    pre = Buffer(tmp_path / "buffer.db", BufferConfig())
    async with pre:
        for start in range(0, 40_000, 10_000):
            pre.put(
                [
                    Sample(f"dev/t{i % 20}", time.time_ns(), i // 20, Status.GOOD, 100)
                    for i in range(start, start + 10_000)
                ]
            )
            await pre.flush()
    col = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg, WanProxy(mosquitto.port, delay_s=0.03) as proxy:
        col_task = tg.create_task(col.run(), name="collector")
        await asyncio.wait_for(col.connected.wait(), 5)
        async with running(tmp_path, proxy.port, batch_size=200, max_inflight=8) as (buf, sender):
            await eventually(lambda: sender.stats.in_flight >= 6 and len(col.seqs()) > 2000, 30, "a window in flight")
            mosquitto.stop()
            proxy.drop_connections()  # the broker's side is gone: so is the long link's
            await eventually(lambda: sender.stats.state in ("backoff", "connecting"), 10, "the sender to notice")
            mosquitto.start()
            await eventually(lambda: not buf.store.unacked("broker", buf.head), 60, "the backlog drained")
            await eventually(lambda: len(set(col.seqs())) >= 40_000, 20, "every sample at the subscriber")
        col_task.cancel()
    seqs = col.seqs()
    first = min(seqs)
    assert set(seqs) == set(range(first, first + 40_000)), "nothing lost"
    assert sender.stats.peak_in_flight == 7, "8 slots, one kept free for live data"
    check_order(col.messages, "historical", repeats=True)  # TCP is in order: the broker got a prefix
    windows = [(m.doc["lo_seq"], m.doc["hi_seq"]) for m in col.messages]
    twice = {w for w in windows if windows.count(w) > 1}
    assert len(twice) <= 8, f"only what was in flight at the crash went again ({len(twice)} windows)"
    assert len(seqs) - len(set(seqs)) <= 8 * 200


async def test_mqtt5_payloads_say_what_they_are_and_the_window_keeps_to_the_receive_maximum(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, max_inflight=3)  # also its MQTT 5 Receive Maximum
    broker.start()
    try:
        pre = Buffer(tmp_path / "buffer.db", BufferConfig())
        async with pre:
            pre.put([Sample(f"dev/t{i % 10}", time.time_ns(), i, Status.GOOD, 100) for i in range(5000)])
            await pre.flush()
        got: list[tuple[str | None, list[tuple[str, str]], bytes]] = []
        ready = asyncio.Event()

        async def subscribe() -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
                await client.subscribe("edged/#", qos=1)
                ready.set()
                async for msg in client.messages:
                    props = msg.properties
                    ctype = getattr(props, "ContentType", None)
                    got.append((ctype, list(getattr(props, "UserProperty", [])), bytes(msg.payload)))  # type: ignore[arg-type]

        async with asyncio.TaskGroup() as tg, WanProxy(broker.port, delay_s=0.02) as proxy:
            sub = tg.create_task(subscribe(), name="v5-subscriber")
            await asyncio.wait_for(ready.wait(), 5)
            kw: dict[str, Any] = {"protocol": "5", "encoding": "columns", "compression": "zstd", "max_inflight": 16}
            async with running(tmp_path, proxy.port, batch_size=100, **kw) as (buf, sender):
                await eventually(lambda: not buf.store.unacked("broker", buf.head), 30, "the backlog delivered")
                await eventually(lambda: sum(len(decode_columns(p)["samples"]) for *_, p in got) >= 5000, 10, "all")
            sub.cancel()
        assert sender.stats.window == 3, "the broker's Receive Maximum bounds the window"
        assert sender.stats.peak_in_flight == 2, "3 slots, one kept free for live data"
        for ctype, user, _ in got:
            assert ctype == "application/vnd.edged.columns+json"
            assert ("content-encoding", "zstd") in user
    finally:
        broker.stop()
