"""What strict OPC UA clients check of the uplink's server, with a real asyncua client: the server
describes itself truthfully (ServerCapabilities, BuildInfo, ApplicationType, SubjectAltName IPs),
each variable is described from the config before its first value (DataType, AnalogItemType,
UNECE EngineeringUnits, MinimumSamplingInterval) and UserAccessLevel follows the session's user.
Independent of asyncua: the UnitIds are golden values from the spec (UNECE_to_OPCUA.csv, OPC 10000-8
5.6.3) and the certificate is parsed with `cryptography`."""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1]))

import edged
from buffer import Store
from edged import config as edged_config
from edged.commands import AuditTrail, CommandGate
from edged.model import Batch, Sample, Status
from edged.plugin import PluginContext
from edged.protocols.opcua.certs import create_client_certificate
from peers.opcua_server import free_port
from uplink.opcua import Config, Uplink

module_loop = pytest.mark.asyncio(loop_scope="module")

GATEWAY = "gw1"
NAMESPACE = f"urn:edged:{GATEWAY}"
OPERATOR, VIEWER = ("operator", "op-pw"), ("viewer", "view-pw")
UNITS_NS = "http://www.opcfoundation.org/UA/units/un/cefact"
BAD_TYPE_MISMATCH = 0x80740000  # OPC UA Part 4 / Part 6 StatusCodes
BAD_NODE_ID_UNKNOWN = 0x80340000
BAD_USER_ACCESS_DENIED = 0x801F0000
ANALOG_ITEM_TYPE, BASE_ANALOG_TYPE, BASE_DATA_VARIABLE_TYPE = 2368, 15318, 63  # Part 6 NodeIds.csv
INT16, UINT32, INT64, DOUBLE, BOOLEAN, STRING, BASE_DATA_TYPE = 4, 7, 8, 11, 1, 12, 24
MICRO_PROFILE = "http://opcfoundation.org/UA-Profile/Server/MicroEmbeddedDevice2017"


def parse(tmp: Path, endpoint: str) -> edged_config.Config:
    return edged_config.parse(
        {
            "gateway": {"id": GATEWAY, "data_dir": str(tmp)},
            "devices": [
                {
                    "name": "press",
                    "type": "modbus",
                    "host": "127.0.0.1",
                    "port": 1,
                    "interval": "500ms",
                    "tags": [
                        {
                            "name": "setpoint",
                            "address": 0,
                            "type": "float32",
                            "writable": True,
                            "unit": "bar",
                            "low": 0,
                            "high": 150,
                        },
                        {"name": "count", "address": 2, "type": "int16"},
                        {"name": "energy", "address": 3, "type": "uint32", "interval": "2s", "unit": "kWh"},
                        {"name": "level", "address": 5, "type": "int16", "scale": 0.1, "unit": "%"},
                        {"name": "temp", "address": 6, "type": "float32", "unit": "degC"},
                        {"name": "fill", "address": 8, "type": "float32", "unit": "%span"},
                        {"name": "run", "address": 0, "table": "coil"},
                    ],
                },
                {"name": "boiler", "type": "sim", "interval": "250ms", "tags": [{"name": "n", "signal": "counter"}]},
                {
                    "name": "plc",
                    "type": "opcua",
                    "endpoint": "opc.tcp://127.0.0.1:1/",
                    "security_policy": "None",
                    "tags": [{"name": "any", "node": "ns=2;s=X"}],
                },
            ],
            "uplinks": [
                {
                    "name": "scada",
                    "type": "opcua",
                    "endpoint": endpoint,
                    "security_policies": ["None", "Basic256Sha256"],
                    "users": dict([OPERATOR, VIEWER]),
                    "command_users": [OPERATOR[0]],
                    "allow_anonymous": True,
                }
            ],
            "commands": {"enabled": True, "tags": [{"tag": "press/setpoint", "sources": ["scada"], "max": 150}]},
            "computed": [{"name": "calc", "tags": [{"name": "temp2", "expr": "{press/temp} * 2", "unit": "degC"}]}],
        }
    )


class Env:
    def __init__(self, up: Uplink, store: Store) -> None:
        self.up, self.store = up, store


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("interop")
    cfg = parse(tmp, f"opc.tcp://127.0.0.1:{free_port()}/edged/")
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)

    async def no_driver(name: str) -> None:
        return None

    with Store(tmp / "buffer.db") as store:
        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver)
        ctx = PluginContext(GATEWAY, tmp, logging.getLogger("edged.uplink.scada"), config=cfg, commands=gate)
        async with Uplink(up_cfg, ctx) as up:
            yield Env(up, store)


def client(env: Env, user: tuple[str, str] | None) -> Client:
    c = Client(env.up.config.endpoint, timeout=5)
    if user is not None:
        c.set_user(user[0])
        c.set_password(user[1])
    return c


async def tag(c: Client, device: str, name: str) -> Any:
    ns = await c.get_namespace_index(NAMESPACE)
    return await c.nodes.objects.get_child([f"{ns}:{GATEWAY}", f"{ns}:{device}", f"{ns}:{name}"])


