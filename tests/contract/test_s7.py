"""The S7 driver against python-snap7's own server (tests/peers/s7_server.py) on 127.0.0.1.

The expected bytes are packed here with struct and by hand, independently of drivers.s7.codec;
tests/unit/test_s7_codec.py checks the codec against the Siemens layouts themselves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Store
from drivers.s7 import Config, Driver, WriteError
from edged.commands import AuditTrail, Command, CommandGate, Result
from edged.config import parse
from edged.daemon import Daemon
from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.s7_server import S7Peer
from peers.waiting import daemon_samples, until

CTX = PluginContext("test", Path("/tmp"), logging.getLogger("test.s7"))


def device(port: int, tags: list[dict[str, Any]], **kw: Any) -> Config:
    raw = {"name": "plc", "type": "s7", "host": "127.0.0.1", "port": port, "timeout": "300ms", "interval": "50ms"}
    cfg = parse({"gateway": {"id": "test", "data_dir": "/tmp"}, "devices": [raw | kw | {"tags": tags}]})
    dev = cfg.devices[0]
    assert isinstance(dev, Config)
    return dev


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag.split("/", 1)[1]: s for s in samples}


# ----------------------------------------------------------------------------------------- the map


def build_map(peer: S7Peer) -> tuple[list[dict[str, Any]], dict[str, object]]:
    """DB1 with every type, bits in M and Q, a word in I; the tags and what each must read."""
    db = peer.area("DB", 200, db=1)
    m, q, i = peer.area("M", 64), peer.area("Q", 16), peer.area("I", 16)
    tags: list[dict[str, Any]] = []
    expect: dict[str, object] = {}

    def put(name: str, dtype: str, address: int, raw: bytes, value: object, **kw: Any) -> None:
        db[address : address + len(raw)] = raw
        tags.append({"name": name, "db": 1, "address": address, "type": dtype, **kw})
        expect[name] = value

    put("real", "real", 0, struct.pack(">f", -12.375), -12.375)
    put("lreal", "lreal", 4, struct.pack(">d", math.pi), math.pi)
    put("int", "int", 12, struct.pack(">h", -12345), -12345)
    put("dint", "dint", 14, struct.pack(">i", -123456789), -123456789)
    put("udint", "udint", 18, struct.pack(">I", 0xDEADBEEF), 0xDEADBEEF)
    put("word", "word", 22, b"\xbe\xef", 0xBEEF)
    put("byte", "byte", 24, b"\x7f", 0x7F)
    put("sint", "sint", 25, b"\xff", -1)
    put("lint", "lint", 26, struct.pack(">q", -(2**62)), -(2**62))
    put("time", "time", 34, struct.pack(">i", 90_061_001), 90_061_001)
    put("tod", "tod", 38, struct.pack(">I", 45_296_789), "12:34:56.789")
    put("date", "date", 42, struct.pack(">H", 12_480), "2024-03-03")  # 1990-01-01 + 12480 days
    put("dt", "dt", 44, bytes.fromhex("2403031234567891"), "2024-03-03T12:34:56.789")
    put("dtl", "dtl", 52, bytes.fromhex("07E8030301 0C2238 00BC614E".replace(" ", "")), "2024-03-03T12:34:56.012345678")
    put("text", "string", 64, b"\x0a\x08edged-gw\x00\x00", "edged-gw", length=10)
    put("wide", "wstring", 76, struct.pack(">HH", 4, 2) + "Ωk".encode("utf-16-be") + bytes(4), "Ωk", length=4)
    put("scaled", "int", 88, struct.pack(">h", 13824), 50.0, scale=100 / 27648)  # half of an analog range
    db[90] = 0b1000_0101
    for bit in (0, 1, 2, 7):
        tags.append({"name": f"db_bit{bit}", "db": 1, "address": 90, "type": "bool", "bit": bit})
        expect[f"db_bit{bit}"] = bool(db[90] >> bit & 1)
    m[10] = 0b0000_0010
    tags.append({"name": "m_flag", "area": "M", "address": 10, "bit": 1, "type": "bool"})
    expect["m_flag"] = True
    m[20:22] = struct.pack(">h", -2)
    tags.append({"name": "m_word", "area": "M", "address": 20, "type": "int"})
    expect["m_word"] = -2
    q[1] = 0b1000_0000
    tags.append({"name": "q_out", "area": "Q", "address": 1, "bit": 7, "type": "bool"})
    expect["q_out"] = True
    i[4:6] = b"\x12\x34"
    tags.append({"name": "i_word", "area": "I", "address": 4, "type": "word"})
    expect["i_word"] = 0x1234
    return tags, expect


def check_values(samples: list[Sample], expect: dict[str, object]) -> None:
    got = by_name(samples)
    assert set(got) == set(expect)
    for name, want in expect.items():
        s = got[name]
        assert s.status == Status.GOOD, (name, Status(s.status).name)
        if isinstance(want, float):
            assert s.value == pytest.approx(want, rel=1e-6), name
        else:
            assert s.value == want, name
            assert type(s.value) is type(want), name


@pytest.fixture
def peer() -> Iterator[S7Peer]:
    p = S7Peer()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def plc(peer: S7Peer) -> tuple[S7Peer, list[dict[str, Any]], dict[str, object]]:
    tags, expect = build_map(peer)
    peer.start_local()
    return peer, tags, expect


async def take(driver: Driver, n: int) -> list[list[Sample]]:
    out: list[list[Sample]] = []
    async with asyncio.timeout(10), contextlib.aclosing(driver.samples()) as stream:
        async for batch in stream:
            out.append(batch)
            if len(out) >= n:
                break
    return out


# ----------------------------------------------------------------------------------------- reading


async def test_every_type_in_every_area_decodes_in_few_jobs(plc: Any) -> None:
    peer, tags, expect = plc
    async with Driver(device(peer.port, tags), CTX) as drv:
        assert drv.pdu == 480  # negotiated: the server grants at most 480
        jobs, requests = peer.jobs, drv.counters()["requests"]
        samples = await drv.poll()
        check_values(samples, expect)
        # DB1 0..91 is one item, M 10..21, Q 1, I 4..5 three more: one PDU for all 31 tags
        assert peer.jobs - jobs == drv.counters()["requests"] - requests == 1
        assert peer.items == 2 * 4  # the probe and this poll, four items each
        assert drv.counters()["errors"] == 0


async def test_a_large_map_is_packed_into_pdu_sized_jobs(peer: S7Peer) -> None:
    db = peer.area("DB", 4000, db=5)
    for n in range(200):
        struct.pack_into(">f", db, 20 * n, float(n))
    peer.start_local()
    run = [{"name": "meter{i}/power", "count": 200, "first": 0, "db": 5, "address": 0, "stride": 20, "type": "real"}]
    async with Driver(device(peer.port, run, max_gap=4), CTX) as drv:
        jobs = peer.jobs
        got = by_name(await drv.poll())
        assert [got[f"meter{n}/power"].value for n in range(200)] == [float(n) for n in range(200)]
        # 200 items of 4 bytes: 19 per request at most by the 480-byte request budget (12 + 12 * 39 > 480)
        # and 20 by max_items: 10 jobs, where reading one tag per job would take 200
        assert peer.jobs - jobs == 10
    async with Driver(device(peer.port, run, max_gap=16), CTX) as drv:
        jobs = peer.jobs
        got = by_name(await drv.poll())
        assert got["meter199/power"].value == 199.0
        # the 16-byte holes bridged: ranges of 23 tags (444 bytes), each filling an answer by itself
        assert peer.jobs - jobs == 9


async def test_missing_db_and_short_db_spare_the_other_tags(plc: Any, caplog: pytest.LogCaptureFixture) -> None:
    peer, _, _ = plc
    tags = [
        {"name": "ok1", "db": 1, "address": 0, "type": "real"},
        {"name": "ok2", "db": 1, "address": 190, "type": "int"},
        {"name": "beyond", "db": 1, "address": 196, "type": "dint"},  # DB1 has 200 bytes: 196..199 fits
        {"name": "past_end", "db": 1, "address": 200, "type": "dint"},  # 200..203 does not
        {"name": "no_db", "db": 9, "address": 0, "type": "int"},
    ]
    caplog.set_level(logging.WARNING, logger="test.s7")
    async with Driver(device(peer.port, tags, max_gap=16), CTX) as drv:
        first = by_name(await drv.poll())
        assert first["no_db"].status == Status.BAD_CONFIGURATION_ERROR
        assert first["past_end"].status == Status.BAD_CONFIGURATION_ERROR
        assert first["past_end"].value is None
        assert first["ok1"].value == -12.375 and first["ok1"].status == Status.GOOD
        # ok2, beyond and past_end were one range 190..203, refused as a whole, then split and re-read
        assert first["ok2"].status == first["beyond"].status == Status.GOOD
        assert drv.counters()["item_0a"] >= 1 and drv.counters()["item_05"] >= 2
        ours = lambda: [r for r in caplog.records if r.name == "test.s7"]  # not the server's own log
        logged = len(ours())
        jobs = peer.jobs
        again = by_name(await drv.poll())
        assert peer.jobs - jobs == 1  # the split is remembered: still one job, with more items
        assert again["beyond"].status == Status.GOOD
        assert again["past_end"].status == Status.BAD_CONFIGURATION_ERROR
        assert len(ours()) == logged  # nothing new logged


async def test_tags_with_different_intervals_share_jobs_when_due_together(plc: Any) -> None:
    peer, _, _ = plc
    tags = [
        {"name": "fast", "db": 1, "address": 0, "type": "real", "interval": "50ms"},
        {"name": "slow", "db": 1, "address": 12, "type": "int", "interval": "100ms"},
        {"name": "slower", "area": "M", "address": 20, "type": "int", "interval": "200ms"},
    ]
    async with Driver(device(peer.port, tags), CTX) as drv:
        start = drv.counters()["requests"]
        batches = await take(drv, 6)
        names = [set(by_name(b)) for b in batches]
        assert names[0] == {"fast", "slow", "slower"}
        assert all("fast" in n for n in names)
        assert drv.counters()["requests"] - start == len(batches)  # one job per poll, never more


# ----------------------------------------------------------------------------------------- errors


async def test_nothing_listening_is_transient(peer: S7Peer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(Transient, match="cannot connect"):
        async with Driver(device(port, [{"name": "x", "db": 1, "address": 0, "type": "int"}]), CTX):
            pass


async def test_a_cpu_that_refuses_put_get_fails_the_connect_for_good(plc: Any) -> None:
    peer, tags, _ = plc
    peer.fault = "refuse"
    with pytest.raises(Permanent, match=r"0x8104.*PUT/GET"):
        async with Driver(device(peer.port, tags), CTX):
            pass


FAULTS = [("mute", Status.BAD_TIMEOUT, "timeout"), ("garbage", Status.BAD_COMMUNICATION_ERROR, "bad_frame")]


async def drain(driver: Driver, into: list[list[Sample]]) -> None:
    """Collect batches until the stream raises (the test expects it to)."""
    async with asyncio.timeout(10), contextlib.aclosing(driver.samples()) as stream:
        async for batch in stream:
            into.append(batch)


@pytest.mark.parametrize(("fault", "status", "counter"), FAULTS)
async def test_silence_or_garbage_marks_the_poll_then_gives_up_the_connection(
    plc: Any, fault: str, status: Status, counter: str
) -> None:
    peer, tags, expect = plc
    batches: list[list[Sample]] = []
    async with Driver(device(peer.port, tags), CTX) as drv:
        check_values((await take(drv, 1))[0], expect)
        peer.fault = fault
        with pytest.raises(Transient, match="broken after"):
            await drain(drv, batches)
        assert drv.counters()[counter] == 1
    assert len(batches) == 1 and {s.status for s in batches[0]} == {status}
    assert len(batches[0]) == len(tags)  # every tag reported
    with pytest.raises(Transient):  # the probe at connect fails the same way
        async with Driver(device(peer.port, tags), CTX):
            pass
    peer.fault = "ok"
    async with Driver(device(peer.port, tags), CTX) as drv:
        check_values(await drv.poll(), expect)


async def test_plc_going_away_is_transient_and_recovers_after_restart(plc: Any) -> None:
    peer, tags, expect = plc
    cfg = device(peer.port, tags)
    async with Driver(cfg, CTX) as drv:
        check_values(await drv.poll(), expect)
        await asyncio.to_thread(peer.stop)
        with pytest.raises(Transient, match=r"lost|closed"):
            await take(drv, 100)
    with pytest.raises(Transient, match="cannot connect"):
        async with Driver(cfg, CTX):
            pass
    peer.start_local(peer.port)
    async with Driver(cfg, CTX) as drv:
        check_values(await drv.poll(), expect)


async def test_a_tag_too_large_for_the_negotiated_pdu_is_permanent(plc: Any) -> None:
    peer, _, _ = plc
    tag = {"name": "big", "db": 1, "address": 0, "type": "wstring", "length": 230}  # 464 bytes
    with pytest.raises(Permanent, match="480-byte PDU: tag big"):
        async with Driver(device(peer.port, [tag], pdu_size=960), CTX):
            pass


# ----------------------------------------------------------------------------------------- writing


WRITABLE = [
    {"name": "setpoint", "db": 1, "address": 100, "type": "real", "writable": True, "unit": "bar"},
    {"name": "scaled", "db": 1, "address": 104, "type": "int", "scale": 0.1, "writable": True},
    {"name": "counter", "db": 1, "address": 106, "type": "dint", "writable": True},
    {"name": "enable", "db": 1, "address": 110, "type": "bool", "bit": 3, "writable": True},
    {"name": "label", "db": 1, "address": 112, "type": "string", "length": 6, "writable": True},
    {"name": "stamp", "db": 1, "address": 120, "type": "dt", "writable": True},
    {"name": "lamp", "area": "Q", "address": 2, "bit": 0, "type": "bool", "writable": True},
    {"name": "flag_word", "area": "M", "address": 30, "type": "word", "writable": True},
    {"name": "readonly", "db": 1, "address": 0, "type": "real"},
    {"name": "missing", "db": 7, "address": 0, "type": "int", "writable": True},
]


async def test_write_with_readback(plc: Any) -> None:
    peer, _, _ = plc
    db, q, m = peer.memory[("DB", 1)], peer.memory[("Q", 0)], peer.memory[("M", 0)]
    async with Driver(device(peer.port, WRITABLE), CTX) as drv:
        s = await drv.write("setpoint", 21.5)
        assert (s.value, s.unit, s.status) == (21.5, "bar", Status.GOOD)
        assert bytes(db[100:104]) == bytes.fromhex("41AC0000")
        assert (await drv.write("plc/scaled", 12.3)).value == pytest.approx(12.3)
        assert bytes(db[104:106]) == struct.pack(">h", 123)
        assert (await drv.write("counter", -70000)).value == -70000
        assert bytes(db[106:110]) == struct.pack(">i", -70000)
        db[110] = 0b1_0001
        assert (await drv.write("enable", True)).value is True
        assert db[110] == 0b1_1001  # a bit write: the other bits are untouched
        assert (await drv.write("enable", False)).value is False
        assert db[110] == 0b1_0001
        assert (await drv.write("label", "ok")).value == "ok"
        assert bytes(db[112:116]) == b"\x06\x02ok"
        assert (await drv.write("stamp", "2024-03-03T12:34:56.789")).value == "2024-03-03T12:34:56.789"
        assert bytes(db[120:128]) == bytes.fromhex("2403031234567891")
        assert (await drv.write("lamp", True)).value is True and q[2] == 1
        assert (await drv.write("flag_word", 0xA55A)).value == 0xA55A and bytes(m[30:32]) == b"\xa5\x5a"
        assert by_name(await drv.poll())["setpoint"].value == 21.5

        with pytest.raises(WriteError, match="not writable"):
            await drv.write("readonly", 1.0)
        with pytest.raises(WriteError, match="no tag") as unknown:
            await drv.write("nope", 1)
        assert unknown.value.status == Status.BAD_NODE_ID_UNKNOWN
        with pytest.raises(WriteError, match="outside the int range") as too_big:
            await drv.write("scaled", 1e6)
        assert too_big.value.status == Status.BAD_OUT_OF_RANGE
        with pytest.raises(WriteError, match="holds 6"):
            await drv.write("label", "too long")
        with pytest.raises(WriteError, match="0x8404"):  # the server refuses a write to a DB it lacks
            await drv.write("missing", 1)
        peer.fault = "ignore_writes"
        with pytest.raises(ReadbackMismatch, match=r"wrote 99\.5 but read back 21\.5") as mismatch:
            await drv.write("setpoint", 99.5)
        assert mismatch.value.readback == 21.5
        peer.fault = "mute"
        with pytest.raises(Transient, match="no answer"):
            await drv.write("setpoint", 1.0)


async def test_writes_through_the_command_gate(plc: Any, tmp_path: Path) -> None:
    peer, _, _ = plc
    raw = {"name": "plc", "type": "s7", "host": "127.0.0.1", "port": peer.port, "timeout": "300ms",
           "tags": WRITABLE}  # fmt: skip
    cfg = parse(
        {
            "gateway": {"id": "gw", "data_dir": str(tmp_path)},
            "devices": [raw],
            "uplinks": [{"name": "cloud", "type": "mqtt"}],
            "commands": {
                "enabled": True,
                "max_age": "30s",
                "tags": [
                    {"tag": "plc/setpoint", "sources": ["cloud"], "min": 0.0, "max": 50.0},
                    {"tag": "plc/enable", "sources": ["cloud"]},
                    {"tag": "plc/missing", "sources": ["cloud"]},
                ],
            },
        }
    )

    def cmd(tag: str, value: Any, id: str) -> Command:
        return Command(id, "cloud", "tester", tag, value, time.time_ns())

    db = peer.memory[("DB", 1)]
    with Store(tmp_path / "buffer.db") as store:
        async with Driver(cfg.devices[0], CTX) as drv:  # type: ignore[arg-type]

            async def lookup(name: str) -> Driver | None:
                return drv if name == "plc" else None

            gate = CommandGate(cfg, AuditTrail.for_store(store), lookup)
            res = await gate.submit(cmd("plc/setpoint", 42.25, "a"))
            assert (res.result, res.readback) == (Result.ACCEPTED, 42.25), res.reason
            assert struct.unpack(">f", db[100:104])[0] == 42.25
            res = await gate.submit(cmd("plc/setpoint", 60.0, "b"))
            assert (res.result, res.code) == (Result.REJECTED, "out_of_range")
            assert struct.unpack(">f", db[100:104])[0] == 42.25
            res = await gate.submit(cmd("plc/enable", True, "c"))
            assert res.ok and db[110] & 0b1000
            res = await gate.submit(cmd("plc/missing", 1, "d"))
            assert (res.result, res.code) == (Result.REJECTED, "device_refused")
        assert [r.result for r in store.audit_rows()] == ["accepted", "rejected", "accepted", "rejected"]


# ----------------------------------------------------------------------------------------- daemon


async def test_daemon_stores_decoded_values(plc: Any, tmp_path: Path) -> None:
    peer, tags, expect = plc
    dev = {"name": "plc", "type": "s7", "host": "127.0.0.1", "port": peer.port, "interval": "100ms", "tags": tags}
    cfg = parse(
        {
            "gateway": {"id": "gw-test", "data_dir": str(tmp_path)},
            "devices": [dev],
            "uplinks": [{"name": "archive", "type": "file", "path": "samples.jsonl", "fsync": False}],
        }
    )
    daemon = Daemon(cfg)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(daemon.run(), name="daemon")

        async def enough() -> bool:
            counts = collections.Counter(s.tag for s in await daemon_samples(daemon))
            return len(counts) == len(tags) and min(counts.values()) >= 1

        await until(enough, 20, "a reading of every tag")
        daemon.request_stop()
    latest = {s.tag: s for s in await asyncio.to_thread(_stored, cfg.buffer_path)}
    check_values(list(latest.values()), expect)


def _stored(path: Path) -> list[Sample]:
    with Store(path) as store:
        return store.read(1, store.head, 100_000)[0]
