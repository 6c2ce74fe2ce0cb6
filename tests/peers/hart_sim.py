"""A HART field device for the tests, on 127.0.0.1 only.

* `SimDevice`: the device's state (identity, dynamic variables, status byte, burst mode) and a
  fault switch: "bad_checksum", "truncate", "noise" (garbage before the preambles), "busy"
  (response code 32), "comm_error", "not_implemented", "short_data" (payload too short),
  "malformed" (no status bytes), "silent". A fault can be
  limited to some commands and to a number of answers, after which the device is healthy again.
* `SerialSim`: serves a SimDevice on one end of a socat pty pair (`socat_pair`), reading with
  `loop.add_reader` on the pty; burst frames are sent from a timer, so nothing here owns a task.
* `HartIpSim`: serves the same SimDevice as a HART-IP server (TCP): session initiate/close,
  keep-alive, token-passing PDUs, and burst frames published to every open session.

Frames are built and parsed here, sharing no code with `drivers.hart` (the code under test), so a
bug in the driver's codec cannot be mirrored by its peer: the longitudinal parity and the unique
id come from the independent PyPI `hart-protocol` package (`hart_protocol.tools`); the rest of the
framing (delimiter, short/long address with master and burst bits, byte count, status bytes,
preambles, the command payloads and the HART-IP header), which that package does not cover for a
slave, is written below from the HART specification. `tests/unit/test_hart_sim_frames.py` pins
these frames to golden bytes derived by hand from the specification and checks that the driver
and `hart_protocol`'s unpacker decode them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import struct
import subprocess
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from hart_protocol import tools as hart_tools

Fault = Literal[
    "ok",
    "bad_checksum",
    "truncate",
    "noise",
    "busy",
    "comm_error",
    "not_implemented",
    "short_data",
    "malformed",
    "silent",
]

# ----------------------------------------------------------------------------------------- framing
#
# Token-passing data link layer (HART FSK, asynchronous 1200 bit/s 8O1):
#   preambles 0xFF x N | delimiter | address (1 or 5) | expansion (0..3) | command | byte count | data | checksum
# Delimiter: bit 7 = long address, bits 6-5 = number of expansion bytes, bits 4-3 = physical layer
# type (0 = asynchronous), bits 2-0 = frame type. Address byte 0: bit 7 = primary master, bit 6 =
# the field device is in burst mode; a short address carries the polling address in bits 5-0, a
# long one the 38-bit unique id (5 bytes, the top two bits of the first byte masked off).
# Checksum: longitudinal parity, the XOR of every byte from the delimiter to the last data byte.

PREAMBLE: Final = 0xFF
SYNC_PREAMBLES: Final = 2  # a receiver must sync on as few as two preambles
BACK: Final = 0x01  # burst frame, field device to master, unsolicited
STX: Final = 0x02  # master to field device
ACK: Final = 0x06  # field device to master, answering an STX
LONG_ADDRESS: Final = 0x80  # delimiter bit 7
MASTER_BIT: Final = 0x80  # address byte 0 bit 7: primary (1) or secondary (0) master
BURST_BIT: Final = 0x40  # address byte 0 bit 6: the field device is in burst mode
BUSY: Final = 32
NOT_IMPLEMENTED: Final = 64
LONGITUDINAL_PARITY_ERROR: Final = 0x80 | 0x08  # response byte 0: bit 7 = communication error, bit 3 = LRC


class FrameDamaged(ValueError):
    """Bytes received by the device that are not a usable frame."""


@dataclass(frozen=True, slots=True)
class Received:
    """One frame as the device received it; `address` is the raw field, master and burst bits included."""

    frame_type: int
    address: bytes  # 1 byte (short) or 5 bytes (long)
    command: int
    data: bytes

    @property
    def long(self) -> bool:
        return len(self.address) == 5

    @property
    def primary_master(self) -> bool:
        return bool(self.address[0] & MASTER_BIT)

    @property
    def polling_address(self) -> int:
        return self.address[0] & 0x3F

    @property
    def unique_id(self) -> bytes:
        return bytes([self.address[0] & 0x3F]) + self.address[1:]


def _delimiter_valid(d: int) -> bool:
    return d & 0x18 == 0 and d & 0x07 in (BACK, STX, ACK)


def _header_length(d: int) -> int:
    """Delimiter through byte count."""
    return 1 + (5 if d & LONG_ADDRESS else 1) + ((d >> 5) & 0x03) + 2


def _parity(body: bytes) -> int:
    return hart_tools.calculate_checksum(bytes(body))[0]


def _split(frame: bytes) -> Received:
    """`frame`: delimiter..checksum, length and parity already checked."""
    d = frame[0]
    alen = 5 if d & LONG_ADDRESS else 1
    pos = 1 + alen + ((d >> 5) & 0x03)  # expansion bytes are skipped
    count = frame[pos + 1]
    return Received(d & 0x07, bytes(frame[1 : 1 + alen]), frame[pos], bytes(frame[pos + 2 : pos + 2 + count]))


def parse_frame(frame: bytes) -> Received:
    """Exactly one frame without preambles (a HART-IP token-passing PDU)."""
    if len(frame) < 5 or not _delimiter_valid(frame[0]):
        raise FrameDamaged(f"not a HART frame: {frame[:8].hex()}")
    hlen = _header_length(frame[0])
    if len(frame) < hlen or len(frame) != hlen + frame[hlen - 1] + 1:
        raise FrameDamaged(f"a frame of {len(frame)} bytes does not match its byte count")
    if _parity(frame[:-1]) != frame[-1]:
        raise FrameDamaged("longitudinal parity error")
    return _split(frame)


class RequestReader:
    """Cuts frames out of the serial byte stream: syncs on two or more preambles, skips noise."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> Received | None:
        """A frame, None when more bytes are needed; FrameDamaged for a frame it had to drop."""
        buf = self._buf
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                del buf[: len(buf) - 1 if buf.endswith(b"\xff") else len(buf)]
                return None
            k = start
            while k < len(buf) and buf[k] == PREAMBLE:
                k += 1
            del buf[: k - SYNC_PREAMBLES]  # two preambles are enough to keep the sync
            k = SYNC_PREAMBLES
            if k == len(buf):
                return None
            d = buf[k]
            if not _delimiter_valid(d):
                del buf[: k + 1]
                continue
            hlen = _header_length(d)
            if len(buf) < k + hlen:
                return None
            total = hlen + buf[k + hlen - 1] + 1
            if len(buf) < k + total:
                return None
            frame = bytes(buf[k : k + total])
            if _parity(frame[:-1]) != frame[-1]:
                del buf[: k + 1]  # resync right after this delimiter
                raise FrameDamaged("longitudinal parity error")
            del buf[: k + total]
            return _split(frame)


