"""BACnet values, status flags and reliability -> edged values and OPC UA status (pure, no I/O).

bacpypes3's atomic types subclass Python's (Real is a float, Enumerated an int, StatusFlags a list
of four bits, CharacterString a str), so these functions take plain values and are fuzzed as such.

Status, strongest first (ASHRAE 135 clause 12: status-flags are in-alarm, fault, overridden,
out-of-service; reliability says what the fault is):

* reliability other than no-fault-detected -> the status of that reliability (RELIABILITY), value
  dropped, except over-range/under-range, which keep the value as Uncertain (the sensor reads
  outside its normal range: the figure is a bound, not a measurement);
* fault flag (reliability unknown or not readable) -> BadDeviceFailure;
* out-of-service -> BadOutOfService (the present-value is decoupled from the field);
* overridden -> GoodLocalOverride (the value is real, but set by hand at the device);
* in-alarm is process state, not data quality: Good.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final

from edged.model import Status, Value

# BACnetReliability (clause 21) -> (status, keeps the value)
RELIABILITY: Final[dict[str, tuple[int, bool]]] = {
    "no-fault-detected": (Status.GOOD, True),
    "no-sensor": (Status.BAD_SENSOR_FAILURE, False),
    "over-range": (Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, True),
    "under-range": (Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, True),
    "open-loop": (Status.BAD_SENSOR_FAILURE, False),
    "shorted-loop": (Status.BAD_SENSOR_FAILURE, False),
    "no-output": (Status.BAD_DEVICE_FAILURE, False),
    "unreliable-other": (Status.BAD, False),
    "process-error": (Status.BAD_DEVICE_FAILURE, False),
    "multi-state-fault": (Status.BAD_DEVICE_FAILURE, False),
    "configuration-error": (Status.BAD_CONFIGURATION_ERROR, False),
    "communication-failure": (Status.BAD_COMMUNICATION_ERROR, False),
    "member-fault": (Status.BAD_DEVICE_FAILURE, False),
    "monitored-object-fault": (Status.BAD_DEVICE_FAILURE, False),
    "tripped": (Status.BAD_DEVICE_FAILURE, False),
    "lamp-failure": (Status.BAD_DEVICE_FAILURE, False),
    "activation-failure": (Status.BAD_DEVICE_FAILURE, False),
    "renew-dhcp-failure": (Status.BAD_COMMUNICATION_ERROR, False),
    "renew-fd-registration-failure": (Status.BAD_COMMUNICATION_ERROR, False),
    "restart-auto-negotiation-failure": (Status.BAD_COMMUNICATION_ERROR, False),
    "restart-failure": (Status.BAD_DEVICE_FAILURE, False),
    "proprietary-command-failure": (Status.BAD_DEVICE_FAILURE, False),
    "faults-listed": (Status.BAD_DEVICE_FAILURE, False),
    "referenced-object-fault": (Status.BAD_DEVICE_FAILURE, False),
}
IN_ALARM, FAULT, OVERRIDDEN, OUT_OF_SERVICE = range(4)

# BACnetEngineeringUnits names -> the spellings edged.units knows; others pass through unchanged.
UNITS: Final[dict[str, str | None]] = {
    "no-units": None,
    "degrees-celsius": "degC",
    "degrees-fahrenheit": "degF",
    "degrees-kelvin": "K",
    "percent": "%",
    "percent-relative-humidity": "%",
    "parts-per-million": "ppm",
    "pascals": "Pa",
    "hectopascals": "hPa",
    "kilopascals": "kPa",
    "bars": "bar",
    "millibars": "mbar",
    "pounds-force-per-square-inch": "psi",
    "inches-of-water": "inH2O",
    "millimeters-of-water": "mmH2O",
    "cubic-meters-per-hour": "m3/h",
    "cubic-meters-per-second": "m3/s",
    "liters-per-minute": "l/min",
    "liters-per-hour": "l/h",
    "liters-per-second": "L/s",
    "us-gallons-per-minute": "GPM",
    "cubic-feet-per-minute": "CFM",
    "kilograms-per-hour": "kg/h",
    "kilograms-per-second": "kg/s",
    "watts": "W",
    "kilowatts": "kW",
    "megawatts": "MW",
    "horsepower": "hp",
    "watt-hours": "Wh",
    "kilowatt-hours": "kWh",
    "megawatt-hours": "MWh",
    "joules": "J",
    "kilojoules": "kJ",
    "megajoules": "MJ",
    "volts": "V",
    "millivolts": "mV",
    "amperes": "A",
    "milliamperes": "mA",
    "ohms": "ohm",
    "hertz": "Hz",
    "revolutions-per-minute": "rpm",
    "seconds": "s",
    "minutes": "min",
    "hours": "h",
    "meters": "m",
    "millimeters": "mm",
    "centimeters": "cm",
    "feet": "ft",
    "inches": "in",
    "kilograms": "kg",
    "pounds-mass": "lb",
}


class CodecError(ValueError):
    """A value of the wrong shape for its object type (a misbehaving device)."""


def unit_symbol(units: str) -> str | None:
    """edged's spelling of a BACnet unit ("degrees-celsius" -> "degC"); None for no-units."""
    return UNITS.get(units, units)


