"""Contract tests of the OPC UA client driver against a real asyncua server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Store
from drivers.opcua import Config, Driver
from edged import config as edged_config
from edged.daemon import Daemon
from edged.errors import ConfigError, Permanent, Transient
from edged.model import Sample, Status
from edged.plugin import PluginContext
from edged.protocols.opcua import certs
from edged.protocols.opcua.certs import create_client_certificate
from peers.opcua_server import PASSWORD, USERNAME, PlantServer
from peers.waiting import daemon_samples, eventually
from peers.waiting import until as until_true

# Every async test shares the module's loop, where the module-scoped server runs.
module_loop = pytest.mark.asyncio(loop_scope="module")

LOG = "edged.device.boiler"
UNCERTAIN = 0x40000000
BAD_SENSOR = 0x808C0000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PlantServer]:
    server = PlantServer(tmp_path_factory.mktemp("plant"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def device(plant: PlantServer, data_dir: Path, **over: Any) -> Config:
    """A validated `[[devices]]` entry, the way the daemon gets it (through edged.config.parse)."""
    entry: dict[str, Any] = {
        "name": "boiler",
        "type": "opcua",
        "endpoint": plant.url,
        "security_policy": "None",
        "publishing_interval": "50ms",
        "keepalive": "500ms",
        "timeout": "3s",
        "tags": [
            {"name": "pressure", "node": plant.node_id("Pressure"), "unit": "bar"},
            {"name": "temperature", "node": "ns=2;i=7", "unit": "degC"},
            {"name": "count", "browse_path": "0:Objects/2:Boiler/2:Count"},
        ],
    }
    entry.update(over)
    cfg = edged_config.parse({"gateway": {"id": "gw", "data_dir": str(data_dir)}, "devices": [entry]})
    dev = cfg.devices[0]
    assert isinstance(dev, Config)
    return dev


def context(data_dir: Path) -> PluginContext:
    return PluginContext(gateway_id="gw", data_dir=data_dir, log=logging.getLogger(LOG))


async def until(
    stream: AsyncIterator[list[Sample]], done: Callable[[list[Sample]], bool], limit: float = 5.0
) -> list[Sample]:
    """Collect batches until `done(all samples so far)`, for at most `limit` seconds."""
    seen: list[Sample] = []
    async with asyncio.timeout(limit):
        while not done(seen):
            seen.extend(await anext(stream))
    return seen


def latest(samples: list[Sample], tag: str) -> Sample:
    return [s for s in samples if s.tag == tag][-1]


def ns_of(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


# --------------------------------------------------------------------------------- data


@module_loop
@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_values_arrive_with_source_timestamp_and_mapped_status(
    plant: PlantServer, tmp_path: Path, mode: str
) -> None:
    await plant.set("Pressure", 12.5)
    cfg = device(plant, tmp_path, mode=mode, poll_interval="50ms")
    async with Driver(cfg, context(tmp_path)) as drv:
        stream = drv.samples()
        first = await until(stream, lambda s: {x.tag for x in s} >= {"boiler/pressure", "boiler/count"})
        assert latest(first, "boiler/count").value == 42
        assert latest(first, "boiler/temperature").unit == "degC"

        src = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
        await plant.set("Pressure", 13.25, source_ts=src)
        got = latest(await until(stream, lambda s: any(x.value == 13.25 for x in s)), "boiler/pressure")
        assert (got.ts_ns, got.status, got.score, got.unit) == (ns_of(src), Status.GOOD, 100, "bar")

        await plant.set("Pressure", 13.5, status=UNCERTAIN)
        got = latest(await until(stream, lambda s: any(x.status == UNCERTAIN for x in s)), "boiler/pressure")
        assert (got.value, got.score) == (13.5, 60)

        await plant.set("Pressure", 0.0, status=BAD_SENSOR)
        got = latest(await until(stream, lambda s: any(x.status == BAD_SENSOR for x in s)), "boiler/pressure")
        assert (got.value, got.status, got.score) == (None, Status.BAD_SENSOR_FAILURE, 0)
        await plant.set("Pressure", 12.5)
        await stream.aclose()


@module_loop
async def test_subscription_batches_a_publish_cycle_and_is_fast(plant: PlantServer, tmp_path: Path) -> None:
    async with Driver(device(plant, tmp_path), context(tmp_path)) as drv:
        stream = drv.samples()
        await until(stream, lambda s: len({x.tag for x in s}) == 3)
        delays = []
        for i in range(5):
            t0 = time.perf_counter()
            await plant.set("Pressure", 20.0 + i)
            await plant.set("Temperature", 90.0 + i)
            batch = await until(stream, lambda s, i=i: any(x.value == 90.0 + i for x in s))
            delays.append(time.perf_counter() - t0)
            assert {x.tag for x in batch} == {"boiler/pressure", "boiler/temperature"}  # one cycle, one batch
        # One publishing interval (50 ms) plus scheduling; generous for a loaded CI machine.
        assert sorted(delays)[2] < 0.5, delays
        await plant.set("Pressure", 12.5)
        await stream.aclose()


@module_loop
async def test_server_side_deadband(plant: PlantServer, tmp_path: Path) -> None:
    tags = [{"name": "pressure", "node": plant.node_id("Pressure"), "deadband": 1.0}]
    await plant.set("Pressure", 12.5)
    async with Driver(device(plant, tmp_path, tags=tags), context(tmp_path)) as drv:
        stream = drv.samples()
        await until(stream, lambda s: any(x.value == 12.5 for x in s))
        await plant.set("Pressure", 12.9)  # inside the deadband: the server sends nothing
        await asyncio.sleep(0.2)
        await plant.set("Pressure", 20.0)
        nxt = await anext(stream)
        assert [x.value for x in nxt] == [20.0]
        await plant.set("Pressure", 12.5)
        await stream.aclose()


@module_loop
@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_missing_node_is_reported_once_and_the_rest_keeps_flowing(
    plant: PlantServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    tags = [
        {"name": "pressure", "node": plant.node_id("Pressure")},
        {"name": "ghost", "node": "ns=2;s=Boiler.DoesNotExist"},
        {"name": "lost", "browse_path": "0:Objects/2:Boiler/2:Gone"},
        {"name": "profile", "node": plant.node_id("Profile")},  # exists, but an array
    ]
    caplog.set_level(logging.INFO, logger=LOG)
    async with Driver(device(plant, tmp_path, mode=mode, poll_interval="50ms", tags=tags), context(tmp_path)) as drv:
        stream = drv.samples()
        seen = await until(stream, lambda s: any(x.tag == "boiler/pressure" for x in s))
        for v in (30.0, 31.0, 32.0):
            await plant.set("Pressure", v)
            seen += await until(stream, lambda s, v=v: any(x.value == v for x in s))
        await stream.aclose()
    await plant.set("Pressure", 12.5)

    for tag in ("ghost", "lost"):
        bad = [s for s in seen if s.tag == f"boiler/{tag}"]
        assert [(s.status, s.score, s.value) for s in bad] == [(Status.BAD_NODE_ID_UNKNOWN, 0, None)]
        logged = [r for r in caplog.records if f"tag {tag} " in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].levelno == logging.WARNING
    assert "ns=2;s=Boiler.DoesNotExist" in caplog.text
    assert "BadNodeIdUnknown" in caplog.text
    assert "0:Objects/2:Boiler/2:Gone" in caplog.text
    assert "BadNoMatch" in caplog.text
    profile = [s for s in seen if s.tag == "boiler/profile"]
    assert profile
    assert all(s.status == Status.BAD_CONFIGURATION_ERROR for s in profile)
    assert sum("boiler/profile" in r.getMessage() or "tag profile" in r.getMessage() for r in caplog.records) == 1


@module_loop
async def test_server_restart_is_transient_then_subscriptions_are_recreated(plant: PlantServer, tmp_path: Path) -> None:
    """The daemon's loop in small: a lost session raises Transient, re-entering subscribes again."""
    cfg = device(plant, tmp_path)
    async with Driver(cfg, context(tmp_path)) as drv:
        stream = drv.samples()
        await until(stream, lambda s: any(x.tag == "boiler/pressure" for x in s))
        await plant.stop()
        t0 = time.perf_counter()
        with pytest.raises(Transient, match=r"lost|subscription ended"):
            await until(stream, lambda s: False, limit=10)
        detected = time.perf_counter() - t0
    assert detected < 3.0

    with pytest.raises(Transient, match="connect to"):  # server still down: retry later
        async with Driver(cfg, context(tmp_path)):
            pass

    await plant.start()
    async with Driver(cfg, context(tmp_path)) as drv:
        stream = drv.samples()
        await until(stream, lambda s: any(x.tag == "boiler/pressure" for x in s))
        await plant.set("Pressure", 44.0)
        await until(stream, lambda s: any(x.value == 44.0 for x in s))
        await plant.set("Pressure", 12.5)
        await stream.aclose()


