"""The BACnet driver against a bacpypes3 device on 127.0.0.1, and against a hand-written device that
speaks bytes encoded here from ASHRAE 135 (clause 20 encoding, Annex J BVLL), independently of
bacpypes3.

Broadcast Who-Is does not reach a peer on loopback (127.0.0.1 has no broadcast address), so
discovery is tested with a Who-Is directed to the peer's address, which is what `edged discover
bacnet --address` sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer.store import Store
from drivers.bacnet import Driver, Stacks
from drivers.bacnet.client import Stack
from edged.commands import AuditTrail, Command, CommandGate, Result
from edged.config import parse
from edged.errors import Permanent, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.bacnet_device import BacnetDevice, free_udp_port

LOG = logging.getLogger("test.bacnet")


def tags() -> list[dict[str, Any]]:
    return [
        {"name": "temperature", "object": "analog-input,1"},
        {"name": "setpoint", "object": "analog-value,2", "writable": True},
        {"name": "pump", "object": "binary-value,3", "writable": True, "priority": 10},
        {"name": "mode", "object": "multi-state-value,4", "writable": True},
        {"name": "note", "object": "characterstring-value,5"},
        {"name": "valve", "object": "analog-output,6", "writable": True},
    ]


def device(peer_address: str, local_port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ahu",
        "type": "bacnet",
        "address": peer_address,
        "device_instance": 1001,
        "local_address": f"127.0.0.1:{local_port}",
        "timeout": "300ms",
        "retries": 0,
        "interval": "200ms",
        "tags": tags(),
    } | extra


def config(dev: dict[str, Any], tmp_path: Path, commands: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "devices": [dev]}
    if commands is not None:
        raw["commands"] = commands
        raw["uplinks"] = [{"name": "cloud", "type": "mqtt"}]
    return parse(raw)


def ctx(tmp_path: Path) -> PluginContext:
    return PluginContext("gw", tmp_path, LOG)


@pytest.fixture
async def peer() -> AsyncIterator[BacnetDevice]:
    dev = BacnetDevice(free_udp_port())
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def by_tag(samples: list[Sample]) -> dict[str, Sample]:
    return {s.tag.split("/", 1)[1]: s for s in samples}


async def collect(it: AsyncIterator[list[Sample]], want: set[str], timeout: float = 5.0) -> dict[str, Sample]:
    """Batches until every tag in `want` has a sample (the newest one of each is kept)."""
    got: dict[str, Sample] = {}
    async with asyncio.timeout(timeout):
        while not want <= got.keys():
            got |= by_tag(await anext(it))
    return got


# ----------------------------------------------------------------------------------------- reading


async def test_reads_values_units_and_follows_cov(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, free_udp_port()), tmp_path).devices[0]
    async with Driver(cfg, ctx(tmp_path)) as drv:
        assert drv.cov_supported
        # bacpypes3 has no COV for multi-state and characterstring values here: those are polled
        cov = {o.tag.name for o in drv._objs if o.spid is not None}
        assert cov == {"temperature", "setpoint", "pump", "valve"}
        it = drv.samples()
        got = await collect(it, {t["name"] for t in tags()})
        assert {k: s.value for k, s in got.items()} == {
            "temperature": 21.5, "setpoint": 20.0, "pump": False, "mode": 2, "note": "hello", "valve": 0.0,
        }  # fmt: skip
        assert {k: s.status for k, s in got.items()} == dict.fromkeys(got, Status.GOOD)
        assert (got["temperature"].unit, got["setpoint"].unit, got["pump"].unit) == ("degC", "%", None)
        notified = drv.counters()["notifications"]
        peer.objects["temperature"].presentValue = 23.25  # beyond the COV increment: a notification
        async with asyncio.timeout(5):
            while (s := by_tag(await anext(it)).get("temperature")) is None or s.value != 23.25:
                pass
        assert drv.counters()["notifications"] > notified
        peer.objects["note"].presentValue = "changed"  # polled
        async with asyncio.timeout(5):
            while (s := by_tag(await anext(it)).get("note")) is None or s.value != "changed":
                pass


async def test_status_flags_and_reliability_become_opc_ua_status(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, free_udp_port(), cov=False), tmp_path).devices[0]
    ai = peer.objects["temperature"]
    async with Driver(cfg, ctx(tmp_path)) as drv:
        # bacpypes3 derives status-flags from reliability, out-of-service and event-state (its
        # overridden flag is always 0: the scripted device below covers GoodLocalOverride)
        cases = [
            ({"reliability": "overRange"}, 21.5, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
            ({"reliability": "openLoop"}, None, Status.BAD_SENSOR_FAILURE),
            ({"reliability": "communicationFailure"}, None, Status.BAD_COMMUNICATION_ERROR),
            ({"reliability": "noFaultDetected", "outOfService": True}, None, Status.BAD_OUT_OF_SERVICE),
            ({"outOfService": False, "eventState": "highLimit"}, 21.5, Status.GOOD),  # in alarm: process state
            ({"eventState": "normal"}, 21.5, Status.GOOD),
        ]  # fmt: skip
        for props, value, status in cases:
            for k, v in props.items():
                setattr(ai, k, v)
            (s,) = await drv.poll(["temperature"])
            assert (s.value, s.status) == (value, status), props
            assert s.score == (100 if status < 0x40000000 else 60 if status < 0x80000000 else 0)


async def test_unknown_object_is_one_bad_sample_and_the_rest_runs(tmp_path: Path, peer: BacnetDevice) -> None:
    dev = device(peer.address, free_udp_port(), cov=False)
    dev["tags"] = [*tags(), {"name": "ghost", "object": "analog-value,99"}]
    async with Driver(config(dev, tmp_path).devices[0], ctx(tmp_path)) as drv:
        it = drv.samples()
        first = await anext(it)
        assert [(s.tag, s.value, s.status) for s in first] == [("ahu/ghost", None, Status.BAD_NODE_ID_UNKNOWN)]
        got = await collect(it, {"temperature", "note"})
        assert "ghost" not in got and got["temperature"].status == Status.GOOD
        assert drv.counters()["unknown_object"] == 1


async def test_device_without_cov_is_polled(tmp_path: Path) -> None:
    peer = BacnetDevice(free_udp_port(), cov=False)
    peer.start()
    try:
        cfg = config(device(peer.address, free_udp_port()), tmp_path).devices[0]
        async with Driver(cfg, ctx(tmp_path)) as drv:
            assert not drv.cov_supported
            assert all(o.spid is None for o in drv._objs)
            it = drv.samples()
            await collect(it, {"temperature"})
            peer.objects["temperature"].presentValue = 30.0
            async with asyncio.timeout(5):
                while (s := by_tag(await anext(it)).get("temperature")) is None or s.value != 30.0:
                    pass
            assert drv.counters()["subscribes"] == 0
    finally:
        peer.stop()


async def test_cov_subscription_is_renewed(tmp_path: Path, peer: BacnetDevice) -> None:
    dev = device(peer.address, free_udp_port(), cov_lifetime="10s")
    dev["tags"] = [{"name": "temperature", "object": "analog-input,1"}]
    async with Driver(config(dev, tmp_path).devices[0], ctx(tmp_path)) as drv:
        it = drv.samples()
        await collect(it, {"temperature"})
        assert drv.counters()["subscribes"] == 1
        async with asyncio.timeout(15):  # renewed at half the lifetime
            while drv.counters()["subscribes"] < 2:
                await anext(it)
        peer.objects["temperature"].presentValue = 40.0
        async with asyncio.timeout(5):
            while (s := by_tag(await anext(it)).get("temperature")) is None or s.value != 40.0:
                pass


async def test_device_instance_without_config_is_found(tmp_path: Path, peer: BacnetDevice) -> None:
    dev = device(peer.address, free_udp_port(), cov=False)
    del dev["device_instance"]
    async with Driver(config(dev, tmp_path).devices[0], ctx(tmp_path)) as drv:
        assert drv.instance == 1001


# ----------------------------------------------------------------------------------------- errors


async def test_nobody_there_is_transient(tmp_path: Path) -> None:
    cfg = config(device(f"127.0.0.1:{free_udp_port()}", free_udp_port()), tmp_path).devices[0]
    with pytest.raises(Transient, match="no answer"):
        async with Driver(cfg, ctx(tmp_path)):
            pass


async def test_wrong_device_instance_is_permanent(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, free_udp_port(), device_instance=77), tmp_path).devices[0]
    with pytest.raises(Permanent, match="unknown-object"):
        async with Driver(cfg, ctx(tmp_path)):
            pass


async def test_local_port_in_use_is_transient(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, peer.port), tmp_path).devices[0]  # the peer holds that port
    with pytest.raises(Transient, match="cannot open BACnet/IP socket"):
        async with Driver(cfg, ctx(tmp_path)):
            pass


async def test_device_that_stops_answering_then_restarts(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, free_udp_port(), cov=False, max_failed_polls=2), tmp_path).devices[0]
    async with Driver(cfg, ctx(tmp_path)) as drv:
        it = drv.samples()
        await collect(it, {"temperature"})
        peer.stop()
        bad: list[Sample] = []

        async def drain() -> None:
            async with asyncio.timeout(10):
                while True:
                    bad.extend(await anext(it))

        with pytest.raises(Transient, match="did not answer 2 polls in a row"):
            await drain()
        assert bad and all(s.status == Status.BAD_TIMEOUT and s.value is None for s in bad)
    peer.start()  # the supervisor re-enters: a new driver on the same config
    async with Driver(cfg, ctx(tmp_path)) as drv:
        got = await collect(drv.samples(), {"temperature"})
        assert got["temperature"].status == Status.GOOD


async def test_two_devices_share_one_local_socket(tmp_path: Path, peer: BacnetDevice) -> None:
    other = BacnetDevice(free_udp_port(), instance=1002)
    other.start()
    try:
        local = free_udp_port()
        a = config(device(peer.address, local), tmp_path).devices[0]
        b = config(device(other.address, local, device_instance=1002, name="ahu2"), tmp_path).devices[0]
        stacks = Stacks()
        async with Driver(a, ctx(tmp_path), stacks=stacks) as da, Driver(b, ctx(tmp_path), stacks=stacks) as db:
            assert da._stack is db._stack
            ga = await collect(da.samples(), {"temperature"})
            other.objects["temperature"].presentValue = 5.0
            gb = await collect(db.samples(), {"temperature"})
            assert (ga["temperature"].value, gb["temperature"].tag) == (21.5, "ahu2/temperature")
    finally:
        other.stop()


# ----------------------------------------------------------------------------------------- writing


@contextlib.asynccontextmanager
async def gate(tmp_path: Path, peer: BacnetDevice, **extra: Any) -> AsyncIterator[tuple[CommandGate, Driver]]:
    commands = {
        "enabled": True,
        "max_age": "30s",
        "timeout": "3s",
        "tags": [{"tag": f"ahu/{t}", "sources": ["cloud"]} for t in ("setpoint", "pump", "mode", "valve")],
    }
    cfg = config(device(peer.address, free_udp_port(), **extra), tmp_path, commands)
    with Store(tmp_path / "buffer.db") as store:
        async with Driver(cfg.devices[0], ctx(tmp_path)) as drv:

            async def lookup(name: str) -> Driver | None:
                return drv if name == "ahu" else None

            yield CommandGate(cfg, AuditTrail.for_store(store), lookup), drv


def cmd(tag: str, value: Any, id: str = "c") -> Command:
    return Command(id, "cloud", "tester", tag, value, time.time_ns())


def slot(obj: Any, priority: int) -> Any:
    """The value in one priority slot of the peer's priority-array (None: relinquished)."""
    pv = obj.priorityArray[priority - 1]
    for choice in ("real", "enumerated", "unsigned"):
        if getattr(pv, choice, None) is not None:
            return getattr(pv, choice)
    return None


