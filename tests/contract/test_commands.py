"""The command path against real peers on 127.0.0.1: a pymodbus server, an asyncua server, mosquitto,
a SCADA client writing through the OPC UA server uplink, and `edged write` with and without a daemon.

Every refusal is checked at the device: the server's register (or variable) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from buffer.store import Store
from drivers.modbus import Driver as ModbusDriver
from drivers.opcua import Driver as OpcuaDriver
from edged import cli
from edged.commands import AuditTrail, Command, CommandGate, CommandResult, Result, canonical, sign
from edged.config import Config, parse
from edged.model import Sample
from edged.plugin import PluginContext
from peers.modbus_server import ModbusPeer, Unit
from peers.mosquitto import Mosquitto, free_port
from peers.opcua_server import PlantServer
from peers.waiting import eventually
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import serve_commands
from uplink.opcua import Uplink as OpcuaUplink

GW = "gw"
NS = 1_000_000_000
SP, MODE, PRESSURE, CLAMPED, LOCKED = 0, 2, 3, 4, 5  # holding register addresses
BAD_OUT_OF_RANGE, BAD_USER_ACCESS_DENIED, BAD_TYPE_MISMATCH = 0x803C0000, 0x801F0000, 0x80740000


def f32(value: float) -> list[int]:
    """A float32 as two registers, most significant word first (written independently of the codec)."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def press_device(port: int, interval: str = "1s") -> dict[str, Any]:
    return {
        "name": "press",
        "type": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "500ms",
        "retries": 0,
        "interval": interval,
        "tags": [
            {"name": "setpoint", "address": SP, "type": "float32", "writable": True, "unit": "bar"},
            {"name": "mode", "address": MODE, "writable": True},
            {"name": "pressure", "address": PRESSURE},
            {"name": "clamped", "address": CLAMPED, "writable": True},
            {"name": "locked", "address": LOCKED, "writable": True},
            {"name": "pump", "address": 0, "table": "coil", "writable": True},
        ],
    }


def commands(sources: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "max_age": "30s",
        "timeout": "3s",
        "tags": [
            {"tag": "press/setpoint", "sources": sources, "min": 0.0, "max": 150.0, **extra},
            {"tag": "press/mode", "sources": sources, "allowed": [0, 1, 2]},
            {"tag": "press/clamped", "sources": sources},
            {"tag": "press/locked", "sources": sources},
            {"tag": "press/pump", "sources": sources},
        ],
    }


@pytest.fixture
async def peer() -> AsyncIterator[ModbusPeer]:
    unit = Unit(1, holding={SP: f32(110.0)[0], SP + 1: f32(110.0)[1], MODE: 1, PRESSURE: 77, CLAMPED: 0, LOCKED: 9})
    unit.coils = {0: False, 1: False}
    unit.clamp[CLAMPED] = 100
    unit.readonly.add(LOCKED)
    p = ModbusPeer([unit])
    await p.start_tcp(0)
    try:
        yield p
    finally:
        await p.stop()


def registers(peer: ModbusPeer) -> list[int]:
    return peer.registers(1, "h", 0, 6)


@contextlib.asynccontextmanager
async def modbus_gate(
    tmp_path: Path,
    peer: ModbusPeer,
    sources: list[str],
    uplinks: list[dict[str, Any]] | None = None,
    *,
    gateway: str = GW,
    **settings: Any,
) -> AsyncIterator[tuple[CommandGate, Store, Config]]:
    """A gate in front of a really connected Modbus driver, auditing into a real buffer file;
    `signing` is [commands.sources], other `settings` go into [commands]."""
    signing = settings.pop("signing", {})
    cfg = parse(
        {
            "gateway": {"id": gateway, "data_dir": str(tmp_path)},
            "buffer": {"max_bytes": settings.pop("max_bytes", "1GiB")},
            "devices": [press_device(peer.port)],
            "uplinks": uplinks or [{"name": "cloud", "type": "mqtt"}, {"name": "scada", "type": "mqtt"}],
            "commands": commands(sources) | {"sources": signing} | settings,
        }
    )
    ctx = PluginContext(GW, tmp_path, logging.getLogger("test.commands.press"))
    with Store(tmp_path / "buffer.db") as store:
        async with ModbusDriver(cfg.devices[0], ctx) as drv:  # type: ignore[arg-type]

            async def lookup(name: str) -> ModbusDriver | None:
                return drv if name == "press" else None

            yield CommandGate(cfg, AuditTrail.for_store(store), lookup), store, cfg


def cmd(tag: str, value: Any, *, source: str = "cloud", age_s: float = 0.0, id: str = "c") -> Command:
    return Command(id, source, "tester", tag, value, time.time_ns() - int(age_s * NS))


# ----------------------------------------------------------------------------------------- Modbus


