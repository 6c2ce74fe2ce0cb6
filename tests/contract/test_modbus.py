"""The Modbus driver against real pymodbus servers: TCP on 127.0.0.1 and RTU over a socat pty pair."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Store
from drivers.modbus import Config, Driver, SerialLines, WriteError
from edged.config import parse
from edged.daemon import Daemon
from edged.errors import Permanent, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.modbus_server import ModbusPeer, Unit, socat_pair
from peers.waiting import daemon_samples, eventually, until

# ----------------------------------------------------------------------------------------- the map

ORDERS = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
}
FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q"}
FORMATS |= {"float32": "f", "float64": "d"}
VALUES: dict[str, int | float] = {
    "int16": -12345,
    "uint16": 0xBEEF,
    "int32": -123456789,
    "uint32": 0xDEADBEEF,
    "int64": -1234567890123456789,
    "uint64": 0x0123456789ABCDEF,
    "float32": -12.375,
    "float64": math.pi,
}


def ref_regs(value: int | float, dtype: str, order: str) -> list[int]:
    """Reference layout written independently of edged.protocols.modbus: pack big-endian, then
    reverse the words (CDAB, DCBA) and/or swap the bytes inside each word (BADC, DCBA)."""
    b = struct.pack(">" + FORMATS[dtype], value)
    words = [b[i : i + 2] for i in range(0, len(b), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def build_map(unit_id: int = 1, base: int = 0) -> tuple[Unit, list[dict[str, Any]], dict[str, object]]:
    """A unit with every type in every order plus bits, strings, scaling, coils and inputs; the
    matching tag configs; and the value each tag must decode to. `base` shifts every value."""
    unit = Unit(unit_id)
    tags: list[dict[str, Any]] = []
    expect: dict[str, object] = {}
    addr = 0
    for dtype, value in VALUES.items():
        value = value + base if dtype != "uint64" else value
        for order, (wo, bo) in ORDERS.items():
            name = f"{dtype}_{order}"
            regs = ref_regs(value, dtype, order)
            unit.holding.update({addr + i: r for i, r in enumerate(regs)})
            tags.append({"name": name, "address": addr, "type": dtype, "word_order": wo, "byte_order": bo})
            expect[name] = value
            addr += len(regs)
    for name, bo in (("text", "big"), ("text_swapped", "little")):
        raw = b"edged-gw\x00\x00"
        words = [raw[i : i + 2] if bo == "big" else raw[i : i + 2][::-1] for i in range(0, 10, 2)]
        unit.holding.update({addr + i: int.from_bytes(w, "big") for i, w in enumerate(words)})
        tags.append({"name": name, "address": addr, "type": "string", "length": 10, "byte_order": bo})
        expect[name] = "edged-gw"
        addr += 5
    unit.holding[addr] = 0b1000_0000_0000_0101 ^ base  # a status word
    for bit in (0, 1, 2, 15):
        tags.append({"name": f"status_bit{bit}", "address": addr, "bit": bit})
        expect[f"status_bit{bit}"] = bool(unit.holding[addr] >> bit & 1)
    addr += 1
    unit.holding[addr] = 1234 + base  # 0.1 degC, offset -40
    tags.append({"name": "scaled", "address": addr, "type": "int16", "scale": 0.1, "offset": -40.0, "unit": "degC"})
    expect["scaled"] = (1234 + base) * 0.1 - 40.0
    addr += 1
    unit.holding.update({addr: 0x0010, addr + 1: 0x0000})  # bit 20 of a uint32 is bit 4 of the high word
    tags.append({"name": "flags_bit20", "address": addr, "type": "uint32", "bit": 20})
    expect["flags_bit20"] = True
    unit.input.update({a: 0 for a in range(1, 10)})  # mapped but not polled: bridged by the gap rule
    unit.input.update({0: 777 + base, 10: ref_regs(2.5, "float32", "CDAB")[0], 11: ref_regs(2.5, "float32", "CDAB")[1]})
    tags.append({"name": "in_raw", "address": 0, "table": "input_register"})
    tags.append(
        {
            "name": "in_float",
            "address": 10,
            "table": "input_register",
            "type": "float32",
            "word_order": "little",
        }
    )
    expect |= {"in_raw": 777 + base, "in_float": 2.5}
    for a in range(10):
        unit.coils[a] = (a + base) % 3 == 0
        tags.append({"name": f"coil{a}", "address": a, "table": "coil"})
        expect[f"coil{a}"] = unit.coils[a]
    for a in range(5):
        unit.discrete[a] = a % 2 == 1
        tags.append({"name": f"di{a}", "address": a, "table": "discrete_input"})
        expect[f"di{a}"] = unit.discrete[a]
    return unit, tags, expect


# ----------------------------------------------------------------------------------------- helpers

CTX = PluginContext("test", Path("/tmp"), logging.getLogger("test.modbus"))


def device(name: str, tags: list[dict[str, Any]], **kw: Any) -> Config:
    raw = {
        "name": name,
        "type": "modbus",
        "tags": tags,
        "timeout": "200ms",
        "retries": 0,
        "interval": "50ms",
    } | kw
    cfg = parse({"gateway": {"id": "test", "data_dir": "/tmp"}, "devices": [raw]})
    dev = cfg.devices[0]
    assert isinstance(dev, Config)
    return dev


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag.split("/", 1)[1]: s for s in samples}


def check_values(samples: list[Sample], expect: dict[str, object]) -> None:
    got = by_name(samples)
    assert set(got) == set(expect)
    for name, want in expect.items():
        s = got[name]
        assert s.status == Status.GOOD, (name, Status(s.status).name)
        if isinstance(want, float):
            assert s.value == pytest.approx(want, rel=1e-12), name
        else:
            assert s.value == want, name
            assert type(s.value) is type(want), name


async def drain(driver: Driver, into: list[list[Sample]]) -> None:
    """Collect batches until the stream raises (the test expects it to)."""
    async with asyncio.timeout(10), contextlib.aclosing(driver.samples()) as stream:
        async for batch in stream:
            into.append(batch)


async def take(driver: Driver, n: int) -> list[list[Sample]]:
    out: list[list[Sample]] = []
    async with asyncio.timeout(10), contextlib.aclosing(driver.samples()) as stream:
        async for batch in stream:
            out.append(batch)
            if len(out) >= n:
                break
    return out


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture
async def tcp() -> AsyncIterator[tuple[ModbusPeer, list[dict[str, Any]], dict[str, object]]]:
    unit, tags, expect = build_map()
    unit.holding.update({200: 1, 220: 2, 240: 3, 260: 4, 280: 5, 300: 6, 301: 7, 302: 8, 303: 9})
    unit.faults.update({200: 0x04, 220: 0x06, 240: 0x01, 260: 0x0B, 280: 0x0A})
    unit.holding.update({400: 0, 401: 0, 402: 0, 403: 0, 404: 0, 405: 0, 406: 0, 407: 0, 410: 0, 411: 0})
    unit.clamp[410] = 100
    unit.readonly.add(411)
    peer = ModbusPeer([unit, Unit(2, holding={0: 42})])
    await peer.start_tcp(0)
    try:
        yield peer, tags, expect
    finally:
        await peer.stop()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with socat_pair(tmp_path) as pair:
        yield pair


@pytest.fixture
async def rtu(pty_pair: tuple[str, str]) -> AsyncIterator[tuple[ModbusPeer, str]]:
    client, server = pty_pair
    units = [build_map(1)[0], build_map(2, base=100)[0], Unit(3, holding={0: 3, 1: 33})]
    peer = ModbusPeer(units)
    await peer.start_rtu(server)
    try:
        yield peer, client
    finally:
        await peer.stop()


# ----------------------------------------------------------------------------------------- TCP


async def test_every_type_and_order_decodes_over_tcp(tcp: Any) -> None:
    peer, tags, expect = tcp
    async with Driver(device("plc", tags, host="127.0.0.1", port=peer.port), CTX) as drv:
        before = drv.counters()["requests"]
        samples = await drv.poll()
        check_values(samples, expect)
        # holding 0..93, input 0..11, coils 0..9, discrete inputs 0..4: one request each
        assert drv.counters()["requests"] - before == 4
        assert drv.counters()["errors"] == 0
        assert by_name(samples)["scaled"].unit == "degC"


async def test_tags_with_different_intervals_share_requests_when_due_together(tcp: Any) -> None:
    peer, _, _ = tcp
    tags = [
        {"name": "fast", "address": 300, "interval": "50ms"},
        {"name": "slow", "address": 301, "interval": "100ms"},
        {"name": "slower", "address": 303, "interval": "200ms"},
    ]
    async with Driver(device("plc", tags, host="127.0.0.1", port=peer.port), CTX) as drv:
        start = drv.counters()["requests"]
        batches = await take(drv, 8)
        names = [set(by_name(b)) for b in batches]
        # on the common grid, whenever a slower tag is due the faster ones are due too (on an idle
        # machine the pattern is 3,1,2,1,3,1,2,1 samples), and they share one request
        assert all("fast" in n for n in names)
        assert all("slow" in n for n in names if "slower" in n)
        assert names[0] == {"fast", "slow", "slower"}
        assert sum("slow" in n for n in names) < len(names)
        assert drv.counters()["requests"] - start == len(batches)  # one request per poll, never more
        assert all(s.status == Status.GOOD for b in batches for s in b)


async def test_exception_codes_map_to_statuses_and_spare_the_other_tags(
    tcp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    peer, _, _ = tcp
    tags = [
        {"name": "failing", "address": 200},  # 0x04 server device failure
        {"name": "busy", "address": 220},  # 0x06 busy
        {"name": "unsupported", "address": 240},  # 0x01 illegal function
        {"name": "ok1", "address": 300},
        {"name": "ok2", "address": 302},
        {"name": "unmapped", "address": 305},  # merged with ok1/ok2 by the gap rule, then split
        {"name": "ok3", "address": 303},
        {"name": "gw_target", "address": 260},  # 0x0B
        {"name": "gw_path", "address": 280},  # 0x0A
    ]
    cfg = device("plc", tags, host="127.0.0.1", port=peer.port, max_failed_polls=10)
    caplog.set_level(logging.WARNING, logger="test.modbus")
    async with Driver(cfg, CTX) as drv:
        first = by_name(await drv.poll(["failing", "busy", "unsupported", "ok1", "ok2", "unmapped", "ok3"]))
        assert first["failing"].status == Status.BAD_DEVICE_FAILURE
        assert first["busy"].status == Status.BAD_TIMEOUT
        assert first["unsupported"].status == Status.BAD_CONFIGURATION_ERROR
        assert first["unmapped"].status == Status.BAD_CONFIGURATION_ERROR
        assert first["unmapped"].value is None
        assert [first[n].value for n in ("ok1", "ok2", "ok3")] == [6, 8, 9]
        assert all(first[n].status == Status.GOOD for n in ("ok1", "ok2", "ok3"))
        assert by_name(await drv.poll(["gw_target"]))["gw_target"].status == Status.BAD_TIMEOUT
        assert by_name(await drv.poll(["gw_path"]))["gw_path"].status == Status.BAD_NO_COMMUNICATION
        assert drv.counters()["exception_04"] == 1
        assert drv.counters()["exception_06"] == 1
        assert drv.counters()["exception_01"] == 1
        assert drv.counters()["exception_0b"] == 1
        assert drv.counters()["exception_0a"] == 1

        # the split is learned: later polls bridge no holes around these tags and log nothing new
        logged = len(caplog.records)
        before = drv.counters()["requests"]
        again = by_name(await drv.poll(["ok1", "ok2", "unmapped", "ok3"]))
        assert drv.counters()["requests"] - before == 3  # 300, 302..303 (touching) and 305
        assert again["unmapped"].status == Status.BAD_CONFIGURATION_ERROR
        assert again["ok3"].status == Status.GOOD
        assert len(caplog.records) == logged


async def test_unknown_unit_behind_tcp_gateway_fails_the_connect(tcp: Any) -> None:
    peer, _, _ = tcp
    with pytest.raises(Transient, match="gateway target"):
        async with Driver(
            device("ghost", [{"name": "x", "address": 0}], host="127.0.0.1", port=peer.port, unit_id=7), CTX
        ):
            pass
    async with Driver(
        device("two", [{"name": "x", "address": 0}], host="127.0.0.1", port=peer.port, unit_id=2), CTX
    ) as d:
        assert by_name(await d.poll())["x"].value == 42


async def test_server_going_away_raises_transient_and_recovers_after_restart(tcp: Any) -> None:
    peer, tags, expect = tcp
    cfg = device("plc", tags, host="127.0.0.1", port=peer.port)
    async with Driver(cfg, CTX) as drv:
        check_values((await take(drv, 1))[0], expect)
        await peer.stop()
        with pytest.raises(Transient, match=r"lost|connect"):
            await take(drv, 100)
    with pytest.raises(Transient, match="cannot connect"):
        async with Driver(cfg, CTX):
            pass
    await peer.start_tcp()  # same port
    async with Driver(cfg, CTX) as drv:
        check_values((await take(drv, 1))[0], expect)


async def test_server_that_stops_answering_gives_bad_samples_then_transient(tcp: Any) -> None:
    peer, tags, expect = tcp
    cfg = device("plc", tags, host="127.0.0.1", port=peer.port, timeout="100ms", max_failed_polls=2)
    batches: list[list[Sample]] = []
    async with Driver(cfg, CTX) as drv:
        batches += await take(drv, 1)
        peer.fault = "mute"
        with pytest.raises(Transient, match="did not answer 2 polls"):
            await drain(drv, batches)
        assert drv.counters()["timeout"] == 2
        assert drv.counters()["requests"] == 1 + 4 + 2  # probe, one good poll, one request per dead poll
    check_values(batches[0], expect)
    assert {s.status for s in batches[-1]} == {Status.BAD_TIMEOUT}
    assert len(batches[-1]) == len(tags)  # every tag reported, though only one request was tried
    with pytest.raises(Transient, match="no answer"):  # the probe: a silent device fails the connect
        async with Driver(cfg, CTX):
            pass
    peer.fault = "ok"
    async with Driver(cfg, CTX) as drv:
        check_values(await drv.poll(), expect)


async def test_write_with_readback(tcp: Any) -> None:
    peer, _, _ = tcp
    tags = [
        {"name": "setpoint", "address": 400, "type": "float32", "word_order": "little", "writable": True},
        {"name": "scaled", "address": 402, "type": "int16", "scale": 0.1, "writable": True, "unit": "bar"},
        {"name": "big", "address": 403, "type": "int32", "byte_order": "little", "writable": True},
        {"name": "enable", "address": 405, "bit": 3, "writable": True},
        {"name": "label", "address": 406, "type": "string", "length": 4, "writable": True},
        {"name": "clamped", "address": 410, "writable": True},
        {"name": "locked", "address": 411, "writable": True},
        {"name": "pump", "address": 4, "table": "coil", "writable": True},
        {"name": "readonly", "address": 300},
    ]
    async with Driver(device("plc", tags, host="127.0.0.1", port=peer.port), CTX) as drv:
        assert (await drv.write("setpoint", 21.5)).value == 21.5
        assert peer.registers(1, "h", 400, 2) == ref_regs(21.5, "float32", "CDAB")
        s = await drv.write("plc/scaled", 12.3)
        assert s.value == pytest.approx(12.3)
        assert s.unit == "bar"
        assert peer.registers(1, "h", 402) == [123]
        assert (await drv.write("big", -70000)).value == -70000
        assert peer.registers(1, "h", 403, 2) == ref_regs(-70000, "int32", "BADC")
        peer.server.context.devices[1].block["h"][2][405] = 0b1_0001  # type: ignore[union-attr]
        assert (await drv.write("enable", True)).value is True
        assert peer.registers(1, "h", 405) == [0b1_1001]  # the other bits are kept
        assert (await drv.write("enable", False)).value is False
        assert peer.registers(1, "h", 405) == [0b1_0001]
        assert (await drv.write("label", "ok")).value == "ok"
        assert (await drv.write("pump", True)).value is True
        assert peer.registers(1, "c", 4) == [1]
        polled = by_name(await drv.poll())
        assert polled["setpoint"].value == 21.5
        assert polled["pump"].value is True

        with pytest.raises(WriteError, match="read back 100") as mismatch:
            await drv.write("clamped", 500)
        assert mismatch.value.status == Status.BAD_DEVICE_FAILURE
        with pytest.raises(WriteError, match="illegal data address") as refused:
            await drv.write("locked", 1)
        assert refused.value.status == Status.BAD_CONFIGURATION_ERROR
        with pytest.raises(WriteError, match="not writable"):
            await drv.write("readonly", 1)
        with pytest.raises(WriteError, match="no tag") as unknown:
            await drv.write("nope", 1)
        assert unknown.value.status == Status.BAD_NODE_ID_UNKNOWN
        with pytest.raises(WriteError, match="outside the int16 range") as too_big:
            await drv.write("scaled", 1e6)
        assert too_big.value.status == Status.BAD_OUT_OF_RANGE
        with pytest.raises(WriteError, match="does not fit"):
            await drv.write("label", "too long")
        assert isinstance(mismatch.value, Permanent)
        peer.fault = "mute"
        with pytest.raises(Transient, match="no answer"):
            await drv.write("setpoint", 1.0)


# ----------------------------------------------------------------------------------------- RTU


def rtu_device(name: str, port: str, unit: int, tags: list[dict[str, Any]], **kw: Any) -> Config:
    return device(name, tags, port=port, unit_id=unit, baudrate=115200, **kw)


async def test_several_units_share_one_rtu_line(rtu: Any) -> None:
    _, port = rtu
    _, tags, expect1 = build_map(1)
    _, _, expect2 = build_map(2, base=100)
    lines = SerialLines()
    d1 = Driver(rtu_device("u1", port, 1, tags), CTX, lines=lines)
    d2 = Driver(rtu_device("u2", port, 2, tags), CTX, lines=lines)
    d3 = Driver(
        rtu_device("u3", port, 3, [{"name": "a", "address": 0}, {"name": "b", "address": 1}]),
        CTX,
        lines=lines,
    )
    async with d1, d2, d3:
        assert d1.link is d2.link is d3.link
        line = lines.get(port)
        assert line is not None
        assert line.users == 3
        async with asyncio.TaskGroup() as tg:
            r1 = tg.create_task(take(d1, 5), name="u1")
            r2 = tg.create_task(take(d2, 5), name="u2")
            r3 = tg.create_task(take(d3, 5), name="u3")
        for batch in r1.result():
            check_values(batch, expect1)
        for batch in r2.result():
            check_values(batch, expect2)
        assert [s.value for s in r3.result()[-1]] == [3, 33]
        assert sum(d.counters()["errors"] for d in (d1, d2, d3)) == 0
        # every request of every device went through the one line, one transaction at a time
        assert line.transactions == sum(d.counters()["requests"] for d in (d1, d2, d3))
    assert lines.get(port) is None  # the last device out closed the port


async def test_a_dead_unit_does_not_stall_the_others_on_the_line(rtu: Any) -> None:
    peer, port = rtu
    lines = SerialLines()
    tags = [{"name": "a", "address": 0}]
    alive = Driver(rtu_device("alive", port, 3, tags), CTX, lines=lines)
    dying = Driver(rtu_device("dying", port, 1, [{"name": "x", "address": 0, "type": "int16"}]), CTX, lines=lines)
    during_outage: list[list[Sample]] = []
    dying_batches: list[list[Sample]] = []
    outage = asyncio.Event()

    async def watch_alive() -> None:
        async with contextlib.aclosing(alive.samples()) as stream:
            async for batch in stream:
                if not outage.is_set():
                    continue
                during_outage.append(batch)
                if len(during_outage) >= 5:
                    return

    async def run_dying() -> None:
        async with contextlib.aclosing(dying.samples()) as stream:
            async for batch in stream:
                dying_batches.append(batch)
                if len(dying_batches) == 2:
                    peer.silent.add(1)
                    outage.set()

    async def watch_dying() -> None:
        with pytest.raises(Transient, match="did not answer 3 polls"):  # after its own max_failed_polls
            await run_dying()

    async with alive, dying, asyncio.timeout(10), asyncio.TaskGroup() as tg:
        tg.create_task(watch_alive(), name="alive")
        tg.create_task(watch_dying(), name="dying")
    # the other unit on the line kept answering while this one timed out
    assert all(s.status == Status.GOOD and s.value == 3 for b in during_outage for s in b)
    assert dying_batches[-1][0].status == Status.BAD_TIMEOUT
    with pytest.raises(Transient, match=r"unit 1 .* no answer"):  # reconnect attempts fail at the probe
        async with Driver(rtu_device("dying", port, 1, tags), CTX, lines=lines):
            pass
    with pytest.raises(Transient, match="unit 9"):  # an id nobody answers to, on a working line
        async with Driver(rtu_device("ghost", port, 9, tags), CTX, lines=lines):
            pass


async def test_crc_errors_and_short_frames_are_communication_errors(rtu: Any) -> None:
    peer, port = rtu
    tags = [{"name": "a", "address": 0}, {"name": "b", "address": 1}]
    async with (
        Driver(rtu_device("u3", port, 3, tags, max_failed_polls=5), CTX) as drv,
        Driver(rtu_device("u1", port, 1, tags), CTX) as neighbour,
    ):
        assert drv.link is neighbour.link  # the event loop's default registry shares the port too
        for fault in ("bad_crc", "short"):
            peer.fault = fault
            got = await drv.poll()
            assert {s.status for s in got} == {Status.BAD_COMMUNICATION_ERROR}, fault
        assert drv.counters()["bad_frame"] == 2
        peer.fault = "ok"
        assert [s.value for s in await drv.poll()] == [3, 33]


async def test_devices_on_one_port_must_agree_on_line_settings(rtu: Any) -> None:
    _, port = rtu
    lines = SerialLines()
    tags = [{"name": "a", "address": 0}]
    async with Driver(rtu_device("u3", port, 3, tags), CTX, lines=lines):
        with pytest.raises(Permanent, match="in use at 115200 8N1, not 9600 8E1"):
            async with Driver(device("other", tags, port=port, unit_id=1, baudrate=9600, parity="E"), CTX, lines=lines):
                pass


async def test_missing_serial_port_is_transient(tmp_path: Path) -> None:
    cfg = rtu_device("nowhere", str(tmp_path / "ttyUSB9"), 1, [{"name": "a", "address": 0}])
    with pytest.raises(Transient, match="cannot connect"):
        async with Driver(cfg, CTX, lines=SerialLines()):
            pass


# ----------------------------------------------------------------------------------------- daemon


async def test_daemon_stores_decoded_values(tcp: Any, tmp_path: Path) -> None:
    peer, tags, expect = tcp
    dev = {
        "name": "plc",
        "type": "modbus",
        "host": "127.0.0.1",
        "port": peer.port,
        "interval": "100ms",
        "tags": tags,
    }
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
            return len(counts) == len(tags) and min(counts.values()) >= 5

        await until(enough, 20, "five readings of every tag")
        out = tmp_path / "samples.jsonl"
        await eventually(lambda: out.exists() and out.stat().st_size > 0, 10, "delivery to the file")
        daemon.request_stop()
    with Store(cfg.buffer_path) as store:
        stored, _ = store.read(1, store.head, 100_000)
    assert len(stored) >= 5 * len(tags)
    latest = {s.tag: s for s in stored}
    check_values(list(latest.values()), expect)
    assert (tmp_path / "samples.jsonl").stat().st_size > 0


async def test_driver_counters_reach_status_and_metrics(tcp: Any, tmp_path: Path) -> None:
    """What the driver counts (requests, exceptions by code) is shown in status.json and /metrics,
    summed over reconnects; the per-uplink dropped/gap figures are there too."""
    from prometheus_client import CollectorRegistry, generate_latest

    from edged.metrics import _Collector

    peer, tags, _ = tcp
    missing = {"name": "missing", "address": 9000, "type": "uint16"}  # no such register: exception 02
    dev = {"name": "plc", "type": "modbus", "host": "127.0.0.1", "port": peer.port, "interval": "100ms"}
    cfg = parse(
        {
            "gateway": {"id": "gw-test", "data_dir": str(tmp_path)},
            "devices": [{**dev, "tags": [tags[0], missing]}],
            "uplinks": [{"name": "archive", "type": "file", "path": "samples.jsonl", "fsync": False}],
        }
    )
    daemon = Daemon(cfg)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(daemon))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(daemon.run(), name="daemon")
        await eventually(
            lambda: daemon.devices and daemon.devices[0].tally.totals().get("requests", 0) >= 6, 20, "polls"
        )
        await eventually(
            lambda: "counters" in json.loads((tmp_path / "status.json").read_text())["devices"]["plc"], 10, "status"
        )
        text = generate_latest(registry).decode()
        daemon.request_stop()
    counts = daemon.devices[0].tally.totals()
    code = next(k for k in counts if k.startswith("exception_"))
    assert counts[code] >= 1 and counts["errors"] >= 1
    assert f'edged_device_plugin_events_total{{counter="{code}",device="plc"}}' in text
    assert 'edged_device_plugin_events_total{counter="requests",device="plc"}' in text
    assert 'edged_uplink_dropped_samples_total{uplink="archive"} 0.0' in text
    assert 'edged_uplink_gaps_pending{uplink="archive"} 0.0' in text
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["devices"]["plc"]["counters"]["requests"] >= 6
    assert status["uplinks"]["archive"]["dropped"] == 0