def build_frame(frame_type: int, address: bytes, command: int, data: bytes, *, preambles: int) -> bytes:
    """Preambles + delimiter..data + longitudinal parity; `address` already carries its top bits."""
    delimiter = frame_type | (LONG_ADDRESS if len(address) == 5 else 0)
    body = bytes([delimiter]) + address + bytes([command, len(data)]) + data
    return bytes([PREAMBLE]) * preambles + body + bytes([_parity(body)])


def with_bits(address: bytes, *, primary_master: bool, burst: bool) -> bytes:
    """The address field with the master and burst bits of byte 0 set as given."""
    first = (address[0] & 0x3F) | (MASTER_BIT if primary_master else 0) | (BURST_BIT if burst else 0)
    return bytes([first]) + address[1:]


def _f32(value: float) -> bytes:
    return struct.pack(">f", value)  # HART floats: IEEE 754 single precision, most significant byte first


def pack_ascii(text: str, length: int) -> bytes:
    """HART packed ASCII (common practice spec): upper-cased, padded with spaces to `length`
    characters, each kept as its low 6 bits, four characters to three bytes."""
    chars = text.upper().ljust(length)[:length]
    out = bytearray()
    for i in range(0, length, 4):
        a, b, c, d = (ord(ch) & 0x3F for ch in chars[i : i + 4])
        out += bytes([(a << 2) | (b >> 4), ((b & 0x0F) << 4) | (c >> 2), ((c & 0x03) << 6) | d])
    return bytes(out)


@dataclass
class Multidrop:
    """Several devices on one cable (multidrop): each answers what is addressed to it."""

    devices: list[SimDevice]
    burst: bool = False  # no burst mode on a multidrop cable here
    burst_period: float = 0.05

    def burst_frame(self, *, serial: bool) -> bytes:
        return b""

    def answer(self, frame: Received, *, serial: bool) -> bytes | None:
        for d in self.devices:
            reply = d.answer(frame, serial=serial)
            if reply is not None:
                return reply
        return None