async def test_modbus_allowed_write_lands_and_reads_back(tmp_path: Path, peer: ModbusPeer) -> None:
    async with modbus_gate(tmp_path, peer, ["cloud"]) as (gate, store, _):
        res = await gate.submit(cmd("press/setpoint", 120.5, id="a"))
        assert (res.result, res.readback, res.new) == (Result.ACCEPTED, 120.5, 120.5), res.reason
        assert registers(peer)[SP : SP + 2] == f32(120.5)
        res = await gate.submit(cmd("press/mode", 2, id="b"))
        assert res.ok and peer.registers(1, "h", MODE) == [2]
        res = await gate.submit(cmd("press/pump", True, id="c"))
        assert res.ok and res.readback is True and peer.registers(1, "c", 0) == [1]
        rows = store.audit_rows()
        assert [(r.cmd_id, r.result) for r in rows] == [("a", "accepted"), ("b", "accepted"), ("c", "accepted")]
        assert all(r.written_ns is not None for r in rows)


@pytest.mark.parametrize(
    ("make", "code", "reason"),
    [
        (lambda: cmd("press/setpoint", 150.5), "out_of_range", "150.5 is above the maximum 150"),
        (lambda: cmd("press/setpoint", -1.0), "out_of_range", "below the minimum 0"),
        (lambda: cmd("press/nope", 1.0), "unknown_tag", "unknown tag 'press/nope'"),
        (lambda: cmd("press/pressure", 1), "not_writable", "press/pressure is not writable by commands"),
        (
            lambda: cmd("press/setpoint", 120.0, source="scada"),
            "unauthorised",
            "source 'scada' may not write press/setpoint",
        ),
        (lambda: cmd("press/setpoint", 120.0, age_s=45), "stale", "old (max_age 30s): refused, never replayed late"),
        (lambda: cmd("press/mode", 5), "not_allowed", "5 is not one of the allowed values (0, 1, 2)"),
        (lambda: cmd("press/setpoint", "fast"), "type", "press/setpoint takes a number, not 'fast'"),
    ],
)
async def test_modbus_refusals_write_nothing(
    tmp_path: Path, peer: ModbusPeer, make: Callable[[], Command], code: str, reason: str
) -> None:
    command = make()  # stamped now, not at collection: a command older than max_age is refused as stale
    before, coils = registers(peer), peer.registers(1, "c", 0, 2)
    async with modbus_gate(tmp_path, peer, ["cloud"]) as (gate, store, _):
        res = await gate.submit(command)
        assert (res.result, res.code) == (Result.REJECTED, code)
        assert reason in res.reason
        (row,) = store.audit_rows()
        assert (row.result, row.code, row.written_ns) == ("rejected", code, None)
    assert registers(peer) == before
    assert peer.registers(1, "c", 0, 2) == coils


async def test_modbus_device_refusal_and_readback_mismatch(tmp_path: Path, peer: ModbusPeer) -> None:
    async with modbus_gate(tmp_path, peer, ["cloud"]) as (gate, store, _):
        refused = await gate.submit(cmd("press/locked", 1, id="a"))
        assert (refused.result, refused.code) == (Result.REJECTED, "device_refused")
        assert "illegal data address" in refused.reason
        assert peer.registers(1, "h", LOCKED) == [9]
        clamped = await gate.submit(cmd("press/clamped", 500, id="b"))  # the device stores at most 100
        assert (clamped.result, clamped.code) == (Result.READBACK_MISMATCH, "readback")
        assert "wrote 500 but read back 100" in clamped.reason
        assert [r.result for r in store.audit_rows()] == ["rejected", "readback_mismatch"]


async def test_modbus_device_that_stops_answering(tmp_path: Path, peer: ModbusPeer) -> None:
    async with modbus_gate(tmp_path, peer, ["cloud"]) as (gate, _, _):
        peer.fault = "mute"
        res = await gate.submit(cmd("press/setpoint", 100.0))
        peer.fault = "ok"
    assert (res.result, res.code) == (Result.FAILED, "wire")
    assert "may or may not have reached the device" in res.reason


# ----------------------------------------------------------------------------------------- OPC UA driver


