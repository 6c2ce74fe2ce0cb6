"""Runs of tags (edged/tagruns.py): one `[[devices.tags]]` entry with `count`, expanded at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edged.config import load, parse
from edged.errors import ConfigError
from edged.tagruns import MAX_RUN


def modbus(*tags: dict[str, Any]) -> dict[str, Any]:
    dev = {"name": "meters", "type": "modbus", "host": "127.0.0.1", "tags": list(tags)}
    return {"gateway": {"id": "gw", "data_dir": "/tmp"}, "devices": [dev]}


def test_a_run_expands_into_individually_named_tags() -> None:
    run = {"name": "meter{i}/power", "count": 50, "address": 100, "stride": 2, "type": "float32", "unit": "kW"}
    cfg = parse(modbus({"name": "status", "address": 0}, run, {"name": "alarm", "address": 1}))
    tags = cfg.devices[0].tags
    assert [t.name for t in tags] == ["status", *(f"meter{n}/power" for n in range(1, 51)), "alarm"]
    assert [t.address for t in tags[1:51]] == list(range(100, 200, 2))
    assert all(t.type == "float32" and t.unit == "kW" for t in tags[1:51])
    assert cfg.devices[0].tag_path(tags[50]) == "meters/meter50/power"


def test_padding_first_and_description() -> None:
    run = {"name": "pump{i:03}/speed", "description": "speed of pump {i:03}", "count": 3, "first": 0,
           "address": 10, "stride": 1}  # fmt: skip
    tags = parse(modbus(run)).devices[0].tags
    assert [(t.name, t.description, t.address) for t in tags] == [
        ("pump000/speed", "speed of pump 000", 10),
        ("pump001/speed", "speed of pump 001", 11),
        ("pump002/speed", "speed of pump 002", 12),
    ]


def test_a_run_of_one_needs_no_stride() -> None:
    (tag,) = parse(modbus({"name": "m{i}", "count": 1, "address": 7})).devices[0].tags
    assert (tag.name, tag.address) == ("m1", 7)


def test_the_s7_driver_gets_runs_too() -> None:
    run = {"name": "tank{i}/level", "count": 4, "db": 20, "address": 0, "stride": 4, "type": "real"}
    dev = {"name": "plc", "type": "s7", "host": "127.0.0.1", "tags": [run]}
    tags = parse({"gateway": {"id": "gw", "data_dir": "/tmp"}, "devices": [dev]}).devices[0].tags
    assert [(t.name, t.db, t.address) for t in tags] == [(f"tank{n}/level", 20, 4 * (n - 1)) for n in range(1, 5)]


@pytest.mark.parametrize(
    ("tag", "path", "reason"),
    [
        ({"name": "m{i}", "count": 0, "address": 1, "stride": 1}, "tags[0].count", "count must be 1..10000"),
        ({"name": "m{i}", "count": MAX_RUN + 1, "address": 1, "stride": 1}, "tags[0].count", "1..10000"),
        ({"name": "m{i}", "count": "5", "address": 1, "stride": 1}, "tags[0].count", "must be an integer"),
        ({"name": "m{i}", "count": True, "address": 1, "stride": 1}, "tags[0].count", "must be an integer"),
        ({"name": "m", "count": 3, "address": 1, "stride": 1}, "tags[0].name", "exactly one {i}"),
        ({"name": "m{i}{i}", "count": 3, "address": 1, "stride": 1}, "tags[0].name", "exactly one {i}"),
        ({"name": "m{i}{x}", "count": 3, "address": 1, "stride": 1}, "tags[0].name", "only {i} or {i:03}"),
        ({"name": "m{i}", "count": 3, "address": 1}, "tags[0].stride", "needs `stride`"),
        ({"name": "m{i}", "count": 3, "address": 1, "stride": 0}, "tags[0].stride", "at least 1"),
        ({"name": "m{i}", "count": 3, "stride": 1}, "tags[0].address", "integer `address`"),
        ({"name": "m{i}", "stride": 3, "address": 1}, "tags[0].count", "set `count`"),
        ({"name": "m{i}", "count": 2, "first": -1, "address": 1, "stride": 1}, "tags[0].first", "0..1000000000"),
        ({"name": "m{i}", "count": 2, "address": 1, "stride": 1, "description": "{x}"}, "tags[0].description",
         "only {i}"),
    ],
)  # fmt: skip
def test_bad_runs_name_the_key(tag: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(modbus(tag))
    assert exc.value.path == f"devices[0] (meters).{path}"
    assert reason in exc.value.reason


def test_a_bad_expanded_tag_names_the_run_and_the_tag() -> None:
    with pytest.raises(ConfigError) as exc:
        parse(modbus({"name": "ok", "address": 0}, {"name": "m{i}", "count": 5, "address": 65533, "stride": 1}))
    assert exc.value.path == "devices[0] (meters).tags[1] (m{i}: m4)"
    assert "address 65536 is outside 0..65535" in exc.value.reason
    with pytest.raises(ConfigError) as exc:
        parse(modbus({"name": "m{i}", "count": 2, "address": 0, "stride": 2, "type": "float128"}))
    assert exc.value.path == "devices[0] (meters).tags[0] (m{i}: m1).type"


def test_names_that_collide_are_duplicate_tags() -> None:
    with pytest.raises(ConfigError, match="duplicate tag 'meters/m2'"):
        parse(modbus({"name": "m{i}", "count": 3, "address": 0, "stride": 1}, {"name": "m2", "address": 9}))


def test_the_device_limit_counts_every_run() -> None:
    runs = [{"name": f"r{n}_{{i}}", "count": MAX_RUN, "address": 0, "stride": 1} for n in range(11)]
    with pytest.raises(ConfigError, match="more than 100000 tags") as exc:
        parse(modbus(*runs))
    assert exc.value.path == "devices[0] (meters).tags[10].count"


def test_the_modbus_readme_example_loads_and_is_short(tmp_path: Path) -> None:
    """Issue 20: 500 registers in one entry per register were 521 lines; as runs they are a few."""
    text = (Path(__file__).parents[2] / "drivers" / "modbus" / "README.md").read_text()
    example = text.split("<!-- runs example -->")[1].split("```toml")[1].split("```")[0]
    cfg_file = tmp_path / "edged.toml"
    cfg_file.write_text(f'[gateway]\nid = "gw"\ndata_dir = "{tmp_path}"\n{example}')
    tags = load(cfg_file).devices[0].tags
    assert len(tags) == 500
    assert len(set(t.name for t in tags)) == 500
    assert len([line for line in example.splitlines() if line.strip()]) < 40
