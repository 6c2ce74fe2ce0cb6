"""HART framing, the universal commands this driver uses, and the HART-IP header, sans-io.

No sockets, no serial ports, no clocks: bytes in, frames out. That keeps every corner of the
wire format testable (and fuzzable) without a modem, and lets the same code serve the serial
transport, HART-IP and the test simulator.

A token-passing frame on the wire::

    preambles  delimiter  address  [expansion]  command  byte count  data  checksum
    FF FF ...  1 byte     1 or 5   0..3 bytes   1 byte   1 byte      0..255 XOR of delimiter..data

Delimiter: bit 7 = long (5-byte unique id) address, bits 6-5 = expansion bytes, bits 4-3 =
physical layer (0 = asynchronous), bits 2-0 = frame type (2 = STX master request, 6 = ACK
slave response, 1 = BACK burst frame). Address byte 0: bit 7 = primary master, bit 6 = the
slave is in burst mode. Responses start their data with the response code and the field
device status byte.

Every parse problem raises `HartError` (or a subclass) and nothing else, so callers can map
one exception type into a sample status.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BUSY",
    "HARTIP_HEADER",
    "HARTIP_PORT",
    "NOT_IMPLEMENTED",
    "PREAMBLE",
    "Address",
    "DecodeError",
    "DeviceIdentity",
    "DeviceStatus",
    "DynamicVariables",
    "Frame",
    "FrameError",
    "FrameReader",
    "FrameType",
    "HartError",
    "HartIpHeader",
    "LongAddress",
    "MessageId",
    "MessageType",
    "ShortAddress",
    "Variable",
    "build_request",
    "build_response",
    "checksum",
    "comm_error_text",
    "decode_additional_status",
    "decode_current_percent",
    "decode_dynamic",
    "decode_frame",
    "decode_identity",
    "decode_pv",
    "encode_current_percent",
    "encode_dynamic",
    "encode_frame",
    "encode_identity",
    "encode_pv",
    "hartip_message",
    "is_warning",
    "parse_unique_id",
    "response_code_text",
    "session_initiate_body",
    "unit_name",
]

PREAMBLE: Final = 0xFF
SYNC_PREAMBLES: Final = 2  # a receiver needs at least two 0xFF before the delimiter to sync
MAX_PREAMBLES: Final = 20
BUSY: Final = 32
NOT_IMPLEMENTED: Final = 64
COMM_ERROR: Final = 0x80  # response code bit 7: the slave saw a garbled request
HARTIP_PORT: Final = 5094
HARTIP_VERSION: Final = 1
HARTIP_HEADER: Final = 8


class HartError(ValueError):
    """Bytes that are not a valid HART frame, payload or HART-IP message."""

    kind = "malformed"


class FrameError(HartError):
    """A frame that cannot be used; `kind` names the problem for counters ("checksum", ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class DecodeError(HartError):
    """A well-framed response whose data does not fit the command's layout."""

    kind = "decode"


class FrameType(enum.IntEnum):
    BACK = 1  # burst frame, slave to master, unsolicited
    STX = 2  # master to slave
    ACK = 6  # slave to master, answering an STX


class DeviceStatus(enum.IntFlag):
    """Field device status: the second status byte of every response."""

    PV_OUT_OF_LIMITS = 0x01
    NON_PV_OUT_OF_LIMITS = 0x02
    LOOP_CURRENT_SATURATED = 0x04
    LOOP_CURRENT_FIXED = 0x08
    MORE_STATUS_AVAILABLE = 0x10
    COLD_START = 0x20
    CONFIG_CHANGED = 0x40
    DEVICE_MALFUNCTION = 0x80


# ----------------------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class ShortAddress:
    """Polling address 0..63 (HART 7; 0..15 before). HART 5+ devices answer only command 0 to it."""

    polling: int

    def __post_init__(self) -> None:
        if not 0 <= self.polling <= 63:
            raise ValueError(f"polling address {self.polling} is outside 0..63")

    def encode(self, primary_master: bool, burst: bool = False) -> bytes:
        return bytes([(0x80 if primary_master else 0) | (0x40 if burst else 0) | self.polling])

    def __str__(self) -> str:
        return f"polling address {self.polling}"


@dataclass(frozen=True, slots=True)
class LongAddress:
    """The 5-byte unique id (from command 0) without the master and burst bits."""

    unique_id: bytes

    def __post_init__(self) -> None:
        if len(self.unique_id) != 5 or self.unique_id[0] & 0xC0:
            raise ValueError("a unique id is 5 bytes and its first byte is at most 0x3F")

    def encode(self, primary_master: bool, burst: bool = False) -> bytes:
        first = (0x80 if primary_master else 0) | (0x40 if burst else 0) | self.unique_id[0]
        return bytes([first]) + self.unique_id[1:]

    def __str__(self) -> str:
        return f"unique id {self.unique_id.hex()}"


Address = ShortAddress | LongAddress


def parse_unique_id(text: str) -> LongAddress:
    """`"261a123456"`, `"26 1A 12 34 56"` or `"26:1a:12:34:56"` -> LongAddress (ValueError if not)."""
    digits = text.replace(" ", "").replace(":", "").replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"unique_id {text!r} is not hexadecimal") from None
    if len(raw) != 5:
        raise ValueError(f"unique_id {text!r} must be 5 bytes (10 hex digits), not {len(raw)}")
    if raw[0] & 0xC0:
        raise ValueError(f"unique_id {text!r}: the first byte must be at most 3F (bits 7-6 are not part of the id)")
    return LongAddress(raw)