@pytest_asyncio.fixture
async def plant(tmp_path: Path) -> AsyncIterator[PlantServer]:
    (tmp_path / "plant").mkdir()
    server = PlantServer(tmp_path / "plant", writable=frozenset({"Pressure", "Count", "Running", "Mode"}))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_opcua_driver_write_lands_and_reads_back(tmp_path: Path, plant: PlantServer) -> None:
    cfg = parse(
        {
            "gateway": {"id": GW, "data_dir": str(tmp_path)},
            "devices": [
                {
                    "name": "boiler",
                    "type": "opcua",
                    "endpoint": plant.url,
                    "security_policy": "None",
                    "timeout": "3s",
                    "tags": [
                        {"name": "pressure", "node": plant.node_id("Pressure")},
                        {"name": "count", "node": plant.node_id("Count")},
                        {"name": "running", "node": plant.node_id("Running")},
                        {"name": "mode", "node": plant.node_id("Mode")},
                        {"name": "temperature", "node": plant.node_id("Temperature")},
                    ],
                }
            ],
            "commands": {
                "enabled": True,
                "tags": [
                    {"tag": f"boiler/{t}", "sources": ["cli"]}
                    for t in ("pressure", "count", "running", "mode", "temperature")
                ],
            },
        }
    )
    ctx = PluginContext(GW, tmp_path, logging.getLogger("test.commands.boiler"))
    with Store(tmp_path / "buffer.db") as store:
        async with OpcuaDriver(cfg.devices[0], ctx) as drv:  # type: ignore[arg-type]

            async def lookup(name: str) -> OpcuaDriver | None:
                return drv

            gate = CommandGate(cfg, AuditTrail.for_store(store), lookup)

            async def write(tag: str, value: Any) -> CommandResult:
                return await gate.submit(cmd(f"boiler/{tag}", value, source="cli", id=f"{tag}-{value}"))

            res = await write("pressure", 13.25)
            assert (res.result, res.readback) == (Result.ACCEPTED, 13.25), res.reason
            assert plant.get("Pressure") == 13.25
            assert (await write("count", 7)).readback == 7 and plant.get("Count") == 7
            assert (await write("count", 8.0)).readback == 8  # a whole float fits an Int32
            assert (await write("running", False)).readback is False and plant.get("Running") is False
            assert (await write("mode", "manual")).readback == "manual"

            frac = await write("count", 7.5)
            assert (frac.result, frac.status) == (Result.REJECTED, BAD_TYPE_MISMATCH)
            assert "not a whole number" in frac.reason
            big = await write("count", 2**40)
            assert (big.result, big.status) == (Result.REJECTED, BAD_OUT_OF_RANGE)
            wrong = await write("pressure", "high")
            assert (wrong.result, wrong.status) == (Result.REJECTED, BAD_TYPE_MISMATCH)
            locked = await write("temperature", 99.0)  # the server does not let clients write it
            assert (locked.result, locked.status) == (Result.REJECTED, BAD_USER_ACCESS_DENIED)
            assert "BadUserAccessDenied" in locked.reason
    assert (plant.get("Count"), plant.get("Pressure"), plant.get("Temperature")) == (8, 13.25, 80.25)


# ----------------------------------------------------------------------------------------- MQTT


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_mqtt_commands_and_replies_through_mosquitto(
    tmp_path: Path, peer: ModbusPeer, mosquitto: Mosquitto
) -> None:
    up = {"name": "cloud", "type": "mqtt", "host": "127.0.0.1", "port": mosquitto.port, "commands": True}
    acl_only = {"cloud": {"require_signature": False}}
    async with modbus_gate(tmp_path, peer, ["cloud"], uplinks=[up], signing=acl_only) as (gate, _, cfg):
        up_cfg = cfg.uplinks[0]
        assert isinstance(up_cfg, MqttConfig)
        log = logging.getLogger("test.commands.mqtt")
        seen = _Seen("listening for commands on edged/gw/cmd")
        log.addHandler(seen)
        log.setLevel(logging.INFO)
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="scada-test") as client,
            asyncio.TaskGroup() as tg,
        ):
            await client.subscribe("edged/gw/cmd/reply", qos=1)
            await client.subscribe("edged/gw/cmd/reply/optimizer", qos=1)
            now_ms = time.time_ns() // 1_000_000
            base = {"tag": "press/setpoint", "ts": now_ms, "user": "optimizer"}
            # retained on the broker: handed to the listener when it subscribes, and refused
            await client.publish("edged/gw/cmd", json.dumps({"id": "m0", "value": 125.0, **base}), qos=1, retain=True)

            async def next_reply() -> dict[str, Any]:
                async with asyncio.timeout(10):
                    msg = await anext(aiter(client.messages))
                doc: dict[str, Any] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                doc["topic"] = str(msg.topic)
                return doc

            async def ask(payload: bytes | dict[str, Any]) -> dict[str, Any]:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                await client.publish("edged/gw/cmd", data, qos=1)
                return await next_reply()

            listener = tg.create_task(serve_commands(up_cfg, PluginContext(GW, tmp_path, log), gate), name="listener")
            async with asyncio.timeout(10):
                await seen.event.wait()
            retained = await next_reply()
            assert (retained["id"], retained["result"]) == ("m0", "rejected")
            assert "retained message refused" in retained["reason"]
            ok = await ask({"id": "m1", "value": 120.0, **base, "reply_to": "edged/gw/cmd/reply/optimizer"})
            assert ok["topic"] == "edged/gw/cmd/reply/optimizer"
            assert {k: ok[k] for k in ("id", "tag", "result", "old", "new", "readback")} == {
                "id": "m1", "tag": "press/setpoint", "result": "accepted", "old": None, "new": 120.0, "readback": 120.0,
            }  # fmt: skip
            assert abs(ok["ts"] - now_ms) < 60_000
            assert registers(peer)[SP : SP + 2] == f32(120.0)

            bad = await ask(b'{"id": "m2", "tag": "press/setpoint", "value": 130.0,')
            assert (bad["topic"], bad["result"], bad["id"]) == ("edged/gw/cmd/reply", "rejected", None)
            assert bad["reason"].startswith("malformed JSON: ")
            for payload, reason in (
                ({"id": "m3", "value": 500.0, **base}, "500.0 is above the maximum 150"),
                ({"id": "m4", "value": 125.0, **base, "ts": now_ms - 60_000}, "old (max_age 30s)"),
                ({"id": "m5", "value": 125.0, "tag": "press/pressure", "ts": now_ms}, "not writable by commands"),
                ({"id": "m6", "value": 125.0, "tag": "press/setpoint"}, "missing required field `ts`"),
                ({"id": "m1", "value": 121.0, **base}, "duplicate command id 'm1' from cloud"),
            ):
                reply = await ask(payload)
                assert (reply["id"], reply["result"]) == (payload["id"], "rejected")
                assert reason in reply["reason"]
            listener.cancel()
    assert registers(peer)[SP : SP + 2] == f32(120.0)  # only m1 was written
    with Store(tmp_path / "buffer.db") as s:
        rows = s.audit_rows()
    assert [(r.cmd_id, r.result) for r in rows] == [
        ("m0", "rejected"), ("m1", "accepted"), (None, "rejected"),
        *[(f"m{i}", "rejected") for i in (3, 4, 5, 6, 1)],
    ]  # fmt: skip
    assert rows[2].reason is not None and rows[2].reason.startswith("malformed JSON")


