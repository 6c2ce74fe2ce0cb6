"""Resistance thermometer (RTD) conversions: IEC 60751 platinum and DIN 43760 nickel.

Why this exists: transmitters and ADC front ends report ohms, and every consumer of the value
must linearise it with the same standard curve, inside the range where the standard is
defined, so an impossible reading is rejected instead of silently extrapolated.

One polynomial family covers both standards (W = R/R0, t in °C)::

    W(t) = 1 + a t + b t^2 + d t^4 + f t^6 + [t < 0] c (t - 100) t^3

IEC 60751 (Callendar-Van Dusen) uses a, b, c; DIN 43760 nickel uses a, b, d, f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DIN43760",
    "IEC60751",
    "NI100",
    "NI120",
    "PT100",
    "PT1000",
    "RtdCoefficients",
    "RtdCurve",
    "compensate_leads",
    "resistance",
    "temperature",
]

# Newton stops once a step is below this; leaves the result far inside the 1e-6 K target.
_NEWTON_TOL_K: Final = 1e-10
_NEWTON_MAX_ITER: Final = 50
# Relative slack on the resistance-ratio range check, so that R0 scaling round-off (e.g.
# 1000 * W / 1000 != W in the last bit) cannot reject the exact end points of the range.
_RANGE_SLACK: Final = 1e-12


@dataclass(frozen=True, slots=True, kw_only=True)
class RtdCoefficients:
    """Coefficients of W(t) = R(t)/R0 for one standard and the range it is defined over.

    W must rise monotonically over [t_min, t_max] for the inverse to be unique; the
    constructor only checks the end points, which is enough for the two standard curves.
    """

    name: str
    a: float
    b: float
    c: float = 0.0
    d: float = 0.0
    f: float = 0.0
    t_min: float
    t_max: float
    w_min: float = field(init=False, repr=False, compare=False)
    w_max: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.t_min < self.t_max:
            raise ValueError(f"{self.name}: t_min must be below t_max")
        w_min, w_max = _ratio(self, self.t_min), _ratio(self, self.t_max)
        if not 0.0 < w_min < w_max:
            raise ValueError(f"{self.name}: W(t) must be positive and rising over the range")
        object.__setattr__(self, "w_min", w_min)
        object.__setattr__(self, "w_max", w_max)


def _ratio(k: RtdCoefficients, t: float) -> float:
    w = 1.0 + t * (k.a + t * k.b)
    if t < 0.0 and k.c:
        w += k.c * (t - 100.0) * t * t * t
    if k.d or k.f:
        t4 = t * t * t * t
        w += t4 * (k.d + k.f * t * t)
    return w


def _ratio_slope(k: RtdCoefficients, t: float) -> float:
    s = k.a + 2.0 * k.b * t
    if t < 0.0 and k.c:
        s += k.c * (4.0 * t - 300.0) * t * t
    if k.d or k.f:
        s += t * t * t * (4.0 * k.d + 6.0 * k.f * t * t)
    return s


IEC60751: Final = RtdCoefficients(
    name="IEC 60751 platinum (alpha 0.00385)",
    a=3.9083e-3,
    b=-5.775e-7,
    c=-4.183e-12,
    t_min=-200.0,
    t_max=850.0,
)
DIN43760: Final = RtdCoefficients(
    name="DIN 43760 nickel (alpha 0.00618)",
    a=5.485e-3,
    b=6.65e-6,
    d=2.805e-11,
    f=-2.0e-17,
    t_min=-60.0,
    t_max=180.0,
)


def _check_r0(r0: float) -> None:
    if not 0.0 < r0 < math.inf:
        raise ValueError(f"R0 must be a positive finite resistance, got {r0!r} ohm")


def resistance(t_c: float, r0: float = 100.0, coeffs: RtdCoefficients = IEC60751) -> float:
    """Sensor resistance in ohm at ``t_c`` °C; ValueError outside the standard's range."""
    _check_r0(r0)
    if not coeffs.t_min <= t_c <= coeffs.t_max:
        raise ValueError(
            f"{coeffs.name}: temperature {t_c!r} °C is outside the defined range {coeffs.t_min:g}..{coeffs.t_max:g} °C"
        )
    return r0 * _ratio(coeffs, t_c)


