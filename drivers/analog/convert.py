"""One raw signal to one engineering value with its status (pure, no I/O).

The conversions themselves live in `edged.conversions`; this module decides what a reading means
for quality: NAMUR NE43 bands for 4-20 mA loops, readings outside an RTD or thermocouple
standard's range (open or shorted sensor), and the cold junction's own quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.analog.config import RTD_CURVES, Tag
from edged.conversions.loop import Ne43Band, ne43_band, scale
from edged.conversions.rtd import compensate_leads
from edged.conversions.thermocouple import compensated_temperature
from edged.model import Severity, Status, severity

SCORE_UNCERTAIN = 50


@dataclass(frozen=True, slots=True)
class Result:
    value: float | None
    status: int
    score: int
    problem: tuple[str, str] | None = None  # (counter kind, reason for the log)


def _bad(status: int, kind: str, reason: str) -> Result:
    return Result(None, status, 0, (kind, reason))


def _ne43(ma: float) -> Result | None:
    """None when the current is in the measuring range; else the NE43 verdict (value not set)."""
    band = ne43_band(ma)
    if band is Ne43Band.OK:
        return None
    if band.quality == "uncertain":
        reason = f"{ma:.3f} mA is outside 3.8..20.5 mA ({band.value}, NAMUR NE43)"
        return Result(
            None, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, SCORE_UNCERTAIN, (f"ne43_{band.value}", reason)
        )
    reason = f"{ma:.3f} mA signals a failure ({band.value}: NAMUR NE43 <= 3.6 or >= 21.0 mA)"
    return _bad(Status.BAD_SENSOR_FAILURE, f"ne43_{band.value}", reason)


def convert(tag: Tag, signal: float, cjc: tuple[float | None, int] | None = None) -> Result:
    """`signal` is in the tag's signal unit (mA, mV, ohm); `cjc` is the cold junction (degC, status)
    for thermocouples with a `cjc_tag`, None when it has not been read yet."""
    if not math.isfinite(signal):
        return _bad(Status.BAD_SENSOR_FAILURE, "not_finite", f"signal is {signal}")
    verdict = _ne43(signal) if tag.uses_ne43 else None
    if verdict is not None and severity(verdict.status) == Severity.BAD:
        return verdict
    try:
        value = _engineering(tag, signal)
    except ValueError as exc:  # outside the standard's range: open or shorted sensor, wrong wiring
        return _bad(Status.BAD_SENSOR_FAILURE, "out_of_range", str(exc))
    if tag.conversion == "thermocouple":
        return _thermocouple(tag, signal, cjc)
    if verdict is not None:
        return Result(value, verdict.status, verdict.score, verdict.problem)
    return Result(value, Status.GOOD, 100)


def _engineering(tag: Tag, signal: float) -> float:
    if tag.conversion == "linear":
        assert tag.range is not None
        lo_in, hi_in = tag.input_span
        return scale(signal, tag.range[0], tag.range[1], zero_ma=lo_in, span_ma=hi_in - lo_in)
    if tag.conversion == "rtd":
        r = compensate_leads(signal, tag.wiring, tag.lead_ohm)
        return RTD_CURVES[tag.rtd_type].temperature(r)
    return signal  # "none", and thermocouples (converted with their cold junction below)


def _thermocouple(tag: Tag, mv: float, cjc: tuple[float | None, int] | None) -> Result:
    assert tag.tc_type is not None
    cj_value: float | None
    if tag.cjc_c is not None:
        cj_value, cj_status = tag.cjc_c, int(Status.GOOD)
    elif cjc is None:
        return _bad(Status.BAD_WAITING_FOR_INITIAL_DATA, "cjc_missing", f"cold junction {tag.cjc_tag} not read yet")
    else:
        cj_value, cj_status = cjc
    if cj_value is None or severity(cj_status) == Severity.BAD:
        return _bad(cj_status or Status.BAD, "cjc_bad", f"cold junction {tag.cjc_tag} has no good value")
    try:
        t = compensated_temperature(tag.tc_type, mv, cj_value)
    except ValueError as exc:
        return _bad(Status.BAD_SENSOR_FAILURE, "out_of_range", str(exc))
    if severity(cj_status) == Severity.UNCERTAIN:
        return Result(t, cj_status, SCORE_UNCERTAIN, ("cjc_uncertain", f"cold junction {tag.cjc_tag} is uncertain"))
    return Result(t, Status.GOOD, 100)