# ----------------------------------------------------------------------------------------- frames


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Longitudinal parity: XOR of every byte from the delimiter to the last data byte."""
    x = 0
    for b in data:
        x ^= b
    return x


def _delimiter_ok(d: int) -> bool:
    return d & 0x18 == 0 and d & 0x07 in (1, 2, 6)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. For ACK/BACK frames `data` starts with response code and device status."""

    frame_type: FrameType
    address: Address
    command: int
    data: bytes
    primary_master: bool = True
    burst: bool = False  # the slave reports burst mode (address bit 6)
    expansion: bytes = b""

    @property
    def is_response(self) -> bool:
        return self.frame_type != FrameType.STX

    @property
    def response_code(self) -> int:
        return self.data[0]

    @property
    def device_status(self) -> int:
        """Field device status; meaningless (zero) when `comm_error` is set."""
        return self.data[1]

    @property
    def comm_error(self) -> bool:
        """The slave received our request garbled: byte 1 holds communication error flags."""
        return bool(self.data[0] & COMM_ERROR)

    @property
    def payload(self) -> bytes:
        """The command's data, after the two status bytes of a response."""
        return self.data[2:] if self.is_response else self.data


def encode_frame(
    frame_type: FrameType,
    address: Address,
    command: int,
    data: bytes = b"",
    *,
    preambles: int = 0,
    primary_master: bool = True,
    burst: bool = False,
) -> bytes:
    """Preambles + frame + checksum. `data` is everything after the byte count."""
    if not 0 <= command <= 255:
        raise ValueError(f"command {command} is outside 0..255 (extended commands are not supported)")
    if len(data) > 255:
        raise ValueError(f"{len(data)} data bytes do not fit one frame (max 255)")
    if not 0 <= preambles <= MAX_PREAMBLES:
        raise ValueError(f"preambles must be 0..{MAX_PREAMBLES}")
    delimiter = int(frame_type) | (0x80 if isinstance(address, LongAddress) else 0)
    body = bytes([delimiter]) + address.encode(primary_master, burst) + bytes([command, len(data)]) + data
    return bytes([PREAMBLE]) * preambles + body + bytes([checksum(body)])


def build_request(
    address: Address, command: int, data: bytes = b"", *, preambles: int = 5, primary_master: bool = True
) -> bytes:
    """A master request (STX)."""
    return encode_frame(FrameType.STX, address, command, data, preambles=preambles, primary_master=primary_master)


def build_response(
    address: Address,
    command: int,
    response_code: int,
    device_status: int,
    payload: bytes = b"",
    *,
    frame_type: FrameType = FrameType.ACK,
    preambles: int = 5,
    primary_master: bool = True,
    burst: bool = False,
) -> bytes:
    """A slave answer (ACK) or burst frame (BACK); used by the test simulator."""
    data = bytes([response_code & 0xFF, device_status & 0xFF]) + payload
    return encode_frame(
        frame_type, address, command, data, preambles=preambles, primary_master=primary_master, burst=burst
    )


