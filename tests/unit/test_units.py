"""Unit conversion: pint-derived factors, plant spellings, clear config errors, pint kept optional."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged import units
from edged.config import load, parse
from edged.errors import ConfigError
from edged.units import Units, conversion


def convert(value: float, source_unit: str, unit: str) -> float:
    factor, offset = conversion(source_unit, unit)
    return value * factor + offset


@pytest.mark.parametrize(
    ("value", "source_unit", "unit", "expected"),
    [
        (1.0, "psi", "bar", 0.0689475729317),  # 1 lbf/in2 = 6894.757293168 Pa
        (32.0, "degF", "degC", 0.0),
        (212.0, "degF", "degC", 100.0),
        (-40.0, "degC", "degF", -40.0),
        (0.0, "degC", "K", 273.15),
        (1.0, "degC/min", "K/h", 60.0),  # a rate of temperature converts as a difference
        (1.0, "GPM", "m3/h", 0.227124707040),  # 231 in3 per minute
        (1.0, "gpm", "l/min", 3.785411784),
        (1.0, "CFM", "m3/h", 1.699010795520),
        (36.0, "t/h", "kg/s", 10.0),
        (1.0, "kWh", "MJ", 3.6),
        (1.0, "MWh", "GJ", 3.6),
        (1.0, "MMBtu", "GJ", 1.055056),
        (1.0, "kW", "W", 1000.0),
        (50.0, "%", "ppm", 500_000.0),
        (20.0, "mA", "A", 0.02),
        (1.0, "inH2O", "mbar", 2.4908891),
        (1000.0, "mm", "m", 1.0),
        (60.0, "Nm3/h", "Nm3/min", 1.0),
        (1.0, "m³/h", "l/h", 1000.0),
        (7.5, "bar", "bar", 7.5),
    ],
)
def test_conversions(value: float, source_unit: str, unit: str, expected: float) -> None:
    assert convert(value, source_unit, unit) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_identity_is_exact() -> None:
    assert conversion("bar", "bar") == (1.0, 0.0)
    assert conversion("degC", "degC") == (1.0, 0.0)


def test_offsets_keep_precision() -> None:
    factor, offset = conversion("degF", "degC")
    assert factor == 5 / 9
    assert offset == pytest.approx(-160 / 9, rel=1e-14)


@pytest.mark.parametrize(
    ("source_unit", "unit", "message"),
    [
        ("psig", "bar", r"unknown unit 'psig' in source_unit \(gauge/absolute markers are not units"),
        ("psi", "barg", r"unknown unit 'barg' in unit \(gauge/absolute"),
        ("degc", "K", r"unknown unit 'degc' in source_unit \(did you mean 'degC'\?\)"),
        ("xyzzy", "m", r"unknown unit 'xyzzy' in source_unit \(e\.g\. 'degC'"),
        ("psi", "degC", r"^cannot convert psi to degC \(pressure vs temperature\)$"),
        ("GPM", "t/h", r"cannot convert GPM to t/h \(volume flow vs mass flow\)"),
        ("Nm3/h", "m3/h", r"cannot convert Nm3/h to m3/h \(normal volume flow vs volume flow\)"),
        ("%", "m", r"cannot convert % to m \(ratio vs length\)"),
        ("dBm", "mW", r"not a linear conversion"),
        ("100 kPa", "bar", r"cannot read unit '100 kPa' in source_unit: .*scaling factor"),
        ("m3/h/", "l/min", r"cannot read unit 'm3/h/' in source_unit"),
        ("", "bar", r"source_unit must not be empty"),
        ("bar", "  ", r"unit must not be empty"),
    ],
)
def test_errors_say_why(source_unit: str, unit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        conversion(source_unit, unit)


def sim_config(tags: str) -> dict[str, object]:
    import tomllib

    return tomllib.loads(f'[[devices]]\nname = "x"\ntype = "sim"\n{tags}')


def test_unit_alone_is_a_label_without_pint_checks() -> None:
    cfg = parse(sim_config('[[devices.tags]]\nname = "a"\nunit = "furlongs per fortnight"\n'))
    assert cfg.devices[0].tags[0].unit == "furlongs per fortnight"


def test_source_unit_needs_unit() -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\] \(x\)\.tags\[0\]: source_unit = 'psi' needs `unit`"):
        parse(sim_config('[[devices.tags]]\nname = "a"\nsource_unit = "psi"\n'))


def test_bad_unit_through_load_names_file_and_tag(tmp_path: Path) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(
        """
[[devices]]
name = "boiler"
type = "sim"

[[devices.tags]]
name = "level"
unit = "%"

[[devices.tags]]
name = "pressure"
source_unit = "psig"
unit = "bar"
"""
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: devices[0] (boiler).tags[1]: unknown unit 'psig' in source_unit (")
    path.write_text(path.read_text().replace('"psig"', '"psi"').replace('unit = "bar"', 'unit = "degC"'))
    with pytest.raises(
        ConfigError, match=r"plant\.toml: devices\[0\] \(boiler\)\.tags\[1\]: cannot convert psi to degC"
    ):
        load(path)


@pytest.fixture
def no_pint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend pint is not installed; the caches are cleared on both sides so nothing leaks."""
    units.conversion.cache_clear()
    units._units.cache_clear()
    monkeypatch.setitem(sys.modules, "pint", None)
    yield
    units.conversion.cache_clear()
    units._units.cache_clear()


@pytest.mark.usefixtures("no_pint")
def test_without_pint_a_conversion_is_a_config_error_naming_the_extra() -> None:
    with pytest.raises(ValueError, match=r"unit conversion needs pint: pip install 'edged\[numerics\]'"):
        Units()
    with pytest.raises(ConfigError, match=r"tags\[0\]: unit conversion needs pint: pip install 'edged\[numerics\]'"):
        parse(sim_config('[[devices.tags]]\nname = "a"\nsource_unit = "psi"\nunit = "bar"\n'))
    parse(sim_config('[[devices.tags]]\nname = "a"\nunit = "bar"\n'))  # no conversion: pint not needed


def test_pint_and_scipy_stay_off_the_import_path() -> None:
    code = (
        "import sys, edged.config, edged.quality, edged.units, edged.calibration, edged.daemon;"
        "print(sorted(m for m in ('pint', 'scipy', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
