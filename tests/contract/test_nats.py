"""NATS JetStream uplink against real nats-server processes: one node for the contract details, a
three-node cluster (replicas 3) whose stream leader is killed mid-batch, and the whole cluster down.

What the stream holds is read with the peer's own protocol client (tests/peers/nats_cluster.py,
not nats-py), message by message: the count of messages, the Nats-Msg-Id of each, and the samples
inside, so "exactly once into the stream" is checked on the stream itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from buffer import Buffer
from edged.config import Secret
from edged.delivery import Sender
from edged.errors import Permanent
from edged.model import Batch, Sample, Status
from edged.plugin import Backoff, PluginContext
from edged.protocols.payload import decode_columns, decompress
from peers.delivery import sender_running
from peers.nats_cluster import NatsCluster, StoredMessage
from peers.waiting import eventually, until
from uplink.nats import Config as NatsConfig
from uplink.nats import Uplink as NatsUplink

GW = "gw.test"  # a '.' in the id: the subject uses gw_test, the payload and msg id the real id
STREAM = "EDGED"


def nats_config(servers: list[str], **kw: Any) -> NatsConfig:
    kw.setdefault("create_stream", True)
    return NatsConfig(name="js", type="nats", servers=servers, stream=STREAM, timeout=3.0, **kw)  # type: ignore[arg-type]


def ctx() -> PluginContext:
    return PluginContext(GW, Path("."), logging.getLogger("test.nats"))


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NatsCluster]:
    server = NatsCluster(tmp_path / "nats", size=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats", size=3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cfg: NatsConfig) -> AsyncIterator[tuple[Buffer, Sender]]:
    async with sender_running(
        tmp_path, cfg, lambda: NatsUplink(cfg, ctx()), gateway=GW, backoff=Backoff(initial=0.2, cap=1.0)
    ) as running:
        yield running


def doc_of(m: StoredMessage) -> dict[str, Any]:
    if m.headers.get("Content-Type", "").endswith("columns+json"):
        return decode_columns(m.data)
    return dict(json.loads(decompress(m.data)))


def seqs_in(messages: list[StoredMessage]) -> list[int]:
    return [s[6] for m in messages for s in doc_of(m)["samples"]]


async def produce(buf: Buffer, n_tags: int, rate_hz: float, counter: list[int], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        ts = time.time_ns()
        buf.put([Sample(f"dev/t{k}", ts, i, Status.GOOD, 100) for k in range(n_tags)])
        counter[0] += n_tags
        i += 1
        await asyncio.sleep(1 / rate_hz)


async def buffered_seqs(buf: Buffer) -> list[int]:
    samples, _ = await buf.call(buf.store.read, 1, buf.head, 10_000_000)
    return [s.seq for s in samples if s.seq is not None]


def assert_exactly_once(messages: list[StoredMessage], expected: list[int]) -> None:
    """Every stored sample in the stream once: no message twice (by Nats-Msg-Id), no seq twice,
    none missing."""
    ids = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    assert [i for i, n in ids.items() if n > 1] == [], "a batch stored twice"
    seqs = seqs_in(messages)
    dupes = [s for s, n in Counter(seqs).items() if n > 1]
    assert dupes == [], f"{len(dupes)} samples twice in the stream"
    assert expected, "something was stored"
    assert sorted(seqs) == sorted(expected), "every stored sample in the stream"


async def all_acked(buf: Buffer) -> bool:
    await buf.flush()
    return not await buf.call(buf.store.unacked, "js", buf.head, limit=1)


# --------------------------------------------------------------------------------- one node


@pytest.mark.parametrize(("encoding", "compression"), [("rows", "none"), ("columns", "zstd")])
async def test_batches_land_in_the_stream_once_each(
    tmp_path: Path, single: NatsCluster, encoding: str, compression: str
) -> None:
    cfg = nats_config(single.urls, encoding=encoding, compression=compression, batch_size=50)
    now = time.time_ns()
    samples = [Sample(f"dev/t{i % 7}", now + i, float(i) / 4, Status.GOOD, 100, "bar") for i in range(300)]
    async with running(tmp_path, cfg) as (buf, sender):
        await eventually(lambda: sender.stats.state == "connected", 10, "connected")
        buf.put(samples)
        await until(lambda: all_acked(buf), 20, "every batch acknowledged")
        want = await buffered_seqs(buf)
        assert sender.tally.totals()["payload_bytes"] > 0
    messages = await single.messages(STREAM)
    info = await single.stream_info(STREAM)
    assert info["state"]["messages"] == len(messages) == 6
    assert info["config"]["subjects"] == ["edged.*.*"], "created with the template's wildcards"
    for m in messages:
        assert m.subject == "edged.gw_test.live"
        doc = doc_of(m)
        assert m.headers["Nats-Msg-Id"] == f"{GW}:{doc['lo_seq']}:{doc['hi_seq']}"
        assert m.headers["Nats-Expected-Stream"] == STREAM
        assert doc["gateway"] == GW
    if compression == "zstd":
        assert messages[0].headers["Content-Encoding"] == "zstd"
        assert messages[0].headers["Content-Type"] == "application/vnd.edged.columns+json"
    got = [s for m in messages for s in doc_of(m)["samples"]]
    assert [(r[0], r[2], r[5]) for r in got] == [(s.tag, s.value, s.unit) for s in samples]
    assert_exactly_once(messages, want)


async def test_a_resent_batch_is_dropped_by_the_duplicate_window(single: NatsCluster) -> None:
    """The same window sent again (what a reconnect does) is acknowledged as a duplicate and not stored."""
    cfg = nats_config(single.urls)
    batch = Batch(GW, 10, 12, False, [Sample("a/b", time.time_ns(), i, Status.GOOD, 100, seq=10 + i) for i in range(3)])
    async with NatsUplink(cfg, ctx()) as up:
        await up.send(batch)
        await up.send(batch)
        await asyncio.gather(up.send(batch), up.send(batch))
        assert up.counters()["duplicates"] == 3
    async with NatsUplink(cfg, ctx()) as up:  # a new connection: the stream still knows the id
        await up.send(batch)
        assert up.counters()["duplicates"] == 1
        other = msgspec.structs.replace(batch, hi_seq=13)  # other bounds: another id, stored
        await up.send(other)
        assert up.counters()["duplicates"] == 1
    assert [m.headers["Nats-Msg-Id"] for m in await single.messages(STREAM)] == [f"{GW}:10:12", f"{GW}:10:13"]


async def test_a_window_of_publishes_arrives_in_order(single: NatsCluster) -> None:
    cfg = nats_config(single.urls)
    now = time.time_ns()
    batches = [Batch(GW, i, i, False, [Sample("a/b", now + i, i, Status.GOOD, 100, seq=i)]) for i in range(1, 201)]
    async with NatsUplink(cfg, ctx()) as up:
        await asyncio.gather(*(up.send(b) for b in batches))  # 200 PubAcks outstanding at once
    messages = await single.messages(STREAM)
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"{GW}:{i}:{i}" for i in range(1, 201)]


async def test_missing_stream_and_foreign_subject_are_permanent(single: NatsCluster) -> None:
    with pytest.raises(Permanent, match="stream EDGED does not exist"):
        async with NatsUplink(nats_config(single.urls, create_stream=False), ctx()):
            pass
    # creates EDGED on other.>, then finds its own subjects are not in it
    with pytest.raises(Permanent, match=r"does not take subject edged\.gw_test\.live"):
        async with NatsUplink(nats_config(single.urls, stream_subjects=["other.>"]), ctx()):
            pass


async def test_rejected_batch_is_permanent(single: NatsCluster) -> None:
    """A message larger than the stream's max_msg_size: the PubAck's 4xx error, Permanent."""
    await single.wait_ready()
    doc = await single.api(f"STREAM.CREATE.{STREAM}", {"name": STREAM, "subjects": ["edged.>"], "max_msg_size": 200,
                                                       "storage": "memory", "num_replicas": 1})  # fmt: skip
    assert "error" not in doc, doc
    big = Batch(GW, 1, 50, False, [Sample("a/b", time.time_ns(), i, Status.GOOD, 100, seq=i) for i in range(1, 51)])
    async with NatsUplink(nats_config(single.urls), ctx()) as up:
        with pytest.raises(Permanent, match="refused the batch"):
            await up.send(big)


def user_nkey() -> tuple[str, str]:
    """A fresh user NKey: (seed, public key), made with the nkeys library nats-py signs with."""
    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()


@pytest.mark.parametrize("method", ["password", "token", "nkey"])
async def test_wrong_credential_is_permanent(tmp_path: Path, method: str) -> None:
    good: dict[str, Any]
    bad: dict[str, Any]
    if method == "password":
        auth = 'authorization { users: [{user: gw, password: "right-one"}] }'
        good = {"user": "gw", "password": Secret("right-one")}
        bad = {"user": "gw", "password": Secret("wrong")}
    elif method == "token":
        auth = 'authorization { token: "right-token" }'
        good, bad = {"token": Secret("right-token")}, {"token": Secret("wrong")}
    else:
        seed, public = user_nkey()
        auth = f"authorization {{ users: [{{nkey: {public}}}] }}"
        good, bad = {"nkey_seed": Secret(seed)}, {"nkey_seed": Secret(user_nkey()[0])}
    server = NatsCluster(tmp_path / "auth", size=1, auth=auth)
    server.start()
    try:
        async with NatsUplink(nats_config(server.urls, **good), ctx()):
            pass  # the right one works: the refusal below is the credential's, nothing else
        with pytest.raises(Permanent, match="refused the credentials"):
            async with NatsUplink(nats_config(server.urls, **bad), ctx()):
                pass
    finally:
        server.stop()


async def test_server_down_is_transient(tmp_path: Path) -> None:
    from edged.errors import Transient

    server = NatsCluster(tmp_path / "down", size=1)  # never started: connection refused
    with pytest.raises(Transient):
        async with NatsUplink(nats_config(server.urls), ctx()):
            pass


# --------------------------------------------------------------------------------- the cluster


@pytest.mark.timeout(180)
async def test_killing_the_stream_leader_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    await cluster.wait_ready()
    cfg = nats_config(cluster.urls, replicas=3, batch_size=100, max_inflight=16)
    async with running(tmp_path, cfg) as (buf, sender), asyncio.TaskGroup() as tg:
        stop, produced = asyncio.Event(), [0]
        prod = tg.create_task(produce(buf, 50, 100, produced, stop), name="producer")  # 5000 samples/s
        await eventually(lambda: sender.stats.batches > 50, 30, "batches flowing")
        leader = await cluster.leader(STREAM)
        await eventually(lambda: sender.stats.in_flight > 0, 10, "a batch in flight")
        cluster.kill(leader)  # SIGKILL, batches in flight
        errors = sender.stats.errors
        batches = sender.stats.batches
        await eventually(lambda: sender.stats.batches > batches + 50, 60, "delivery going on without the old leader")
        stop.set()
        await prod
        await until(lambda: all_acked(buf), 60, "everything acknowledged")
        want = await buffered_seqs(buf)
        first_samples, _ = await buf.call(buf.store.read, 1, buf.head, 10_000)  # the first batch's, below
    assert sender.stats.errors > errors, "the kill interrupted delivery"
    new_leader = await cluster.leader(STREAM)
    assert new_leader != leader
    messages = await cluster.messages(STREAM)
    info = await cluster.stream_info(STREAM)
    assert info["state"]["messages"] == len(messages)
    assert_exactly_once(messages, want)
    assert buf.stored == produced[0]
    # the duplicate window is replicated: the new leader drops a re-send of a batch the old one stored
    first = doc_of(messages[0])
    samples = [s for s in first_samples if s.seq is not None and first["lo_seq"] <= s.seq <= first["hi_seq"]]
    assert len(samples) == len(first["samples"])
    async with NatsUplink(cfg, ctx()) as up:
        await up.send(Batch(GW, first["lo_seq"], first["hi_seq"], True, samples))
        assert up.counters()["duplicates"] == 1
    assert (await cluster.stream_info(STREAM))["state"]["messages"] == len(messages)
    logging.getLogger("test.nats").info(
        "leader kill: %d errors, %d re-sent duplicates dropped, %d messages",
        sender.stats.errors - errors, sender.tally.totals().get("duplicates", 0), len(messages),
    )  # fmt: skip


@pytest.mark.timeout(180)
async def test_the_whole_cluster_down_then_back_delivers_everything_live_first(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    await cluster.wait_ready()
    cfg = nats_config(cluster.urls, replicas=3, batch_size=200, backfill_share=0.3)
    async with running(tmp_path, cfg) as (buf, sender), asyncio.TaskGroup() as tg:
        stop, produced = asyncio.Event(), [0]
        prod = tg.create_task(produce(buf, 20, 50, produced, stop), name="producer")  # 1000 samples/s
        await eventually(lambda: sender.stats.batches > 10, 30, "first batches")
        cluster.stop()
        await eventually(lambda: sender.stats.state in ("backoff", "connecting"), 20, "the sender to notice")
        down_at = produced[0]
        await eventually(lambda: produced[0] >= down_at + 6000, 30, "6000 samples produced while down")
        cluster.start()
        await cluster.wait_ready()
        await until(lambda: all_acked(buf), 90, "catch-up")
        stop.set()
        await prod
        await until(lambda: all_acked(buf), 30, "the last live batches")
        want = await buffered_seqs(buf)
    messages = await cluster.messages(STREAM)
    assert_exactly_once(messages, want)
    hist = [m.seq for m in messages if m.subject.endswith(".historical")]
    assert hist, "the outage went out as historical"
    live_after = [m.seq for m in messages if m.subject.endswith(".live") and m.seq > hist[0]]
    assert live_after and live_after[0] < hist[-1], "live batches went out while the backlog drained"