def _header_len(delimiter: int) -> int:
    """Bytes from the delimiter through the byte count."""
    return 1 + (5 if delimiter & 0x80 else 1) + ((delimiter >> 5) & 0x03) + 2


def _decode_body(frame: bytes | bytearray) -> Frame:
    """`frame` is delimiter..checksum with the checksum already verified."""
    d = frame[0]
    long = bool(d & 0x80)
    n_exp = (d >> 5) & 0x03
    alen = 5 if long else 1
    raw_addr = frame[1 : 1 + alen]
    address: Address = (
        LongAddress(bytes([raw_addr[0] & 0x3F]) + bytes(raw_addr[1:])) if long else ShortAddress(raw_addr[0] & 0x3F)
    )
    pos = 1 + alen
    expansion = bytes(frame[pos : pos + n_exp])
    pos += n_exp
    command = frame[pos]
    count = frame[pos + 1]
    data = bytes(frame[pos + 2 : pos + 2 + count])
    ftype = FrameType(d & 0x07)
    if ftype != FrameType.STX and count < 2:
        raise FrameError("malformed", f"a response to command {command} with {count} data bytes has no status bytes")
    return Frame(ftype, address, command, data, bool(raw_addr[0] & 0x80), bool(raw_addr[0] & 0x40), expansion)


def decode_frame(frame: bytes | bytearray) -> Frame:
    """Exactly one frame without preambles (as carried by HART-IP): delimiter..checksum."""
    if len(frame) < 5:
        raise FrameError("truncated", f"{len(frame)} bytes are too short for a HART frame")
    d = frame[0]
    if not _delimiter_ok(d):
        raise FrameError("malformed", f"invalid delimiter 0x{d:02X}")
    hlen = _header_len(d)
    if len(frame) < hlen + 1:
        raise FrameError("truncated", f"{len(frame)} bytes end inside the frame header")
    total = hlen + frame[hlen - 1] + 1
    if len(frame) < total:
        raise FrameError("truncated", f"frame of {total} bytes cut short at {len(frame)}")
    if len(frame) > total:
        raise FrameError("malformed", f"{len(frame) - total} bytes after the end of the frame")
    if checksum(frame[: total - 1]) != frame[total - 1]:
        raise FrameError(
            "checksum", f"checksum 0x{frame[total - 1]:02X} should be 0x{checksum(frame[: total - 1]):02X}"
        )
    return _decode_body(frame)


