"""The analog driver: a temporary directory shaped like a sysfs IIO device, and a real Modbus server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from buffer import Store
from drivers.analog import Config, Driver
from edged.config import parse
from edged.conversions.rtd import PT100, PT1000
from edged.conversions.thermocouple import emf_mv
from edged.daemon import Daemon
from edged.errors import ConfigError, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.waiting import daemon_samples, eventually, until

LOG = "edged.test.analog"


class Sysfs:
    """A fake `/sys/bus/iio/devices/iio:device0`: plain files with the IIO ABI names."""

    def __init__(self, root: Path, scale: str = "0.5") -> None:
        self.path = root / "iio:device0"
        self.path.mkdir()
        (self.path / "name").write_text("ads1115\n")
        (self.path / "in_voltage_scale").write_text(f"{scale}\n")

    def set(self, channel: int, raw: int | str, *, scale: str | None = None, offset: str | None = None) -> None:
        (self.path / f"in_voltage{channel}_raw").write_text(f"{raw}\n")
        if scale is not None:
            (self.path / f"in_voltage{channel}_scale").write_text(f"{scale}\n")
        if offset is not None:
            (self.path / f"in_voltage{channel}_offset").write_text(f"{offset}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Sysfs:
    return Sysfs(tmp_path)


def make(entry: dict[str, Any]) -> Driver:
    cfg = parse({"devices": [{"name": "ai", "type": "analog", **entry}]}).devices[0]
    assert isinstance(cfg, Config)
    return Driver(cfg, PluginContext("gw", Path("/tmp"), logging.getLogger(LOG)))


def iio(sysfs: Sysfs, tags: list[dict[str, Any]]) -> Driver:
    return make({"source": "iio", "iio_path": str(sysfs.path), "interval": "20ms", "tags": tags})


def by_name(batch: list[Sample]) -> dict[str, Sample]:
    return {s.tag.split("/", 1)[1]: s for s in batch}


def loop(name: str, channel: int, **kw: Any) -> dict[str, Any]:
    """A 4-20 mA transmitter across a 250 ohm shunt, 0..10 bar."""
    return {"name": name, "channel": channel, "shunt_ohm": 250.0, "range": [0.0, 10.0], "unit": "bar", **kw}


# ----------------------------------------------------------------------------------------- 4-20 mA over IIO


async def test_values_follow_the_files_between_polls(sysfs: Sysfs) -> None:
    sysfs.set(0, 2000)  # 2000 * 0.5 mV / 250 ohm = 4 mA
    async with iio(sysfs, [loop("p", 0)]) as drv:
        (s,) = await drv.poll()
        assert (s.value, s.unit, s.status, s.score) == (0.0, "bar", Status.GOOD, 100)
        sysfs.set(0, 6000)  # 12 mA
        (s,) = await drv.poll()
        assert s.value == 5.0
        sysfs.set(0, 10000)  # 20 mA
        (s,) = await drv.poll()
        assert s.value == 10.0


async def test_samples_stream_polls_on_the_interval(sysfs: Sysfs) -> None:
    sysfs.set(0, 6000)
    async with iio(sysfs, [loop("p", 0)]) as drv, contextlib.aclosing(drv.samples()) as stream:
        seen = []
        async for (s,) in stream:
            seen.append(s.value)
            sysfs.set(0, 6000 + 400 * len(seen))  # +0.8 mA per poll
            if len(seen) == 3:
                break
    assert seen == [5.0, 5.5, 6.0]


# raw counts at 0.5 mV/count across 250 ohm: raw / 500 mA
NE43 = [
    (1799, Status.BAD_SENSOR_FAILURE),  # 3.598 mA
    (1800, Status.BAD_SENSOR_FAILURE),  # 3.600 mA: failure information starts at <= 3.6
    (1801, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),  # 3.602 mA
    (1899, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),  # 3.798 mA
    (1900, Status.GOOD),  # 3.800 mA
    (10250, Status.GOOD),  # 20.500 mA
    (10251, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),  # 20.502 mA
    (10499, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),  # 20.998 mA
    (10500, Status.BAD_SENSOR_FAILURE),  # 21.000 mA: >= 21.0 is failure information
    (10501, Status.BAD_SENSOR_FAILURE),  # 21.002 mA
]


async def test_ne43_boundaries_through_the_driver(sysfs: Sysfs, caplog: pytest.LogCaptureFixture) -> None:
    for ch, (raw, _) in enumerate(NE43):
        sysfs.set(ch, raw)
    caplog.set_level(logging.INFO, logger=LOG)
    async with iio(sysfs, [loop(f"c{ch}", ch) for ch in range(len(NE43))]) as drv:
        for _ in range(2):
            got = by_name(await drv.poll())
            for ch, (raw, status) in enumerate(NE43):
                s = got[f"c{ch}"]
                assert s.status == status, (raw, s)
                if status == Status.GOOD:
                    assert s.score == 100 and s.value == pytest.approx((raw / 500 - 4) * 10 / 16)
                elif status == Status.BAD_SENSOR_FAILURE:
                    assert s.value is None and s.score == 0
                else:  # Uncertain keeps the extrapolated value, with a lowered score
                    assert s.score == 50 and s.value == pytest.approx((raw / 500 - 4) * 10 / 16)
        assert drv.counters()["ne43_failure_low"] == 4 and drv.counters()["ne43_failure_high"] == 4
        assert drv.counters()["ne43_under_range"] == 4 and drv.counters()["ne43_over_range"] == 4
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 8  # once per tag, not per poll
        sysfs.set(0, 6000)
        assert by_name(await drv.poll())["c0"].status == Status.GOOD
        assert any("c0: recovered" in r.getMessage() for r in caplog.records)


async def test_per_channel_scale_offset_and_other_spans(sysfs: Sysfs) -> None:
    sysfs.set(3, 4100, scale="0.25", offset="-100")  # (4100 - 100) * 0.25 mV / 250 ohm = 4 mA
    sysfs.set(4, 2500)  # 1250 mV / 250 ohm = 5 mA on a 0-20 mA input
    sysfs.set(5, 5000)  # 2500 mV on a 0..10 V input (mV signal)
    tags = [
        loop("p", 3),
        loop("flow", 4, input=[0.0, 20.0], ne43=False, range=[0.0, 100.0], unit="m3/h"),
        {"name": "v", "channel": 5, "signal": "voltage_mv", "input": [0.0, 10000.0], "range": [0.0, 50.0]},
        {"name": "raw_ma", "channel": 4, "shunt_ohm": 250.0, "conversion": "none"},
    ]
    async with iio(sysfs, tags) as drv:
        got = by_name(await drv.poll())
    assert got["p"].value == 0.0
    assert (got["flow"].value, got["flow"].status) == (25.0, Status.GOOD)
    assert (got["v"].value, got["v"].unit) == (12.5, None)
    assert (got["raw_ma"].value, got["raw_ma"].unit) == (5.0, "mA")


async def test_bad_files_mark_only_their_tag(sysfs: Sysfs, caplog: pytest.LogCaptureFixture) -> None:
    sysfs.set(0, 6000)
    sysfs.set(1, "garbage")
    (sysfs.path / "in_voltage2_raw").mkdir()  # reading fails with an OS error, like EIO from the ADC
    tags = [loop("ok", 0), loop("garbled", 1), loop("broken", 2), loop("missing", 7)]
    caplog.set_level(logging.WARNING, logger=LOG)
    async with iio(sysfs, tags) as drv:
        for _ in range(3):
            got = by_name(await drv.poll())
        assert got["ok"].status == Status.GOOD
        assert got["garbled"].status == Status.BAD_DECODING_ERROR
        assert got["broken"].status == Status.BAD_COMMUNICATION_ERROR
        assert got["missing"].status == Status.BAD_CONFIGURATION_ERROR
        assert (drv.counters()["decode_error"], drv.counters()["read_error"], drv.counters()["no_channel"]) == (3, 3, 3)
        assert len(caplog.records) == 3
        assert "in_voltage7_raw does not exist" in caplog.text

        shutil.rmtree(sysfs.path)  # the ADC's driver was unloaded
        with pytest.raises(Transient, match=r"does not exist|disappeared"):
            await drv.poll()
    with pytest.raises(Transient, match="does not exist"):
        async with iio(sysfs, tags):
            pass


async def test_missing_scale_is_a_configuration_error(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path)
    (sysfs.path / "in_voltage_scale").unlink()
    sysfs.set(0, 6000)
    async with iio(sysfs, [loop("p", 0)]) as drv:
        (s,) = await drv.poll()
    assert s.status == Status.BAD_CONFIGURATION_ERROR


# ----------------------------------------------------------------------------------------- RTD and thermocouple


def ohm_raw(r: float) -> int:
    """Counts for `r` ohm at 1 mA excitation and 0.001 mV/count: 1 count = 1 milliohm."""
    return round(r * 1000)


async def test_rtd_through_the_driver(sysfs: Sysfs) -> None:
    sysfs.set(0, ohm_raw(PT100.resistance(100.0)), scale="0.001")
    sysfs.set(1, ohm_raw(PT100.resistance(-50.0) + 2 * 0.75), scale="0.001")  # 2-wire, 0.75 ohm per lead
    sysfs.set(2, ohm_raw(PT1000.resistance(25.0) + 1.2), scale="0.001")  # 3-wire, 1.2 ohm lead
    sysfs.set(3, 5_000_000, scale="0.001")  # 5 kohm on a Pt100: open circuit
    rtd = {"signal": "resistance_ohm", "excitation_ma": 1.0, "conversion": "rtd"}
    tags = [
        {"name": "t4", "channel": 0, **rtd},
        {"name": "t2", "channel": 1, "wiring": 2, "lead_ohm": 0.75, **rtd},
        {"name": "t3", "channel": 2, "rtd_type": "pt1000", "wiring": 3, "lead_ohm": 1.2, **rtd},
        {"name": "open", "channel": 3, **rtd},
    ]
    async with iio(sysfs, tags) as drv:
        got = by_name(await drv.poll())
    assert got["t4"].value == pytest.approx(100.0, abs=0.005) and got["t4"].unit == "degC"
    assert got["t2"].value == pytest.approx(-50.0, abs=0.005)
    assert got["t3"].value == pytest.approx(25.0, abs=0.001)
    assert (got["open"].status, got["open"].value) == (Status.BAD_SENSOR_FAILURE, None)
    assert drv.counters()["out_of_range"] == 1


async def test_thermocouple_with_cold_junction_compensation(sysfs: Sysfs) -> None:
    def tc_raw(hot: float, cold: float) -> int:
        return round((emf_mv("K", hot) - emf_mv("K", cold)) / 0.0001)  # 0.1 uV per count

    sysfs.set(0, ohm_raw(PT1000.resistance(25.0)), scale="0.001")  # terminal block RTD
    sysfs.set(1, tc_raw(300.0, 25.0), scale="0.0001")
    sysfs.set(2, tc_raw(150.0, 20.0), scale="0.0001")
    tags = [
        {"name": "tc", "channel": 1, "signal": "voltage_mv", "conversion": "thermocouple", "tc_type": "K",
         "cjc_tag": "cjc"},
        {"name": "cjc", "channel": 0, "signal": "resistance_ohm", "excitation_ma": 1.0, "conversion": "rtd",
         "rtd_type": "pt1000"},
        {"name": "fixed", "channel": 2, "signal": "voltage_mv", "conversion": "thermocouple", "tc_type": "K",
         "cjc_c": 20.0},
    ]  # fmt: skip
    async with iio(sysfs, tags) as drv:
        got = by_name(await drv.poll())
        assert got["tc"].value == pytest.approx(300.0, abs=0.05) and got["tc"].unit == "degC"
        assert got["fixed"].value == pytest.approx(150.0, abs=0.05)
        assert got["cjc"].value == pytest.approx(25.0, abs=0.001)

        sysfs.set(0, ohm_raw(PT1000.resistance(35.0)))  # the cabinet warms up; the same EMF means hotter
        sysfs.set(1, tc_raw(300.0, 35.0))
        got = by_name(await drv.poll())
        assert got["tc"].value == pytest.approx(300.0, abs=0.05)

        sysfs.set(0, "oops")  # the cold junction fails: the thermocouple cannot be trusted either
        got = by_name(await drv.poll())
        assert got["cjc"].status == Status.BAD_DECODING_ERROR
        assert (got["tc"].status, got["tc"].value) == (Status.BAD_DECODING_ERROR, None)
        assert got["fixed"].status == Status.GOOD


# ----------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ({"name": "x", "channel": 0, "shunt_ohm": 250.0}, "needs range"),
        ({"name": "x", "channel": 0, "range": [0, 1]}, "needs shunt_ohm"),
        ({"name": "x", "channel": 0, "signal": "voltage_mv", "range": [0, 1]}, "needs input"),
        ({"name": "x", "channel": 0, "signal": "voltage_mv", "conversion": "rtd"}, "resistance_ohm"),
        ({"name": "x", "channel": 0, "signal": "voltage_mv", "conversion": "thermocouple", "tc_type": "K"}, "cjc"),
        ({"name": "x", "channel": 0, "signal": "voltage_mv", "conversion": "thermocouple", "cjc_c": 20}, "tc_type"),
        (
            {
                "name": "x",
                "channel": 0,
                "signal": "voltage_mv",
                "conversion": "thermocouple",
                "tc_type": "K",
                "cjc_tag": "nope",
            },
            "not another tag",
        ),
        ({"name": "x", "channel": 0, "shunt_ohm": 250.0, "range": [0, 1], "input": [0, 20]}, "ne43 = false"),
        ({"name": "x", "channel": 0, "shunt_ohm": -1.0, "range": [0, 1]}, "positive"),
        ({"name": "x", "register": {"address": 0}, "shunt_ohm": 250.0, "range": [0, 1]}, "needs channel"),
        ({"name": "x", "channel": 0, "shunt_ohm": 250.0, "range": [0, 1], "tc_type": "K"}, "apply to conversion"),
        ({"name": "x", "channel": 0, "shunt_ohm": 250.0, "range": [0, 1], "rtd_type": "pt50"}, "rtd_type"),
    ],
)
def test_config_errors(tmp_path: Path, tag: dict[str, Any], message: str) -> None:
    raw = {"devices": [{"name": "ai", "type": "analog", "source": "iio", "iio_path": str(tmp_path), "tags": [tag]}]}
    with pytest.raises(ConfigError, match=message) as err:
        parse(raw)
    assert "devices[0] (ai)" in str(err.value)


def test_modbus_config_errors_name_the_register() -> None:
    dev = {"name": "ai", "type": "analog", "source": "modbus", "modbus": {"host": "127.0.0.1"}}
    tag = {"name": "p", "range": [0, 1], "register": {"address": 70000}}
    with pytest.raises(ConfigError, match=r"tags\[0\]\.register.*70000"):
        parse({"devices": [{**dev, "tags": [tag]}]})
    with pytest.raises(ConfigError, match=r"modbus\.name is set by the analog device"):
        parse({"devices": [{**dev, "modbus": {"host": "h", "name": "x"}, "tags": []}]})
    with pytest.raises(ConfigError, match="register = "):
        parse({"devices": [{**dev, "tags": [{"name": "p", "range": [0, 1], "channel": 1}]}]})


# ----------------------------------------------------------------------------------------- modbus source


@pytest.fixture
async def modbus_peer() -> AsyncIterator[Any]:
    pytest.importorskip("pymodbus")
    from peers.modbus_server import ModbusPeer, Unit

    # an analog input module reporting microamps in holding registers, and an RTD module in 0.01 ohm
    peer = ModbusPeer([Unit(1, holding={0: 12000, 1: 3500, 2: 20600, 3: 13851})])
    await peer.start_tcp(0)
    try:
        yield peer
    finally:
        await peer.stop()


async def test_modbus_analog_module(modbus_peer: Any) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    ua = {"table": "holding_register", "type": "uint16", "scale": 0.001}  # uA -> mA
    drv = make(
        {
            "source": "modbus",
            "interval": "30ms",
            "modbus": {"host": "127.0.0.1", "port": modbus_peer.port, "unit_id": 1, "timeout": "500ms"},
            "tags": [
                {"name": "p", "range": [0, 10], "unit": "bar", "register": {"address": 0, **ua}},
                {"name": "broken", "range": [0, 10], "register": {"address": 1, **ua}},
                {"name": "high", "range": [0, 10], "register": {"address": 2, **ua}},
                {
                    "name": "t",
                    "signal": "resistance_ohm",
                    "conversion": "rtd",
                    "register": {"address": 3, "scale": 0.01},
                },
            ],
        }
    )
    client = AsyncModbusTcpClient("127.0.0.1", port=modbus_peer.port)
    await client.connect()
    try:
        async with drv, contextlib.aclosing(drv.samples()) as stream:
            batches = []
            async with asyncio.timeout(10):
                async for batch in stream:
                    batches.append(by_name(batch))
                    if len(batches) == 1:
                        await client.write_register(0, 16000, device_id=1)  # 16 mA
                    if batches[-1]["p"].value == 7.5:
                        break
        first = batches[0]
        assert (first["p"].value, first["p"].unit, first["p"].status) == (5.0, "bar", Status.GOOD)
        assert (first["broken"].status, first["broken"].value) == (Status.BAD_SENSOR_FAILURE, None)  # 3.5 mA
        assert first["high"].status == Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED  # 20.6 mA
        assert first["t"].value == pytest.approx(100.0, abs=0.02)  # 138.51 ohm and first["t"].unit == "degC"
    finally:
        client.close()


# ----------------------------------------------------------------------------------------- the daemon


async def test_daemon_stores_analog_values(sysfs: Sysfs, tmp_path: Path) -> None:
    sysfs.set(0, 6000)
    sysfs.set(1, 1700)  # 3.4 mA: a broken transmitter
    cfg = parse(
        {
            "gateway": {"id": "gw-ai", "data_dir": str(tmp_path / "data")},
            "devices": [
                {
                    "name": "ai",
                    "type": "analog",
                    "source": "iio",
                    "iio_path": str(sysfs.path),
                    "interval": "20ms",
                    "tags": [loop("p", 0), loop("q", 1)],
                }
            ],
            "uplinks": [{"name": "archive", "type": "file", "path": "samples.jsonl", "fsync": False}],
        }
    )
    daemon = Daemon(cfg)
    try:
        async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
            tg.create_task(daemon.run(), name="daemon")

            async def p_has(value: float) -> bool:
                return any(s.tag == "ai/p" and s.value == value for s in await daemon_samples(daemon))

            await until(lambda: p_has(5.0), 10, "the first reading of ai/p")
            sysfs.set(0, 8000)
            await until(lambda: p_has(7.5), 10, "the changed reading of ai/p")
            out = tmp_path / "data" / "samples.jsonl"
            await eventually(lambda: out.exists() and "ai/p" in out.read_text(), 10, "delivery to the file")
            daemon.request_stop()
    finally:
        loop_ = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # Daemon.run installed them on this loop
            with contextlib.suppress(Exception):
                loop_.remove_signal_handler(sig)
    with Store(cfg.buffer_path) as store:
        stored, _ = store.read(1, store.head, 100_000)
    p = [s.value for s in stored if s.tag == "ai/p"]
    assert 5.0 in p and p[-1] == 7.5
    q = [s for s in stored if s.tag == "ai/q"]
    assert q and all(s.status == Status.BAD_SENSOR_FAILURE for s in q)
    assert "ai/p" in (tmp_path / "data" / "samples.jsonl").read_text()
