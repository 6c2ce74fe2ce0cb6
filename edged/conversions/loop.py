"""4-20 mA current-loop conversions and NAMUR NE43 signal classification.

Why this exists: a loop current carries both the measured value and, outside the live zero
and span, the transmitter's diagnosis. Scaling and classification are kept separate so a
driver can always report what the wire said and, independently, whether to trust it.
"""

from __future__ import annotations

import enum
import math
from typing import Final, Literal

__all__ = [
    "NE43_FAILURE_HIGH_MA",
    "NE43_FAILURE_LOW_MA",
    "NE43_MEASUREMENT_MAX_MA",
    "NE43_MEASUREMENT_MIN_MA",
    "Ne43Band",
    "iio_current_ma",
    "ne43_band",
    "scale",
]

# NAMUR NE43 limits in mA: measurement information 3.8..20.5, failure information <= 3.6
# and >= 21.0.
NE43_MEASUREMENT_MIN_MA: Final = 3.8
NE43_MEASUREMENT_MAX_MA: Final = 20.5
NE43_FAILURE_LOW_MA: Final = 3.6
NE43_FAILURE_HIGH_MA: Final = 21.0


def scale(current_ma: float, lo: float, hi: float, *, zero_ma: float = 4.0, span_ma: float = 16.0) -> float:
    """Linear map of a loop current to engineering units: ``zero_ma`` -> lo, zero + span -> hi.

    Not clamped: currents outside the span extrapolate (e.g. 3.8 mA gives a value below lo),
    since under/over-range values are still informative; classify with ``ne43_band``. ``hi < lo``
    (reverse-acting) is allowed. NaN propagates. ValueError if ``span_ma`` is not positive and
    finite.
    """
    if not 0.0 < span_ma < math.inf:
        raise ValueError(f"span_ma must be positive and finite, got {span_ma!r}")
    return lo + (current_ma - zero_ma) * (hi - lo) / span_ma


class Ne43Band(enum.StrEnum):
    """Where a loop current falls under NAMUR NE43."""

    OK = "ok"  # 3.8 <= I <= 20.5: measurement information
    UNDER_RANGE = "under_range"  # 3.6 < I < 3.8: below span, not a failure signal
    OVER_RANGE = "over_range"  # 20.5 < I < 21.0: above span, not a failure signal
    FAILURE_LOW = "failure_low"  # I <= 3.6 (includes -inf): failure signal or broken loop
    FAILURE_HIGH = "failure_high"  # I >= 21.0 (includes +inf): failure signal or short
    FAILURE = "failure"  # NaN: no usable reading at all

    @property
    def quality(self) -> Literal["good", "uncertain", "bad"]:
        """OPC-style quality: OK is good, out-of-span is uncertain, failure is bad."""
        if self is Ne43Band.OK:
            return "good"
        if self is Ne43Band.UNDER_RANGE or self is Ne43Band.OVER_RANGE:
            return "uncertain"
        return "bad"


def ne43_band(current_ma: float) -> Ne43Band:
    """Classify a loop current per NAMUR NE43.

    Boundaries follow the NE43 wording: measurement information is 3.8..20.5 mA inclusive and
    failure information is "<= 3.6 mA and >= 21 mA", so exactly 3.6 is FAILURE_LOW and exactly
    21.0 is FAILURE_HIGH; the open gaps (3.6, 3.8) and (20.5, 21.0) are UNDER/OVER_RANGE.
    Comparisons are on the float as given; no tolerance is applied at the boundaries.
    """
    if current_ma <= NE43_FAILURE_LOW_MA:
        return Ne43Band.FAILURE_LOW
    if current_ma < NE43_MEASUREMENT_MIN_MA:
        return Ne43Band.UNDER_RANGE
    if current_ma <= NE43_MEASUREMENT_MAX_MA:
        return Ne43Band.OK
    if current_ma < NE43_FAILURE_HIGH_MA:
        return Ne43Band.OVER_RANGE
    if current_ma >= NE43_FAILURE_HIGH_MA:
        return Ne43Band.FAILURE_HIGH
    return Ne43Band.FAILURE  # only NaN fails every comparison above


def iio_current_ma(raw: int, scale_mv: float, offset: int, shunt_ohm: float) -> float:
    """Loop current in mA from a Linux IIO voltage channel read across a shunt resistor.

    IIO defines the processed value as ``(raw + offset) * scale``, in millivolts for voltage
    channels (``in_voltageN_raw``, ``_offset``, ``_scale``); mV / ohm = mA. ValueError if the
    shunt is not positive and finite.
    """
    if not 0.0 < shunt_ohm < math.inf:
        raise ValueError(f"shunt_ohm must be positive and finite, got {shunt_ohm!r}")
    return (raw + offset) * scale_mv / shunt_ohm
