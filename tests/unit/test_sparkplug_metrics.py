"""The Sparkplug node's metric registry without a broker: which datatype a tag is born with (config,
else learnt and kept), what a birth carries (the newest value), and when a DATA metric is historical."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from edged.config import Config, parse
from edged.model import Sample, Status
from edged.plugin import PluginContext
from uplink.sparkplug import sparkplug_b_pb2 as pb
from uplink.sparkplug.config import Config as SpConfig
from uplink.sparkplug.metrics import BAD_TYPE_MISMATCH, Registry

T = 1_800_000_000_000_000_000  # ns


def config(tmp_path: Path, **uplink: Any) -> Config:
    return parse({
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "devices": [
            {"name": "plc", "type": "modbus", "host": "127.0.0.1", "tags": [
                {"name": "running", "address": 0, "table": "coil"},
                {"name": "count", "address": 0},
                {"name": "label", "address": 1, "type": "string", "length": 4},
            ]},
            {"name": "boiler", "type": "sim", "tags": [{"name": "level"}]},
        ],
        "uplinks": [{"name": "spb", "type": "sparkplug", "group_id": "g", **uplink}],
    })  # fmt: skip


def registry(tmp_path: Path, latest: list[Sample] | None = None, **uplink: Any) -> Registry:
    cfg = config(tmp_path, **uplink)
    up = cfg.uplinks[0]
    assert isinstance(up, SpConfig)

    async def newest() -> list[Sample]:
        assert latest is not None
        return latest

    ctx = PluginContext("gw", tmp_path, logging.getLogger("test"), config=cfg, latest=newest if latest else None)
    reg = Registry(up, ctx)
    reg.build(reg.load_state())
    return reg


def types(reg: Registry) -> dict[str, int]:
    return {k: m.datatype for k, m in reg.metrics.items() if not k.startswith("@")}


def test_datatypes_come_from_the_config_and_never_change(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    assert types(reg) == {"plc/running": pb.Boolean, "plc/count": pb.Double, "plc/label": pb.String,
                          "boiler/level": pb.Double}  # fmt: skip
    assert not reg.absorb([Sample("plc/running", T, None, Status.BAD_NO_COMMUNICATION, 0)]), "Bad at start"
    assert not reg.absorb([Sample("plc/count", T, 7)]), "an int fits a Double"
    assert not reg.absorb([Sample("plc/running", T, 3.5)]), "a mismatch changes nothing"
    payload, _ = reg.data([Sample("plc/running", T, 3.5, Status.GOOD)])
    (m,) = payload.metrics
    assert m.is_null and reg.mistyped == 1
    status = dict(zip(m.properties.keys, m.properties.values, strict=True))["OpcUaStatusCode"]
    assert status.long_value == BAD_TYPE_MISMATCH
    assert types(reg)["plc/running"] == pb.Boolean


def test_learnt_datatypes_are_kept_across_restarts(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    assert not reg.absorb([Sample("boiler/level", T, 5)]), "the Double it was born with takes an int"
    assert reg.absorb([Sample("uptime", T, 42)]), "a new tag: a rebirth"
    reg.save_state()
    again = registry(tmp_path, latest=[Sample("boiler/level", T + 1, 6), Sample("uptime", T + 1, 43)])
    asyncio.run(again.refresh())
    assert types(again)["boiler/level"] == pb.Double, "not Int64 in the next session"
    assert "uptime" not in again.metrics, "a tag not in the config is born when it comes again"
    assert again.load_state().types == {"boiler/level": pb.Double, "uptime": pb.Int64}, "learnt ones only"
    assert again.metrics["boiler/level"].last == Sample("boiler/level", T + 1, 6)
    assert again.absorb([Sample("boiler/level", T + 2, "ERR")]), "a clash: String, once"
    assert not again.absorb([Sample("boiler/level", T + 3, 1.5)])
    assert types(again)["boiler/level"] == pb.String


def test_births_take_the_newest_value_by_source_time(tmp_path: Path) -> None:
    latest = [Sample("plc/count", T + 5, 9), Sample("plc/running", -1, True), Sample("other/tag", T, 1.0)]
    reg = registry(tmp_path, latest=latest)
    reg.metrics["plc/count"].last = Sample("plc/count", T + 9, 10)  # published live, newer than the buffer's
    asyncio.run(reg.refresh())
    assert reg.metrics["plc/count"].last == Sample("plc/count", T + 9, 10)
    assert reg.metrics["plc/running"].last is None, "a timestamp Sparkplug cannot carry is not born"
    assert "other/tag" not in reg.metrics, "the buffer's other tags are not this node's"
    p = pb.Payload(timestamp=1)
    reg.birth_metric(p, reg.metrics["plc/count"])
    assert (p.metrics[0].double_value, p.metrics[0].timestamp) == (10.0, (T + 9) // 10**6)


def test_a_metric_is_live_only_when_newer_than_what_the_host_holds(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    ms = 10**6
    reg.metrics["plc/count"].last = Sample("plc/count", T + 10 * ms, 1)  # the born value
    batch = [Sample("plc/count", T + 5 * ms, 2), Sample("plc/count", T + 10 * ms, 1),
             Sample("plc/count", T + 20 * ms, 3), Sample("plc/count", T + 15 * ms, 4),
             Sample("plc/running", T, True)]  # fmt: skip
    payload, current = reg.data(batch)
    assert [(m.double_value or m.boolean_value, m.is_historical) for m in payload.metrics] == [
        (2.0, True), (1.0, True), (3.0, False), (4.0, True), (True, False),
    ]  # fmt: skip
    assert reg.metrics["plc/count"].last == Sample("plc/count", T + 10 * ms, 1), "held only once published"
    reg.hold(current)
    assert reg.metrics["plc/count"].last == batch[2]


def test_uint32_field(tmp_path: Path) -> None:
    for setting, field in (("long_value", "long_value"), ("int_value", "int_value")):
        reg = registry(tmp_path / setting, uint32_field=setting)
        payload, _ = reg.data([Sample("plc/count", T, None, Status.BAD_SENSOR_FAILURE, 0)])
        values = dict(zip(payload.metrics[0].properties.keys, payload.metrics[0].properties.values, strict=True))
        v = values["OpcUaStatusCode"]
        assert (v.type, v.WhichOneof("value"), getattr(v, field)) == (pb.UInt32, field, Status.BAD_SENSOR_FAILURE)
