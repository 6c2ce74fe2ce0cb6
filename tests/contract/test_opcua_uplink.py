"""Contract tests of the OPC UA server uplink: a real asyncua client browses, reads, subscribes."""

from __future__ import annotations

import asyncio
import logging
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import BadIdentityTokenRejected, BadNoMatch, BadUserAccessDenied

sys.path.insert(0, str(Path(__file__).parents[1]))

from edged import config as edged_config
from edged.errors import ConfigError
from edged.model import Batch, Sample, Status
from edged.plugin import PluginContext
from edged.protocols.opcua.certs import create_client_certificate
from peers.opcua_server import free_port
from uplink.opcua import Config, Uplink

module_loop = pytest.mark.asyncio(loop_scope="module")

GATEWAY = "gw1"
USER, PASSWORD = "scada", "pw-1"
NAMESPACE = "urn:edged:gw1"
UNCERTAIN = 0x40000000
BAD_NO_COMMUNICATION = 0x80310000
SEC = 1_000_000_000


def parse(tmp: Path, uplink: dict[str, Any]) -> edged_config.Config:
    """A whole daemon config: the uplink mirrors its devices and tags."""
    return edged_config.parse(
        {
            "gateway": {"id": GATEWAY, "data_dir": str(tmp)},
            "devices": [
                {
                    "name": "boiler",
                    "type": "sim",
                    "tags": [
                        {
                            "name": "pressure",
                            "unit": "bar",
                            "description": "steam drum",
                            "low": 0,
                            "high": 16,
                        },
                        {"name": "running", "signal": "bool"},
                    ],
                },
                {"name": "pump", "type": "sim", "tags": [{"name": "speed", "unit": "rpm"}]},
            ],
            "uplinks": [{"name": "scada", "type": "opcua", **uplink}],
        }
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Uplink]:
    tmp = tmp_path_factory.mktemp("uplink")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    cfg = parse(
        tmp,
        {"endpoint": endpoint, "security_policies": ["None", "Basic256Sha256"], "users": {USER: PASSWORD}},
    )
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    ctx = PluginContext(GATEWAY, tmp, logging.getLogger("edged.uplink.scada"), config=cfg)
    async with Uplink(up_cfg, ctx) as up:
        yield up


def client(up: Uplink, *, user: str | None = USER, password: str = PASSWORD) -> Client:
    c = Client(up.config.endpoint, timeout=5)
    if user is not None:
        c.set_user(user)
        c.set_password(password)
    return c


def sample(tag: str, ts_ns: int, value: Any, status: int = Status.GOOD, unit: str | None = None) -> Sample:
    return Sample(tag, ts_ns, value, status, 100 if status == Status.GOOD else 0, unit, None)


def batch(*samples: Sample, historical: bool = False) -> Batch:
    return Batch(GATEWAY, 1, len(samples), historical, list(samples))


async def tag_node(c: Client, *path: str) -> Any:
    ns = await c.get_namespace_index(NAMESPACE)
    return await c.nodes.objects.get_child([f"{ns}:{p}" for p in (GATEWAY, *path)])