def to_value(kind: str, raw: object, *, real: bool = False) -> Value:
    """A present-value as edged stores it: number, bool (binary active/inactive), or string.
    `real`: the value is a BACnet REAL, shown with the fewest digits that give back the same REAL
    (33.3, not 33.29999923706055)."""
    if kind == "bool":
        # BinaryPV is an Enumerated (int): inactive = 0, active = 1
        if isinstance(raw, bool) or not isinstance(raw, int) or raw not in (0, 1):
            raise CodecError(f"binary present-value {raw!r} is neither inactive (0) nor active (1)")
        return raw == 1
    if kind == "string":
        if not isinstance(raw, str):
            raise CodecError(f"present-value {raw!r} is not a character string")
        return str(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise CodecError(f"present-value {raw!r} is not a number")
    if not isinstance(raw, float):
        return int(raw)
    return shortest_real(float(raw)) if real else float(raw)


def shortest_real(x: float) -> float:
    if not math.isfinite(x):
        return x
    for digits in range(6, 10):
        y = float(f"{x:.{digits}g}")
        if as_real(y) == x:
            return y
    return x


def quality(value: Value, flags: Sequence[int] | None, reliability: str | None) -> tuple[Value, int]:
    """(value, status) from the status-flags (None: not read) and the reliability (None: unknown)."""
    if reliability is not None and reliability != "no-fault-detected":
        status, keep = RELIABILITY.get(reliability, (Status.BAD_DEVICE_FAILURE, False))
        return (value if keep else None), status
    bits = list(flags) if flags is not None else [0, 0, 0, 0]
    if len(bits) < 4:
        raise CodecError(f"status-flags {flags!r} has {len(bits)} bits, not 4")
    if bits[FAULT]:
        return None, Status.BAD_DEVICE_FAILURE
    if bits[OUT_OF_SERVICE]:
        return None, Status.BAD_OUT_OF_SERVICE
    if bits[OVERRIDDEN]:
        return value, Status.GOOD_LOCAL_OVERRIDE
    return value, Status.GOOD


def score(status: int) -> int:
    top = (status >> 30) & 0b11
    return 100 if top == 0 else 60 if top == 1 else 0


def as_real(value: float) -> float:
    """A float as a BACnet REAL (IEEE single) holds it, to compare a write with its read-back."""
    if not math.isfinite(value):
        return value
    try:
        return float(struct.unpack(">f", struct.pack(">f", value))[0])
    except OverflowError:
        raise CodecError(f"{value} does not fit a BACnet REAL") from None


def same(kind: str, written: Value, back: Value) -> bool:
    numbers = isinstance(written, int | float) and isinstance(back, int | float)
    if kind == "number" and numbers and (isinstance(back, float) or isinstance(written, float)):
        assert isinstance(written, int | float) and isinstance(back, int | float)
        return as_real(float(written)) == as_real(float(back))
    return written == back