async def test_writes_through_the_gate_land_at_their_priority(tmp_path: Path, peer: BacnetDevice) -> None:
    async with gate(tmp_path, peer) as (g, _):
        res = await g.submit(cmd("ahu/setpoint", 42.3, "a"))
        assert (res.result, res.readback) == (Result.ACCEPTED, 42.3), res.reason
        assert slot(peer.objects["setpoint"], 8) == pytest.approx(42.3, abs=1e-5)
        res = await g.submit(cmd("ahu/pump", True, "b"))
        assert (res.result, res.readback) == (Result.ACCEPTED, True), res.reason
        assert int(peer.objects["pump"].presentValue) == 1
        res = await g.submit(cmd("ahu/mode", 3, "c"))
        assert (res.result, res.readback) == (Result.ACCEPTED, 3), res.reason
        assert peer.objects["mode"].presentValue == 3


async def test_write_priority_is_configurable(tmp_path: Path, peer: BacnetDevice) -> None:
    async with gate(tmp_path, peer, write_priority=12) as (g, _):
        res = await g.submit(cmd("ahu/valve", 55.5))
        assert res.result == Result.ACCEPTED, res.reason
        assert slot(peer.objects["valve"], 12) == 55.5 and slot(peer.objects["valve"], 8) is None


async def test_higher_priority_wins_and_is_named(tmp_path: Path, peer: BacnetDevice) -> None:
    peer.objects["valve"].priorityArray[4] = _real_slot(80.0)  # priority 5 (an operator override)
    peer.objects["valve"].presentValue = 80.0
    async with gate(tmp_path, peer) as (g, _):
        res = await g.submit(cmd("ahu/valve", 10.0))
        assert (res.result, res.code) == (Result.READBACK_MISMATCH, "readback"), res.reason
        assert "priority 5 holds the object" in res.reason
        assert res.readback == 80.0
        assert slot(peer.objects["valve"], 8) == 10.0  # written, but not in command