# ----------------------------------------------------------------------------------------- SCADA: OPC UA server uplink


async def test_scada_writes_through_the_opcua_server_uplink(tmp_path: Path, peer: ModbusPeer) -> None:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    scada = {
        "name": "scada",
        "type": "opcua",
        "endpoint": endpoint,
        "security_policies": ["None"],
        "users": {"op": "pw-op", "viewer": "pw-view"},
        "command_users": ["op"],
    }
    async with modbus_gate(tmp_path, peer, ["scada"], uplinks=[scada]) as (gate, store, cfg):
        ctx = PluginContext(GW, tmp_path, logging.getLogger("test.commands.scada"), config=cfg, commands=gate)
        async with OpcuaUplink(cfg.uplinks[0], ctx) as _:  # type: ignore[arg-type]

            async def node(c: Client, tag: str) -> Any:
                ns = await c.get_namespace_index(f"urn:edged:{GW}")
                return await c.nodes.objects.get_child([f"{ns}:{GW}", f"{ns}:press", f"{ns}:{tag}"])

            async def write(user: str, password: str, tag: str, variant: ua.Variant) -> int:
                c = Client(endpoint, timeout=5)
                c.set_user(user)
                c.set_password(password)
                async with c:
                    try:
                        await (await node(c, tag)).write_value(ua.DataValue(variant))
                    except UaStatusCodeError as exc:
                        return int(exc.code)
                return 0

            c = Client(endpoint, timeout=5)
            c.set_user("viewer")
            c.set_password("pw-view")
            async with c:
                levels = await (await node(c, "setpoint")).get_access_level()
                assert ua.AccessLevel.CurrentWrite in levels
                assert ua.AccessLevel.CurrentWrite not in await (await node(c, "pressure")).get_access_level()

            assert await write("op", "pw-op", "setpoint", ua.Variant(120.0, ua.VariantType.Double)) == 0
            assert registers(peer)[SP : SP + 2] == f32(120.0)
            before = registers(peer)
            assert await write("op", "pw-op", "setpoint", ua.Variant(500.0, ua.VariantType.Double)) == BAD_OUT_OF_RANGE
            assert (
                await write("viewer", "pw-view", "setpoint", ua.Variant(90.0, ua.VariantType.Double))
                == BAD_USER_ACCESS_DENIED
            )
            assert (
                await write("op", "pw-op", "pressure", ua.Variant(1.0, ua.VariantType.Double)) == BAD_USER_ACCESS_DENIED
            )
            assert await write("op", "pw-op", "setpoint", ua.Variant("x", ua.VariantType.String)) == BAD_TYPE_MISMATCH
            assert registers(peer) == before
            assert await write("op", "pw-op", "mode", ua.Variant(2, ua.VariantType.UInt16)) == 0
            assert peer.registers(1, "h", MODE) == [2]
        rows = store.audit_rows()
    assert [(r.user, r.result, r.code) for r in rows] == [
        ("op", "accepted", "ok"),
        ("op", "rejected", "out_of_range"),
        ("viewer", "rejected", "unauthorised"),
        ("op", "rejected", "type"),
        ("op", "accepted", "ok"),
    ]  # the write to the non-commandable `pressure` never reached the gate: nothing to audit
    assert all(r.source == "scada" for r in rows)


