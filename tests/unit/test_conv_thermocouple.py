"""NIST ITS-90 thermocouple conversions against NIST Monograph 175 table values.

Table values are the NIST SRD 60 tables (EMF in mV, 0 °C reference junction), which are the
reference functions rounded to 0.001 mV, so the forward functions must agree to 0.0005 mV.
"""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.conversions.thermocouple import (
    SUPPORTED_TYPES,
    ThermocoupleType,
    compensated_temperature,
    emf_mv,
    emf_range_mv,
    inverse_error_band,
    inverse_segment,
    temperature_c,
    temperature_range_c,
)

# (type, °C, NIST table mV)
NIST_TABLE: list[tuple[ThermocoupleType, float, float]] = [
    ("K", -270.0, -6.458),
    ("K", -100.0, -3.554),
    ("K", 0.0, 0.000),
    ("K", 25.0, 1.000),
    ("K", 100.0, 4.096),
    ("K", 500.0, 20.644),
    ("K", 1000.0, 41.276),
    ("K", 1372.0, 54.886),
    ("J", -210.0, -8.095),
    ("J", 100.0, 5.269),
    ("J", 500.0, 27.393),
    ("J", 1200.0, 69.553),
    ("T", -270.0, -6.258),
    ("T", -100.0, -3.379),
    ("T", 100.0, 4.279),
    ("T", 400.0, 20.872),
    ("E", -270.0, -9.835),
    ("E", 100.0, 6.319),
    ("E", 1000.0, 76.373),
    ("N", -270.0, -4.345),
    ("N", 100.0, 2.774),
    ("N", 1300.0, 47.513),
    ("R", 1000.0, 10.506),
    ("S", 1000.0, 9.587),
]

# NIST gives no inverse polynomial below -200 °C (-210 °C for J).
INVERTIBLE_TABLE = [row for row in NIST_TABLE if row[1] > -270.0]

# NIST-stated inverse error bands (°C) for the segment containing each temperature.
STATED_BANDS: list[tuple[ThermocoupleType, float, tuple[float, float]]] = [
    ("K", -100.0, (-0.02, 0.04)),
    ("K", 100.0, (-0.05, 0.04)),
    ("K", 1000.0, (-0.05, 0.06)),
    ("J", -100.0, (-0.05, 0.03)),
    ("J", 500.0, (-0.04, 0.04)),
    ("J", 1000.0, (-0.04, 0.03)),
    ("T", -100.0, (-0.02, 0.04)),
    ("T", 100.0, (-0.03, 0.03)),
    ("E", 100.0, (-0.02, 0.02)),
    ("N", 1000.0, (-0.04, 0.02)),
    ("R", 100.0, (-0.02, 0.02)),
    ("S", 1500.0, (-0.0002, 0.0002)),
]


def _within_stated(err: float, band: tuple[float, float]) -> bool:
    """NIST states each error bound rounded to its last digit: allow half a unit there."""

    def half_unit(x: float) -> float:
        exponent = Decimal(repr(x)).normalize().as_tuple().exponent
        assert isinstance(exponent, int)
        return 0.5 * 10.0**exponent

    lo, hi = band
    return lo - half_unit(lo) <= err <= hi + half_unit(hi)


def _seebeck(tc_type: ThermocoupleType, t: float) -> float:
    h = 0.01
    t_lo, t_hi = temperature_range_c(tc_type)
    t = min(max(t, t_lo + h), t_hi - h)
    return (emf_mv(tc_type, t + h) - emf_mv(tc_type, t - h)) / (2 * h)


@pytest.mark.parametrize(("tc_type", "t_c", "table_mv"), NIST_TABLE)
def test_forward_matches_nist_table(tc_type: ThermocoupleType, t_c: float, table_mv: float) -> None:
    assert emf_mv(tc_type, t_c) == pytest.approx(table_mv, abs=0.0005)


@pytest.mark.parametrize(("tc_type", "t_c", "table_mv"), INVERTIBLE_TABLE)
def test_inverse_of_table_value_within_stated_error(tc_type: ThermocoupleType, t_c: float, table_mv: float) -> None:
    # The table EMF is rounded to 0.001 mV, which moves the temperature by up to 0.0005 / S.
    rounding = 0.0005 / _seebeck(tc_type, t_c)
    err = temperature_c(tc_type, table_mv) - t_c
    band = inverse_error_band(tc_type, table_mv)
    assert _within_stated(err, (band[0] - rounding, band[1] + rounding))


@pytest.mark.parametrize(("tc_type", "t_c", "band"), STATED_BANDS)
def test_inverse_error_band_is_the_nist_statement(
    tc_type: ThermocoupleType, t_c: float, band: tuple[float, float]
) -> None:
    assert inverse_error_band(tc_type, emf_mv(tc_type, t_c)) == band


def test_type_k_inverse_example() -> None:
    # NIST: 4.096 mV <-> 100 °C; type K 0..500 °C inverse error is -0.05..+0.04 °C.
    assert temperature_c("K", 4.096) == pytest.approx(100.0, abs=0.05)
    assert temperature_c("K", 0.0) == 0.0


@pytest.mark.parametrize("tc_type", SUPPORTED_TYPES)
def test_inverse_segments_cover_the_range_without_gaps(tc_type: ThermocoupleType) -> None:
    lo_e, hi_e = emf_range_mv(tc_type)
    first = inverse_segment(tc_type, lo_e)
    last = inverse_segment(tc_type, hi_e)
    assert first.emf_min_mv <= lo_e + 0.001
    assert last.emf_max_mv >= hi_e - 0.001
    steps = 2000
    previous = first
    for i in range(steps + 1):
        seg = inverse_segment(tc_type, min(lo_e + (hi_e - lo_e) * i / steps, hi_e))
        assert seg.t_min_c >= previous.t_min_c  # segments are visited in rising order
        previous = seg