def _real_slot(value: float) -> Any:
    from bacpypes3.basetypes import PriorityValue

    return PriorityValue(real=value)


async def test_write_refused_by_the_device(tmp_path: Path, peer: BacnetDevice) -> None:
    cfg = config(device(peer.address, free_udp_port()), tmp_path).devices[0]
    async with Driver(cfg, ctx(tmp_path)) as drv:
        with pytest.raises(Permanent) as err:
            await drv.write("mode", 0)  # a multi-state value has no state 0
        assert getattr(err.value, "status", None) == Status.BAD_OUT_OF_RANGE
        with pytest.raises(Permanent, match="not writable"):
            await drv.write("note", "x")
        assert peer.objects["note"].presentValue == "hello"


# ----------------------------------------------------------------------------------------- discovery


async def test_directed_who_is_finds_the_peer(peer: BacnetDevice) -> None:
    stack = Stack(f"127.0.0.1:{free_udp_port()}", 4194300)
    try:
        (found,) = await stack.who_is(peer.address, None, None, 0.5)
        assert (found.instance, found.address, found.vendor) == (1001, peer.address, 999)
        assert await stack.who_is(peer.address, 5, 9, 0.3) == []  # outside the range: silent
    finally:
        stack.close()


# ----------------------------------------------------------------------------------------- golden bytes

