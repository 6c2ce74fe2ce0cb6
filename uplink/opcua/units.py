"""Engineering units as OPC UA EUInformation: UNECE Recommendation 20 codes, so a SCADA can tell
"bar" from "barrel" by number instead of by label (OPC 10000-8 5.6.3).

The codes, display names and descriptions are those of the OPC Foundation's UNECE_to_OPCUA.csv
(UA-Nodeset/Schema), which carries Rec 20 for OPC UA; "%" (P1) is Rec 20 itself. The keys are the
spellings edged configs use (edged.units.COMMON and a few more); a unit not listed keeps its own
text as display name with UnitId -1 ("not available", Part 8) and no namespace.
"""

from __future__ import annotations

from typing import Final, NamedTuple

UNITS_NAMESPACE: Final = "http://www.opcfoundation.org/UA/units/un/cefact"


class Unit(NamedTuple):
    code: str  # UNECE common code, 1-3 characters
    display: str
    description: str


_U = Unit
# fmt: off
UNITS: Final[dict[str, Unit]] = {
    # temperature
    "degC": _U("CEL", "°C", "degree Celsius"), "°C": _U("CEL", "°C", "degree Celsius"),
    "degF": _U("FAH", "°F", "degree Fahrenheit"), "°F": _U("FAH", "°F", "degree Fahrenheit"),
    "K": _U("KEL", "K", "kelvin"), "degR": _U("A48", "°R", "degree Rankine"),
    # pressure
    "bar": _U("BAR", "bar", "bar [unit of pressure]"), "mbar": _U("MBR", "mbar", "millibar"),
    "Pa": _U("PAL", "Pa", "pascal"), "hPa": _U("A97", "hPa", "hectopascal"),
    "kPa": _U("KPA", "kPa", "kilopascal"), "MPa": _U("MPA", "MPa", "megapascal"),
    "psi": _U("PS", "lbf/in²", "pound-force per square inch"), "atm": _U("ATM", "atm", "standard atmosphere"),
    "mmHg": _U("HN", "mm Hg", "conventional millimetre of mercury"), "inHg": _U("F79", "inHg", "inch of mercury"),
    "mmH2O": _U("HP", "mm H₂O", "conventional millimetre of water"), "inH2O": _U("F78", "inH₂O", "inch of water"),
    # volume and mass flow
    "m3/h": _U("MQH", "m³/h", "cubic metre per hour"), "m³/h": _U("MQH", "m³/h", "cubic metre per hour"),
    "m3/s": _U("MQS", "m³/s", "cubic metre per second"), "m³/s": _U("MQS", "m³/s", "cubic metre per second"),
    "m3/min": _U("G53", "m³/min", "cubic metre per minute"),
    "m3/d": _U("G52", "m³/d", "cubic metre per day"),
    "l/min": _U("L2", "l/min", "litre per minute"), "L/min": _U("L2", "l/min", "litre per minute"),
    "l/s": _U("G51", "l/s", "litre per second"), "L/s": _U("G51", "l/s", "litre per second"),
    "gpm": _U("G2", "gal (US) /min", "US gallon per minute"), "GPM": _U("G2", "gal (US) /min", "US gallon per minute"),
    "cfm": _U("2L", "ft³/min", "cubic foot per minute"), "CFM": _U("2L", "ft³/min", "cubic foot per minute"),
    "ft3/min": _U("2L", "ft³/min", "cubic foot per minute"),
    "Nm3/h": _U("Q40", "Nm³/h", "Normalized cubic metre per hour"),
    "kg/s": _U("KGS", "kg/s", "kilogram per second"), "kg/h": _U("E93", "kg/h", "kilogram per hour"),
    "kg/min": _U("F31", "kg/min", "kilogram per minute"),
    "t/h": _U("E18", "t/h", "tonne per hour"), "t/d": _U("L71", "t/d", "tonne per day"),
    "lb/h": _U("4U", "lb/h", "pound per hour"),
    # length, level, speed, volume
    "m": _U("MTR", "m", "metre"), "mm": _U("MMT", "mm", "millimetre"), "cm": _U("CMT", "cm", "centimetre"),
    "km": _U("KMT", "km", "kilometre"), "ft": _U("FOT", "ft", "foot"), "in": _U("INH", "in", "inch"),
    "um": _U("4H", "µm", "micrometre (micron)"), "µm": _U("4H", "µm", "micrometre (micron)"),
    "m/s": _U("MTS", "m/s", "metre per second"), "mm/s": _U("C16", "mm/s", "millimetre per second"),
    "km/h": _U("KMH", "km/h", "kilometre per hour"), "m/s2": _U("MSK", "m/s²", "metre per second squared"),
    "m3": _U("MTQ", "m³", "cubic metre"), "m³": _U("MTQ", "m³", "cubic metre"),
    "l": _U("LTR", "l", "litre"), "L": _U("LTR", "l", "litre"),
    # ratio
    "%": _U("P1", "%", "percent"),
    # energy and power
    "J": _U("JOU", "J", "joule"), "kJ": _U("KJO", "kJ", "kilojoule"), "MJ": _U("3B", "MJ", "megajoule"),
    "GJ": _U("GV", "GJ", "gigajoule"),
    "Wh": _U("WHR", "W·h", "watt hour"), "kWh": _U("KWH", "kW·h", "kilowatt hour"),
    "MWh": _U("MWH", "MW·h", "megawatt hour (1000 kW.h)"),
    "Btu": _U("BTU", "BtuIT", "British thermal unit (international table)"),
    "W": _U("WTT", "W", "watt"), "kW": _U("KWT", "kW", "kilowatt"), "MW": _U("MAW", "MW", "megawatt"),
    "VA": _U("D46", "V·A", "volt - ampere"), "kVA": _U("KVA", "kV·A", "kilovolt - ampere"),
    "var": _U("D44", "var", "var"), "kvar": _U("KVR", "kvar", "kilovar"),
    # mass
    "kg": _U("KGM", "kg", "kilogram"), "g": _U("GRM", "g", "gram"), "t": _U("TNE", "t", "tonne (metric ton)"),
    "lb": _U("LBR", "lb", "pound"),
    # electrical
    "A": _U("AMP", "A", "ampere"), "mA": _U("4K", "mA", "milliampere"),
    "V": _U("VLT", "V", "volt"), "mV": _U("2Z", "mV", "millivolt"), "kV": _U("KVT", "kV", "kilovolt"),
    "ohm": _U("OHM", "Ω", "ohm"), "Ω": _U("OHM", "Ω", "ohm"), "kohm": _U("B49", "kΩ", "kiloohm"),
    "mS/cm": _U("H61", "mS/cm", "millisiemens per centimetre"),
    "uS/cm": _U("G42", "µS/cm", "microsiemens per centimetre"),
    "µS/cm": _U("G42", "µS/cm", "microsiemens per centimetre"),
    # frequency, rotation, time
    "Hz": _U("HTZ", "Hz", "hertz"), "kHz": _U("KHZ", "kHz", "kilohertz"),
    "rpm": _U("RPM", "r/min", "revolutions per minute"),
    "s": _U("SEC", "s", "second [unit of time]"), "ms": _U("C26", "ms", "millisecond"),
    "min": _U("MIN", "min", "minute [unit of time]"), "h": _U("HUR", "h", "hour"), "d": _U("DAY", "d", "day"),
    # force, torque, angle, others
    "N": _U("NEW", "N", "newton"), "kN": _U("B47", "kN", "kilonewton"), "Nm": _U("NU", "N·m", "newton metre"),
    "deg": _U("DD", "°", "degree [unit of angle]"), "°": _U("DD", "°", "degree [unit of angle]"),
    "dB": _U("2N", "dB", "decibel"), "lx": _U("LUX", "lx", "lux"),
    "kg/m3": _U("KMQ", "kg/m³", "kilogram per cubic metre"), "g/l": _U("GL", "g/l", "gram per litre"),
    "pH": _U("Q30", "pH", "pH (potential of Hydrogen)"),
}
# fmt: on


def unit_id(code: str) -> int:
    """OPC 10000-8 5.6.3: the code's (at most 3) ASCII characters packed big-endian into an Int32."""
    if not 1 <= len(code) <= 3 or not code.isascii():
        raise ValueError(f"a UNECE common code has 1 to 3 ASCII characters, not {code!r}")
    value = 0
    for ch in code:
        value = value << 8 | ord(ch)
    return value


def lookup(unit: str) -> Unit | None:
    """The UNECE unit of an edged unit spelling, or None when it has none here."""
    return UNITS.get(unit.strip())
