"""Engineering-unit conversion, reduced at config load to a factor and an offset.

Why: the hot path must stay `value * factor + offset`. pint is the maintained source of truth for
the factors, but it is slow per call (~30 us) and costly to import and build (~0.5 s), so it is only
touched while a config is loaded, only when some tag converts units, and only through this module.
pint is optional (the `numerics` extra); without it, a config that converts units is a config error.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from typing import Any, Final

NUMERICS_EXTRA: Final = "pip install 'edged[numerics]'"

# Plant spellings pint does not know, or knows as something else ("cfm" would be a centifermi).
_DEFINITIONS: Final = (
    "US_gallon_per_minute = US_liquid_gallon / minute = gpm = GPM",
    "cubic_foot_per_minute = foot ** 3 / minute = cfm = CFM",
    "million_Btu = 1e6 * Btu = MMBtu",
    # Gas volume at reference conditions: its own dimension, so Nm3/h <-> m3/h is refused, not 1:1.
    "normal_cubic_meter = [normal_volume]",
)

# For "did you mean" hints; pint knows many more, these are the spellings plants use.
COMMON: Final = (
    "degC", "degF", "K", "degR",
    "bar", "mbar", "Pa", "hPa", "kPa", "MPa", "psi", "atm", "mmHg", "inHg", "mmH2O", "inH2O",
    "m3/h", "m3/s", "l/min", "l/h", "L/s", "GPM", "gpm", "CFM", "ft3/min", "bbl/d", "Nm3/h",
    "kg/s", "kg/h", "t/h", "lb/h",
    "m", "mm", "cm", "ft", "in", "%", "ppm",
    "J", "kJ", "MJ", "GJ", "Wh", "kWh", "MWh", "Btu", "MMBtu", "therm",
    "W", "kW", "MW", "hp",
    "kg", "t", "lb",
    "A", "mA", "V", "mV", "ohm", "Hz", "rpm", "s", "min", "h",
)  # fmt: skip

_FAR: Final = 1024.0  # a power of two: dividing by it is exact

_GAUGE = re.compile(r"^(psi|bar|kPa|MPa|Pa|mbar|kg/cm2)[ _-]?([gad]|abs|gauge|\(g\)|\(a\))$", re.I)
_NM3 = re.compile(r"(?<![A-Za-z_])Nm(3|³)(?!\w)")
_EXPONENT = re.compile(r"(?<=[A-Za-z])([23])(?![\w.])")  # "m3/h" -> "m**3/h"; "inH2O" is left alone

# Names for the dimensionalities a plant meets, so errors say "pressure", not "[mass] / [length] ...".
_KINDS: Final = {
    "[temperature]": "temperature",
    "[mass] / [length] / [time] ** 2": "pressure",
    "[length] ** 3 / [time]": "volume flow",
    "[normal_volume] / [time]": "normal volume flow",
    "[mass] / [time]": "mass flow",
    "[mass] * [length] ** 2 / [time] ** 2": "energy",
    "[mass] * [length] ** 2 / [time] ** 3": "power",
    "[length] ** 2 * [mass] / [time] ** 3": "power",
    "[length]": "length",
    "[length] ** 3": "volume",
    "[mass]": "mass",
    "[current]": "current",
    "[time]": "time",
    "1 / [time]": "frequency",
    "dimensionless": "ratio",
}


def _plant_spelling(text: str) -> str:
    """pint preprocessor: the spellings on plant drawings ("m3/h", "Nm3/h") into pint syntax."""
    return _EXPONENT.sub(r"**\1", _NM3.sub("normal_cubic_meter", text))


class Units:
    """One pint registry with plant spellings added; build it once, it is the expensive part."""

    def __init__(self) -> None:
        try:
            import pint
        except ImportError:
            raise ValueError(f"unit conversion needs pint: {NUMERICS_EXTRA}") from None
        self._pint: Any = pint
        self._ureg: Any = pint.UnitRegistry(preprocessors=[_plant_spelling], on_redefinition="raise")
        for definition in _DEFINITIONS:
            self._ureg.define(definition)

    def _parse(self, text: str, role: str) -> Any:
        """pint's many exception types (and a bare AssertionError on bad syntax) into one ValueError."""
        if not text.strip():
            raise ValueError(f"{role} must not be empty")
        try:
            return self._ureg.parse_units(text)
        except self._pint.errors.UndefinedUnitError:
            raise ValueError(f"unknown unit {text!r} in {role}{_hint(text)}") from None
        except Exception as exc:  # syntax errors surface as AssertionError, TokenError, ValueError...
            detail = f": {exc}" if str(exc) else ""
            raise ValueError(f"cannot read unit {text!r} in {role}{detail}") from None

    def _kind(self, unit: Any) -> str:
        dims = str(self._ureg.Quantity(1.0, unit).dimensionality)
        return _KINDS.get(dims, dims)

    def conversion(self, source_unit: str, unit: str) -> tuple[float, float]:
        """(factor, offset) with `value_in_unit = value_in_source_unit * factor + offset`."""
        src = self._parse(source_unit, "source_unit")
        dst = self._parse(unit, "unit")
        try:
            y0, y1, y_far = (self._ureg.Quantity(x, src).to(dst).magnitude for x in (0.0, 1.0, _FAR))
        except self._pint.errors.DimensionalityError:
            kinds = f" ({self._kind(src)} vs {self._kind(dst)})"
            raise ValueError(f"cannot convert {source_unit} to {unit}{kinds}") from None
        except Exception as exc:  # offset units in products (degC*m), logarithmic edge cases
            raise ValueError(f"cannot convert {source_unit} to {unit}: {exc}") from None
        # The slope from a far point keeps full precision when the offset is large (degF -> degC).
        factor, offset = (float(y_far) - float(y0)) / _FAR, float(y0)
        if not (math.isfinite(factor) and math.isfinite(offset) and factor != 0.0):
            raise ValueError(f"cannot convert {source_unit} to {unit}: no usable factor")
        if not math.isclose(float(y1), factor + offset, rel_tol=1e-9, abs_tol=1e-9 * abs(factor)):
            raise ValueError(f"cannot convert {source_unit} to {unit}: not a linear conversion (logarithmic unit?)")
        return factor, offset


def _hint(text: str) -> str:
    if _GAUGE.match(text.strip()):
        return (
            " (gauge/absolute markers are not units: write e.g. 'psi' and 'bar', and keep both ends"
            " gauge or both absolute)"
        )
    same = [c for c in COMMON if c.lower() == text.strip().lower()]
    close = same or difflib.get_close_matches(text, COMMON, n=3, cutoff=0.6)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return " (e.g. 'degC', 'bar', 'm3/h', 'GPM', 'kWh', '%'; see docs/quality.md)"


@functools.cache
def _units() -> Units:
    return Units()


@functools.lru_cache(maxsize=1024)
def conversion(source_unit: str, unit: str) -> tuple[float, float]:
    """(factor, offset) to convert a value from `source_unit` to `unit`; ValueError with the reason.

    Cached: the config loader validates with it and each TagProcessor asks again for the same pair.
    """
    return _units().conversion(source_unit, unit)


def registry() -> Any:
    """The pint UnitRegistry (with the plant spellings): for unit algebra at load (edged.compute)."""
    return _units()._ureg


@functools.lru_cache(maxsize=1024)
def parse_unit(text: str) -> Any:
    """A pint Unit from a config's spelling ("m3/h", "t/h", "bar"); ValueError with the reason."""
    return _units()._parse(text, "unit")