# ----------------------------------------------------------------------------------------- edged write / export


def write_config(tmp_path: Path, port: int, interval: str = "200ms") -> Path:
    p = tmp_path / "edged.toml"
    dev = press_device(port, interval)
    lines = [f'[gateway]\nid = "{GW}"\ndata_dir = "{tmp_path / "data"}"\n', "[[devices]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in dev.items() if k != "tags"]
    for t in dev["tags"]:
        lines += ["[[devices.tags]]", *(f"{k} = {json.dumps(v)}" for k, v in t.items())]
    lines += ["[[uplinks]]", 'name = "cloud"', 'type = "file"']
    lines += ["[commands]", "enabled = true", 'max_age = "30s"']
    lines += ["[[commands.tags]]", 'tag = "press/setpoint"', 'sources = ["cli"]', "min = 0.0", "max = 150.0"]
    lines += ["[[commands.tags]]", 'tag = "press/mode"', 'sources = ["cloud"]']
    p.write_text("\n".join(lines) + "\n")
    return p


async def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(list(args))

    rc = await asyncio.to_thread(call)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def quiet_root_logger() -> Iterator[None]:
    """`edged write` configures logging like the CLI does; give pytest its handlers back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


async def test_edged_write_without_a_daemon(tmp_path: Path, peer: ModbusPeer, quiet_root_logger: None) -> None:
    cfg = write_config(tmp_path, peer.port)
    rc, out, err = await run_cli("write", "press/setpoint", "120.5", "-c", str(cfg), "--user", "alice")
    assert rc == 0, out + err
    assert out.strip() == "accepted: press/setpoint = 120.5 (was None, read back 120.5)"
    assert registers(peer)[SP : SP + 2] == f32(120.5)
    before = registers(peer)
    for args, reason in (
        (("press/setpoint", "151"), "151 is above the maximum 150"),
        (("press/setpoint", "abc"), "press/setpoint takes a number, not 'abc'"),
        (("press/mode", "1"), "source 'cli' may not write press/mode"),
        (("press/nope", "1"), "unknown tag 'press/nope'"),
    ):
        rc, out, _ = await run_cli("write", *args, "-c", str(cfg))
        assert rc == 1 and out.startswith("rejected: ") and reason in out, out
    assert registers(peer) == before
    rc, out, err = await run_cli("export", "--audit", "-c", str(cfg), "--format", "jsonl")
    assert rc == 0 and "exported 5 audit rows" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["user"], r["tag"], r["value"], r["result"]) for r in rows][:2] == [
        ("alice", "press/setpoint", 120.5, "accepted"),
        (rows[1]["user"], "press/setpoint", 151, "rejected"),
    ]
    assert all(r["source"] == "cli" for r in rows)
    assert rows[0]["written"] is not None and rows[1]["written"] is None


def _device_polled(status: Path) -> bool:
    return status.exists() and json.loads(status.read_text())["devices"]["press"]["samples"] > 0


async def polled(status: Path) -> None:
    """Until the daemon's status file shows the device polled (and so a value in the buffer)."""
    async with asyncio.timeout(20):
        while not await asyncio.to_thread(_device_polled, status):  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.1)