async def attribute(node: Any, attr: ua.AttributeIds) -> Any:
    return (await node.read_attribute(attr)).Value.Value


async def properties(node: Any) -> dict[str, Any]:
    return {(await p.read_browse_name()).Name: await p.read_value() for p in await node.get_properties()}


def capability(c: Client, name: str) -> Any:
    return c.get_node(ua.NodeId(getattr(ua.ObjectIds, f"Server_ServerCapabilities_{name}"))).read_value()


@module_loop
async def test_server_capabilities_are_filled(env: Env) -> None:
    async with client(env, None) as c:
        assert await capability(c, "ServerProfileArray") == [MICRO_PROFILE]
        assert await capability(c, "LocaleIdArray") == ["en"]
        assert await capability(c, "MinSupportedSampleRate") == 0.0
        assert await capability(c, "MaxBrowseContinuationPoints") == 0
        size = env.up._server.limits.max_message_size  # type: ignore[union-attr]
        for name in ("MaxArrayLength", "MaxStringLength", "MaxByteStringLength"):
            assert await capability(c, name) == size > 0, name
        # Browse never hands out a continuation point (so 0 continuation points is the truth):
        # the gateway folder's children come back in one answer, even when few are asked for.
        ns = await c.get_namespace_index(NAMESPACE)
        desc = ua.BrowseDescription()
        desc.NodeId = ua.NodeId(1, ns)
        desc.BrowseDirection = ua.BrowseDirection.Forward
        desc.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
        desc.IncludeSubtypes = True
        params = ua.BrowseParameters()
        params.NodesToBrowse = [desc]
        params.RequestedMaxReferencesPerNode = 1
        (result,) = await c.uaclient.browse(params)
        assert not result.ContinuationPoint and len(result.References) >= 3


@module_loop
async def test_build_info_application_type_and_certificate_addresses(env: Env) -> None:
    async with client(env, None) as c:
        version = ua.ObjectIds.Server_ServerStatus_BuildInfo_SoftwareVersion
        assert await c.get_node(ua.NodeId(version)).read_value() == edged.__version__
        status = await c.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus)).read_value()
        assert status.BuildInfo.SoftwareVersion == edged.__version__
        assert status.BuildInfo.ProductName == "edged"
        (server,) = await c.find_servers()
        assert server.ApplicationType == ua.ApplicationType.Server
    endpoints = await Client(env.up.config.endpoint, timeout=5).connect_and_get_server_endpoints()
    assert {e.Server.ApplicationType for e in endpoints} == {ua.ApplicationType.Server}
    der = next(e.ServerCertificate for e in endpoints if e.ServerCertificate)
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("127.0.0.1") in san.value.get_values_for_type(x509.IPAddress)


@module_loop
async def test_data_types_come_from_the_config_before_the_first_value(env: Env) -> None:
    expected = {
        ("press", "setpoint"): DOUBLE, ("press", "count"): INT16, ("press", "energy"): UINT32,
        ("press", "level"): DOUBLE, ("press", "run"): BOOLEAN, ("boiler", "n"): INT64,
        ("plc", "any"): BASE_DATA_TYPE,  # only the remote server knows: BaseDataType, for good
    }  # fmt: skip
    async with client(env, None) as c:
        for (device, name), datatype in expected.items():
            node = await tag(c, device, name)
            assert await node.read_data_type() == ua.NodeId(datatype), (device, name)
            dv = await node.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == Status.BAD_WAITING_FOR_INITIAL_DATA
        count = await tag(c, "press", "count")
        t = time.time_ns()
        await env.up.send(Batch(GATEWAY, 1, 1, False, [Sample("press/count", t, None, Status.BAD_NO_COMMUNICATION)]))
        assert await count.read_data_type() == ua.NodeId(INT16)  # Bad from the start: still Int16
        await env.up.send(Batch(GATEWAY, 1, 1, False, [Sample("press/count", t + 1, 7, Status.GOOD, 100)]))
        dv = await count.read_data_value()
        assert (dv.Value.Value, dv.Value.VariantType) == (7, ua.VariantType.Int16)
        await env.up.send(Batch(GATEWAY, 1, 1, False, [Sample("press/count", t + 2, 70000, Status.GOOD, 100)]))
        dv = await count.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == BAD_TYPE_MISMATCH  # does not fit an Int16
        assert await count.read_data_type() == ua.NodeId(INT16)
        anything = await tag(c, "plc", "any")
        await env.up.send(Batch(GATEWAY, 1, 1, False, [Sample("plc/any", t, 2.5, Status.GOOD, 100)]))
        assert await anything.read_value() == 2.5
        assert await anything.read_data_type() == ua.NodeId(BASE_DATA_TYPE)  # never changes after browsing