class FrameReader:
    """Cuts frames out of a byte stream: syncs on preambles, skips noise, resyncs after errors.

    `next_frame()` returns a Frame, None when more bytes are needed, or raises FrameError for a
    frame it had to discard; after an error the stream continues right after the bad
    delimiter, so a good frame hidden behind garbage is still found. Memory is bounded: a
    frame is at most 1 + 5 + 3 + 2 + 255 + 1 bytes and runs of preambles are collapsed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.noise = 0  # bytes skipped that were not part of any frame (monotonic)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def clear(self) -> int:
        """Forget buffered bytes (before a new request: a late answer must not be taken for the next)."""
        n = len(self._buf)
        self._buf.clear()
        return n

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet returned."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """A frame has started (preambles + delimiter seen) but is incomplete: a truncated answer."""
        buf = self._buf
        k = 0
        while k < len(buf) and buf[k] == PREAMBLE:
            k += 1
        return k >= SYNC_PREAMBLES and k < len(buf) and _delimiter_ok(buf[k])

    def _drop(self, n: int, noise: int) -> None:
        del self._buf[:n]
        self.noise += noise

    def next_frame(self) -> Frame | None:
        buf = self._buf
        while buf:
            # leading bytes that cannot start a preamble run are noise
            if buf[0] != PREAMBLE:
                k = 0
                while k < len(buf) and buf[k] != PREAMBLE:
                    k += 1
                self._drop(k, k)
                continue
            k = 0
            while k < len(buf) and buf[k] == PREAMBLE:
                k += 1
            if k > SYNC_PREAMBLES:  # keep just enough preambles to sync; the rest carry nothing
                del buf[: k - SYNC_PREAMBLES]
                k = SYNC_PREAMBLES
            if k == len(buf):
                return None
            d = buf[k]
            if k < SYNC_PREAMBLES or not _delimiter_ok(d):
                self._drop(k + 1, k + 1)
                continue
            hlen = _header_len(d)
            if len(buf) < k + hlen:
                return None
            total = hlen + buf[k + hlen - 1] + 1
            if len(buf) < k + total:
                return None
            frame = bytes(buf[k : k + total])
            if checksum(frame[:-1]) != frame[-1]:
                self._drop(k + 1, k + 1)  # resync just after the delimiter
                raise FrameError("checksum", f"checksum 0x{frame[-1]:02X} should be 0x{checksum(frame[:-1]):02X}")
            del buf[: k + total]
            return _decode_body(frame)
        return None


# ----------------------------------------------------------------------------------------- response codes

_COMM_ERRORS: Final = {
    0x40: "vertical parity error",
    0x20: "overrun error",
    0x10: "framing error",
    0x08: "longitudinal parity error",
    0x02: "buffer overflow",
}
_RESPONSE_CODES: Final = {
    0: "success",
    1: "undefined",
    2: "invalid selection",
    3: "passed parameter too large",
    4: "passed parameter too small",
    5: "too few data bytes received",
    6: "device-specific command error",
    7: "in write protect mode",
    8: "update failure (value not updated)",
    16: "access restricted",
    32: "device busy",
    33: "delayed response initiated",
    34: "delayed response running",
    35: "delayed response dead",
    36: "delayed response conflict",
    64: "command not implemented",
}
# Warnings: the command was executed (data valid), with a caveat. HART common table 5.
_WARNINGS: Final = frozenset({8, 14, 24, 25, 26, 27, 30, 31, *range(96, 128)})


def is_warning(code: int) -> bool:
    return code in _WARNINGS


def comm_error_text(flags: int) -> str:
    names = [text for bit, text in _COMM_ERRORS.items() if flags & bit]
    return "the device received a garbled request: " + (", ".join(names) or f"flags 0x{flags:02X}")


def response_code_text(code: int) -> str:
    if code & COMM_ERROR:
        return comm_error_text(code)
    return f"response code {code} ({_RESPONSE_CODES.get(code, 'warning' if is_warning(code) else 'error')})"


# ----------------------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Command 0: what the device is and the long address to use from now on."""

    expanded_device_type: int
    request_preambles: int
    universal_revision: int
    device_revision: int
    software_revision: int
    hardware_revision: int
    flags: int
    device_id: int
    manufacturer_id: int  # 8-bit before HART 7 (byte 1), 16-bit from HART 7 (bytes 17-18)

    @property
    def address(self) -> LongAddress:
        return LongAddress(
            bytes([(self.expanded_device_type >> 8) & 0x3F, self.expanded_device_type & 0xFF])
            + self.device_id.to_bytes(3, "big")
        )

    def __str__(self) -> str:
        return (
            f"manufacturer 0x{self.manufacturer_id:X}, device type 0x{self.expanded_device_type:04X},"
            f" device id 0x{self.device_id:06X}, HART {self.universal_revision},"
            f" unique id {self.address.unique_id.hex()}"
        )


def _need(payload: bytes, n: int, what: str) -> None:
    if len(payload) < n:
        raise DecodeError(f"{what}: {len(payload)} data bytes, at least {n} expected")


def decode_identity(payload: bytes) -> DeviceIdentity:
    _need(payload, 12, "command 0")
    if payload[0] != 254:
        raise DecodeError(f"command 0: first byte is {payload[0]}, not 254 (expansion code)")
    manufacturer = int.from_bytes(payload[17:19], "big") if payload[4] >= 7 and len(payload) >= 19 else payload[1]
    return DeviceIdentity(
        expanded_device_type=(payload[1] << 8) | payload[2],
        request_preambles=payload[3],
        universal_revision=payload[4],
        device_revision=payload[5],
        software_revision=payload[6],
        hardware_revision=payload[7] >> 3,
        flags=payload[8],
        device_id=int.from_bytes(payload[9:12], "big"),
        manufacturer_id=manufacturer,
    )


