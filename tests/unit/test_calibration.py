"""Calibration curves: exact on their points, documented outside them, validated with clear errors."""

from __future__ import annotations

import datetime
import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged import calibration
from edged.config import (
    LinearCalibration,
    PolynomialCalibration,
    TableCalibration,
    TwoPointCalibration,
    load,
    parse,
)
from edged.errors import ConfigError


def test_linear() -> None:
    f = calibration.build(LinearCalibration(gain=2.0, offset=-1.0))
    assert f(3.0) == 5.0
    assert calibration.build(LinearCalibration())(1.25) == 1.25
    assert calibration.domain(LinearCalibration()) is None


def test_two_point_maps_the_loop_span() -> None:
    f = calibration.build(TwoPointCalibration(raw=[4.0, 20.0], actual=[0.0, 16.0]))
    assert [f(x) for x in (4.0, 12.0, 20.0, 3.8, 20.5)] == pytest.approx([0.0, 8.0, 16.0, -0.2, 16.5])
    reverse = calibration.build(TwoPointCalibration(raw=[4.0, 20.0], actual=[100.0, 0.0]))  # reverse acting
    assert reverse(4.0) == 100.0 and reverse(20.0) == 0.0


def test_polynomial_is_c0_first() -> None:
    f = calibration.build(PolynomialCalibration(coefficients=[1.0, 2.0, 3.0]))
    assert f(2.0) == 1.0 + 2.0 * 2.0 + 3.0 * 4.0
    assert f(-1.5) == pytest.approx(1.0 - 3.0 + 3.0 * 2.25)
    assert calibration.build(PolynomialCalibration(coefficients=[0.5, 2.0]))(1.0) == 2.5


def test_polynomial_overflows_to_inf_without_raising() -> None:
    f = calibration.build(PolynomialCalibration(coefficients=[0.0, 0.0, 1.0]))
    assert f(1e200) == math.inf


TABLE = TableCalibration(raw=[0.0, 10.0, 20.0, 40.0], actual=[0.0, 5.0, 20.0, 30.0])


def test_table_linear_hits_points_and_interpolates() -> None:
    f = calibration.build(TABLE)
    assert [f(x) for x in TABLE.raw] == TABLE.actual
    assert f(5.0) == 2.5
    assert f(15.0) == 12.5
    assert f(30.0) == 25.0
    assert calibration.domain(TABLE) == (0.0, 40.0)


def test_table_extrapolates_the_end_segments() -> None:
    f = calibration.build(TABLE)
    assert f(-10.0) == -5.0  # slope 0.5 of the first segment
    assert f(50.0) == 35.0  # slope 0.5 of the last segment


SPLINE = TableCalibration(raw=[0.0, 1.0, 2.0, 3.0, 4.0], actual=[0.0, 0.1, 0.2, 5.0, 5.1], method="spline")


def test_spline_matches_scipy_pchip_inside_the_table() -> None:
    from scipy.interpolate import PchipInterpolator

    f = calibration.build(SPLINE)
    ref = PchipInterpolator(SPLINE.raw, SPLINE.actual)
    for i in range(401):
        x = i / 100.0
        assert f(x) == pytest.approx(float(ref(x)), abs=1e-12)
    assert [f(x) for x in SPLINE.raw] == pytest.approx(SPLINE.actual, abs=1e-15)


def test_spline_does_not_overshoot_where_a_cubic_spline_would() -> None:
    from scipy.interpolate import CubicSpline

    f = calibration.build(SPLINE)
    xs = [i / 100.0 for i in range(401)]
    ys = [f(x) for x in xs]
    assert all(b >= a for a, b in itertools.pairwise(ys)), "monotone table, monotone curve"
    assert min(ys) >= 0.0 and max(ys) <= 5.1
    cubic = CubicSpline(SPLINE.raw, SPLINE.actual)
    assert min(float(cubic(x)) for x in xs) < 0.0, "the natural cubic spline undershoots here (why PCHIP)"