async def test_edged_write_beside_a_running_daemon(tmp_path: Path, peer: ModbusPeer, quiet_root_logger: None) -> None:
    cfg = write_config(tmp_path, peer.port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edged", "run", "-c", str(cfg), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await polled(tmp_path / "data" / "status.json")
        rc, out, err = await run_cli("write", "press/setpoint", "99.5", "-c", str(cfg), "--user", "bob")
        assert rc == 0, out + err
        assert f"the daemon (pid {proc.pid}) runs on this buffer" in err
        assert out.startswith("accepted: press/setpoint = 99.5 (was 110.0, read back 99.5)"), out
        assert registers(peer)[SP : SP + 2] == f32(99.5)
        rc, out, err = await run_cli("write", "press/setpoint", "200", "-c", str(cfg))
        assert rc == 1 and "200 is above the maximum 150" in out
        assert registers(peer)[SP : SP + 2] == f32(99.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    rc, out, _ = await run_cli("export", "--audit", "-c", str(cfg))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("id,received,source,user,cmd_id,tag,value,command_ts,old,written,result,code,reason")
    assert len(lines) == 3
    assert ",bob," in lines[1] and ",accepted,ok," in lines[1]
    assert ",rejected,out_of_range," in lines[2]


# ----------------------------------------------------------------------------------------- MQTT: signed commands

DOC = Path(__file__).parents[2] / "docs" / "commands.md"
DOC_KEY = b"the key shared with the gateway"  # the key in the docs' example


def doc_sender() -> dict[str, Any]:
    """The Python sender of docs/commands.md, run as written."""
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "def signed_command" in b]
    ns: dict[str, Any] = {}
    exec(block, ns)  # the documentation's own example
    return ns


def signed_wire(cmd_id: str, value: Any, ts_ms: int, *, reply_to: str | None = None, key: bytes = DOC_KEY) -> bytes:
    """A signed command with a chosen timestamp (the docs' sender always stamps now)."""
    cmd = Command(cmd_id, "optimizer", "optimizer", "press/setpoint", value, ts_ms * 1_000_000, reply_to)
    sig = sign(key, "k1", cmd)
    doc = {"id": cmd_id, "tag": cmd.tag, "value": value, "ts": ts_ms, "user": "optimizer", "reply_to": reply_to}
    return json.dumps(doc | {"sig": {"kid": sig.kid, "hmac": sig.hmac}}).encode()


class Replies:
    """A test client's view of one broker: publish commands, collect every answer by topic."""

    def __init__(self, client: aiomqtt.Client, command_topic: str) -> None:
        self.client = client
        self.command_topic = command_topic
        self.got: list[dict[str, Any]] = []

    async def collect(self) -> None:
        async for msg in self.client.messages:
            doc: dict[str, Any] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            self.got.append(doc | {"topic": str(msg.topic)})

    async def ask(self, payload: bytes, reply_id: str | None) -> dict[str, Any]:
        """Publish and wait for the answer carrying `reply_id` (None: a command without a readable id)."""
        n = len(self.got)
        await self.client.publish(self.command_topic, payload, qos=1)
        await eventually(lambda: any(r["id"] == reply_id for r in self.got[n:]), 15, f"the answer to {reply_id}")
        return next(r for r in self.got[n:] if r["id"] == reply_id)


async def listening(log: logging.Logger, topic: str) -> _Seen:
    seen = _Seen(f"listening for commands on {topic}")
    log.addHandler(seen)
    log.setLevel(logging.INFO)
    return seen


@pytest.mark.timeout(90)
async def test_signed_mqtt_commands_and_every_refusal_through_mosquitto(
    tmp_path: Path, peer: ModbusPeer, mosquitto: Mosquitto
) -> None:
    gw = "press-gw"  # the gateway of the docs' example
    up = {"name": "optimizer", "type": "mqtt", "host": "127.0.0.1", "port": mosquitto.port, "commands": True}
    signing = {"optimizer": {"keys": {"k1": DOC_KEY.decode()}}}
    async with modbus_gate(
        tmp_path, peer, ["optimizer"], [up], gateway=gw, signing=signing, max_age="6s", max_future="4s"
    ) as (gate, store, cfg):
        up_cfg = cfg.uplinks[0]
        assert isinstance(up_cfg, MqttConfig)
        log = logging.getLogger("test.commands.signed")
        seen = await listening(log, f"edged/{gw}/cmd")
        sender = doc_sender()
        # the canonical bytes shown in the docs are what the gateway computes
        shown = re.search(r'^\{"id":"opt-0001".*\}$', DOC.read_text(), re.M)
        assert shown is not None
        canon = json.loads(shown.group(0))
        assert canonical(**{"cmd_id" if k == "id" else "ts_ns" if k == "ts" else k: v for k, v in canon.items()}) == (
            shown.group(0).encode()
        )
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="optimizer-test") as client,
            asyncio.TaskGroup() as tg,
        ):
            for topic in (f"edged/{gw}/cmd/reply/#", f"edged/{gw}/cmd/reply", f"edged/{gw}/live"):
                await client.subscribe(topic, qos=1)
            r = Replies(client, f"edged/{gw}/cmd")
            collector = tg.create_task(r.collect(), name="replies")
            listener = tg.create_task(serve_commands(up_cfg, PluginContext(gw, tmp_path, log), gate), name="listener")
            async with asyncio.timeout(10):
                await seen.event.wait()

            ok = await r.ask(sender["payload"], "opt-0001")  # the docs' example, as it stands
            assert (ok["result"], ok["readback"], ok["topic"]) == ("accepted", 120.0, f"edged/{gw}/cmd/reply/optimizer")
            assert registers(peer)[SP : SP + 2] == f32(120.0)
            replay = await r.ask(sender["payload"], "opt-0001")
            assert (replay["code"], replay["result"]) == ("duplicate", "rejected")

            now_ms = time.time_ns() // 1_000_000
            unsigned = json.dumps({"id": "u1", "tag": "press/setpoint", "value": 90.0, "ts": now_ms}).encode()
            assert (await r.ask(unsigned, "u1"))["code"] == "unsigned"
            wrong_key = sender["signed_command"](b"a guessed key, not the real one", "k1", "b1", "press/setpoint", 90.0)
            assert (await r.ask(wrong_key, "b1"))["code"] == "bad_signature"
            tampered = json.loads(sender["signed_command"](DOC_KEY, "k1", "b2", "press/setpoint", 90.0))
            tampered["value"] = 140.0
            assert (await r.ask(json.dumps(tampered).encode(), "b2"))["code"] == "bad_signature"
            future = await r.ask(signed_wire("f9", 90.0, now_ms + 10_000), "f9")
            assert future["code"] == "stale" and "in the future (max_future 4s)" in future["reason"]
            big = await r.ask(json.dumps({"id": "x", "value": "v" * 60_000}).encode(), None)
            assert (big["code"], big["topic"]) == ("too_large", f"edged/{gw}/cmd/reply")
            aimed = await r.ask(signed_wire("a1", 90.0, now_ms, reply_to=f"edged/{gw}/live"), "a1")
            assert (aimed["code"], aimed["topic"]) == ("malformed", f"edged/{gw}/cmd/reply")
            assert "is not under 'edged/press-gw/cmd/reply/'" in aimed["reason"]
            assert registers(peer)[SP : SP + 2] == f32(120.0)  # none of those reached the device

            # stamped ahead (within max_future), then a newer setpoint, then the first replayed after max_age
            first_ms = time.time_ns() // 1_000_000
            ahead = signed_wire("f1", 100.0, first_ms + 3_500)
            assert (await r.ask(ahead, "f1"))["result"] == "accepted"
            assert (await r.ask(signed_wire("f2", 105.0, first_ms), "f2"))["result"] == "accepted"
            await asyncio.sleep(max(0.0, first_ms / 1000 + 6.5 - time.time()))  # the clock must pass max_age
            late = await r.ask(ahead, "f1")
            assert (late["result"], late["code"]) == ("rejected", "duplicate"), late
            assert registers(peer)[SP : SP + 2] == f32(105.0)  # the newer setpoint stands
            listener.cancel()
            collector.cancel()
        assert not [m for m in r.got if m["topic"] == f"edged/{gw}/live"]
        rows = store.audit_rows()
    assert [(row.cmd_id, row.code) for row in rows] == [
        ("opt-0001", "ok"), ("opt-0001", "duplicate"), ("u1", "unsigned"), ("b1", "bad_signature"),
        ("b2", "bad_signature"), ("f9", "stale"), (None, "too_large"), ("a1", "malformed"),
        ("f1", "ok"), ("f2", "ok"), ("f1", "duplicate"),
    ]  # fmt: skip
    assert all(row.reason for row in rows) and rows[6].value is None


