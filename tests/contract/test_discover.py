"""`edged discover`: its output is a config that check-config accepts as it is.

OPC UA against an asyncua server built here with EngineeringUnits and EURange properties; the CLI
runs as a real process and check-config (another process) judges what it printed.
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.server.server import Server

from peers.opcua_server import free_port


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edged", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(90)
async def test_discover_opcua_prints_a_config_check_config_accepts(tmp_path: Path) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/plant/"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:edged:test:discover")
    boiler = await server.nodes.objects.add_object(ns, "Boiler")
    pressure = await boiler.add_variable(ua.NodeId("Boiler.Pressure", ns), "Pressure", 12.5, ua.VariantType.Double)
    eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact", UnitId=4342098,
                          DisplayName=ua.LocalizedText("bar"), Description=ua.LocalizedText("bar"))  # fmt: skip
    await pressure.add_property(ua.NodeId("Boiler.Pressure.EU", ns), ua.QualifiedName("EngineeringUnits", 0), eu)
    await pressure.add_property(
        ua.NodeId("Boiler.Pressure.Range", ns), ua.QualifiedName("EURange", 0), ua.Range(Low=0.0, High=16.0)
    )
    await boiler.add_variable(ua.NodeId(7, ns), "Count", 42, ua.VariantType.Int32)
    await boiler.add_variable(ua.NodeId("Boiler.Running", ns), "Running", True, ua.VariantType.Boolean)
    profile = await boiler.add_variable(ns, "Profile", [1.0, 2.0], ua.VariantType.Double)
    await profile.write_value_rank(1)
    burner = await boiler.add_object(ns, "Burner stage 1")  # a space: not allowed in a tag name
    await burner.add_variable(ua.NodeId("Burner.Flame", ns), "Flame", 0.5, ua.VariantType.Float)
    async with server:
        out = tmp_path / "discovered.toml"
        rc, _, err = await run("discover", "opcua", url, "--name", "boiler", "-o", str(out))
        assert rc == 0, err
    text = out.read_text()
    doc = tomllib.loads(text)
    (dev,) = doc["devices"]
    assert dev["type"] == "opcua" and dev["endpoint"] == url and dev["name"] == "boiler"
    tags = {t["name"]: t for t in dev["tags"]}
    assert tags["Boiler.Pressure"] == {"name": "Boiler.Pressure", "node": f"ns={ns};s=Boiler.Pressure", "unit": "bar",
                                       "low": 0.0, "high": 16.0}  # fmt: skip
    assert tags["Boiler.Count"]["node"] == f"ns={ns};i=7"
    assert "Boiler.Running" in tags and "Boiler.Burner_stage_1.Flame" in tags
    assert not any("Profile" in n for n in tags)  # an array is not a storable value
    assert "# Double" in text and "# Int32" in text
    # as it is, the output is a valid config (an independent judge: check-config, another process)
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n\n' + text)
    rc, _, err = await run("check-config", str(cfg))
    assert rc == 0, err
    rc, _, err = await run("check-config", str(out))  # the bare output too (default data_dir)
    assert rc == 0, err


def test_discover_modbus_says_why_not(tmp_path: Path) -> None:
    rc, _, err = asyncio.run(run("discover", "modbus", "10.0.0.1"))
    assert rc == 1 and "examples/modbus-plant.toml" in err
