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

Frames are built with `drivers.hart.protocol`; `tests/unit/test_hart_protocol.py` checks that
module against hand-written reference frames, so the simulator does not just mirror the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drivers.hart.protocol import (
    HARTIP_HEADER,
    Frame,
    FrameReader,
    FrameType,
    HartError,
    HartIpHeader,
    LongAddress,
    MessageId,
    MessageType,
    ShortAddress,
    build_response,
    decode_frame,
    encode_current_percent,
    encode_dynamic,
    encode_frame,
    encode_identity,
    encode_pv,
    hartip_message,
)

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

    @property
    def unique_id(self) -> bytes:
        return bytes([self.manufacturer_id & 0x3F, self.device_type]) + self.device_id.to_bytes(3, "big")

    @property
    def address(self) -> LongAddress:
        return LongAddress(self.unique_id)

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

    def _payload(self, command: int) -> tuple[int, bytes]:
        if command == 0:
            ident = encode_identity(
                self.manufacturer_id, self.device_type, self.device_id, request_preambles=self.request_preambles
            )
            return 0, ident
        if command == 1:
            return 0, encode_pv(*self.variables[0])
        if command == 2:
            return 0, encode_current_percent(self.loop_current, self.percent_range)
        if command == 3:
            return 0, encode_dynamic(self.loop_current, self.variables)
        if command == 48:
            return 0, self.additional_status + bytes([0, 0])
        return 64, b""

    def addressed(self, frame: Frame) -> bool:
        if isinstance(frame.address, ShortAddress):
            return frame.command == 0 and frame.address.polling == self.polling_address  # HART 5+: cmd 0 only
        return frame.address.unique_id == self.unique_id

    def answer(self, frame: Frame, *, serial: bool) -> bytes | None:
        """The reply to one request (preambles included on serial), or None for silence."""
        if frame.frame_type != FrameType.STX or not self.addressed(frame):
            return None
        self.requests.append(frame.command)
        fault = self._active_fault(frame.command)
        if fault == "silent":
            return None
        rc, payload = self._payload(frame.command)
        status = self.status
        if fault == "busy":
            rc, payload = 32, b""
        elif fault == "comm_error":
            rc, status, payload = 0x88, 0, b""  # longitudinal parity error seen by the device
        elif fault == "not_implemented":
            rc, payload = 64, b""
        elif fault == "short_data":
            payload = payload[:2]
        out = build_response(
            frame.address,
            frame.command,
            rc,
            status,
            payload,
            preambles=self.response_preambles if serial else 0,
            primary_master=frame.primary_master,
            burst=self.burst,
        )
        if fault == "malformed":  # a well-checksummed answer without the two status bytes
            preambles = self.response_preambles if serial else 0
            out = encode_frame(FrameType.ACK, frame.address, frame.command, b"\x00", preambles=preambles)
        elif fault == "bad_checksum":
            out = out[:-1] + bytes([out[-1] ^ 0x5A])
        elif fault == "truncate":
            out = out[: len(out) - 4]
        elif fault == "noise" and serial:
            out = bytes(self.rng.randrange(0, 0xFF) for _ in range(7)) + out  # never 0xFF: not a preamble
        return out

    def burst_frame(self, *, serial: bool) -> bytes:
        rc, payload = self._payload(self.burst_command)
        out = build_response(
            self.address,
            self.burst_command,
            rc,
            self.status,
            payload,
            frame_type=FrameType.BACK,
            preambles=self.response_preambles if serial else 0,
            burst=True,
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

    def __init__(self, device: SimDevice, path: str) -> None:
        self.device = device
        self.path = path
        self.fd = -1
        self.bad_requests = 0
        self._reader = FrameReader()
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
            except HartError:
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


class HartIpSim:
    """A HART-IP server for one device on 127.0.0.1 (a free port unless given)."""

    def __init__(self, device: SimDevice, port: int = 0) -> None:
        self.device = device
        self.port = port
        self.sessions = 0
        self.keepalives = 0
        self.refuse_status: int | None = None  # answer session initiate with this status
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
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
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def drop_connections(self) -> None:
        for w in list(self._writers):
            w.close()

    def _burst_tick(self) -> None:
        frame = self.device.burst_frame(serial=False)
        if frame:
            msg = hartip_message(MessageType.PUBLISH, MessageId.TOKEN_PASSING_PDU, 0, frame)
            for w in list(self._writers):
                if not w.is_closing():
                    w.write(msg)
        self._burst = asyncio.get_running_loop().call_later(self.device.burst_period, self._burst_tick)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_session = False
        try:
            while True:
                hdr = HartIpHeader.decode(await reader.readexactly(HARTIP_HEADER))
                body = await reader.readexactly(hdr.length - HARTIP_HEADER)
                if hdr.message_id == MessageId.SESSION_INITIATE:
                    status = self.refuse_status or 0
                    mtype = MessageType.RESPONSE if status == 0 else MessageType.ERROR
                    writer.write(hartip_message(mtype, hdr.message_id, hdr.sequence, body, status))
                    if status:
                        break
                    self.sessions += 1
                    in_session = True
                    self._writers.add(writer)
                elif hdr.message_id == MessageId.SESSION_CLOSE:
                    writer.write(hartip_message(MessageType.RESPONSE, hdr.message_id, hdr.sequence))
                    break
                elif hdr.message_id == MessageId.KEEP_ALIVE:
                    self.keepalives += 1
                    writer.write(hartip_message(MessageType.RESPONSE, hdr.message_id, hdr.sequence))
                elif hdr.message_id == MessageId.TOKEN_PASSING_PDU and in_session:
                    try:
                        frame = decode_frame(body)
                    except HartError:
                        writer.write(hartip_message(MessageType.NAK, hdr.message_id, hdr.sequence, status=5))
                        continue
                    reply = self.device.answer(frame, serial=False)
                    if reply:
                        writer.write(hartip_message(MessageType.RESPONSE, hdr.message_id, hdr.sequence, reply))
                else:
                    writer.write(hartip_message(MessageType.NAK, hdr.message_id, hdr.sequence, status=2))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, HartError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


__all__ = ["Fault", "HartIpSim", "SerialSim", "SimDevice", "SocatPair", "socat_pair"]