ACL = """
user gw
topic read edged/gw/cmd
topic write edged/gw/cmd/reply
topic write edged/gw/cmd/reply/#

user cloud
topic write edged/gw/cmd
topic read edged/gw/cmd/reply
topic read edged/gw/cmd/reply/#

user intruder
topic read edged/gw/cmd/reply
topic read edged/gw/cmd/reply/#
"""


@pytest.mark.timeout(60)
async def test_signed_commands_through_a_broker_with_passwords_and_acls(tmp_path: Path, peer: ModbusPeer) -> None:
    (tmp_path / "broker").mkdir()
    users = {"gw": "gw-pass-1", "cloud": "cloud-pass-1", "intruder": "intruder-pass-1"}
    broker = Mosquitto(tmp_path / "broker", users=users, acl=ACL)
    broker.start()
    try:
        up = {"name": "cloud", "type": "mqtt", "host": "127.0.0.1", "port": broker.port, "commands": True,
              "username": "gw", "password": "gw-pass-1"}  # fmt: skip
        signing = {"cloud": {"keys": {"k1": DOC_KEY.decode()}}}
        async with modbus_gate(tmp_path, peer, ["cloud"], [up], signing=signing) as (gate, store, cfg):
            up_cfg = cfg.uplinks[0]
            assert isinstance(up_cfg, MqttConfig)
            log = logging.getLogger("test.commands.acl")
            seen = await listening(log, "edged/gw/cmd")
            sender = doc_sender()["signed_command"]
            async with (
                aiomqtt.Client("127.0.0.1", broker.port, username="cloud", password="cloud-pass-1") as cloud,
                aiomqtt.Client("127.0.0.1", broker.port, username="intruder", password="intruder-pass-1") as bad,
                asyncio.TaskGroup() as tg,
            ):
                await cloud.subscribe("edged/gw/cmd/reply/#", qos=1)
                r = Replies(cloud, "edged/gw/cmd")
                collector = tg.create_task(r.collect(), name="replies")
                ctx = PluginContext(GW, tmp_path, log)
                listener = tg.create_task(serve_commands(up_cfg, ctx, gate), name="listener")
                async with asyncio.timeout(10):
                    await seen.event.wait()
                # the broker drops what the intruder publishes (its ACL has no write on the command topic)
                await bad.publish("edged/gw/cmd", sender(DOC_KEY, "k1", "i1", "press/setpoint", 140.0), qos=1)
                reply_to = "edged/gw/cmd/reply/cloud"
                ok = await r.ask(sender(DOC_KEY, "k1", "c1", "press/setpoint", 125.5, "cloud", reply_to), "c1")
                assert (ok["result"], ok["readback"], ok["topic"]) == ("accepted", 125.5, reply_to)
                assert registers(peer)[SP : SP + 2] == f32(125.5)
                unsigned = {"id": "c2", "tag": "press/setpoint", "value": 1.0, "ts": time.time_ns() // 1_000_000,
                            "reply_to": reply_to}  # fmt: skip
                assert (await r.ask(json.dumps(unsigned).encode(), "c2"))["code"] == "unsigned"
                listener.cancel()
                collector.cancel()
            rows = store.audit_rows()
    finally:
        broker.stop()
    assert [(row.cmd_id, row.code, row.user) for row in rows] == [("c1", "ok", "cloud"), ("c2", "unsigned", None)]
    assert registers(peer)[SP : SP + 2] == f32(125.5)