@pytest.mark.parametrize("tc_type", SUPPORTED_TYPES)
def test_forward_is_continuous_at_nist_range_boundaries(tc_type: ThermocoupleType) -> None:
    # A wrong coefficient would show as a step where one NIST polynomial hands over.
    boundaries = {"J": [760.0], "R": [1064.18, 1664.5], "S": [1064.18, 1664.5]}.get(tc_type, [0.0])
    for b in boundaries:
        step = abs(emf_mv(tc_type, math.nextafter(b, math.inf)) - emf_mv(tc_type, b))
        assert step < 1e-6


def test_overlapping_r_and_s_ranges_use_the_tighter_high_range_polynomial() -> None:
    # NIST R/S inverse ranges overlap between 1064 and 1200 °C.
    for tc_type in ("R", "S"):
        seg = inverse_segment(tc_type, emf_mv(tc_type, 1100.0))
        assert (seg.t_min_c, seg.t_max_c) == (1064.0, 1664.5)


@pytest.mark.parametrize("tc_type", SUPPORTED_TYPES)
def test_inverse_accepts_exact_emf_at_range_ends(tc_type: ThermocoupleType) -> None:
    t_lo = inverse_segment(tc_type, emf_range_mv(tc_type)[0]).t_min_c
    t_hi = inverse_segment(tc_type, emf_range_mv(tc_type)[1]).t_max_c
    for t in (t_lo, t_hi):
        e = emf_mv(tc_type, t)
        assert _within_stated(temperature_c(tc_type, e) - t, inverse_error_band(tc_type, e))


@pytest.mark.parametrize("tc_type", SUPPORTED_TYPES)
@given(frac=st.floats(min_value=0.0, max_value=1.0))
def test_round_trip_within_stated_inverse_error(tc_type: ThermocoupleType, frac: float) -> None:
    lo_e, hi_e = emf_range_mv(tc_type)
    t_lo = inverse_segment(tc_type, lo_e).t_min_c
    t_hi = inverse_segment(tc_type, hi_e).t_max_c
    t = t_lo + (t_hi - t_lo) * frac
    e = emf_mv(tc_type, t)
    assert _within_stated(temperature_c(tc_type, e) - t, inverse_error_band(tc_type, e))


def test_cold_junction_compensation_example() -> None:
    # Hot junction at 100 °C, terminals at 25 °C: the meter sees E(100) - E(25) = 3.096 mV.
    measured = 4.096 - 1.000
    assert compensated_temperature("K", measured, 25.0) == pytest.approx(100.0, abs=0.05)
    # Adding temperatures instead of EMFs would be wrong by about 0.9 K here.
    assert abs(temperature_c("K", measured) + 25.0 - 100.0) > 0.5


@given(
    t_hot=st.floats(min_value=-150.0, max_value=1300.0),
    t_cjc=st.floats(min_value=-40.0, max_value=85.0),
)
def test_cold_junction_compensation_round_trip(t_hot: float, t_cjc: float) -> None:
    measured = emf_mv("K", t_hot) - emf_mv("K", t_cjc)
    err = compensated_temperature("K", measured, t_cjc) - t_hot
    assert _within_stated(err, inverse_error_band("K", emf_mv("K", t_hot)))


def test_cold_junction_at_zero_equals_plain_inverse() -> None:
    assert compensated_temperature("J", 10.0, 0.0) == temperature_c("J", 10.0)


def test_cold_junction_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"-270\.\.1372"):
        compensated_temperature("K", 1.0, 2000.0)
    with pytest.raises(ValueError, match="inverse range"):
        compensated_temperature("K", 54.0, 50.0)


def test_forward_out_of_range_names_the_range() -> None:
    with pytest.raises(ValueError, match=r"-270\.\.1372 °C"):
        emf_mv("K", 1372.01)
    with pytest.raises(ValueError, match=r"-270\.\.1372 °C"):
        emf_mv("K", -270.01)
    with pytest.raises(ValueError, match=r"-50\.\.1768\.1 °C"):
        emf_mv("S", -51.0)


def test_inverse_out_of_range_names_the_range() -> None:
    with pytest.raises(ValueError, match=r"-5\.891\.\.54\.886 mV \(-200\.\.1372 °C\)"):
        temperature_c("K", 55.0)
    with pytest.raises(ValueError, match="outside the NIST inverse range"):
        temperature_c("K", -6.0)  # E(-270) exists, but NIST gives no inverse below -200 °C
    with pytest.raises(ValueError, match="outside the NIST inverse range"):
        temperature_c("T", 21.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_raise(bad: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        emf_mv("K", bad)
    with pytest.raises(ValueError, match="outside"):
        temperature_c("K", bad)
    with pytest.raises(ValueError, match="outside"):
        compensated_temperature("K", bad, 25.0)


@pytest.mark.parametrize("bad_type", ["B", "k", "X", ""])
def test_unsupported_type_raises(bad_type: str) -> None:
    with pytest.raises(ValueError, match="unsupported thermocouple type"):
        emf_mv(bad_type, 100.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported thermocouple type"):
        temperature_c(bad_type, 1.0)  # type: ignore[arg-type]


def test_ranges() -> None:
    assert temperature_range_c("K") == (-270.0, 1372.0)
    assert temperature_range_c("T") == (-270.0, 400.0)
    lo_e, hi_e = emf_range_mv("K")
    assert lo_e == pytest.approx(-5.891, abs=0.0005)
    assert hi_e == pytest.approx(54.886, abs=0.0005)
    assert SUPPORTED_TYPES == ("E", "J", "K", "N", "R", "S", "T")