# ----------------------------------------------------------------------------------------- the device


@dataclass
class SimDevice:
    """A pressure transmitter with a temperature SV by default."""

    manufacturer_id: int = 0x26
    device_type: int = 0x1A
    device_id: int = 0x123456
    polling_address: int = 0
    request_preambles: int = 5
    response_preambles: int = 5
    loop_current: float = 12.0
    percent_range: float = 50.0
    variables: list[tuple[int, float]] = field(
        default_factory=lambda: [(7, 2.5), (32, 21.25), (57, 40.0), (39, 12.0)]  # bar, degC, %, mA
    )
    status: int = 0  # field device status byte
    additional_status: bytes = bytes(6)
    fault: Fault = "ok"
    fault_commands: set[int] | None = None  # None: every command
    fault_count: int | None = None  # answers affected before healing; None: until changed
    burst: bool = False
    burst_command: int = 3
    burst_period: float = 0.05
    requests: list[int] = field(default_factory=list)  # commands received, in order
    rng: random.Random = field(default_factory=lambda: random.Random(43))
    tag: str | None = None  # command 13 (tag, descriptor, date) is answered only when set
    descriptor: str = ""

    @property
    def unique_id(self) -> bytes:
        """The 5-byte long address: manufacturer (6 bits), device type, 24-bit device id."""
        uid: bytes = hart_tools.calculate_long_address(
            self.manufacturer_id & 0x3F, self.device_type, self.device_id.to_bytes(3, "big")
        )
        return uid

    def set_fault(self, fault: Fault, *, commands: set[int] | None = None, count: int | None = None) -> None:
        self.fault, self.fault_commands, self.fault_count = fault, commands, count

    def _active_fault(self, command: int) -> Fault:
        if self.fault == "ok" or (self.fault_commands is not None and command not in self.fault_commands):
            return "ok"
        fault = self.fault
        if self.fault_count is not None:
            self.fault_count -= 1
            if self.fault_count <= 0:
                self.fault, self.fault_count = "ok", None
        return fault

    def identity(self) -> bytes:
        """Command 0 "read unique identifier", HART 7 layout (22 bytes)."""
        return (
            bytes([254])  # 0: expansion code
            + bytes([self.manufacturer_id & 0x3F, self.device_type & 0xFF])  # 1-2: expanded device type
            + bytes([self.request_preambles])  # 3: minimum preambles, master to slave
            + bytes([7])  # 4: HART protocol major revision (universal command revision)
            + bytes([1, 1])  # 5: device revision, 6: software revision
            + bytes([1 << 3])  # 7: hardware revision 1 (bits 7-3), physical signaling 0 = Bell 202 current
            + bytes([0])  # 8: flags
            + self.device_id.to_bytes(3, "big")  # 9-11: device id
            + bytes([5, 4])  # 12: minimum preambles slave to master, 13: maximum device variables
            + bytes(2)  # 14-15: configuration change counter
            + bytes([0])  # 16: extended field device status
            + self.manufacturer_id.to_bytes(2, "big")  # 17-18: manufacturer identification code
            + bytes(2)  # 19-20: private label distributor
            + bytes([0])  # 21: device profile
        )

    def _payload(self, command: int) -> tuple[int, bytes]:
        """(response code, data after the two status bytes) of the universal commands it implements."""
        if command == 0:
            return 0, self.identity()
        if command == 1:  # PV unit code, PV
            unit, value = self.variables[0]
            return 0, bytes([unit]) + _f32(value)
        if command == 2:  # loop current (mA), percent of range
            return 0, _f32(self.loop_current) + _f32(self.percent_range)
        if command == 3:  # loop current, then unit code + value of PV, SV, TV, QV as far as they exist
            return 0, _f32(self.loop_current) + b"".join(bytes([u]) + _f32(v) for u, v in self.variables[:4])
        if command == 13 and self.tag is not None:  # tag (8 chars), descriptor (16), date (day, month, year-1900)
            return 0, pack_ascii(self.tag, 8) + pack_ascii(self.descriptor, 16) + bytes([1, 1, 124])
        if command == 48:  # additional device status: device-specific bytes, extended status, operating mode
            return 0, self.additional_status + bytes([0, 0])
        return NOT_IMPLEMENTED, b""

    def addressed(self, frame: Received) -> bool:
        if not frame.long:
            return frame.command == 0 and frame.polling_address == self.polling_address  # HART 5+: cmd 0 only
        return frame.unique_id == self.unique_id

    def answer(self, frame: Received, *, serial: bool) -> bytes | None:
        """The reply to one request (preambles included on serial), or None for silence."""
        if frame.frame_type != STX or not self.addressed(frame):
            return None
        self.requests.append(frame.command)
        fault = self._active_fault(frame.command)
        if fault == "silent":
            return None
        rc, payload = self._payload(frame.command)
        status = self.status
        if fault == "busy":
            rc, payload = BUSY, b""
        elif fault == "comm_error":
            rc, status, payload = LONGITUDINAL_PARITY_ERROR, 0, b""  # byte 1: communication error flags
        elif fault == "not_implemented":
            rc, payload = NOT_IMPLEMENTED, b""
        elif fault == "short_data":
            payload = payload[:2]
        preambles = self.response_preambles if serial else 0
        address = with_bits(frame.address, primary_master=frame.primary_master, burst=self.burst)
        data = bytes([rc & 0xFF, status & 0xFF]) + payload
        if fault == "malformed":  # a well-checksummed answer without the two status bytes
            data = b"\x00"
        out = build_frame(ACK, address, frame.command, data, preambles=preambles)
        if fault == "bad_checksum":
            out = out[:-1] + bytes([out[-1] ^ 0x5A])
        elif fault == "truncate":
            out = out[: len(out) - 4]
        elif fault == "noise" and serial:
            out = bytes(self.rng.randrange(0, 0xFF) for _ in range(7)) + out  # never 0xFF: not a preamble
        return out

    def burst_frame(self, *, serial: bool) -> bytes:
        """A BACK frame of `burst_command`, long address, primary master and burst bits set."""
        rc, payload = self._payload(self.burst_command)
        out = build_frame(
            BACK,
            with_bits(self.unique_id, primary_master=True, burst=True),
            self.burst_command,
            bytes([rc, self.status & 0xFF]) + payload,
            preambles=self.response_preambles if serial else 0,
        )
        fault = self._active_fault(self.burst_command)
        if fault == "bad_checksum":
            out = out[:-1] + bytes([out[-1] ^ 0x5A])
        elif fault == "silent":
            return b""
        return out


