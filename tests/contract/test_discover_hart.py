"""`edged discover hart`: against the independent HART simulator (tests/peers/hart_sim.py) over a
socat pty pair (two devices multidropped on one cable) and over HART-IP. The CLI runs as a process;
its output is loaded by the real config loader, accepted by `edged check-config` (another process),
and read by the driver with exactly that config.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tomllib
from pathlib import Path

import pytest

from drivers.hart import Config, Driver
from drivers.hart.protocol import decode_packed_ascii, decode_tag_descriptor
from edged.config import load
from edged.model import Status
from edged.plugin import PluginContext
from peers.hart_sim import HartIpSim, Multidrop, SerialSim, SimDevice, pack_ascii, socat_pair


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edged", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_packed_ascii_golden_bytes() -> None:
    # by hand from the packing rule: "A".."D" are 6-bit codes 1..4 -> 000001 000010 000011 000100
    assert decode_packed_ascii(bytes([0x04, 0x20, 0xC4])) == "ABCD"
    assert pack_ascii("abcd", 4) == bytes([0x04, 0x20, 0xC4])  # the simulator's own encoder agrees
    assert decode_packed_ascii(pack_ascii("PT-101", 8)) == "PT-101"  # '-', digits: codes 0x2D, 0x30..
    payload = pack_ascii("TT 7", 8) + pack_ascii("drum temp", 16) + bytes(3)
    assert decode_tag_descriptor(payload) == ("TT 7", "DRUM TEMP")


async def check_and_read(tmp_path: Path, text: str) -> Config:
    """The output through the real loader and `edged check-config`; then the driver reads with it."""
    path = tmp_path / "discovered.toml"
    path.write_text(f'[gateway]\nid = "gw"\ndata_dir = "{tmp_path / "data"}"\n\n{text}')
    code, out, err = await run("check-config", str(path))
    assert code == 0, out + err
    cfg = load(path)
    assert len(cfg.devices) == 1
    dev = cfg.devices[0]
    assert isinstance(dev, Config)
    driver = Driver(dev, PluginContext("gw", tmp_path, logging.getLogger("edged.test.discover")))
    async with driver:
        samples = {s.tag: s for s in await driver.poll()}
    assert samples[f"{dev.name}/pv"].value == 2.5 and samples[f"{dev.name}/pv"].status == Status.GOOD
    return dev


@pytest.mark.timeout(90)
async def test_discover_hart_serial_multidrop(tmp_path: Path) -> None:
    first = SimDevice(polling_address=2, device_id=0x0000A1, tag="PT-101", descriptor="drum pressure")
    second = SimDevice(polling_address=17, device_id=0x0000B2, variables=[(12, 101.3), (32, 20.0)])  # kPa, degC
    with socat_pair(tmp_path) as cable:
        sim = SerialSim(Multidrop([first, second]), cable.slave)
        sim.start()
        try:
            code, out, err = await run("discover", "hart", cable.master, "--addresses", "0-20", "--timeout", "0.15",
                                       "--retries", "0")  # fmt: skip
            assert code == 0, err
            assert "2 device(s)" in out
            doc = tomllib.loads(out)
            assert len(doc["devices"]) == 1  # one entry per serial port: the second is there, commented out
            d = doc["devices"][0]
            assert d == {
                "name": "pt-101", "type": "hart", "transport": "serial", "port": cable.master,
                "unique_id": first.unique_id.hex().upper(),
                "tags": [
                    {"name": "pv", "variable": "pv", "unit": "bar", "description": "DRUM PRESSURE"},
                    {"name": "sv", "variable": "sv", "unit": "degC"},
                    {"name": "tv", "variable": "tv", "unit": "%"},
                    {"name": "qv", "variable": "qv", "unit": "mA"},
                    {"name": "loop_current", "variable": "loop_current", "unit": "mA"},
                ],
            }  # fmt: skip
            commented = out.split("another device on the same modem")[1]
            assert f'# unique_id = "{second.unique_id.hex().upper()}"  # polling address 17' in commented
            assert '# unit = "kPa"' in commented and '# name = "tv"' not in commented  # only PV and SV
            assert 0 in first.requests and 13 in first.requests and 3 in first.requests
            assert 13 in second.requests  # asked, not implemented by it: no tag, the name from its id
            assert f'# name = "hart_{second.unique_id.hex()}"' in commented
            await check_and_read(tmp_path, out)
        finally:
            sim.stop()


@pytest.mark.timeout(90)
async def test_discover_hart_ip(tmp_path: Path) -> None:
    dev = SimDevice(polling_address=1, tag="FT-7")
    hip = HartIpSim(dev)
    port = await hip.start()
    try:
        code, out, err = await run("discover", "hart", f"127.0.0.1:{port}", "--addresses", "0-4", "--timeout", "0.2")
        assert code == 0, err
        doc = tomllib.loads(out)
        (d,) = doc["devices"]
        assert (d["name"], d["transport"], d["host"], d["port"]) == ("ft-7", "hartip", "127.0.0.1", port)
        assert d["unique_id"] == dev.unique_id.hex().upper()
        assert [t["unit"] for t in d["tags"]] == ["bar", "degC", "%", "mA", "mA"]
        cfg = await check_and_read(tmp_path, out)
        assert cfg.long_address is not None and cfg.long_address.unique_id == dev.unique_id
    finally:
        await hip.stop()


@pytest.mark.timeout(60)
async def test_discover_hart_nothing_found_and_bad_target(tmp_path: Path) -> None:
    hip = HartIpSim(SimDevice(polling_address=9))
    port = await hip.start()
    try:
        code, out, _ = await run("discover", "hart", f"127.0.0.1:{port}", "--addresses", "0-1", "--timeout", "0.1")
        assert code == 0 and "0 device(s)" in out and "[[devices]]" not in out
    finally:
        await hip.stop()
    code, _, err = await run("discover", "hart", str(tmp_path / "no-such-tty"), "--addresses", "0")
    assert code == 1 and "no-such-tty" in err
    code, _, err = await run("discover", "hart", "127.0.0.1:1", "--addresses", "0-99")
    assert code == 1 and "0..63" in err