def test_spline_extrapolates_linearly_with_the_end_derivative() -> None:
    from scipy.interpolate import PchipInterpolator

    f = calibration.build(SPLINE)
    d = PchipInterpolator(SPLINE.raw, SPLINE.actual).derivative()
    assert f(-1.0) == pytest.approx(0.0 - float(d(0.0)))
    assert f(6.0) == pytest.approx(5.1 + 2.0 * float(d(4.0)))
    assert math.isnan(f(math.nan))


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(0.01, 100.0), min_size=4, max_size=12),
    rises=st.lists(st.floats(0.0, 100.0), min_size=4, max_size=12),
    method=st.sampled_from(["linear", "spline"]),
)
def test_monotone_tables_give_monotone_curves(steps: list[float], rises: list[float], method: Any) -> None:
    n = min(len(steps), len(rises))
    raw, actual = [0.0], [0.0]
    for s, r in zip(steps[: n - 1], rises[: n - 1], strict=True):
        raw.append(raw[-1] + s)
        actual.append(actual[-1] + r)
    f = calibration.build(TableCalibration(raw=raw, actual=actual, method=method))
    lo, hi = raw[0] - 10.0, raw[-1] + 10.0
    xs = [lo + (hi - lo) * i / 500 for i in range(501)]
    ys = [f(x) for x in xs]
    assert all(b >= a - 1e-9 * max(1.0, abs(a)) for a, b in itertools.pairwise(ys))
    assert [f(x) for x in raw] == pytest.approx(actual, rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------------ validation


def tag_with(calibration_toml: str) -> dict[str, Any]:
    return tomllib.loads(
        f'[[devices]]\nname = "x"\ntype = "sim"\n[[devices.tags]]\nname = "a"\n'
        f'[[devices.tags]]\nname = "b"\ncalibration = {calibration_toml}\n'
    )


@pytest.mark.parametrize(
    ("toml", "path", "reason"),
    [
        ('{ kind = "linear", gain = 0 }', "calibration", "gain must not be 0"),
        ('{ kind = "linear", gain = nan }', "calibration", "gain must be a finite number"),
        ('{ kind = "cubic" }', "calibration.kind", "Invalid value 'cubic'"),
        ("{ gain = 2.0 }", "calibration", "missing required key `kind`"),
        ('{ kind = "linear", slope = 2.0 }', "calibration", "unknown key `slope`"),
        (
            '{ kind = "two_point", raw = [4.0], actual = [0.0, 1.0] }',
            "calibration",
            "raw and actual need exactly two values each",
        ),
        (
            '{ kind = "two_point", raw = [4.0, 4.0], actual = [0.0, 1.0] }',
            "calibration",
            "the two raw points must differ",
        ),
        ('{ kind = "two_point", raw = [4.0, inf], actual = [0.0, 1.0] }', "calibration", r"raw\[1\] must be a finite"),
        ('{ kind = "polynomial", coefficients = [1.0] }', "calibration", "coefficients needs 2 to 16 values"),
        (
            '{ kind = "polynomial", coefficients = [1.0, 0.0, 0.0] }',
            "calibration",
            "coefficients c1 and above are all 0",
        ),
        ('{ kind = "table", raw = [0.0, 1.0], actual = [0.0] }', "calibration", "raw has 2 points but actual has 1"),
        ('{ kind = "table", raw = [0.0], actual = [0.0] }', "calibration", "a linear table needs 2 to 1000 points"),
        (
            '{ kind = "table", raw = [0.0, 7.0, 5.0], actual = [0.0, 1.0, 2.0] }',
            "calibration",
            r"raw must be strictly increasing: raw\[2\] = 5\.0 follows 7\.0",
        ),
        (
            '{ kind = "table", raw = [0.0, 1.0, 2.0], actual = [0.0, 1.0, 2.0], method = "spline" }',
            "calibration",
            "a spline table needs 4 to 1000 points, got 3",
        ),
        (
            '{ kind = "table", raw = [0.0, 1.0], actual = [0.0, 1.0], method = "akima" }',
            "calibration.method",
            "Invalid enum value 'akima'",
        ),
        ('{ kind = "table", raw = [0.0, 1.0], actual = [0.0, "x"] }', r"calibration.actual[1]", "Expected `float`"),
    ],
)
def test_bad_calibrations_name_the_tag_and_reason(toml: str, path: str, reason: str) -> None:
    with pytest.raises(
        ConfigError, match=r"devices\[0\] \(x\)\.tags\[1\]\." + path.replace("[", r"\[") + ": " + reason
    ):
        parse(tag_with(toml))


def test_bad_calibration_through_load(tmp_path: Path) -> None:
    """The full path from a file: file, device, tag index, key, reason."""
    path = tmp_path / "plant.toml"
    path.write_text(
        """
[[devices]]
name = "tank"
type = "sim"

[[devices.tags]]
name = "temperature"
unit = "degC"

[[devices.tags]]
name = "volume"
unit = "m3"
calibration = { kind = "table", raw = [0.0, 1.0, 1.0], actual = [0.0, 10.0, 20.0] }
"""
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: devices[0] (tank).tags[1].calibration: raw must be strictly increasing: raw[2] = 1.0 follows 1.0"
    )


def test_spline_without_scipy_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "scipy_available", lambda: False)
    toml = '{ kind = "table", raw = [0, 1, 2, 3], actual = [0, 1, 2, 3], method = "spline" }'
    with pytest.raises(
        ConfigError, match=r"tags\[1\]\.calibration: a spline table needs scipy: pip install 'edged\[numerics\]'"
    ):
        parse(tag_with(toml))
    parse(tag_with('{ kind = "table", raw = [0, 1, 2, 3], actual = [0, 1, 2, 3] }'))  # linear: no scipy needed


def dates(extra: str) -> dict[str, Any]:
    return tomllib.loads(f'[[devices]]\nname = "x"\ntype = "sim"\n[[devices.tags]]\nname = "a"\n{extra}\n')


def test_calibration_dates_are_toml_dates() -> None:
    cfg = parse(dates("calibrated_on = 2025-03-01\ncalibration_due = 2026-03-01"))
    tag = cfg.devices[0].tags[0]
    assert (tag.calibrated_on, tag.calibration_due) == (datetime.date(2025, 3, 1), datetime.date(2026, 3, 1))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            "calibrated_on = 2026-03-02\ncalibration_due = 2026-03-01",
            r"tags\[0\]: calibrated_on \(2026-03-02\) is after calibration_due \(2026-03-01\)",
        ),
        ("calibration_due = 2026-03-01T10:00:00", r"tags\[0\]\.calibration_due: Expected `date \| null`"),
        ("calibration_due = 2026", r"tags\[0\]\.calibration_due: Expected `date \| null`, got `int`"),
    ],
)
def test_bad_calibration_dates(extra: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse(dates(extra))
