"""The modbus_server uplink against two independent Modbus masters on 127.0.0.1: pymodbus' client
and modbus-tk (its own framing and decoding, no pymodbus), reading values, status registers and
quality coils, and writing through the command gate into a real Modbus device (a pymodbus peer
behind the modbus driver): allowed, refused, audited. Expected registers are packed here with
struct (big-endian IEEE 754, then word-swapped by hand), independent of edged.protocols.modbus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from modbus_tk import defines as cst
from modbus_tk import modbus_tcp
from modbus_tk.exceptions import ModbusError
from pymodbus.client import AsyncModbusTcpClient

from buffer.store import Store
from drivers.modbus import Driver as ModbusDriver
from edged.commands import AuditTrail, CommandGate
from edged.config import Config, parse
from edged.errors import ConfigError, Transient
from edged.model import Batch, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.delivery import sender_running
from peers.modbus_server import ModbusPeer, Unit
from peers.mosquitto import free_port
from peers.waiting import eventually, until
from uplink.modbus_server import Config as ServerConfig
from uplink.modbus_server import Uplink

GW = "gw"
NS = 1_000_000_000
UPLINK = "scada"


def f32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def device(port: int) -> dict[str, Any]:
    return {
        "name": "press",
        "type": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "500ms",
        "retries": 0,
        "interval": "1s",
        "tags": [
            {"name": "setpoint", "address": 0, "type": "float32", "writable": True},
            {"name": "mode", "address": 2, "writable": True},
            {"name": "pressure", "address": 3, "type": "int16"},
            {"name": "level", "address": 4, "type": "int32"},
            {"name": "pump", "address": 0, "table": "coil", "writable": True},
            {"name": "alarm", "address": 1, "table": "coil"},
        ],
    }


MAP: list[dict[str, Any]] = [
    {"tag": "press/setpoint", "address": 0, "type": "float32", "status_register": 100, "quality_coil": 10},
    {"tag": "press/setpoint", "table": "input", "address": 0, "type": "float32", "word_order": "little"},
    {"tag": "press/mode", "address": 2, "type": "uint16", "status_register": 101},
    {"tag": "press/pressure", "address": 3, "type": "int16", "scale": 0.1, "status_register": 102},
    {"tag": "press/level", "address": 4, "type": "int32", "on_bad": "sentinel", "status_register": 103},
    {"tag": "press/pump", "table": "coil", "address": 0},
    {"tag": "press/alarm", "table": "discrete", "address": 0},
]


def config(tmp: Path, device_port: int, **uplink: Any) -> Config:
    return parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp)},
            "devices": [device(device_port)],
            "uplinks": [
                {
                    "name": UPLINK,
                    "type": "modbus_server",
                    "listen": f"127.0.0.1:{free_port()}",
                    "unit_ids": [1, 7],
                    "command_clients": ["127.0.0.1"],
                    "map": MAP,
                    **uplink,
                }
            ],
            "commands": {
                "enabled": True,
                "timeout": "3s",
                "tags": [
                    {"tag": "press/setpoint", "sources": [UPLINK], "min": 0.0, "max": 150.0},
                    {"tag": "press/mode", "sources": [UPLINK], "allowed": [0, 1, 2]},
                    {"tag": "press/pump", "sources": [UPLINK]},
                ],
            },
        }
    )


@pytest.fixture
async def peer() -> AsyncIterator[ModbusPeer]:
    unit = Unit(1, holding={0: f32(110.0)[0], 1: f32(110.0)[1], 2: 1, 3: 77, 4: 0, 5: 5}, coils={0: False, 1: True})
    p = ModbusPeer([unit])
    await p.start_tcp(0)
    try:
        yield p
    finally:
        await p.stop()


class Rig:
    def __init__(self, up: Uplink, store: Store, cfg: Config) -> None:
        self.up, self.store, self.cfg = up, store, cfg
        self.port = int(str(up.config.listen).rpartition(":")[2])

    async def show(self, *samples: Sample) -> None:
        await self.up.send(Batch(GW, 0, 0, True, list(samples)))

    def tk(self) -> modbus_tcp.TcpMaster:
        master = modbus_tcp.TcpMaster("127.0.0.1", self.port, timeout_in_sec=5.0)
        return master


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, peer: ModbusPeer, **uplink: Any) -> AsyncIterator[Rig]:
    """The uplink in front of a gate in front of a connected Modbus driver, auditing to a real buffer."""
    cfg = config(tmp_path, peer.port, **uplink)
    log = logging.getLogger("test.modbus_server")
    with Store(tmp_path / "buffer.db") as store:
        async with ModbusDriver(cfg.devices[0], PluginContext(GW, tmp_path, log)) as drv:  # type: ignore[arg-type]

            async def lookup(name: str) -> ModbusDriver | None:
                return drv if name == "press" else None

            gate = CommandGate(cfg, AuditTrail.for_store(store), lookup)
            ctx = PluginContext(GW, tmp_path, log, config=cfg, commands=gate)
            up_cfg = cfg.uplinks[0]
            assert isinstance(up_cfg, ServerConfig)
            async with Uplink(up_cfg, ctx) as up:
                yield Rig(up, store, cfg)


def sample(tag: str, value: Any, status: int = Status.GOOD, ts_s: float | None = None) -> Sample:
    ts = time.time_ns() if ts_s is None else int(ts_s * NS)
    return Sample(tag, ts, value, status)


async def tk(fn: Callable[[], Any]) -> Any:
    """A modbus-tk call (blocking) in a thread; a ModbusError comes back as its exception code."""
    try:
        return await asyncio.to_thread(fn)
    except ModbusError as exc:
        return ("exception", exc.get_exception_code())


# ----------------------------------------------------------------------------------------- reads


async def test_both_masters_read_values_statuses_and_quality(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        client = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=5)
        await client.connect()
        try:
            # before any sample: BadWaitingForInitialData in every status register, quality 0
            got = await client.read_holding_registers(100, count=4, device_id=1)
            assert got.registers == [0x8032] * 4
            assert (await client.read_coils(10, count=1, device_id=1)).bits[0] is False

            await r.show(
                sample("press/setpoint", 12.5),
                sample("press/mode", 2),
                sample("press/pressure", -3.7),
                sample("press/level", 70000, Status.UNCERTAIN),
                sample("press/pump", True),
                sample("press/alarm", True),
            )
            regs = (await client.read_holding_registers(0, count=6, device_id=1)).registers
            assert regs[0:2] == f32(12.5)
            assert regs[2] == 2
            assert regs[3] == (-37) & 0xFFFF  # -3.7 / 0.1, rounded, two's complement
            assert regs[4:6] == [70000 >> 16, 70000 & 0xFFFF]
            inputs = (await client.read_input_registers(0, count=2, device_id=1)).registers
            assert inputs == f32(12.5)[::-1]  # CDAB
            statuses = (await client.read_holding_registers(100, count=4, device_id=1)).registers
            assert statuses == [0, 0, 0, Status.UNCERTAIN >> 16]
            assert (await client.read_coils(10, count=1, device_id=1)).bits[0] is True
            assert (await client.read_coils(0, count=1, device_id=1)).bits[0] is True
            assert (await client.read_discrete_inputs(0, count=1, device_id=1)).bits[0] is True
            # the same map on the second unit id; an unknown unit is 0x0B, an unmapped address 02
            assert (await client.read_holding_registers(0, count=2, device_id=7)).registers == f32(12.5)
            unknown = await client.read_holding_registers(0, count=2, device_id=3)
            assert unknown.isError() and unknown.exception_code == 0x0B
            hole = await client.read_holding_registers(5, count=2, device_id=1)  # 5 is level's, 6 unmapped
            assert hole.isError() and hole.exception_code == 0x02
            assert (await client.read_input_registers(2, count=1, device_id=1)).exception_code == 0x02
        finally:
            client.close()

        # modbus-tk, an independent stack, decodes the same registers
        m = r.tk()
        try:
            (value,) = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 0, 2, data_format=">f"))
            assert value == 12.5
            swapped = await tk(lambda: m.execute(1, cst.READ_INPUT_REGISTERS, 0, 2, data_format=">HH"))
            assert swapped == tuple(f32(12.5)[::-1])
            (pressure,) = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 3, 1, data_format=">h"))
            assert pressure == -37
            assert await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 100, 4)) == (0, 0, 0, 0x4000)
            assert await tk(lambda: m.execute(1, cst.READ_COILS, 10, 1)) == (1,)
            assert await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 6, 1)) == ("exception", 2)
            assert await tk(lambda: m.execute(3, cst.READ_HOLDING_REGISTERS, 0, 1)) == ("exception", 0x0B)

            # Bad: level (sentinel) reads -2^31 and its status, setpoint (keep) keeps 12.5
            await r.show(sample("press/level", None, Status.BAD_NO_COMMUNICATION))
            await r.show(sample("press/setpoint", None, Status.BAD_NO_COMMUNICATION))
            (level,) = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 4, 2, data_format=">i"))
            assert level == -(2**31)
            (kept,) = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 0, 2, data_format=">f"))
            assert kept == 12.5
            statuses = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 100, 4))
            assert statuses[0] == statuses[3] == Status.BAD_NO_COMMUNICATION >> 16
            assert await tk(lambda: m.execute(1, cst.READ_COILS, 10, 1)) == (0,)
        finally:
            m.close()


async def test_a_value_that_does_not_fit_is_served_bad(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        await r.show(sample("press/mode", 2))
        await r.show(sample("press/mode", 70000))  # no uint16
        m = r.tk()
        try:
            assert await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 2, 1)) == (2,)  # kept
            assert await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 101, 1)) == (0x803C,)  # BadOutOfRange
        finally:
            m.close()
        assert r.up.counters()["values_not_served"] == 1


async def test_a_historical_sample_never_overwrites_a_newer_value(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        now = time.time()
        await r.show(sample("press/mode", 2, ts_s=now))
        await r.show(sample("press/mode", 1, ts_s=now - 3600))  # a replayed batch
        assert r.up.image.read(1, "holding", 2, 1) == [2]
        assert r.up.counters()["skipped_older"] == 1


# ----------------------------------------------------------------------------------------- writes


async def test_writes_go_through_the_gate_and_are_audited(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        await r.show(sample("press/setpoint", 110.0), sample("press/mode", 1))
        m = r.tk()
        try:
            # allowed: FC16 float32 -> the device's registers, read back, shown at once
            ok = await tk(lambda: m.execute(1, cst.WRITE_MULTIPLE_REGISTERS, 0, output_value=f32(120.0)))
            assert ok == (0, 2)
            assert peer.registers(1, "h", 0, 2) == f32(120.0)
            (shown,) = await tk(lambda: m.execute(1, cst.READ_HOLDING_REGISTERS, 0, 2, data_format=">f"))
            assert shown == 120.0
            # refused by the gate: out of range -> 03, not allowed -> 03; nothing written
            assert await tk(lambda: m.execute(1, cst.WRITE_MULTIPLE_REGISTERS, 0, output_value=f32(500.0))) == (
                "exception",
                3,
            )
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 2, output_value=7)) == ("exception", 3)
            # FC6 on an allowed value: accepted, the echo is the value
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 2, output_value=2)) == (2, 2)
            assert peer.registers(1, "h", 2) == [2]
            # refused before the gate: half a float32 -> 02, a tag not commandable -> 01, a status -> 01,
            # an unmapped address -> 02 (none of them audited: they never were a command)
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 1, output_value=0)) == ("exception", 2)
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 3, output_value=1)) == ("exception", 1)
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 100, output_value=0)) == ("exception", 1)
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_COIL, 10, output_value=1)) == ("exception", 1)
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_REGISTER, 50, output_value=0)) == ("exception", 2)
            # a coil: FC5 through the gate to the device's coil
            assert await tk(lambda: m.execute(1, cst.WRITE_SINGLE_COIL, 0, output_value=1)) == (0, 0xFF00)
            assert peer.registers(1, "c", 0) == [1]
        finally:
            m.close()
        assert peer.registers(1, "h", 0, 4) == [*f32(120.0), 2, 77]

        # pymodbus' client too: NaN is refused as an illegal value (audited: type)
        client = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=5)
        await client.connect()
        try:
            nan = await client.write_registers(0, f32(math.nan), device_id=1)
            assert nan.isError() and nan.exception_code == 3
            done = await client.write_registers(0, f32(42.0), device_id=7)
            assert not done.isError()
            local = client.ctx.transport.get_extra_info("sockname")  # type: ignore[union-attr]
        finally:
            client.close()
        assert peer.registers(1, "h", 0, 2) == f32(42.0)
        rows = r.store.audit_rows()
    assert [(r.tag, r.result, r.code) for r in rows] == [
        ("press/setpoint", "accepted", "ok"),
        ("press/setpoint", "rejected", "out_of_range"),
        ("press/mode", "rejected", "not_allowed"),
        ("press/mode", "accepted", "ok"),
        ("press/pump", "accepted", "ok"),
        ("press/setpoint", "rejected", "type"),
        ("press/setpoint", "accepted", "ok"),
    ]
    assert all(row.source == UPLINK for row in rows)
    assert all(row.user is not None and row.user.startswith("127.0.0.1:") for row in rows)
    assert rows[-1].user == f"127.0.0.1:{local[1]}"


async def test_a_write_of_several_values_stops_at_the_first_refused(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        client = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=5)
        await client.connect()
        try:
            both = await client.write_registers(0, [*f32(50.0), 0], device_id=1)  # setpoint and mode
            assert not both.isError()
            assert peer.registers(1, "h", 0, 3) == [*f32(50.0), 0]
            second_refused = await client.write_registers(0, [*f32(60.0), 9], device_id=1)
            assert second_refused.isError() and second_refused.exception_code == 3
            assert peer.registers(1, "h", 0, 3) == [*f32(60.0), 0]  # the first stays written
            half = await client.write_registers(1, [0, 2], device_id=1)  # from the middle of the float32
            assert half.isError() and half.exception_code == 2
            masked = await client.mask_write_register(address=2, and_mask=0, or_mask=2, device_id=1)  # FC22
            assert not masked.isError()
            assert peer.registers(1, "h", 2) == [2]
        finally:
            client.close()
        rows = r.store.audit_rows()
    assert [(row.tag, row.result, row.code) for row in rows] == [
        ("press/setpoint", "accepted", "ok"),
        ("press/mode", "accepted", "ok"),
        ("press/setpoint", "accepted", "ok"),
        ("press/mode", "rejected", "not_allowed"),
        ("press/mode", "accepted", "ok"),
    ]


async def test_a_master_not_in_command_clients_is_refused_and_audited(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer, command_clients=["10.0.0.0/8"]) as r:
        m = r.tk()
        try:
            got = await tk(lambda: m.execute(1, cst.WRITE_MULTIPLE_REGISTERS, 0, output_value=f32(120.0)))
            assert got == ("exception", 1)
        finally:
            m.close()
        assert peer.registers(1, "h", 0, 2) == f32(110.0)
        rows = r.store.audit_rows()
    assert [(row.tag, row.result, row.code) for row in rows] == [("press/setpoint", "rejected", "unauthorised")]
    assert "command_clients" in (rows[0].reason or "")


async def test_a_write_while_commands_are_disabled_is_01_and_audited(tmp_path: Path, peer: ModbusPeer) -> None:
    cfg = config(tmp_path, peer.port)
    cfg.commands.enabled = False

    async def no_driver(name: str) -> None:
        return None

    with Store(tmp_path / "buffer.db") as store:
        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver)
        ctx = PluginContext(GW, tmp_path, logging.getLogger("t"), config=cfg, commands=gate)
        async with Uplink(cfg.uplinks[0], ctx) as up:  # type: ignore[arg-type]
            m = Rig(up, store, cfg).tk()
            try:
                got = await tk(lambda: m.execute(1, cst.WRITE_SINGLE_COIL, 0, output_value=1))
            finally:
                m.close()
        rows = store.audit_rows()
    assert got == ("exception", 1)
    assert [(row.result, row.code) for row in rows] == [("rejected", "disabled")]


async def test_a_device_that_is_down_fails_the_write_with_04_or_0b(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer) as r:
        await peer.stop()
        m = r.tk()
        try:
            got = await tk(lambda: m.execute(1, cst.WRITE_SINGLE_COIL, 0, output_value=1))
        finally:
            m.close()
        rows = r.store.audit_rows()
    # the driver may not have noticed yet (the write fails on the wire: 04) or knows (device_down: 0B)
    assert (rows[0].code, got) in (("wire", ("exception", 4)), ("device_down", ("exception", 0x0B)))


# ----------------------------------------------------------------------------------------- server


async def test_connections_beyond_max_connections_are_closed(tmp_path: Path, peer: ModbusPeer) -> None:
    async with rig(tmp_path, peer, max_connections=2) as r:
        clients = [AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=2, retries=0) for _ in range(2)]
        for c in clients:
            await c.connect()
        await eventually(lambda: r.up.counters()["connections"] == 2, 5, "two masters connected")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            try:
                async with asyncio.timeout(5):
                    assert await reader.read() == b""  # closed by the server
            finally:
                writer.close()
            assert r.up.counters()["connections_refused"] == 1
            assert not (await clients[0].read_coils(0, count=1, device_id=1)).isError()
        finally:
            for c in clients:
                c.close()
        await eventually(lambda: r.up.counters()["connections"] == 0, 5, "masters gone")
        third = AsyncModbusTcpClient("127.0.0.1", port=r.port, timeout=2)
        await third.connect()
        try:
            assert not (await third.read_coils(0, count=1, device_id=1)).isError()
        finally:
            third.close()


async def test_a_busy_port_is_transient(tmp_path: Path, peer: ModbusPeer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = config(tmp_path, peer.port, listen=f"127.0.0.1:{port}")
        up = Uplink(cfg.uplinks[0], PluginContext(GW, tmp_path, logging.getLogger("t"), config=cfg))  # type: ignore[arg-type]
        with pytest.raises(Transient, match="cannot listen"):
            await up.__aenter__()


async def test_the_sender_feeds_the_live_values(tmp_path: Path, peer: ModbusPeer) -> None:
    """The real delivery path: samples written to the buffer reach the registers."""
    cfg = config(tmp_path, peer.port)
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, ServerConfig)
    assert up_cfg.start_from == "latest"  # this uplink's default
    assert up_cfg.tags == sorted({m["tag"] for m in MAP})  # only the mapped tags are forwarded
    ctx = PluginContext(GW, tmp_path, logging.getLogger("t"), config=cfg)
    backoff = Backoff(initial=0.05, cap=0.2)
    async with sender_running(tmp_path, up_cfg, lambda: Uplink(up_cfg, ctx), gateway=GW, backoff=backoff) as (buf, _):
        port = int(str(up_cfg.listen).rpartition(":")[2])
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)

        async def mode_is(value: int) -> bool:
            if not client.connected and not await client.connect():
                return False
            got = await client.read_holding_registers(2, count=1, device_id=1)
            return not got.isError() and got.registers == [value]

        try:
            await until(lambda: mode_is(0), 10, "the server is up (mode not seen yet: 0)")
            buf.put([sample("press/mode", 2), sample("press/other", 5)])
            await until(lambda: mode_is(2), 10, "mode 2 served")
        finally:
            client.close()


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"tag": "a/b", "address": 0}, {"tag": "a/c", "address": 1}], r"map\[1\] \(a/c\)\.address: holding 1"),
        (
            [{"tag": "a/b", "address": 0, "status_register": 5}, {"tag": "a/c", "address": 5, "type": "uint16"}],
            r"map\[1\] \(a/c\)\.address: holding 5 on unit 1 is already used by map\[0\] \(a/b\)\.status_register",
        ),
        ([{"tag": "a/b", "table": "coil", "address": 0, "type": "int16"}], "type must be bool"),
        ([{"tag": "a/b", "address": 65535}], "runs past address 65535"),
        ([{"tag": "a/b", "address": 0, "type": "uint16", "sentinel": -1}], "not a uint16"),
        ([{"tag": "a/b", "address": 0, "unit_id": 9}], "not one of unit_ids"),
        ([], "map is empty"),
    ],
)
def test_bad_maps_are_refused_naming_the_key(tmp_path: Path, entries: list[dict[str, Any]], message: str) -> None:
    raw = {
        "gateway": {"data_dir": str(tmp_path)},
        "uplinks": [{"name": "s", "type": "modbus_server", "map": entries}],
    }
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_separate_units_may_use_the_same_address(tmp_path: Path) -> None:
    raw = {
        "gateway": {"data_dir": str(tmp_path)},
        "uplinks": [
            {
                "name": "s",
                "type": "modbus_server",
                "unit_ids": [1, 2],
                "map": [{"tag": "a/b", "address": 0, "unit_id": 1}, {"tag": "a/c", "address": 0, "unit_id": 2}],
            }
        ],
    }
    assert len(parse(raw).uplinks[0].map) == 2  # type: ignore[attr-defined]