def encode_identity(
    manufacturer_id: int, device_type: int, device_id: int, *, request_preambles: int = 5, universal_revision: int = 7
) -> bytes:
    """A command 0 answer (HART 7 layout, 22 bytes; manufacturer in byte 1 and bytes 17-18)."""
    out = bytearray(22)
    out[0] = 254
    out[1] = manufacturer_id & 0x3F
    out[2] = device_type & 0xFF
    out[3] = request_preambles
    out[4] = universal_revision
    out[5] = 1  # device revision
    out[6] = 1  # software revision
    out[7] = 1 << 3  # hardware revision 1, physical signaling code 0 (Bell 202 current)
    out[9:12] = device_id.to_bytes(3, "big")
    out[12] = 5  # minimum response preambles
    out[13] = 4  # maximum device variables
    out[17:19] = manufacturer_id.to_bytes(2, "big")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Variable:
    unit_code: int
    value: float

    @property
    def unit(self) -> str | None:
        return unit_name(self.unit_code)


@dataclass(frozen=True, slots=True)
class DynamicVariables:
    """Command 3: loop current and as many of PV, SV, TV, QV as the device has."""

    loop_current: float
    variables: tuple[Variable, ...]


def _f32(b: bytes, at: int) -> float:
    value: float = struct.unpack_from(">f", b, at)[0]
    return value


def decode_pv(payload: bytes) -> Variable:
    _need(payload, 5, "command 1")
    return Variable(payload[0], _f32(payload, 1))


def encode_pv(unit_code: int, value: float) -> bytes:
    return struct.pack(">Bf", unit_code, value)


def decode_current_percent(payload: bytes) -> tuple[float, float]:
    _need(payload, 8, "command 2")
    return _f32(payload, 0), _f32(payload, 4)


def encode_current_percent(current_ma: float, percent: float) -> bytes:
    return struct.pack(">ff", current_ma, percent)