@module_loop
async def test_units_ranges_and_sampling_intervals(env: Env) -> None:
    async with client(env, None) as c:
        setpoint = await tag(c, "press", "setpoint")
        assert await setpoint.read_type_definition() == ua.NodeId(ANALOG_ITEM_TYPE)
        props = await properties(setpoint)
        eu = props["EngineeringUnits"]
        assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (UNITS_NS, 4342098, "bar")  # "BAR"
        assert (props["EURange"].Low, props["EURange"].High) == (0.0, 150.0)
        assert (await properties(await tag(c, "press", "temp")))["EngineeringUnits"].UnitId == 4408652  # "CEL"
        assert (await properties(await tag(c, "press", "level")))["EngineeringUnits"].UnitId == 20529  # "P1"
        energy = await tag(c, "press", "energy")
        assert (await properties(energy))["EngineeringUnits"].UnitId == 4937544  # "KWH"
        assert await energy.read_type_definition() == ua.NodeId(BASE_ANALOG_TYPE)  # a unit, no range
        odd = (await properties(await tag(c, "press", "fill")))["EngineeringUnits"]
        assert (odd.UnitId, odd.DisplayName.Text) == (-1, "%span")  # no UNECE code: "not available"
        run = await tag(c, "press", "run")
        assert await run.read_type_definition() == ua.NodeId(BASE_DATA_VARIABLE_TYPE)
        msi = ua.AttributeIds.MinimumSamplingInterval
        assert await attribute(setpoint, msi) == 500.0  # the device's poll interval
        assert await attribute(energy, msi) == 2000.0  # the tag's own
        assert await attribute(await tag(c, "boiler", "n"), msi) == 250.0
        assert await attribute(await tag(c, "plc", "any"), msi) == 1000.0  # the OPC UA driver's publishing interval


@module_loop
async def test_user_access_level_follows_the_session_user(env: Env) -> None:
    levels = {}
    for who in (None, VIEWER, OPERATOR):
        async with client(env, who) as c:
            setpoint, count = await tag(c, "press", "setpoint"), await tag(c, "press", "count")
            assert await attribute(setpoint, ua.AttributeIds.AccessLevel) == 3  # CurrentRead | CurrentWrite
            levels[who[0] if who else "anonymous"] = (
                await attribute(setpoint, ua.AttributeIds.UserAccessLevel),
                await attribute(count, ua.AttributeIds.UserAccessLevel),
            )
    assert levels == {"anonymous": (1, 1), "viewer": (1, 1), "operator": (3, 1)}


async def write_status(node: Any, variant: ua.Variant) -> int:
    try:
        await node.write_value(ua.DataValue(variant))
    except UaStatusCodeError as exc:
        return int(exc.code)
    return 0


@module_loop
async def test_write_status_codes(env: Env) -> None:
    async with client(env, OPERATOR) as c:
        setpoint = await tag(c, "press", "setpoint")
        assert await write_status(setpoint, ua.Variant(5.0, ua.VariantType.Float)) == BAD_TYPE_MISMATCH
        double = await write_status(setpoint, ua.Variant(5.0, ua.VariantType.Double))
        assert double not in (BAD_TYPE_MISMATCH, BAD_USER_ACCESS_DENIED)  # reached the device (not connected)
        ns = await c.get_namespace_index(NAMESPACE)
        ghost = c.get_node(ua.NodeId("press/nothing", ns))
        assert await write_status(ghost, ua.Variant(1.0, ua.VariantType.Double)) == BAD_NODE_ID_UNKNOWN
        dv = await ghost.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == BAD_NODE_ID_UNKNOWN
        count = await tag(c, "press", "count")
        assert await write_status(count, ua.Variant(1, ua.VariantType.Int16)) == BAD_USER_ACCESS_DENIED
    rows = [r for r in env.store.audit_rows() if r.tag == "press/setpoint"]
    assert [(r.user, r.code) for r in rows][:1] == [(OPERATOR[0], "type")]
    assert "Float" in (rows[0].reason or "")


@module_loop
async def test_a_configured_certificate_without_the_endpoint_ip_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made = create_client_certificate(tmp_path / "c.der", tmp_path / "k.pem", "urn:x", "somehost")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    raw = {"certificate": str(made.cert_path), "private_key": str(made.key_path)}
    cfg = edged_config.parse(
        {
            "gateway": {"id": GATEWAY, "data_dir": str(tmp_path)},
            "uplinks": [{"name": "s", "type": "opcua", "endpoint": endpoint, "allow_anonymous": True, **raw}],
        }
    )
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    caplog.set_level(logging.WARNING, logger="edged.uplink.s")
    async with Uplink(up_cfg, PluginContext(GATEWAY, tmp_path, logging.getLogger("edged.uplink.s"), config=cfg)):
        pass
    assert "does not name 127.0.0.1 in its SubjectAltName" in caplog.text


@module_loop
async def test_computed_tags_are_announced_at_start_like_measured_ones(env: Env) -> None:
    """A [[computed]] group is a folder of the address space before its first value (edged.compute)."""
    async with client(env, None) as c:
        node = await tag(c, "calc", "temp2")
        assert (
            await node.read_data_value(raise_on_bad_status=False)
        ).StatusCode.value == Status.BAD_WAITING_FOR_INITIAL_DATA
        units = await node.get_child("0:EngineeringUnits")
        assert (await units.read_value()).UnitId == 4408652  # UNECE CEL, as for a measured degC tag