BVLL_UNICAST = 0x0A
DEVICE_1001 = bytes.fromhex("020003E9")  # object type 8 (device) << 22 | 1001
AI_1 = bytes.fromhex("00000001")  # object type 0 (analog-input) << 22 | 1


def bvll(npdu_apdu: bytes) -> bytes:
    return struct.pack(">BBH", 0x81, BVLL_UNICAST, 4 + len(npdu_apdu)) + npdu_apdu


class ScriptedDevice(asyncio.DatagramProtocol):
    """Device 1001 with analog-input 1, written from the standard's encoding rules: answers
    ReadProperty(object-identifier), Who-Is and ReadPropertyMultiple with fixed bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requests: list[bytes] = []  # APDUs received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert data[0] == 0x81 and data[1] == BVLL_UNICAST and struct.unpack(">H", data[2:4])[0] == len(data)
        npdu = data[4:]
        assert npdu[0] == 0x01  # NPDU version 1, no routing information
        apdu = npdu[2:]
        self.requests.append(apdu)
        reply = self.answer(apdu)
        if reply is not None and self.transport is not None:
            self.transport.sendto(bvll(b"\x01\x00" + reply), addr)

    @staticmethod
    def answer(apdu: bytes) -> bytes | None:
        kind = apdu[0] >> 4
        if kind == 1 and apdu[1] == 0x08:  # unconfirmed Who-Is -> I-Am
            return (
                b"\x10\x00" + b"\xc4" + DEVICE_1001 + b"\x22\x05\xc4"  # max APDU 1476
                b"\x91\x03" + b"\x22\x03\xe7"  # no segmentation, vendor 999
            )
        if kind != 0:
            return None
        invoke, service, body = apdu[2], apdu[3], apdu[4:]
        if service == 0x0C and body == b"\x0c" + DEVICE_1001 + b"\x19\x4b":  # RP object-identifier
            return bytes([0x30, invoke, 0x0C]) + b"\x0c" + DEVICE_1001 + b"\x19\x4b\x3e\xc4" + DEVICE_1001 + b"\x3f"
        if service == 0x0E and body == b"\x0c" + AI_1 + b"\x1e\x09\x75\x1f":  # RPM units
            return bytes([0x30, invoke, 0x0E]) + b"\x0c" + AI_1 + b"\x1e\x29\x75\x4e\x91\x3e\x4f\x1f"  # 62 = degC
        if service == 0x0E and body == b"\x0c" + AI_1 + b"\x1e\x09\x55\x09\x6f\x09\x67\x1f":  # RPM PV, SF, rel.
            return (
                bytes([0x30, invoke, 0x0E]) + b"\x0c" + AI_1 + b"\x1e"
                b"\x29\x55\x4e\x44" + struct.pack(">f", 12.5) + b"\x4f"  # present-value REAL 12.5
                b"\x29\x6f\x4e\x82\x04\x20\x4f"  # status-flags: overridden
                b"\x29\x67\x5e\x91\x02\x91\x20\x5f"  # reliability: error (property, unknown-property)
                b"\x1f"
            )
        return bytes([0x50, invoke, service, 0x91, 0x01, 0x91, 0x1F])  # Error: object, unknown-object


async def test_golden_bytes_against_a_scripted_device(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, scripted = await loop.create_datagram_endpoint(ScriptedDevice, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        dev = device(f"127.0.0.1:{port}", free_udp_port(), cov=False)
        dev["tags"] = [{"name": "temperature", "object": "analog-input,1"}]
        async with Driver(config(dev, tmp_path).devices[0], ctx(tmp_path)) as drv:
            got = await collect(drv.samples(), {"temperature"})
        s = got["temperature"]
        assert (s.value, s.status, s.unit) == (12.5, Status.GOOD_LOCAL_OVERRIDE, "degC")
        # what the driver sent, from the invoke id on (the header's max-APDU bits are the stack's)
        confirmed = [r for r in scripted.requests if r[0] >> 4 == 0]
        assert [r[3:] for r in confirmed[:3]] == [
            b"\x0c\x0c" + DEVICE_1001 + b"\x19\x4b",  # ReadProperty device,1001 object-identifier
            b"\x0e\x0c" + AI_1 + b"\x1e\x09\x75\x1f",  # ReadPropertyMultiple analog-input,1 units
            b"\x0e\x0c" + AI_1 + b"\x1e\x09\x55\x09\x6f\x09\x67\x1f",  # present-value status-flags reliability
        ]
        who_is = [r for r in scripted.requests if r[:2] == b"\x10\x08"]
        assert who_is == [b"\x10\x08\x0a\x03\xe9\x1a\x03\xe9"]  # Who-Is 1001..1001
    finally:
        transport.close()


async def test_edged_discover_bacnet_directed(peer: BacnetDevice, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from edged import cli

    argv = ["discover", "bacnet", "--local", f"127.0.0.1:{free_udp_port()}", "--address", peer.address, "--wait",
            "0.5", "--objects"]  # fmt: skip
    rc = await asyncio.to_thread(cli.main, argv)  # its own event loop; the peer's keeps running here
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"device 1001 at {peer.address}: vendor 999" in out
    entry = out[out.index("[[devices]]") :]
    cfg = parse({"gateway": {"id": "gw", "data_dir": "/tmp"}, **tomllib.loads(entry)})
    assert {t.name: (t.object, t.unit) for t in cfg.devices[0].tags} == {
        "temperature": ("analog-input,1", "degC"), "setpoint": ("analog-value,2", "%"),
        "pump": ("binary-value,3", None), "mode": ("multi-state-value,4", None),
        "note": ("characterstring-value,5", None), "valve": ("analog-output,6", "%"),
    }  # fmt: skip
