"""The HART driver against the simulated field device: over a socat pty pair and over HART-IP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from buffer import Store
from drivers.hart import Config, Driver
from edged.config import parse
from edged.daemon import Daemon
from edged.errors import Permanent, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.hart_sim import HartIpSim, SerialSim, SimDevice, socat_pair
from peers.waiting import daemon_samples, eventually, until

ALL_TAGS = [
    {"name": "pressure", "variable": "pv"},
    {"name": "temperature", "variable": "sv"},
    {"name": "level", "variable": "tv"},
    {"name": "aux", "variable": "qv"},
    {"name": "current", "variable": "loop_current"},
    {"name": "percent", "variable": "percent_range"},
]
LOG = "edged.test.hart"


@dataclass
class Peer:
    transport: str
    dev: SimDevice
    entry: dict[str, Any]
    sim: SerialSim | HartIpSim
    stop_link: Any  # cuts the cable / drops the TCP connections


@contextlib.asynccontextmanager
async def serve(transport: str, dev: SimDevice, directory: Path) -> AsyncIterator[Peer]:
    if transport == "serial":
        with socat_pair(directory) as cable:
            sim = SerialSim(dev, cable.slave)
            sim.start()
            try:
                yield Peer(transport, dev, {"transport": "serial", "port": cable.master}, sim, cable.stop)
            finally:
                sim.stop()
    else:
        hip = HartIpSim(dev)
        port = await hip.start()
        entry = {"transport": "hartip", "host": "127.0.0.1", "port": port}
        try:
            yield Peer(transport, dev, entry, hip, hip.drop_connections)
        finally:
            await hip.stop()


@pytest.fixture(params=["serial", "hartip"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(peer: Peer, tags: list[dict[str, Any]] | None = None, **kw: Any) -> Driver:
    entry = {"name": "pt1", "type": "hart", "timeout": "200ms", "interval": "50ms", **peer.entry, **kw}
    entry["tags"] = ALL_TAGS if tags is None else tags
    cfg = parse({"devices": [entry]}).devices[0]
    assert isinstance(cfg, Config)
    return Driver(cfg, PluginContext("gw", Path("/tmp"), logging.getLogger(LOG)))


async def poll_until_error(drv: Driver) -> None:
    async with asyncio.timeout(5):
        while True:
            await drv.poll()
            await asyncio.sleep(0.05)


def by_name(batch: list[Sample]) -> dict[str, Sample]:
    return {s.tag.split("/", 1)[1]: s for s in batch}


# ----------------------------------------------------------------------------------------- good path


async def test_dynamic_variables_arrive_with_units(transport: str, tmp_path: Path) -> None:
    async with serve(transport, SimDevice(), tmp_path) as peer, make(peer) as drv:
        got = by_name(await drv.poll())
        assert drv.identity is not None and drv.identity.device_id == 0x123456
        assert drv.address.unique_id == peer.dev.unique_id  # type: ignore[union-attr]
        expect = {
            "pressure": (2.5, "bar"),
            "temperature": (21.25, "degC"),
            "level": (40.0, "%"),
            "aux": (12.0, "mA"),
            "current": (12.0, "mA"),
            "percent": (50.0, "%"),
        }
        assert {k: (s.value, s.unit) for k, s in got.items()} == expect
        assert all(s.status == Status.GOOD and s.score == 100 for s in got.values())
        assert peer.dev.requests == [0, 3, 2]  # identify, then the fewest commands

        peer.dev.variables[0] = (12, 101.5)  # kPa now
        peer.dev.loop_current = 17.5
        got = by_name(await drv.poll())
        assert (got["pressure"].value, got["pressure"].unit) == (101.5, "kPa")
        assert got["current"].value == 17.5


async def test_pv_only_uses_command_1_and_unit_override(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(variables=[(237, 1.25)])
    async with serve(transport, dev, tmp_path) as peer:
        async with make(peer, [{"name": "p", "variable": "pv", "unit": "MPa(g)"}]) as drv:
            (s,) = await drv.poll()
        assert (s.value, s.unit, s.status) == (1.25, "MPa(g)", Status.GOOD)
        assert dev.requests == [0, 1]


async def test_unique_id_addresses_the_device_directly(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(polling_address=9)
    async with serve(transport, dev, tmp_path) as peer:
        async with make(peer, unique_id=dev.unique_id.hex()) as drv:
            assert by_name(await drv.poll())["pressure"].value == 2.5
        async with make(peer, polling_address=9) as drv:
            assert by_name(await drv.poll())["pressure"].value == 2.5
        with pytest.raises(Transient, match="command 0"):
            async with make(peer, polling_address=3, retries=0):
                pass


async def test_missing_variable_is_a_configuration_error(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(variables=[(7, 1.0)])  # a PV-only device
    async with serve(transport, dev, tmp_path) as peer, make(peer) as drv:
        got = by_name(await drv.poll())
        assert got["pressure"].status == Status.GOOD
        assert got["temperature"].status == Status.BAD_CONFIGURATION_ERROR and got["temperature"].value is None


async def test_hart_nan_and_unused_variables(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(variables=[(7, math.nan), (32, 20.0), (250, math.nan)])  # PV NaN, TV "not used"
    async with serve(transport, dev, tmp_path) as peer, make(peer) as drv:
        got = by_name(await drv.poll())
        assert (got["pressure"].status, got["pressure"].value, got["pressure"].unit) == (
            Status.BAD_SENSOR_FAILURE,
            None,
            "bar",
        )
        assert got["temperature"].value == 20.0
        assert got["level"].status == Status.BAD_CONFIGURATION_ERROR


# ----------------------------------------------------------------------------------------- faults


async def test_checksum_error_is_retried(transport: str, tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve(transport, dev, tmp_path) as peer, make(peer) as drv:
        dev.set_fault("bad_checksum", count=1)
        got = by_name(await drv.poll())
        assert all(s.status == Status.GOOD for s in got.values())
        assert drv.counters()["checksum"] == 1 and drv.counters()["retries"] == 1


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("bad_checksum", "checksum", Status.BAD_COMMUNICATION_ERROR),
        ("truncate", "truncated", Status.BAD_COMMUNICATION_ERROR),
        ("comm_error", "comm_error", Status.BAD_COMMUNICATION_ERROR),
        ("busy", "busy", Status.BAD_TIMEOUT),
        ("silent", "timeout", Status.BAD_TIMEOUT),
        ("short_data", "decode", Status.BAD_DECODING_ERROR),
        ("malformed", "malformed", Status.BAD_COMMUNICATION_ERROR),
    ],
)
async def test_fault_marks_quality_counts_and_heals(
    transport: str, tmp_path: Path, fault: Any, kind: str, status: Status, caplog: pytest.LogCaptureFixture
) -> None:
    dev = SimDevice()
    tags = [{"name": "p", "variable": "pv"}, {"name": "t", "variable": "sv"}]
    async with serve(transport, dev, tmp_path) as peer, make(peer, tags, retries=1) as drv:
        await drv.poll()
        dev.set_fault(fault)
        caplog.set_level(logging.INFO, logger=LOG)
        for _ in range(2):  # the driver keeps running; a second poll is not logged again
            batch = await drv.poll()
            assert [(s.status, s.value, s.score) for s in batch] == [(status, None, 0)] * 2
            assert batch[0].unit == "bar"  # a Bad sample keeps the unit last seen
        attempts = 1 if fault == "short_data" else 2  # a well-framed but short answer is not retried
        assert drv.counters()[kind] == 2 * attempts
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "command 3" in warnings[0].getMessage()
        dev.set_fault("ok")
        batch = await drv.poll()
        assert [s.status for s in batch] == [Status.GOOD] * 2
        assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_noise_before_preambles_is_skipped(tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve("serial", dev, tmp_path) as peer, make(peer) as drv:
        dev.set_fault("noise")
        got = by_name(await drv.poll())
        assert all(s.status == Status.GOOD for s in got.values())
        assert drv.counters()["noise_bytes"] >= 14  # 7 garbage bytes before each of two answers
        assert drv.counters()["errors"] == 0


async def test_busy_then_ready_is_good(transport: str, tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve(transport, dev, tmp_path) as peer, make(peer, retries=2) as drv:
        dev.set_fault("busy", count=2)
        got = by_name(await drv.poll())
        assert got["pressure"].status == Status.GOOD
        assert drv.counters()["busy"] == 2 and drv.counters()["errors"] == 0


async def test_not_implemented_is_not_retried(transport: str, tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve(transport, dev, tmp_path) as peer, make(peer) as drv:
        dev.set_fault("not_implemented", commands={2})
        got = by_name(await drv.poll())
        assert got["percent"].status == Status.BAD_CONFIGURATION_ERROR
        assert got["current"].status == Status.GOOD  # from command 3
        assert drv.counters()["not_implemented"] == 1 and drv.counters()["retries"] == 0
        dev.set_fault("not_implemented", commands={3})
        got = by_name(await drv.poll())
        assert got["pressure"].status == Status.BAD_CONFIGURATION_ERROR
        assert (got["current"].value, got["current"].status) == (12.0, Status.GOOD)  # from command 2 instead


async def test_device_status_bits_map_to_quality(transport: str, tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve(transport, dev, tmp_path) as peer, make(peer) as drv:
        dev.status = 0x80  # malfunction
        got = by_name(await drv.poll())
        assert {s.status for s in got.values()} == {Status.BAD_DEVICE_FAILURE}
        assert all(s.value is None for s in got.values())
        assert drv.counters()["status_device_malfunction"] == 2  # two answers (commands 3 and 2)

        dev.status = 0x01 | 0x08  # PV out of limits, loop current fixed
        got = by_name(await drv.poll())
        assert got["pressure"].status == Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
        assert got["pressure"].value == 2.5 and got["pressure"].score == 50
        assert got["percent"].status == Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
        assert got["current"].status == Status.UNCERTAIN
        assert got["temperature"].status == Status.GOOD

        dev.status = 0x10  # more status available: command 48, once
        dev.additional_status = bytes([1, 2, 3, 4, 5, 6])
        await drv.poll()
        await drv.poll()
        assert dev.requests.count(48) == 1
        assert drv.additional_status is not None and drv.additional_status[:6] == bytes([1, 2, 3, 4, 5, 6])


async def test_silence_gives_up_the_connection_after_max_failed_polls(transport: str, tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve(transport, dev, tmp_path) as peer, make(peer, retries=0, max_failed_polls=2) as drv:
        dev.set_fault("silent")
        batch = await drv.poll()
        assert {s.status for s in batch} == {Status.BAD_TIMEOUT}
        assert dev.requests[-1] == 3  # command 2 was skipped: one timeout per poll, not per command
        with pytest.raises(Transient, match="did not answer 2 polls"):
            await drv.poll()


async def test_lost_link_raises_transient(transport: str, tmp_path: Path) -> None:
    async with serve(transport, SimDevice(), tmp_path) as peer, make(peer) as drv:
        await drv.poll()
        peer.stop_link()
        with pytest.raises(Transient):
            await poll_until_error(drv)
        assert drv.counters()["connection_lost"] == 1


async def test_connect_failures(tmp_path: Path) -> None:
    cfg = {"transport": "serial", "port": str(tmp_path / "nope")}
    with pytest.raises(Transient, match="does not exist"):
        async with make(Peer("serial", SimDevice(), cfg, None, None)):  # type: ignore[arg-type]
            pass
    hip = HartIpSim(SimDevice())
    port = await hip.start()
    try:
        peer = Peer("hartip", hip.device, {"transport": "hartip", "host": "127.0.0.1", "port": port}, hip, None)
        hip.refuse_status = 15  # all sessions in use: try again later
        with pytest.raises(Transient, match="session refused"):
            async with make(peer):
                pass
        hip.refuse_status = 2  # invalid master type: a configuration problem
        with pytest.raises(Permanent, match="session refused"):
            async with make(peer):
                pass
    finally:
        await hip.stop()
    with pytest.raises(Transient, match="refused"):
        async with make(
            Peer("hartip", SimDevice(), {"transport": "hartip", "host": "127.0.0.1", "port": port}, hip, None)
        ):
            pass


# ----------------------------------------------------------------------------------------- burst mode


async def test_burst_listening_transmits_nothing(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(burst=True, burst_period=0.03)
    async with serve(transport, dev, tmp_path) as peer:
        drv = make(peer, burst=True, unique_id=dev.unique_id.hex(), interval="50ms")
        async with drv, contextlib.aclosing(drv.samples()) as stream:
            batches = []
            async for batch in stream:
                batches.append(by_name(batch))
                if len(batches) == 3:
                    dev.loop_current = 19.0
                if len(batches) == 6:
                    break
        assert dev.requests == []
        assert batches[0]["pressure"].value == 2.5 and batches[0]["pressure"].unit == "bar"
        assert batches[-1]["current"].value == 19.0
        assert "percent" not in batches[0]  # command 3 bursts do not carry percent of range
        assert drv.counters()["burst_frames"] >= 6


async def test_burst_silence_and_damage(transport: str, tmp_path: Path) -> None:
    dev = SimDevice(burst=True, burst_period=0.02, burst_command=1)
    async with serve(transport, dev, tmp_path) as peer:
        drv = make(peer, [{"name": "p"}], burst=True, interval="50ms", timeout="50ms", max_failed_polls=5)
        async with drv, contextlib.aclosing(drv.samples()) as stream:
            assert dev.requests == [0]  # identified once (no unique_id configured), then only listens
            statuses = []
            async for (s,) in stream:
                statuses.append(s.status)
                if len(statuses) == 2:
                    dev.set_fault("bad_checksum")  # every burst frame damaged
                if s.status != Status.GOOD and len(statuses) < 20:
                    dev.set_fault("silent")  # then nothing at all
                if s.status == Status.BAD_TIMEOUT:
                    dev.set_fault("ok")
                if statuses[-1] == Status.GOOD and Status.BAD_TIMEOUT in statuses:
                    break
        assert statuses[:2] == [Status.GOOD, Status.GOOD]
        assert Status.BAD_COMMUNICATION_ERROR in statuses
        assert drv.counters()["checksum"] >= 1 and drv.counters()["timeout"] >= 1


async def test_hartip_keep_alive_while_listening(tmp_path: Path) -> None:
    dev = SimDevice(burst=True, burst_period=0.05)
    async with serve("hartip", dev, tmp_path) as peer:
        drv = make(peer, [{"name": "p"}], burst=True, unique_id=dev.unique_id.hex(), inactivity_timeout="1s")
        async with drv, contextlib.aclosing(drv.samples()) as stream:
            async with asyncio.timeout(5):
                async for _ in stream:
                    if peer.sim.keepalives >= 2:  # type: ignore[union-attr]
                        break


# ----------------------------------------------------------------------------------------- the daemon


async def test_daemon_stores_hart_values(tmp_path: Path) -> None:
    dev = SimDevice()
    async with serve("serial", dev, tmp_path) as peer:
        entry = {"name": "pt1", "type": "hart", "interval": "50ms", "timeout": "200ms", **peer.entry}
        entry["tags"] = [{"name": "pressure", "variable": "pv"}, {"name": "current", "variable": "loop_current"}]
        cfg = parse(
            {
                "gateway": {"id": "gw-hart", "data_dir": str(tmp_path / "data")},
                "devices": [entry],
                "uplinks": [{"name": "archive", "type": "file", "path": "samples.jsonl", "fsync": False}],
            }
        )
        daemon = Daemon(cfg)
        try:
            async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
                tg.create_task(daemon.run(), name="daemon")

                async def tagged(status: int) -> bool:
                    return any(s.tag == "pt1/pressure" and s.status == status for s in await daemon_samples(daemon))

                await until(lambda: tagged(Status.GOOD), 10, "a good pressure reading")
                dev.status = 0x80
                await until(lambda: tagged(Status.BAD_DEVICE_FAILURE), 10, "the device failure status")
                out = tmp_path / "data" / "samples.jsonl"
                await eventually(lambda: out.exists() and "pt1/current" in out.read_text(), 10, "delivery to the file")
                daemon.request_stop()
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):  # Daemon.run installed them on this loop
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
    with Store(cfg.buffer_path) as store:
        stored, _ = store.read(1, store.head, 100_000)
    pressure = [s for s in stored if s.tag == "pt1/pressure"]
    assert any(s.value == 2.5 and s.unit == "bar" and s.status == Status.GOOD for s in pressure)
    assert pressure[-1].status == Status.BAD_DEVICE_FAILURE
    lines = [json.loads(x) for x in (tmp_path / "data" / "samples.jsonl").read_text().splitlines()]
    currents = [x for x in lines if x.get("tag") == "pt1/current"]
    assert any(x["value"] == 12.0 and x["unit"] == "mA" for x in currents)