class Changes:
    """Subscription handler: data changes land in a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ua.DataValue] = asyncio.Queue()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.queue.put_nowait(data.monitored_item.Value)

    async def next(self) -> ua.DataValue:
        return await asyncio.wait_for(self.queue.get(), 5)


@module_loop
async def test_address_space_mirrors_the_config_with_stable_node_ids(server: Uplink) -> None:
    async with client(server) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        gw = await c.nodes.objects.get_child([f"{ns}:{GATEWAY}"])
        devices = {(await n.read_browse_name()).Name for n in await gw.get_children()}
        assert devices >= {"boiler", "pump"}
        pressure = await tag_node(c, "boiler", "pressure")
        assert pressure.nodeid.to_string() == f"ns={ns};s=boiler/pressure"
        assert (await tag_node(c, "pump", "speed")).nodeid.to_string() == f"ns={ns};s=pump/speed"
        assert (await pressure.read_description()).Text == "steam drum"
        props = {(await p.read_browse_name()).Name: await p.read_value() for p in await pressure.get_properties()}
        assert props["EngineeringUnits"].DisplayName.Text == "bar"
        assert (props["EURange"].Low, props["EURange"].High) == (0.0, 16.0)
        speed = await tag_node(c, "pump", "speed")
        dv = await speed.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == Status.BAD_WAITING_FOR_INITIAL_DATA  # nothing sent yet


@module_loop
async def test_values_status_and_source_timestamp_are_readable_and_subscribable(server: Uplink) -> None:
    t0 = time.time_ns()
    await server.send(batch(sample("boiler/pressure", t0, 12.5, unit="bar"), sample("boiler/running", t0, True)))
    async with client(server) as c:
        pressure = await tag_node(c, "boiler", "pressure")
        dv = await pressure.read_data_value()
        assert (dv.Value.Value, dv.Value.VariantType, dv.StatusCode.value) == (12.5, ua.VariantType.Double, 0)
        assert int(dv.SourceTimestamp.timestamp() * 1e6) == t0 // 1000
        assert await (await tag_node(c, "boiler", "running")).read_value() is True
        assert await pressure.read_data_type() == ua.NodeId(ua.ObjectIds.Double)

        changes = Changes()
        sub = await c.create_subscription(50, changes)
        await sub.subscribe_data_change(pressure)
        assert (await changes.next()).Value.Value == 12.5  # initial value

        started = time.perf_counter()
        await server.send(batch(sample("boiler/pressure", t0 + SEC, 13, UNCERTAIN)))  # an int: still Double
        dv = await changes.next()
        latency = time.perf_counter() - started
        assert (dv.Value.Value, dv.StatusCode.value) == (13.0, UNCERTAIN)
        assert int(dv.SourceTimestamp.timestamp()) == (t0 + SEC) // SEC
        assert latency < 1.0

        await server.send(batch(sample("boiler/pressure", t0 + 2 * SEC, None, BAD_NO_COMMUNICATION)))
        dv = await changes.next()
        assert (dv.Value.Value, dv.StatusCode.value) == (None, BAD_NO_COMMUNICATION)

        # Within a batch the newest sample of a tag wins, whatever the order.
        await server.send(
            batch(sample("boiler/pressure", t0 + 4 * SEC, 15.0), sample("boiler/pressure", t0 + 3 * SEC, 14.0))
        )
        assert (await changes.next()).Value.Value == 15.0
        await sub.delete()


@module_loop
async def test_a_historical_sample_never_overwrites_a_newer_value(server: Uplink) -> None:
    now = time.time_ns() + 60 * SEC
    await server.send(batch(sample("pump/speed", now, 1500.0)))
    skipped = server.skipped_older
    await server.send(batch(sample("pump/speed", now - 30 * SEC, 900.0), historical=True))
    assert server.skipped_older == skipped + 1
    async with client(server) as c:
        speed = await tag_node(c, "pump", "speed")
        assert await speed.read_value() == 1500.0
        await server.send(batch(sample("pump/speed", now + SEC, 1600.0), historical=True))  # newer: it moves
        assert await speed.read_value() == 1600.0


@module_loop
async def test_tags_missing_from_the_config_appear_on_their_first_sample(server: Uplink) -> None:
    await server.send(
        batch(sample("tank/level", time.time_ns(), 3.25, unit="m"), sample("tank/alarm", time.time_ns(), "HIGH"))
    )
    async with client(server) as c:
        level = await tag_node(c, "tank", "level")
        assert await level.read_value() == 3.25
        assert await (await tag_node(c, "tank", "alarm")).read_value() == "HIGH"
        ns = await c.get_namespace_index(NAMESPACE)
        assert level.nodeid.to_string() == f"ns={ns};s=tank/level"


@module_loop
async def test_a_tag_changing_type_is_published_as_bad_type_mismatch(server: Uplink) -> None:
    t = time.time_ns()
    await server.send(batch(sample("boiler/running", t, False)))
    await server.send(batch(sample("boiler/running", t + SEC, "maybe")))
    async with client(server) as c:
        dv = await (await tag_node(c, "boiler", "running")).read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == ua.StatusCodes.BadTypeMismatch


@module_loop
async def test_anonymous_sessions_and_wrong_passwords_are_rejected(server: Uplink) -> None:
    with pytest.raises(BadIdentityTokenRejected):
        async with client(server, user=None):
            pass
    with pytest.raises(BadUserAccessDenied):
        async with client(server, password="guess"):
            pass


@module_loop
async def test_writes_are_rejected(server: Uplink) -> None:
    await server.send(batch(sample("boiler/pressure", time.time_ns() + 3600 * SEC, 11.0)))
    async with client(server) as c:
        pressure = await tag_node(c, "boiler", "pressure")
        with pytest.raises(BadUserAccessDenied):
            await pressure.write_value(ua.DataValue(ua.Variant(99.0, ua.VariantType.Double)))
        with pytest.raises(BadUserAccessDenied):
            await pressure.write_attribute(ua.AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText("x"))))
        assert await pressure.read_value() == 11.0


@module_loop
async def test_sign_and_encrypt_with_the_generated_server_certificate(server: Uplink, tmp_path: Path) -> None:
    cert_dir = server.ctx.data_dir / "opcua" / "scada"
    server_cert = cert_dir / "server_cert.der"
    assert stat.S_IMODE((cert_dir / "server_key.pem").stat().st_mode) == 0o600
    made = create_client_certificate(tmp_path / "scada.der", tmp_path / "scada.pem", "urn:scada:test")
    c = client(server)
    c.application_uri = "urn:scada:test"
    await c.set_security(
        SecurityPolicyBasic256Sha256,
        str(made.cert_path),
        str(made.key_path),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    async with c:
        assert (await tag_node(c, "boiler", "pressure")).nodeid.Identifier == "boiler/pressure"


@module_loop
async def test_anonymous_read_only_when_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    cfg = parse(tmp_path, {"endpoint": endpoint, "security_policies": ["None"], "allow_anonymous": True})
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("edged.uplink.anon"), config=cfg)
    caplog.set_level(logging.WARNING, logger="edged.uplink.anon")
    async with Uplink(up_cfg, ctx) as up:
        await up.send(batch(sample("boiler/pressure", time.time_ns(), 7.5)))
        async with Client(endpoint, timeout=5) as c:
            pressure = await tag_node(c, "boiler", "pressure")
            assert await pressure.read_value() == 7.5
            with pytest.raises(BadUserAccessDenied):
                await pressure.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
    assert "unencrypted, unsigned" in caplog.text
    assert not (tmp_path / "opcua").exists()  # no certificate needed without a security policy


@module_loop
async def test_a_restarted_server_shows_the_last_stored_values_at_once(tmp_path: Path) -> None:
    """Seeded from the buffer: SCADA sees each tag's last value right after a gateway restart."""
    from buffer import Store

    with Store(tmp_path / "buffer.db") as store:
        t0 = time.time_ns() - 60 * 10**9
        store.append([sample("boiler/pressure", t0, 7.0), sample("pump/speed", t0, 900.0),
                      sample("boiler/pressure", t0 + 10**9, 7.25, Status.UNCERTAIN_SENSOR_NOT_ACCURATE),
                      sample("gone/tag", t0, 1.0)])  # fmt: skip

        async def latest() -> list[Sample]:
            return await asyncio.to_thread(store.latest)

        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
        cfg = parse(tmp_path, {"endpoint": endpoint, "security_policies": ["None"], "allow_anonymous": True})
        up_cfg = cfg.uplinks[0]
        assert isinstance(up_cfg, Config)
        ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("t"), config=cfg, latest=latest)
        async with Uplink(up_cfg, ctx), Client(endpoint, timeout=5) as c:
            dv = await (await tag_node(c, "boiler", "pressure")).read_data_value(raise_on_bad_status=False)
            assert dv.Value.Value == 7.25
            assert dv.StatusCode.value == Status.UNCERTAIN_SENSOR_NOT_ACCURATE
            assert dv.SourceTimestamp.timestamp() == pytest.approx((t0 + 10**9) / 1e9, abs=1e-3)
            assert await (await tag_node(c, "pump", "speed")).read_value() == 900.0
            with pytest.raises(BadNoMatch):
                await tag_node(c, "gone", "tag")  # a tag no longer configured is not resurrected


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nobody can log in"):
        parse(tmp_path, {})
    cfg = parse(tmp_path, {"users": {"a": {"env": "PATH"}}})
    up = cfg.uplinks[0]
    assert isinstance(up, Config)
    assert "None" not in up.security_policies
    assert up.allow_anonymous is False
    with pytest.raises(ConfigError, match="endpoint"):
        parse(tmp_path, {"users": {"a": "b"}, "endpoint": "http://x:1/"})
    with pytest.raises(ConfigError, match="go together"):
        parse(tmp_path, {"users": {"a": "b"}, "certificate": "c.der"})


def test_sample_toml_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_SCADA_PASSWORD", "x")
    raw = tomllib.loads((Path(__file__).parents[2] / "uplink" / "opcua" / "sample.toml").read_text())
    up = edged_config.parse({"gateway": {"data_dir": str(tmp_path)}, **raw}).uplinks[0]
    assert isinstance(up, Config)
    assert up.users["scada"].reveal() == "x"
