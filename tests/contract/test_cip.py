"""The cip driver (pycomm3) against cpppo's EtherNet/IP simulator on 127.0.0.1, plus an independent
check: CIP requests written byte by byte from the specification (CIP Vol 1 / Logix 5000 Data Access
1756-PM020), compared with what pycomm3 builds, and cpppo's answers decoded by hand over a socket
of our own.

cpppo does not serve the tag-list upload (Get Instance Attribute List, service 0x55 on the Symbol
class 0x6B: it drops the session), so these tests run with `upload_tags = false`; the upload path,
structures, Logix STRING structures and BOOL arrays are not covered here. cpppo refuses writes of
its (CIP) STRING tags, so string writes are only tested as a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer.store import Store
from drivers.cip import Driver, WriteError
from edged.commands import AuditTrail, Command, CommandGate, Result
from edged.config import parse
from edged.errors import Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.cip_sim import CipSim, cip_sim, free_tcp_port

LOG = logging.getLogger("test.cip")
SIM_TAGS = ["Temp=REAL", "Count=DINT[10]", "Flag=BOOL", "Small=SINT", "Big=LINT", "Level=LREAL", "Name=STRING",
            "Short=SSTRING", "Word=UINT", "Other=SINT"]  # fmt: skip


def tags() -> list[dict[str, Any]]:
    return [
        {"name": "temp", "tag": "Temp", "type": "REAL", "writable": True},
        *[{"name": f"count{i}", "tag": f"Count[{i}]", "type": "DINT", "writable": i == 2} for i in range(10)],
        {"name": "count2_bit1", "tag": "Count[2].1", "type": "DINT"},
        {"name": "flag", "tag": "Flag", "type": "BOOL", "writable": True},
        {"name": "small", "tag": "Small", "type": "SINT", "writable": True},
        {"name": "big", "tag": "Big", "type": "LINT", "writable": True},
        {"name": "level", "tag": "Level", "type": "LREAL"},
        {"name": "name", "tag": "Name", "type": "STRING", "writable": True},
        {"name": "short", "tag": "Short", "type": "SHORT_STRING"},
        {"name": "word", "tag": "Word", "type": "UINT"},
        {"name": "missing", "tag": "NoSuchTag", "type": "DINT"},
        {"name": "mistyped", "tag": "Other", "type": "DINT"},  # the controller's Other is a SINT
    ]


def device(port: int, **extra: Any) -> dict[str, Any]:
    return {"name": "plc", "type": "cip", "host": "127.0.0.1", "port": port, "upload_tags": False,
            "timeout": "1s", "interval": "100ms", "tags": tags()} | extra  # fmt: skip


def config(dev: dict[str, Any], tmp_path: Path, commands: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "devices": [dev]}
    if commands is not None:
        raw["commands"] = commands
        raw["uplinks"] = [{"name": "cloud", "type": "mqtt"}]
    return parse(raw)


def ctx(tmp_path: Path) -> PluginContext:
    return PluginContext("gw", tmp_path, LOG)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[CipSim]:
    with cip_sim(SIM_TAGS, tmp_path / "cpppo.log") as s:
        yield s


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag.removeprefix("plc/"): s for s in samples}


@contextlib.asynccontextmanager
async def gate(tmp_path: Path, sim: CipSim) -> AsyncIterator[tuple[CommandGate, Driver]]:
    writable = [t["name"] for t in tags() if t.get("writable")]
    commands = {"enabled": True, "max_age": "30s", "timeout": "3s",
                "tags": [{"tag": f"plc/{n}", "sources": ["cloud"]} for n in writable]}  # fmt: skip
    cfg = config(device(sim.port), tmp_path, commands)
    with Store(tmp_path / "buffer.db") as store:
        async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:

            async def lookup(name: str) -> Driver | None:
                return drv if name == "plc" else None

            yield CommandGate(cfg, AuditTrail.for_store(store), lookup), drv


def cmd(tag: str, value: Any, id: str = "c") -> Command:
    return Command(id, "cloud", "tester", tag, value, time.time_ns())


# ------------------------------------------------------------------------------------------ reads


async def test_reads_atomic_types_arrays_strings_and_marks_bad_tags(tmp_path: Path, sim: CipSim) -> None:
    cfg = config(device(sim.port), tmp_path)
    async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:
        got = by_tag(await drv.poll())
        for name in ("temp", "level"):
            assert (got[name].value, got[name].status) == (0.0, Status.GOOD) and isinstance(got[name].value, float)
        for name in ("count0", "count9", "small", "big", "word"):
            assert (got[name].value, got[name].status) == (0, Status.GOOD) and type(got[name].value) is int
        assert (got["flag"].value, got["count2_bit1"].value) == (False, False)
        assert (got["name"].value, got["short"].value) == ("", "")
        # a tag the controller lacks, and one declared with the wrong type: Bad, the others Good
        assert got["missing"].status == Status.BAD_NODE_ID_UNKNOWN and got["missing"].value is None
        assert got["mistyped"].status == Status.BAD_TYPE_MISMATCH and got["mistyped"].value is None
        assert got["small"].status == Status.GOOD
        assert len(got) == len(tags())
        counts = drv.counters()
        assert counts["unknown_tag"] >= 1 and counts["type_mismatch"] >= 1
        # the ten elements of Count (and the bit of Count[2]) are one Read Tag service of 10 elements
        assert [r.name for r in drv.reads if r.name.startswith("Count")] == ["Count[0]{10}"]


async def test_multiple_service_packets_are_sized_to_the_connection(tmp_path: Path) -> None:
    """Requests per poll, measured: 60 tags fit one 4000-byte packet; a 200-byte connection needs
    several, each of which must fit (cpppo answers each; a packet over the size would fail)."""
    scalars = [f"T{i:02d}=DINT" for i in range(60)]
    with cip_sim(scalars, tmp_path / "cpppo.log") as s:
        dev = device(s.port, tags=[{"name": f"t{i:02d}", "tag": f"T{i:02d}", "type": "DINT"} for i in range(60)])
        per_poll: dict[int, float] = {}
        for size in (4000, 200):
            cfg = config(dev | {"connection_size": size}, tmp_path)
            async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:
                before = drv.counters()["requests"]
                samples = await drv.poll()
                per_poll[size] = drv.counters()["requests"] - before
                assert len(samples) == 60 and all(x.status == Status.GOOD for x in samples)
        LOG.info("requests per poll of 60 DINT tags: %s", per_poll)
        assert per_poll[4000] == 1
        # each service is ~16 bytes of request and ~10 of reply: 200 bytes take at most ~12 a packet
        assert 5 <= per_poll[200] <= 20


async def test_samples_iterates_every_interval(tmp_path: Path, sim: CipSim) -> None:
    cfg = config(device(sim.port), tmp_path)
    async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:
        batches = 0
        async with asyncio.timeout(10):
            async for batch in drv.samples():
                assert batch
                batches += 1
                if batches == 3:
                    break


# ------------------------------------------------------------------------------------------ writes


async def test_writes_through_the_gate_with_read_back(tmp_path: Path, sim: CipSim) -> None:
    async with gate(tmp_path, sim) as (g, drv):
        for tag, value in (("temp", 21.5), ("count2", -7), ("big", 2**40 + 3), ("flag", True), ("small", -100)):
            res = await g.submit(cmd(f"plc/{tag}", value, f"w-{tag}"))
            assert (res.result, res.readback) == (Result.ACCEPTED, value), res.reason
        got = by_tag(await drv.poll())
        assert (got["temp"].value, got["count2"].value, got["big"].value) == (21.5, -7, 2**40 + 3)
        assert got["count2_bit1"].value is False  # -7 = 0b...11111001: bit 1 is clear
        assert (got["flag"].value, got["small"].value, got["count3"].value) == (True, -100, 0)
        assert raw_read_real(sim.port, "Temp") == 21.5  # the independent client sees the write


async def test_write_refusals(tmp_path: Path, sim: CipSim) -> None:
    async with gate(tmp_path, sim) as (g, drv):
        res = await g.submit(cmd("plc/small", 1000, "range"))  # SINT: -128..127
        assert res.result != Result.ACCEPTED and "outside -128..127" in res.reason
        res = await g.submit(cmd("plc/count2", 1.5, "frac"))
        assert res.result != Result.ACCEPTED and "not an integer" in res.reason
        with pytest.raises(WriteError) as err:
            await drv.write("count3", 1)  # not writable
        assert err.value.status == Status.BAD_CONFIGURATION_ERROR
        assert by_tag(await drv.poll())["temp"].status == Status.GOOD  # nothing was sent: still connected
        with pytest.raises(WriteError):
            await drv.write("name", "hello")  # cpppo cannot take a write of its STRING tags (not covered)


# ------------------------------------------------------------------------------------------ failures


async def test_refused_connection_is_transient(tmp_path: Path) -> None:
    cfg = config(device(free_tcp_port()), tmp_path)
    with pytest.raises(Transient):
        async with Driver(cfg.devices[0], ctx(tmp_path)):
            pass


async def test_connection_loss_is_transient_and_a_restart_reconnects(tmp_path: Path) -> None:
    sim = CipSim(SIM_TAGS, tmp_path / "cpppo.log")
    sim.start()
    try:
        cfg = config(device(sim.port), tmp_path)
        async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:
            assert by_tag(await drv.poll())["temp"].status == Status.GOOD
            sim.stop()
            with pytest.raises(Transient):
                await drv.poll()
            assert drv.counters()["connection_lost"] == 1
        sim.start()  # same port
        async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:
            assert by_tag(await drv.poll())["temp"].status == Status.GOOD
    finally:
        sim.stop()


# ------------------------------------------------------------------------------------------ independent


def test_pycomm3_builds_the_spec_bytes() -> None:
    """Read Tag (0x4C) and Multiple Service Packet (0x0A) as the spec lays them out, against pycomm3."""
    from pycomm3.packets.logix import MultiServiceRequestPacket, ReadTagRequestPacket
    from pycomm3.util import cycle

    from drivers.cip.client import _declared

    # 1756-PM020 "Read Tag Service": service, path size in words, ANSI extended symbol segment
    # (0x91, length, name padded to even), element count
    rate = bytes([0x4C, 0x03, 0x91, 0x04]) + b"rate" + bytes([0x01, 0x00])
    tank = bytes([0x4C, 0x04, 0x91, 0x05]) + b"tank1\x00" + bytes([0x0A, 0x00])
    seq = cycle(65535, start=1)
    r1 = ReadTagRequestPacket(seq, "rate", 1, _declared("rate", "DINT", 0), 0, False)
    r2 = ReadTagRequestPacket(seq, "tank1", 10, _declared("tank1", "REAL", 10), 1, False)
    assert r1.build_message()[2:] == rate  # the first 2 bytes: the connected sequence count
    assert r2.build_message()[2:] == tank
    # CIP Vol 1: service 0x0A to the Message Router (class 2, instance 1), the number of
    # services, their offsets from the number field, then the services
    multi = bytes([0x0A, 0x02, 0x20, 0x02, 0x24, 0x01]) + struct.pack("<HHH", 2, 6, 6 + len(rate)) + rate + tank
    r1 = ReadTagRequestPacket(seq, "rate", 1, _declared("rate", "DINT", 0), 0, False)
    r2 = ReadTagRequestPacket(seq, "tank1", 10, _declared("tank1", "REAL", 10), 1, False)
    for r in (r1, r2):
        r.build_message()
    assert MultiServiceRequestPacket(seq, [r1, r2]).build_message()[2:] == multi


def _encap(command: int, session: int, data: bytes) -> bytes:
    return struct.pack("<HHII8sI", command, len(data), session, 0, b"edgedtst", 0) + data


def _recv_encap(s: socket.socket) -> tuple[int, int, bytes]:
    head = b""
    while len(head) < 24:
        chunk = s.recv(24 - len(head))
        assert chunk, "connection closed"
        head += chunk
    command, length, session, status, _ctx, _opt = struct.unpack("<HHII8sI", head)
    assert status == 0, f"encapsulation status 0x{status:x}"
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        assert chunk, "connection closed"
        body += chunk
    return command, session, body


def raw_read(port: int, request: bytes) -> bytes:
    """RegisterSession (0x65), then SendRRData (0x6F) with a Null Address item and an Unconnected
    Data item (0xB2) carrying `request`; returns the CIP reply. Written from the EtherNet/IP spec
    (CIP Vol 2, ch. 2-3), sharing no code with pycomm3 or cpppo."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(_encap(0x65, 0, struct.pack("<HH", 1, 0)))
        command, session, _ = _recv_encap(s)
        assert command == 0x65 and session != 0
        cpf = struct.pack("<IHH", 0, 5, 2) + struct.pack("<HH", 0, 0) + struct.pack("<HH", 0xB2, len(request))
        s.sendall(_encap(0x6F, session, cpf + request))
        command, _, body = _recv_encap(s)
        assert command == 0x6F
        _handle, _timeout, items = struct.unpack_from("<IHH", body)
        assert items == 2
        off = 8
        type0, len0 = struct.unpack_from("<HH", body, off)
        off += 4 + len0
        type1, len1 = struct.unpack_from("<HH", body, off)
        assert (type0, type1) == (0, 0xB2)
        return body[off + 4 : off + 4 + len1]


