"""Calibration curves, built once per tag at config load into plain float -> float callables.

Why a build step: the curve runs for every sample, so whatever can be decided once (slopes, spline
coefficients) is decided here and the hot path is a bisect and a few multiplications in pure Python.
scipy is imported only when a spline table is configured, and only here, never per sample.

Tables extrapolate linearly beyond their ends (the end segment's slope, or the spline's end
derivative) rather than clamping: a clamped value freezes, so a real excursion would look like a
stuck sensor and hide its direction, while a cubic extrapolation diverges. The quality stage marks
values outside the table Uncertain (see `domain`).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence

from edged.config import (
    Calibration,
    LinearCalibration,
    PolynomialCalibration,
    TableCalibration,
    TwoPointCalibration,
)

Curve = Callable[[float], float]

SCIPY_EXTRA = "pip install 'edged[numerics]'"


def build(cal: Calibration) -> Curve:
    """The calibration as a callable; the config structs have already validated their numbers."""
    if isinstance(cal, LinearCalibration):
        return _linear(cal.gain, cal.offset)
    if isinstance(cal, TwoPointCalibration):
        return _linear(*two_point(cal.raw, cal.actual))
    if isinstance(cal, PolynomialCalibration):
        return _polynomial(cal.coefficients)
    if cal.method == "spline":
        return _pchip(cal.raw, cal.actual)
    return _piecewise_linear(cal.raw, cal.actual)


def domain(cal: Calibration) -> tuple[float, float] | None:
    """The raw range a table was measured over; None when the curve is valid everywhere."""
    if isinstance(cal, TableCalibration):
        return cal.raw[0], cal.raw[-1]
    return None


def two_point(raw: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """(gain, offset) of the line through (raw[0], actual[0]) and (raw[1], actual[1])."""
    gain = (actual[1] - actual[0]) / (raw[1] - raw[0])
    return gain, actual[0] - gain * raw[0]


def scipy_available() -> bool:
    return importlib.util.find_spec("scipy") is not None


def _linear(gain: float, offset: float) -> Curve:
    if gain == 1.0 and offset == 0.0:
        return float
    return lambda x: x * gain + offset


def _polynomial(coefficients: Sequence[float]) -> Curve:
    """c0 + c1*x + c2*x^2 + ... by Horner's rule: multiplications overflow to inf, never raise."""
    if len(coefficients) <= 2:
        return _linear(coefficients[1] if len(coefficients) == 2 else 0.0, coefficients[0])
    highest_first = tuple(reversed(coefficients))

    def poly(x: float) -> float:
        y = 0.0
        for c in highest_first:
            y = y * x + c
        return y

    return poly


def _piecewise_linear(raw: Sequence[float], actual: Sequence[float]) -> Curve:
    xs, ys = tuple(raw), tuple(actual)
    slopes = tuple((ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1))
    last = len(xs) - 2

    def table(x: float) -> float:
        i = bisect_right(xs, x) - 1
        i = 0 if i < 0 else last if i > last else i  # beyond the ends: extend the end segment
        return ys[i] + slopes[i] * (x - xs[i])

    return table


def _pchip(raw: Sequence[float], actual: Sequence[float]) -> Curve:
    """A monotone piecewise cubic (Fritsch-Carlson PCHIP) evaluated from its coefficients.

    PCHIP rather than a natural cubic spline: where the table is monotone the curve is too, and it
    never overshoots between points, so a level/volume strapping table or a sensor curve cannot
    report a volume that falls while the level rises. A kink affects only its neighbouring segments.
    """
    if not scipy_available():
        raise ValueError(f"a spline table needs scipy: {SCIPY_EXTRA}")
    from scipy.interpolate import PchipInterpolator

    xs = tuple(float(x) for x in raw)
    with warnings.catch_warnings():
        # Near-flat segments (slopes ~1e-308) overflow a harmonic mean inside scipy; the resulting
        # zero derivative is the right answer, so the warning is noise at config load.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = PchipInterpolator(xs, [float(y) for y in actual], extrapolate=False)
    # p.c[k, i] multiplies (x - xs[i]) ** (3 - k) on segment i.
    c3, c2, c1, c0 = (tuple(float(v) for v in row) for row in p.c)
    if not all(math.isfinite(v) for row in (c3, c2, c1, c0) for v in row):
        raise ValueError("the table is too ill-conditioned for a spline: use method = 'linear'")
    last = len(xs) - 2
    h = xs[-1] - xs[-2]
    y_lo, y_hi = float(actual[0]), float(actual[-1])
    d_lo, d_hi = c1[0], 3 * c3[last] * h * h + 2 * c2[last] * h + c1[last]
    x_lo, x_hi = xs[0], xs[-1]

    def spline(x: float) -> float:
        if x != x:  # NaN would bisect to the last segment and come out as a number
            return x
        if x < x_lo:
            return y_lo + d_lo * (x - x_lo)
        if x > x_hi:
            return y_hi + d_hi * (x - x_hi)
        i = bisect_right(xs, x) - 1
        if i > last:
            return y_hi
        t = x - xs[i]
        return ((c3[i] * t + c2[i]) * t + c1[i]) * t + c0[i]

    return spline
