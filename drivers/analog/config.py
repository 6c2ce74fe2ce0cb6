"""The `[[devices]]` entry of an analog input device and its channels (pure: no I/O).

A tag names where its raw signal comes from (an IIO `channel` or a Modbus `register`), what the
signal is (`current_ma`, `voltage_mv`, `resistance_ohm`) and how it becomes an engineering value
(`linear`, `rtd`, `thermocouple`, or `none` to keep the signal itself).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

from edged.config import DeviceBase, Duration, TagBase, ValueType
from edged.conversions.rtd import NI100, NI120, PT100, PT1000, RtdCurve
from edged.conversions.thermocouple import ThermocoupleType

Signal = Literal["current_ma", "voltage_mv", "resistance_ohm"]
Conversion = Literal["linear", "rtd", "thermocouple", "none"]
RtdType = Literal["pt100", "pt1000", "ni100", "ni120"]

RTD_CURVES: dict[str, RtdCurve] = {"pt100": PT100, "pt1000": PT1000, "ni100": NI100, "ni120": NI120}
SIGNAL_UNITS: dict[str, str] = {"current_ma": "mA", "voltage_mv": "mV", "resistance_ohm": "ohm"}


def _finite(name: str, x: float | None) -> None:
    if x is not None and not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number")


class Tag(TagBase, kw_only=True):
    """One analog input and its conversion."""

    channel: int | None = None  # iio: reads in_voltage<channel>_raw
    register: dict[str, Any] | None = None  # modbus: a drivers.modbus tag without `name` (address, table, type...)
    signal: Signal = "current_ma"
    shunt_ohm: float | None = None  # iio + current_ma: the resistor the ADC measures the loop current across
    excitation_ma: float | None = None  # iio + resistance_ohm: the constant current through the sensor
    conversion: Conversion = "linear"
    range: tuple[float, float] | None = None  # linear: engineering values at the two ends of `input`
    input: tuple[float, float] | None = None  # linear: signal span, default [4, 20] mA (required for mV/ohm)
    ne43: bool = True  # current_ma on a 4-20 mA input: NAMUR NE43 classification sets the status
    rtd_type: RtdType = "pt100"
    wiring: Literal[2, 3, 4] = 4
    lead_ohm: float = 0.0  # resistance of one lead wire (2- and 3-wire compensation)
    tc_type: ThermocoupleType | None = None
    cjc_tag: str | None = None  # another tag of this device giving the cold-junction temperature in degC
    cjc_c: float | None = None  # or a fixed cold-junction temperature in degC

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shunt_ohm", "excitation_ma"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number")
        _finite("cjc_c", self.cjc_c)
        if not 0.0 <= self.lead_ohm < math.inf:
            raise ValueError("lead_ohm must be >= 0")
        if self.channel is not None and not 0 <= self.channel <= 255:
            raise ValueError("channel must be 0..255 (in_voltage<N>_raw)")
        if self.register is not None and "name" in self.register:
            raise ValueError("register must not contain `name`: the tag's name is used")
        for name in ("range", "input"):
            pair = getattr(self, name)
            if pair is not None:
                _finite(name, pair[0])
                _finite(name, pair[1])
        if self.input is not None and not self.input[0] < self.input[1]:
            raise ValueError(f"input [{self.input[0]}, {self.input[1]}]: the first value must be below the second")
        conv, sig = self.conversion, self.signal
        if conv == "linear":
            if self.range is None:
                raise ValueError("conversion 'linear' needs range = [value at input low, value at input high]")
            if self.range[0] == self.range[1]:
                raise ValueError("range needs two different values")
            if sig != "current_ma" and self.input is None:
                raise ValueError(f"conversion 'linear' of a {sig} signal needs input = [low, high] in {sig[-2:]}")
        elif self.range is not None or self.input is not None:
            raise ValueError(f"range and input apply to conversion 'linear', not {conv!r}")
        if conv == "rtd" and sig != "resistance_ohm":
            raise ValueError("conversion 'rtd' needs signal = 'resistance_ohm'")
        if conv == "thermocouple":
            if sig != "voltage_mv":
                raise ValueError("conversion 'thermocouple' needs signal = 'voltage_mv'")
            if self.tc_type is None:
                raise ValueError("conversion 'thermocouple' needs tc_type (E, J, K, N, R, S or T)")
            if (self.cjc_tag is None) == (self.cjc_c is None):
                raise ValueError("conversion 'thermocouple' needs one of cjc_tag or cjc_c (cold junction in degC)")
        elif self.tc_type is not None or self.cjc_tag is not None or self.cjc_c is not None:
            raise ValueError("tc_type, cjc_tag and cjc_c apply to conversion 'thermocouple'")
        if self.ne43 and sig == "current_ma" and self.input not in (None, (4.0, 20.0)):
            raise ValueError("NE43 classification applies to 4-20 mA inputs: set ne43 = false for other spans")

    def source_type(self) -> ValueType:
        return "double"  # engineering values computed from the signal

    @property
    def input_span(self) -> tuple[float, float]:
        return self.input if self.input is not None else (4.0, 20.0)

    @property
    def uses_ne43(self) -> bool:
        return self.ne43 and self.signal == "current_ma"

    @property
    def default_unit(self) -> str | None:
        if self.conversion in ("rtd", "thermocouple"):
            return "degC"
        if self.conversion == "none":
            return SIGNAL_UNITS[self.signal]
        return None


class Config(DeviceBase, kw_only=True):
    """Analog inputs read from a Linux IIO ADC or a Modbus analog input module."""

    source: Literal["iio", "modbus"]
    iio_path: str | None = None  # iio: the device directory, e.g. /sys/bus/iio/devices/iio:device0
    modbus: dict[str, Any] | None = None  # modbus: connection settings of the modbus driver (host, port, unit_id...)
    interval: Duration = Duration(1.0)
    tags: list[Tag] = []

    def read_interval(self, tag: TagBase) -> float:
        return float(self.interval)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interval < 0.01:
            raise ValueError("interval must be at least 10ms")
        names = {t.name: t for t in self.tags}
        for i, tag in enumerate(self.tags):
            where = f"tags[{i}] ({tag.name})"
            if self.source == "iio":
                if tag.channel is None or tag.register is not None:
                    raise ValueError(f"{where}: source 'iio' needs channel = N (in_voltageN_raw) and no register")
                if tag.signal == "current_ma" and tag.shunt_ohm is None:
                    raise ValueError(f"{where}: a current_ma signal on an IIO voltage channel needs shunt_ohm")
                if tag.signal == "resistance_ohm" and tag.excitation_ma is None:
                    raise ValueError(f"{where}: a resistance_ohm signal on an IIO channel needs excitation_ma")
            elif tag.register is None or tag.channel is not None:
                raise ValueError(f"{where}: source 'modbus' needs register = {{ address = ..., ... }} and no channel")
            if tag.cjc_tag is not None:
                ref = names.get(tag.cjc_tag)
                if ref is None or ref is tag:
                    raise ValueError(f"{where}: cjc_tag {tag.cjc_tag!r} is not another tag of this device")
                if ref.conversion == "thermocouple":
                    raise ValueError(f"{where}: cjc_tag {tag.cjc_tag!r} is a thermocouple; it must give degC itself")
        if self.source == "iio":
            if not self.iio_path:
                raise ValueError("source 'iio' needs iio_path = '/sys/bus/iio/devices/iio:deviceN'")
            if self.modbus is not None:
                raise ValueError("modbus settings apply to source 'modbus'")
        else:
            if self.iio_path is not None:
                raise ValueError("iio_path applies to source 'iio'")
            self.modbus_config()  # validates the connection settings and every register now

    def modbus_config(self) -> Any:
        """The modbus driver's Config that reads this device's raw registers (tag names unchanged)."""
        if self.source != "modbus":
            raise ValueError("not a modbus-sourced device")
        # through the registry, like any config entry of type "modbus": no plugin imports another
        from edged import registry
        from edged.errors import ConfigError

        try:
            ModbusConfig = registry.driver_spec("modbus").config
        except ConfigError as exc:
            raise ValueError(f"source 'modbus' needs the modbus driver: {exc.reason}") from None
        settings = dict(self.modbus or {})
        for key in ("name", "type", "tags"):
            if key in settings:
                raise ValueError(f"modbus.{key} is set by the analog device; remove it")
        raw = {
            **settings,
            "name": self.name,
            "type": "modbus",
            "interval": f"{float(self.interval)}s",
            "tags": [{"name": t.name, **(t.register or {})} for t in self.tags],
        }
        try:
            return msgspec.convert(raw, ModbusConfig, dec_hook=_duration_hook)
        except msgspec.ValidationError as exc:
            raise ValueError(_modbus_reason(str(exc))) from None


def _modbus_reason(text: str) -> str:
    """msgspec's "... - at `$.tags[2].address`" in this device's terms: tags[2].register.address."""
    m = re.match(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", text, re.S)
    reason, path = (m.group("reason"), m.group("path") or "") if m else (text, "")
    t = re.match(r"^\.tags\[(\d+)\]\.?(.*)$", path)
    where = f"tags[{t.group(1)}].register" + (f".{t.group(2)}" if t.group(2) else "") if t else f"modbus{path}"
    return f"{where}: {reason}"


def _duration_hook(typ: type, obj: Any) -> Any:
    if typ is Duration and isinstance(obj, str):
        return Duration.parse(obj)
    raise NotImplementedError(typ)
