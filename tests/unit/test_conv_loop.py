"""4-20 mA scaling, NAMUR NE43 classification and Linux IIO current conversion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.conversions.loop import Ne43Band, iio_current_ma, ne43_band, scale


@pytest.mark.parametrize(
    ("current_ma", "band"),
    [
        (-math.inf, Ne43Band.FAILURE_LOW),
        (0.0, Ne43Band.FAILURE_LOW),  # broken loop
        (3.59999, Ne43Band.FAILURE_LOW),
        (3.6, Ne43Band.FAILURE_LOW),  # NE43: failure information <= 3.6 mA
        (3.6000001, Ne43Band.UNDER_RANGE),
        (3.7, Ne43Band.UNDER_RANGE),
        (3.7999999, Ne43Band.UNDER_RANGE),
        (3.8, Ne43Band.OK),  # NE43: measurement information from 3.8 mA
        (4.0, Ne43Band.OK),
        (12.0, Ne43Band.OK),
        (20.0, Ne43Band.OK),
        (20.5, Ne43Band.OK),  # ... up to 20.5 mA inclusive
        (20.5000001, Ne43Band.OVER_RANGE),
        (20.9999999, Ne43Band.OVER_RANGE),
        (21.0, Ne43Band.FAILURE_HIGH),  # NE43: failure information >= 21 mA
        (21.0000001, Ne43Band.FAILURE_HIGH),
        (22.5, Ne43Band.FAILURE_HIGH),
        (math.inf, Ne43Band.FAILURE_HIGH),
        (math.nan, Ne43Band.FAILURE),
    ],
)
def test_ne43_band_boundaries(current_ma: float, band: Ne43Band) -> None:
    assert ne43_band(current_ma) is band


def test_ne43_band_adjacent_floats_at_each_boundary() -> None:
    below, above = math.nextafter(3.6, -math.inf), math.nextafter(3.6, math.inf)
    assert (ne43_band(below), ne43_band(above)) == (Ne43Band.FAILURE_LOW, Ne43Band.UNDER_RANGE)
    below, above = math.nextafter(3.8, -math.inf), math.nextafter(3.8, math.inf)
    assert (ne43_band(below), ne43_band(above)) == (Ne43Band.UNDER_RANGE, Ne43Band.OK)
    below, above = math.nextafter(20.5, -math.inf), math.nextafter(20.5, math.inf)
    assert (ne43_band(below), ne43_band(above)) == (Ne43Band.OK, Ne43Band.OVER_RANGE)
    below, above = math.nextafter(21.0, -math.inf), math.nextafter(21.0, math.inf)
    assert (ne43_band(below), ne43_band(above)) == (Ne43Band.OVER_RANGE, Ne43Band.FAILURE_HIGH)


def test_ne43_quality() -> None:
    assert Ne43Band.OK.quality == "good"
    assert Ne43Band.UNDER_RANGE.quality == "uncertain"
    assert Ne43Band.OVER_RANGE.quality == "uncertain"
    assert Ne43Band.FAILURE_LOW.quality == "bad"
    assert Ne43Band.FAILURE_HIGH.quality == "bad"
    assert Ne43Band.FAILURE.quality == "bad"


def test_ne43_band_is_a_string_enum() -> None:
    assert isinstance(Ne43Band.OVER_RANGE, str)
    assert f"{Ne43Band.OVER_RANGE}" == "over_range"
    assert Ne43Band("failure_low") is Ne43Band.FAILURE_LOW


_ORDER = [
    Ne43Band.FAILURE_LOW,
    Ne43Band.UNDER_RANGE,
    Ne43Band.OK,
    Ne43Band.OVER_RANGE,
    Ne43Band.FAILURE_HIGH,
]


@given(
    a=st.floats(allow_nan=False, allow_infinity=True),
    b=st.floats(allow_nan=False, allow_infinity=True),
)
def test_ne43_bands_are_ordered_by_current(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert _ORDER.index(ne43_band(lo)) <= _ORDER.index(ne43_band(hi))


@pytest.mark.parametrize(
    ("current_ma", "expected"),
    [(4.0, 0.0), (8.0, 25.0), (12.0, 50.0), (20.0, 100.0), (3.8, -1.25), (20.5, 103.125)],
)
def test_scale_4_20(current_ma: float, expected: float) -> None:
    assert scale(current_ma, 0.0, 100.0) == pytest.approx(expected, abs=1e-12)


def test_scale_engineering_range_with_offset() -> None:
    # -40..+85 °C transmitter.
    assert scale(4.0, -40.0, 85.0) == -40.0
    assert scale(20.0, -40.0, 85.0) == 85.0
    assert scale(12.0, -40.0, 85.0) == pytest.approx(22.5)


def test_scale_reverse_acting() -> None:
    assert scale(4.0, 100.0, 0.0) == 100.0
    assert scale(20.0, 100.0, 0.0) == 0.0
    assert scale(16.0, 100.0, 0.0) == pytest.approx(25.0)


def test_scale_custom_zero_and_span() -> None:
    # 0-20 mA loop
    assert scale(0.0, 0.0, 10.0, zero_ma=0.0, span_ma=20.0) == 0.0
    assert scale(5.0, 0.0, 10.0, zero_ma=0.0, span_ma=20.0) == 2.5


def test_scale_propagates_nan() -> None:
    assert math.isnan(scale(math.nan, 0.0, 100.0))


@pytest.mark.parametrize("span", [0.0, -16.0, math.nan, math.inf])
def test_scale_rejects_bad_span(span: float) -> None:
    with pytest.raises(ValueError, match="span_ma"):
        scale(12.0, 0.0, 100.0, span_ma=span)


@given(
    frac=st.floats(min_value=-0.1, max_value=1.1),
    lo=st.floats(min_value=-1e6, max_value=1e6),
    hi=st.floats(min_value=-1e6, max_value=1e6),
)
def test_scale_is_linear(frac: float, lo: float, hi: float) -> None:
    current = 4.0 + 16.0 * frac
    assert scale(current, lo, hi) == pytest.approx(lo + frac * (hi - lo), abs=1e-9 * (1 + abs(lo) + abs(hi)))


def test_iio_current_ma() -> None:
    # ADS1115-style channel, 0.125 mV/LSB, 250 ohm shunt: 12000 LSB = 1500 mV = 6 mA.
    assert iio_current_ma(12000, 0.125, 0, 250.0) == pytest.approx(6.0)
    # IIO applies the offset before the scale: (raw + offset) * scale.
    assert iio_current_ma(12100, 0.125, -100, 250.0) == pytest.approx(6.0)
    # 20 mA across 100 ohm is 2000 mV.
    assert iio_current_ma(16000, 0.125, 0, 100.0) == pytest.approx(20.0)
    assert iio_current_ma(0, 0.125, 0, 250.0) == 0.0


def test_iio_current_feeds_ne43() -> None:
    assert ne43_band(iio_current_ma(7200, 0.125, 0, 250.0)) is Ne43Band.FAILURE_LOW  # 3.6 mA
    assert ne43_band(iio_current_ma(32000, 0.125, 0, 250.0)) is Ne43Band.OK  # 16 mA


@pytest.mark.parametrize("shunt", [0.0, -250.0, math.nan, math.inf])
def test_iio_current_rejects_bad_shunt(shunt: float) -> None:
    with pytest.raises(ValueError, match="shunt_ohm"):
        iio_current_ma(1000, 0.125, 0, shunt)
