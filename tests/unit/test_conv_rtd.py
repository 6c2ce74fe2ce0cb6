"""RTD conversions against IEC 60751 / DIN 43760 values and by round trip."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.conversions.rtd import (
    DIN43760,
    IEC60751,
    NI100,
    NI120,
    PT100,
    PT1000,
    RtdCoefficients,
    RtdCurve,
    compensate_leads,
    resistance,
    temperature,
)

# IEC 60751 Pt100 values (ohm). -100 and 100 °C are exact evaluations of the standard's
# equation; the others are the standard's table values to the digits shown.
PT100_REFERENCE = [
    (-200.0, 18.52008, 1e-5),
    (-100.0, 60.25584, 1e-5),
    (0.0, 100.0, 0.0),
    (100.0, 138.5055, 1e-6),
    (200.0, 175.856, 1e-6),
    (500.0, 280.978, 5e-4),
    (850.0, 390.481, 5e-4),
]

# IEC 60751 table, rounded to 0.01 ohm.
PT100_TABLE_2DP = [
    (-50.0, 80.31),
    (50.0, 119.40),
    (300.0, 212.05),
    (400.0, 247.09),
    (600.0, 313.71),
    (700.0, 345.28),
    (800.0, 375.70),
]


@pytest.mark.parametrize(("t_c", "ohm", "tol"), PT100_REFERENCE)
def test_pt100_matches_iec60751(t_c: float, ohm: float, tol: float) -> None:
    assert resistance(t_c) == pytest.approx(ohm, abs=tol)
    assert PT100.resistance(t_c) == resistance(t_c)


@pytest.mark.parametrize(("t_c", "ohm"), PT100_TABLE_2DP)
def test_pt100_matches_iec60751_table(t_c: float, ohm: float) -> None:
    assert round(PT100.resistance(t_c), 2) == ohm


@pytest.mark.parametrize(("t_c", "ohm", "tol"), PT100_REFERENCE)
def test_pt100_inverse_of_reference_values(t_c: float, ohm: float, tol: float) -> None:
    # tol ohm maps to at most tol / 0.29 K: a Pt100's dR/dt is smallest at 850 °C, 0.2927 ohm/K.
    assert temperature(ohm) == pytest.approx(t_c, abs=tol / 0.29 + 1e-9)


def test_exact_cvd_values_invert_to_1e6_k() -> None:
    assert abs(PT100.temperature(60.25584) + 100.0) < 1e-6
    assert abs(PT100.temperature(138.5055) - 100.0) < 1e-6
    assert PT100.temperature(100.0) == 0.0


def test_pt1000_is_ten_pt100() -> None:
    for t in (-200.0, -37.5, 0.0, 25.0, 419.527, 850.0):
        assert PT1000.resistance(t) == pytest.approx(10.0 * PT100.resistance(t), rel=1e-15)
    assert PT1000.temperature(1385.055) == pytest.approx(100.0, abs=1e-9)


def test_din43760_nickel() -> None:
    # R/R0 = 1 + A t + B t^2 + D t^4 + F t^6 evaluated by hand at 100 °C:
    # 1 + 0.5485 + 0.0665 + 0.002805 - 0.00002 = 1.617785 (DIN 43760 table: 161.8 ohm).
    assert NI100.resistance(100.0) == pytest.approx(161.7785, abs=1e-9)
    assert NI100.resistance(-60.0) == pytest.approx(69.52, abs=0.005)  # table: 69.5 ohm
    assert NI100.resistance(0.0) == 100.0
    assert NI120.resistance(100.0) == pytest.approx(1.2 * 161.7785, abs=1e-9)
    assert NI120.r0 == 120.0
    assert NI120.coeffs is DIN43760
    assert NI100.temperature(161.7785) == pytest.approx(100.0, abs=1e-9)


def test_curve_constants() -> None:
    assert (PT100.r0, PT1000.r0, NI100.r0) == (100.0, 1000.0, 100.0)
    assert PT100.coeffs is IEC60751
    assert PT1000.coeffs is IEC60751
    assert (IEC60751.a, IEC60751.b, IEC60751.c) == (3.9083e-3, -5.775e-7, -4.183e-12)
    assert (DIN43760.a, DIN43760.b, DIN43760.d, DIN43760.f) == (5.485e-3, 6.65e-6, 2.805e-11, -2.0e-17)
    assert (IEC60751.t_min, IEC60751.t_max) == (-200.0, 850.0)
    assert (DIN43760.t_min, DIN43760.t_max) == (-60.0, 180.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PT100.r0 = 99.0  # type: ignore[misc]


def test_c_term_applies_only_below_zero() -> None:
    # Above 0 °C the curve is exactly quadratic.
    t = 250.0
    assert resistance(t) == pytest.approx(100.0 * (1 + 3.9083e-3 * t - 5.775e-7 * t * t), rel=1e-15)
    t = -150.0
    expected = 100.0 * (1 + 3.9083e-3 * t - 5.775e-7 * t * t - 4.183e-12 * (t - 100.0) * t**3)
    assert resistance(t) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("curve", [PT100, PT1000, NI100, NI120], ids=lambda c: c.name)
@given(frac=st.floats(min_value=0.0, max_value=1.0))
def test_round_trip_over_whole_range(curve: RtdCurve, frac: float) -> None:
    k = curve.coeffs
    t = k.t_min + (k.t_max - k.t_min) * frac
    assert abs(t - curve.temperature(curve.resistance(t))) < 1e-6


@given(t=st.floats(min_value=-200.0, max_value=850.0))
def test_round_trip_pt100_module_functions(t: float) -> None:
    assert abs(t - temperature(resistance(t))) < 1e-6


@given(t=st.floats(min_value=-1e-3, max_value=1e-3))
def test_round_trip_near_zero_where_the_method_switches(t: float) -> None:
    assert abs(t - PT100.temperature(PT100.resistance(t))) < 1e-9


@pytest.mark.parametrize("curve", [PT100, PT1000, NI100, NI120], ids=lambda c: c.name)
def test_range_end_points_round_trip_exactly(curve: RtdCurve) -> None:
    k = curve.coeffs
    assert curve.temperature(curve.resistance(k.t_min)) == pytest.approx(k.t_min, abs=1e-9)
    assert curve.temperature(curve.resistance(k.t_max)) == pytest.approx(k.t_max, abs=1e-9)


def test_temperature_out_of_range_raises_with_range() -> None:
    with pytest.raises(ValueError, match=r"18\.5201\.\.390\.4811 ohm \(-200\.\.850 °C\)"):
        PT100.temperature(18.0)
    with pytest.raises(ValueError, match="outside the range"):
        PT100.temperature(391.0)
    with pytest.raises(ValueError, match=r"-60\.\.180 °C"):
        NI100.temperature(230.0)
    with pytest.raises(ValueError, match="outside the range"):
        PT1000.temperature(150.0)  # a Pt100 reading fed to a Pt1000 curve


def test_resistance_out_of_range_raises_with_range() -> None:
    with pytest.raises(ValueError, match=r"-200\.\.850 °C"):
        PT100.resistance(-200.001)
    with pytest.raises(ValueError, match=r"-200\.\.850 °C"):
        PT100.resistance(850.001)
    with pytest.raises(ValueError, match=r"-60\.\.180 °C"):
        NI100.resistance(-61.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_raise(bad: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        resistance(bad)
    with pytest.raises(ValueError, match="outside"):
        temperature(bad)


@pytest.mark.parametrize("r0", [0.0, -100.0, math.nan, math.inf])
def test_invalid_r0_raises(r0: float) -> None:
    with pytest.raises(ValueError, match="R0"):
        resistance(0.0, r0)
    with pytest.raises(ValueError, match="R0"):
        temperature(100.0, r0)


def test_invalid_coefficients_rejected() -> None:
    with pytest.raises(ValueError, match="t_min"):
        RtdCoefficients(name="bad", a=3.9e-3, b=0.0, t_min=10.0, t_max=10.0)
    with pytest.raises(ValueError, match="rising"):
        RtdCoefficients(name="falling", a=-3.9e-3, b=0.0, t_min=0.0, t_max=100.0)


def test_custom_r0_with_standard_coefficients() -> None:
    # A Pt500 is the same IEC 60751 curve with R0 = 500 ohm.
    assert resistance(100.0, r0=500.0) == pytest.approx(692.5275, abs=1e-9)
    assert temperature(692.5275, r0=500.0, coeffs=IEC60751) == pytest.approx(100.0, abs=1e-9)


def test_compensate_leads_two_wire() -> None:
    # Both leads are in series with the sensor.
    assert compensate_leads(110.0, 2, 5.0) == 100.0


def test_compensate_leads_three_wire() -> None:
    # Sense lead carries no current; one excitation lead remains in the reading.
    assert compensate_leads(105.0, 3, 5.0) == 100.0


def test_compensate_leads_four_wire_is_unchanged() -> None:
    assert compensate_leads(138.5055, 4, 5.0) == 138.5055


def test_compensate_leads_end_to_end() -> None:
    lead = 0.75  # ohm per wire, e.g. 30 m of 0.5 mm^2 copper
    true_r = PT100.resistance(100.0)
    two_wire_reading = true_r + 2 * lead
    three_wire_reading = true_r + lead
    # Uncompensated, 1.5 ohm of leads reads as roughly +3.9 K on a Pt100.
    assert PT100.temperature(two_wire_reading) - 100.0 > 3.8
    assert PT100.temperature(compensate_leads(two_wire_reading, 2, lead)) == pytest.approx(100.0, abs=1e-9)
    assert PT100.temperature(compensate_leads(three_wire_reading, 3, lead)) == pytest.approx(100.0, abs=1e-9)


def test_compensate_leads_zero_lead_is_identity() -> None:
    assert compensate_leads(123.4, 2, 0.0) == 123.4
    assert compensate_leads(123.4, 3, 0.0) == 123.4
    assert compensate_leads(123.4, 4, 0.0) == 123.4


@pytest.mark.parametrize("wiring", [0, 1, 5, 2.5])
def test_compensate_leads_rejects_unknown_wiring(wiring: int) -> None:
    with pytest.raises(ValueError, match="wiring must be 2, 3 or 4"):
        compensate_leads(100.0, wiring, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("lead", [-0.1, math.nan, math.inf])
def test_compensate_leads_rejects_bad_lead_resistance(lead: float) -> None:
    with pytest.raises(ValueError, match="lead resistance"):
        compensate_leads(100.0, 2, lead)


@pytest.mark.parametrize(("r", "wiring"), [(0.9, 2), (0.4, 3), (math.nan, 4), (-1.0, 4)])
def test_compensate_leads_rejects_impossible_result(r: float, wiring: int) -> None:
    with pytest.raises(ValueError, match="not a valid resistance"):
        compensate_leads(r, wiring, 0.5)  # type: ignore[arg-type]