def decode_dynamic(payload: bytes) -> DynamicVariables:
    _need(payload, 9, "command 3")
    n = min(4, (len(payload) - 4) // 5)
    return DynamicVariables(
        _f32(payload, 0), tuple(Variable(payload[4 + 5 * i], _f32(payload, 5 + 5 * i)) for i in range(n))
    )


def encode_dynamic(loop_current: float, variables: list[tuple[int, float]]) -> bytes:
    return struct.pack(">f", loop_current) + b"".join(struct.pack(">Bf", u, v) for u, v in variables[:4])


def decode_additional_status(payload: bytes) -> bytes:
    """Command 48: device-specific status bytes (6..25 bytes); kept raw for the log."""
    _need(payload, 1, "command 48")
    return payload


def decode_packed_ascii(data: bytes) -> str:
    """HART packed ASCII: four 6-bit characters in three bytes; codes below 0x20 stand for 0x40 + code
    (the letters), so 0x01 is "A" and 0x20 is " ". Trailing spaces are dropped."""
    bits = int.from_bytes(data, "big")
    n = len(data) * 8 // 6
    chars = []
    for i in range(n):
        c = (bits >> (6 * (n - 1 - i))) & 0x3F
        chars.append(chr(c + 0x40 if c < 0x20 else c))
    return "".join(chars).rstrip(" ")


def decode_tag_descriptor(payload: bytes) -> tuple[str, str]:
    """Command 13: (tag, descriptor), packed ASCII of 8 and 16 characters (the date after them is
    not needed)."""
    _need(payload, 18, "command 13")
    return decode_packed_ascii(payload[0:6]), decode_packed_ascii(payload[6:18])


# ----------------------------------------------------------------------------------------- units

# HART common table 2 (engineering units): the codes met on process transmitters. Symbols are
# pint-compatible where a standard symbol exists.
_UNITS: Final[dict[int, str]] = {
    1: "inH2O_68F", 2: "inHg_0C", 3: "ftH2O_68F", 4: "mmH2O_68F", 5: "mmHg_0C", 6: "psi", 7: "bar",
    8: "mbar", 9: "g/cm2", 10: "kg/cm2", 11: "Pa", 12: "kPa", 13: "torr", 14: "atm",
    15: "ft3/min", 16: "gal/min", 17: "L/min", 18: "impgal/min", 19: "m3/h", 20: "ft/s", 21: "m/s",
    22: "gal/s", 23: "Mgal/d", 24: "L/s", 25: "ML/d", 26: "ft3/s", 27: "ft3/d", 28: "m3/s", 29: "m3/d",
    30: "impgal/h", 31: "impgal/d",
    32: "degC", 33: "degF", 34: "degR", 35: "K",
    36: "mV", 37: "ohm", 38: "Hz", 39: "mA",
    40: "gal", 41: "L", 42: "impgal", 43: "m3", 44: "ft", 45: "m", 46: "bbl", 47: "in", 48: "cm", 49: "mm",
    50: "min", 51: "s", 52: "h", 53: "d",
    54: "cSt", 55: "cP", 56: "umho", 57: "%", 58: "V", 59: "pH",
    60: "g", 61: "kg", 62: "t", 63: "lb", 64: "short_ton", 65: "long_ton",
    66: "mS/cm", 67: "uS/cm", 68: "N", 69: "N*m",
    70: "g/s", 71: "g/min", 72: "g/h", 73: "kg/s", 74: "kg/min", 75: "kg/h", 76: "kg/d",
    77: "t/min", 78: "t/h", 79: "t/d", 80: "lb/s", 81: "lb/min", 82: "lb/h", 83: "lb/d",
    90: "SGU", 91: "g/cm3", 92: "kg/m3", 93: "lb/gal", 94: "lb/ft3", 95: "g/mL", 96: "kg/L", 97: "g/L",
    110: "bu", 111: "yd3", 112: "ft3", 113: "in3", 114: "in/s", 115: "in/min", 116: "ft/min",
    117: "deg/s", 118: "rev/s", 119: "rpm", 120: "m/h", 121: "Nm3/h", 122: "NL/h", 123: "scfm",
    127: "kW", 128: "kWh", 129: "hp", 130: "ft3/h", 131: "m3/min", 136: "gal/h", 138: "L/h", 139: "ppm",
    143: "deg", 144: "rad", 145: "inH2O_60F", 149: "vol%", 153: "pF", 161: "%LEL", 163: "kohm",
    166: "Nm3", 167: "NL", 168: "scf", 169: "ppb",
    235: "gal/d", 236: "hL", 237: "MPa", 238: "inH2O_4C", 239: "mmH2O_4C",
}  # fmt: skip
_NO_UNIT: Final = frozenset({250, 251})  # "not used", "none"


def unit_name(code: int) -> str | None:
    """Unit symbol for a HART unit code; None for "not used"/"none"; "hart:<code>" when unknown."""
    if code in _NO_UNIT:
        return None
    return _UNITS.get(code, f"hart:{code}")


# ----------------------------------------------------------------------------------------- HART-IP


class MessageType(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    PUBLISH = 2  # burst data pushed by the server
    ERROR = 3
    NAK = 15


class MessageId(enum.IntEnum):
    SESSION_INITIATE = 0
    SESSION_CLOSE = 1
    KEEP_ALIVE = 2
    TOKEN_PASSING_PDU = 3


_HDR = struct.Struct(">BBBBHH")


@dataclass(frozen=True, slots=True)
class HartIpHeader:
    """The 8-byte HART-IP header; `length` counts the header too."""

    message_type: int
    message_id: int
    status: int
    sequence: int
    length: int
    version: int = HARTIP_VERSION

    def encode(self) -> bytes:
        return _HDR.pack(self.version, self.message_type, self.message_id, self.status, self.sequence, self.length)

    @classmethod
    def decode(cls, data: bytes) -> HartIpHeader:
        if len(data) < HARTIP_HEADER:
            raise FrameError("truncated", f"HART-IP header of {len(data)} bytes (8 expected)")
        version, mtype, mid, status, seq, length = _HDR.unpack_from(data)
        if version not in (1, 2):
            raise FrameError("malformed", f"HART-IP version {version} is not supported")
        if length < HARTIP_HEADER:
            raise FrameError("malformed", f"HART-IP byte count {length} is shorter than the header")
        return cls(mtype, mid, status, seq, length, version)


def hartip_message(message_type: int, message_id: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    """Header + body."""
    if len(body) > 0xFFFF - HARTIP_HEADER:
        raise ValueError("HART-IP body too long")
    hdr = HartIpHeader(message_type, message_id, status, sequence & 0xFFFF, HARTIP_HEADER + len(body))
    return hdr.encode() + body


def session_initiate_body(primary_master: bool, inactivity_ms: int) -> bytes:
    return struct.pack(">BI", 1 if primary_master else 0, inactivity_ms)