# --------------------------------------------------------------------------------- security


def secure(plant: PlantServer, tmp_path: Path, **over: Any) -> Config:
    settings: dict[str, Any] = {
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "certificate": str(plant.client_cert),
        "private_key": str(plant.client_key),
        "trusted_server_certificates": [str(plant.server_cert)],
        "username": USERNAME,
        "password": PASSWORD,
    }
    settings.update(over)
    return device(plant, tmp_path, **settings)


@module_loop
async def test_sign_and_encrypt_with_username_and_password(plant: PlantServer, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    async with Driver(secure(plant, tmp_path), context(tmp_path)) as drv:
        connect_s = time.perf_counter() - t0
        stream = drv.samples()
        await until(stream, lambda s: len({x.tag for x in s}) == 3)
        await plant.set("Pressure", 15.5)
        await until(stream, lambda s: any(x.value == 15.5 for x in s))
        await plant.set("Pressure", 12.5)
        await stream.aclose()
    assert connect_s < 3.0


@module_loop
async def test_wrong_password_is_permanent(plant: PlantServer, tmp_path: Path) -> None:
    with pytest.raises(Permanent, match="BadUserAccessDenied"):
        async with Driver(secure(plant, tmp_path, password="wrong"), context(tmp_path)):
            pass


@module_loop
async def test_untrusted_server_certificate_is_permanent_and_kept_for_review(
    plant: PlantServer, tmp_path: Path
) -> None:
    cfg = secure(plant, tmp_path, trusted_server_certificates=[str(plant.client_cert)])
    with pytest.raises(Permanent, match="is not trusted") as err:
        async with Driver(cfg, context(tmp_path)):
            pass
    rejected = list((tmp_path / "opcua" / "rejected").glob("*.der"))
    assert len(rejected) == 1
    assert str(rejected[0]) in str(err.value)
    assert rejected[0].read_bytes() == plant.server_cert.read_bytes()


@module_loop
async def test_missing_or_incomplete_security_config_is_a_config_error(plant: PlantServer, tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "devices": [{"name": "boiler", "type": "opcua", "endpoint": plant.url, "tags": []}],
    }
    with pytest.raises(ConfigError, match=r"devices\[0\] \(boiler\): security_policy is required.*'None'"):
        edged_config.parse(raw)
    raw["devices"][0]["security_policy"] = "Basic256Sha256"
    with pytest.raises(ConfigError, match="needs certificate and private_key"):
        edged_config.parse(raw)
    raw["devices"][0].update(certificate="c.der", private_key="k.pem")
    with pytest.raises(ConfigError, match="needs trusted_server_certificates"):
        edged_config.parse(raw)
    raw["devices"][0].update(trusted_server_certificates=["s.der"], tags=[{"name": "t", "node": "ns=2;x=1"}])
    with pytest.raises(ConfigError, match="invalid node 'ns=2;x=1'"):
        edged_config.parse(raw)


def test_sample_toml_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_OPCUA_PASSWORD", "x")
    raw = tomllib.loads((Path(__file__).parents[2] / "drivers" / "opcua" / "sample.toml").read_text())
    dev = edged_config.parse({"gateway": {"data_dir": str(tmp_path)}, **raw}).devices[0]
    assert isinstance(dev, Config)
    assert [t.name for t in dev.tags] == ["steam_pressure", "feed_temperature", "burner_on"]


def test_create_client_certificate(tmp_path: Path) -> None:
    made = create_client_certificate(tmp_path / "c.der", tmp_path / "pki" / "k.pem", "urn:edged:gw1", "gw1.plant")
    cert = certs.load_certificate(made.cert_path)
    assert certs.application_uri(cert) == "urn:edged:gw1"
    assert made.thumbprint == certs.thumbprint(cert)
    assert len(made.thumbprint) == 40
    assert stat.S_IMODE(made.key_path.stat().st_mode) == 0o600
    assert certs.check_trusted(cert, [cert]) is None
    with pytest.raises(FileExistsError):
        create_client_certificate(tmp_path / "c.der", tmp_path / "other.pem", "urn:x")


# --------------------------------------------------------------------------------- daemon


@module_loop
async def test_daemon_stores_server_values_in_the_buffer(plant: PlantServer, tmp_path: Path) -> None:
    raw = {
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "buffer": {"flush_interval": "50ms"},
        "devices": [
            {
                "name": "boiler",
                "type": "opcua",
                "endpoint": plant.url,
                "security_policy": "None",
                "publishing_interval": "100ms",
                "tags": [
                    {"name": "pressure", "node": plant.node_id("Pressure"), "unit": "bar"},
                    {"name": "running", "browse_path": "0:Objects/2:Boiler/2:Running"},
                ],
            }
        ],
        "uplinks": [{"name": "archive", "type": "file", "path": "samples.jsonl", "fsync": False}],
    }
    cfg = edged_config.parse(raw)
    daemon = Daemon(cfg)
    src = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
    try:
        async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
            tg.create_task(daemon.run(), name="daemon")

            async def pressure(pred: Callable[[Sample], bool]) -> bool:
                return any(s.tag == "boiler/pressure" and pred(s) for s in await daemon_samples(daemon))

            await until_true(lambda: pressure(lambda s: s.status == Status.GOOD), 15, "the first pressure reading")
            await plant.set("Pressure", 17.75, source_ts=src)
            await until_true(lambda: pressure(lambda s: s.value == 17.75), 15, "the new pressure value")
            out = tmp_path / "samples.jsonl"
            await eventually(lambda: out.read_text().count("boiler/pressure") >= 2, 15, "delivery to the file")
            daemon.request_stop()
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # Daemon.run installed them on this shared loop
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    await plant.set("Pressure", 12.5)

    with Store(cfg.buffer_path) as store:
        samples, _ = store.read(1, store.head, 10_000)
    by_tag = {s.tag: s for s in samples if s.status == Status.GOOD}
    assert by_tag["boiler/running"].value is True
    pressure = [s for s in samples if s.tag == "boiler/pressure"]
    assert any(s.value == 17.75 and s.ts_ns == ns_of(src) and s.unit == "bar" for s in pressure), pressure
    assert (tmp_path / "samples.jsonl").read_text().count("boiler/pressure") >= 2