# ----------------------------------------------------------------------------------------- MQTT: floods


@pytest.mark.timeout(120)
async def test_a_flood_of_large_commands_does_not_push_out_unsent_samples(
    tmp_path: Path, peer: ModbusPeer, mosquitto: Mosquitto
) -> None:
    max_bytes = 8 * 1024 * 1024
    up = {"name": "cloud", "type": "mqtt", "host": "127.0.0.1", "port": mosquitto.port, "commands": True}
    async with modbus_gate(
        tmp_path, peer, ["cloud"], [up], signing={"cloud": {"require_signature": False}}, enabled=False,
        audit_max_rows=100, audit_max_bytes="64KiB", max_bytes="8MiB",
    ) as (gate, store, cfg):  # fmt: skip
        store.register_uplink("cloud")
        t0 = time.time_ns()
        for chunk in range(10):  # 100 000 samples nobody has acknowledged: about half the buffer
            store.append([Sample(f"press/t{i % 50}", t0 + chunk * 10_000 + i, float(i), 0, 100) for i in range(10_000)])
        owed = store.backlog("cloud")[0]
        assert owed == 100_000 and store.used_bytes() < max_bytes * 0.7
        up_cfg = cfg.uplinks[0]
        assert isinstance(up_cfg, MqttConfig)
        log = logging.getLogger("test.commands.flood")
        seen = await listening(log, "edged/gw/cmd")
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="flood") as client,
            asyncio.TaskGroup() as tg,
        ):
            listener = tg.create_task(serve_commands(up_cfg, PluginContext(GW, tmp_path, log), gate), name="listener")
            async with asyncio.timeout(10):
                await seen.event.wait()
            now_ms = time.time_ns() // 1_000_000
            for i in range(250):  # 60 KB each: refused unread
                doc = {"id": f"big{i}", "tag": "press/label", "value": "x" * 60_000, "ts": now_ms}
                await client.publish("edged/gw/cmd", json.dumps(doc).encode(), qos=1)
            for i in range(250):  # 7 KB each: read, refused, recorded cut to a bounded size
                doc = {"id": f"mid{i}", "tag": "press/label", "value": "y" * 7_000, "ts": now_ms}
                await client.publish("edged/gw/cmd", json.dumps(doc).encode(), qos=1)
            await eventually(lambda: gate.outcomes[("cloud", "rejected")] == 500, 60, "every command answered")
            listener.cancel()
        stats = store.audit_stats()
        assert stats.rows <= 100 and stats.bytes <= 64 * 1024 and stats.dropped == 500 - stats.rows
        assert gate.refusals[("cloud", "too_large")] == 250 and gate.refusals[("cloud", "disabled")] == 250
        trimmed = store.trim(retention_ns=10**18, max_bytes=max_bytes)
        assert trimmed.deleted == 0 and store.backlog("cloud")[0] == owed
        assert store.used_bytes() < max_bytes
        rows = store.audit_rows()
    assert rows[-1].cmd_id == "mid249" and isinstance(rows[-1].value, str) and len(rows[-1].value) < 1100