def raw_read_real(port: int, name: str) -> float:
    sym = name.encode() + (b"\x00" if len(name) % 2 else b"")
    reply = raw_read(port, bytes([0x4C, (2 + len(sym)) // 2, 0x91, len(name)]) + sym + b"\x01\x00")
    # reply service (0x4C | 0x80), reserved, general status, extended size, type code, value
    service, _, general, ext = reply[:4]
    assert (service, general, ext) == (0xCC, 0, 0), reply.hex()
    typ, value = struct.unpack_from("<Hf", reply, 4)
    assert typ == 0x00CA  # REAL
    return float(value)


async def test_hand_decoded_answers_match_the_driver(tmp_path: Path, sim: CipSim) -> None:
    async with gate(tmp_path, sim) as (g, drv):
        res = await g.submit(cmd("plc/temp", 3.25, "t"))
        assert res.result == Result.ACCEPTED, res.reason
        assert raw_read_real(sim.port, "Temp") == by_tag(await drv.poll())["temp"].value == 3.25
        # a Multiple Service Packet by hand: Temp and Count[2]{1} in one request
        temp = bytes([0x4C, 0x03, 0x91, 0x04]) + b"Temp" + b"\x01\x00"
        elem = bytes([0x4C, 0x05, 0x91, 0x05]) + b"Count\x00" + bytes([0x28, 0x02]) + b"\x01\x00"
        await g.submit(cmd("plc/count2", 123456, "c"))
        multi = bytes([0x0A, 0x02, 0x20, 0x02, 0x24, 0x01]) + struct.pack("<HHH", 2, 6, 6 + len(temp)) + temp + elem
        reply = raw_read(sim.port, multi)
        assert reply[:4] == bytes([0x8A, 0, 0, 0]), reply.hex()
        n, o1, o2 = struct.unpack_from("<HHH", reply, 4)
        body = reply[4:]
        assert n == 2
        assert body[o1 : o1 + 4] == bytes([0xCC, 0, 0, 0]) and struct.unpack_from("<Hf", body, o1 + 4) == (0xCA, 3.25)
        assert body[o2 : o2 + 4] == bytes([0xCC, 0, 0, 0]) and struct.unpack_from("<Hi", body, o2 + 4) == (0xC4, 123456)
        assert by_tag(await drv.poll())["count2"].value == 123456
