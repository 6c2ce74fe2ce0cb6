"""The `[[devices]]` entry of one HART field device (pure: no pyserial import)."""

from __future__ import annotations

from typing import Literal

from drivers.hart.protocol import HARTIP_PORT, LongAddress, parse_unique_id
from edged.config import DeviceBase, Duration, TagBase, ValueType

Variable = Literal["pv", "sv", "tv", "qv", "loop_current", "percent_range"]


class Tag(TagBase, kw_only=True):
    """One dynamic variable of the device. `unit` (optional) replaces the device's unit label;
    the value itself is not converted."""

    variable: Variable = "pv"

    def source_type(self) -> ValueType:
        return "double"  # every dynamic variable is an IEEE 754 float on the wire


class Config(DeviceBase):
    """A HART device behind a serial HART modem or a HART-IP server."""

    transport: Literal["serial", "hartip"] = "serial"
    port: int | str | None = None  # serial device path, or the HART-IP TCP port (default 5094)
    host: str | None = None  # HART-IP only
    baudrate: int = 1200  # serial only; 8 data bits, odd parity, 1 stop bit
    polling_address: int = 0  # 0..63; used for command 0 when unique_id is not set
    unique_id: str | None = None  # 5 bytes hex, e.g. "261A123456": skips the polling-address lookup
    interval: Duration = Duration(1.0)  # poll period; in burst mode the expected burst period
    timeout: Duration = Duration(1.0)  # per attempt, request sent to answer complete
    retries: int = 2  # extra attempts after a timeout, a damaged answer or "device busy"
    preambles: int = 5  # request preambles (raised to what command 0 says the device needs)
    primary_master: bool = True
    burst: bool = False  # listen for burst frames instead of polling
    max_failed_polls: int = 3  # polls in a row without any answer before reconnecting (Transient)
    inactivity_timeout: Duration = Duration(60.0)  # HART-IP session inactivity close timer
    tags: list[Tag] = []

    def read_interval(self, tag: TagBase) -> float:
        return float(self.interval)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transport == "serial":
            if self.host is not None:
                raise ValueError("host applies to transport = 'hartip'; a serial device needs port = '/dev/ttyUSB0'")
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("transport 'serial' needs port = the serial device, e.g. '/dev/ttyUSB0'")
            if not 300 <= self.baudrate <= 115200:
                raise ValueError("baudrate must be between 300 and 115200 (HART modems: 1200)")
        else:
            if not self.host:
                raise ValueError("transport 'hartip' needs host = the HART-IP server's name or address")
            if self.port is None:
                self.port = HARTIP_PORT
            if isinstance(self.port, str) or not 1 <= self.port <= 65535:
                raise ValueError("with transport 'hartip', port is the TCP port number (default 5094)")
        if not 0 <= self.polling_address <= 63:
            raise ValueError(f"polling_address {self.polling_address} is outside 0..63")
        if self.unique_id is not None:
            parse_unique_id(self.unique_id)  # ValueError with the reason
        if self.interval < 0.01:
            raise ValueError("interval must be at least 10ms")
        if not 0.01 <= self.timeout <= 30:
            raise ValueError("timeout must be between 10ms and 30s")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be 0..10")
        if not 2 <= self.preambles <= 20:
            raise ValueError("preambles must be 2..20 (HART default 5)")
        if self.max_failed_polls < 1:
            raise ValueError("max_failed_polls must be at least 1")
        if not 1 <= self.inactivity_timeout <= 3600:
            raise ValueError("inactivity_timeout must be between 1s and 1h")

    @property
    def long_address(self) -> LongAddress | None:
        return parse_unique_id(self.unique_id) if self.unique_id is not None else None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}" if self.transport == "hartip" else str(self.port)