def temperature(r_ohm: float, r0: float = 100.0, coeffs: RtdCoefficients = IEC60751) -> float:
    """Temperature in °C for a sensor resistance in ohm (inverse of ``resistance``).

    Closed-form quadratic where W is quadratic in t (IEC 60751 at or above 0 °C), Newton
    iteration otherwise (platinum below 0 °C, nickel), converged to far below 1e-6 K.
    ValueError if the resistance lies outside the standard's range for this R0.
    """
    _check_r0(r0)
    w = r_ohm / r0
    if not coeffs.w_min * (1.0 - _RANGE_SLACK) <= w <= coeffs.w_max * (1.0 + _RANGE_SLACK):
        raise ValueError(
            f"{coeffs.name}: {r_ohm!r} ohm is outside the range "
            f"{r0 * coeffs.w_min:.4f}..{r0 * coeffs.w_max:.4f} ohm "
            f"({coeffs.t_min:g}..{coeffs.t_max:g} °C) for R0 = {r0:g} ohm"
        )
    # Quadratic root in the cancellation-free form 2(W-1) / (a + sqrt(a^2 + 4b(W-1))).
    x = w - 1.0
    disc = coeffs.a * coeffs.a + 4.0 * coeffs.b * x
    t = 2.0 * x / (coeffs.a + math.sqrt(disc)) if disc > 0.0 else x / coeffs.a
    if coeffs.d or coeffs.f or (coeffs.c and x < 0.0):
        for _ in range(_NEWTON_MAX_ITER):
            step = (_ratio(coeffs, t) - w) / _ratio_slope(coeffs, t)
            t -= step
            if abs(step) < _NEWTON_TOL_K:
                break
        else:  # pragma: no cover - only for non-monotonic custom coefficients
            raise ArithmeticError(f"{coeffs.name}: Newton iteration did not converge for {r_ohm!r} ohm")
    # Clamp the last-bit overshoot at the range ends admitted by _RANGE_SLACK.
    return min(max(t, coeffs.t_min), coeffs.t_max)


@dataclass(frozen=True, slots=True)
class RtdCurve:
    """A concrete sensor type: a standard curve and its nominal R0 (resistance at 0 °C)."""

    name: str
    r0: float
    coeffs: RtdCoefficients

    def resistance(self, t_c: float) -> float:
        """Resistance in ohm at ``t_c`` °C."""
        return resistance(t_c, self.r0, self.coeffs)

    def temperature(self, r_ohm: float) -> float:
        """Temperature in °C at ``r_ohm``."""
        return temperature(r_ohm, self.r0, self.coeffs)


PT100: Final = RtdCurve("Pt100", 100.0, IEC60751)
PT1000: Final = RtdCurve("Pt1000", 1000.0, IEC60751)
NI100: Final = RtdCurve("Ni100", 100.0, DIN43760)
# Ni120 here is the DIN 43760 curve scaled to R0 = 120 ohm. The US "Ni120 (Edison curve 7)"
# sensor has its own, slightly different table and is not modelled by this constant.
NI120: Final = RtdCurve("Ni120", 120.0, DIN43760)


def compensate_leads(r_measured: float, wiring: Literal[2, 3, 4], lead_ohm_per_wire: float) -> float:
    """Remove lead-wire resistance from a measured RTD resistance, assuming equal leads.

    - 2-wire: the excitation current flows through both leads and the voltage is sensed at
      the instrument, so R = R_measured - 2 * R_lead.
    - 3-wire: assumes the plain single-current-source scheme: current flows out on lead 1,
      through the RTD, back on lead 2, and the voltage is sensed between lead 1 and the
      currentless sense lead 3 at the sensor's far end, so only lead 1 remains in the
      reading: R = R_measured - R_lead (R_lead known, or measured once across leads 2-3).
      Front ends that already cancel the leads in hardware (balanced bridge, matched
      dual-current-source ratiometric ADCs, MAX31865-style) must not call this.
    - 4-wire: the sense pair carries no current, so the reading is already R.

    ValueError on an unknown wiring, a negative or non-finite lead resistance, or a result
    that is negative or not finite (wrong lead value, shorted sensor, bad reading).
    """
    if wiring == 2:
        leads = 2.0
    elif wiring == 3:
        leads = 1.0
    elif wiring == 4:
        leads = 0.0
    else:
        raise ValueError(f"wiring must be 2, 3 or 4, got {wiring!r}")
    if not 0.0 <= lead_ohm_per_wire < math.inf:
        raise ValueError(f"lead resistance must be finite and >= 0 ohm, got {lead_ohm_per_wire!r}")
    r = r_measured - leads * lead_ohm_per_wire
    if not 0.0 <= r < math.inf:
        raise ValueError(
            f"{wiring}-wire compensation of {r_measured!r} ohm with {lead_ohm_per_wire!r} ohm per lead "
            f"gives {r!r} ohm, not a valid resistance"
        )
    return r