# ----------------------------------------------------------------------------------------- serial


@dataclass
class SocatPair:
    """A virtual null-modem cable: `master` for the driver, `slave` for the simulated device."""

    master: str
    slave: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Pull the cable (both ptys vanish), as when a USB modem is unplugged."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def socat_pair(directory: Path) -> Iterator[SocatPair]:
    """Start `socat` with two linked ptys under `directory`; stopped on exit."""
    exe = shutil.which("socat") or "/usr/bin/socat"
    master, slave = str(directory / "master"), str(directory / "slave")
    proc = subprocess.Popen(
        [exe, "-d", "-d", f"pty,raw,echo=0,link={master}", f"pty,raw,echo=0,link={slave}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pair = SocatPair(master, slave, proc)
    try:
        deadline = time.monotonic() + 5
        while not (Path(master).exists() and Path(slave).exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield pair
    finally:
        pair.stop()


class SerialSim:
    """The device on a pty: answers requests as they arrive; bursts from a timer when enabled."""

    def __init__(self, device: SimDevice | Multidrop, path: str) -> None:
        self.device = device
        self.path = path
        self.fd = -1
        self.bad_requests = 0
        self._reader = RequestReader()
        self._burst: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._on_readable)
        if self.device.burst:
            self._burst = loop.call_later(self.device.burst_period, self._burst_tick)

    def stop(self) -> None:
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1

    def write(self, data: bytes) -> None:
        if self.fd >= 0 and data:
            with contextlib.suppress(BlockingIOError):
                os.write(self.fd, data)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the other end of the cable is gone: stop watching a dead fd
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        self._reader.feed(data)
        while True:
            try:
                frame = self._reader.next_frame()
            except FrameDamaged:
                self.bad_requests += 1
                continue
            if frame is None:
                return
            reply = self.device.answer(frame, serial=True)
            if reply:
                self.write(reply)

    def _burst_tick(self) -> None:
        self.write(self.device.burst_frame(serial=True))
        self._burst = asyncio.get_running_loop().call_later(self.device.burst_period, self._burst_tick)


# ----------------------------------------------------------------------------------------- HART-IP
#
# HART-IP (TCP, port 5094): every message starts with an 8-byte header, big-endian:
#   version (1) | message type | message id | status | sequence number (2) | byte count (2, header included)
# Message types: 0 request, 1 response, 2 publish (burst data), 3 error, 15 NAK. Message ids:
# 0 session initiate (body: master type, inactivity close timer in ms, echoed in the response),
# 1 session close, 2 keep alive, 3 token-passing PDU (one HART frame, no preambles).

HARTIP_VERSION: Final = 1
HARTIP_HEADER: Final = struct.Struct(">BBBBHH")
REQUEST, RESPONSE, PUBLISH, ERROR, NAK = 0, 1, 2, 3, 15
SESSION_INITIATE, SESSION_CLOSE, KEEP_ALIVE, TOKEN_PASSING_PDU = 0, 1, 2, 3


def hartip_message(message_type: int, message_id: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    """Header + body."""
    header = HARTIP_HEADER.pack(
        HARTIP_VERSION, message_type, message_id, status, sequence & 0xFFFF, HARTIP_HEADER.size + len(body)
    )
    return header + body


class HartIpSim:
    """A HART-IP server for one device on 127.0.0.1 (a free port unless given)."""

    def __init__(self, device: SimDevice | Multidrop, port: int = 0) -> None:
        self.device = device
        self.port = port
        self.sessions = 0
        self.keepalives = 0
        self.refuse_status: int | None = None  # answer session initiate with this status
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # open sessions: burst frames go there
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # asyncio's own per-connection tasks
        self._burst: asyncio.TimerHandle | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.device.burst:
            self._burst = asyncio.get_running_loop().call_later(self.device.burst_period, self._burst_tick)
        return self.port

    async def stop(self) -> None:
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
        if self._server is not None:
            self._server.close()
        for w in list(self._connections):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._handlers:  # Python 3.11's wait_closed does not wait for them; closed above, they end now
            async with asyncio.timeout(5):
                await asyncio.wait(list(self._handlers))

    def drop_connections(self) -> None:
        for w in list(self._connections):
            w.close()

    def _burst_tick(self) -> None:
        frame = self.device.burst_frame(serial=False)
        if frame:
            msg = hartip_message(PUBLISH, TOKEN_PASSING_PDU, 0, frame)
            for w in list(self._writers):
                if not w.is_closing():
                    w.write(msg)
        self._burst = asyncio.get_running_loop().call_later(self.device.burst_period, self._burst_tick)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_session = False
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections.add(writer)
        try:
            while True:
                version, _mtype, mid, _status, seq, length = HARTIP_HEADER.unpack(
                    await reader.readexactly(HARTIP_HEADER.size)
                )
                if version not in (1, 2) or length < HARTIP_HEADER.size:
                    break  # not HART-IP: hang up
                body = await reader.readexactly(length - HARTIP_HEADER.size)
                if mid == SESSION_INITIATE:
                    status = self.refuse_status or 0
                    writer.write(hartip_message(RESPONSE if status == 0 else ERROR, mid, seq, body, status))
                    if status:
                        break
                    self.sessions += 1
                    in_session = True
                    self._writers.add(writer)
                elif mid == SESSION_CLOSE:
                    writer.write(hartip_message(RESPONSE, mid, seq))
                    break
                elif mid == KEEP_ALIVE:
                    self.keepalives += 1
                    writer.write(hartip_message(RESPONSE, mid, seq))
                elif mid == TOKEN_PASSING_PDU and in_session:
                    try:
                        frame = parse_frame(body)
                    except FrameDamaged:
                        writer.write(hartip_message(NAK, mid, seq, status=5))
                        continue
                    reply = self.device.answer(frame, serial=False)
                    if reply:
                        writer.write(hartip_message(RESPONSE, mid, seq, reply))
                else:
                    writer.write(hartip_message(NAK, mid, seq, status=2))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            self._connections.discard(writer)
            self._handlers.discard(task)
            writer.close()


__all__ = [
    "Fault",
    "FrameDamaged",
    "HartIpSim",
    "Multidrop",
    "Received",
    "RequestReader",
    "SerialSim",
    "SimDevice",
    "SocatPair",
    "build_frame",
    "hartip_message",
    "pack_ascii",
    "parse_frame",
    "socat_pair",
]
