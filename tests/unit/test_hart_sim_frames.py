"""The HART simulator's frames against golden bytes derived by hand from the HART specification.

`tests/peers/hart_sim.py` shares no code with `drivers.hart`; these golden frames tie both ends
to the specification instead of to each other: the simulator must emit exactly these bytes, the
driver must decode them to the values written next to them, and where the independent
`hart-protocol` package can read a frame (its unpacker knows ACK frames only) it must agree.

Derivation, the same for every frame below (HART token-passing data link layer):

* preambles: 0xFF x 5 on serial (`SimDevice.response_preambles`), none inside HART-IP;
* delimiter: bit 7 = long address, bits 6-5 = expansion bytes (0), bits 4-3 = physical layer
  (0, asynchronous), bits 2-0 = frame type: 0x02 STX (request), 0x06 ACK (answer), 0x01 BACK
  (burst); so 02/06/01 with a short and 82/86/81 with a long address;
* address: short = bit 7 primary master | bit 6 burst mode | polling address; long = the unique
  id 26 1A 12 34 56 (manufacturer 0x26 & 0x3F, device type 0x1A, device id 0x123456) with the
  master and burst bits OR-ed into its first byte: 0x26 -> A6 (primary), E6 (primary + burst),
  26 (secondary), 66 (secondary + burst);
* command, byte count (response code and field device status included in an answer), data;
* checksum: longitudinal parity, the XOR of the delimiter through the last data byte.

Floats are IEEE 754 single precision, most significant byte first:
2.5 = 1.25 * 2^1 -> 0 10000000 0100... = 40 20 00 00; 12.0 = 1.5 * 2^3 -> 41 40 00 00;
21.25 = 1.328125 * 2^4 -> 41 AA 00 00; 40.0 = 1.25 * 2^5 -> 42 20 00 00; 50.0 = 1.5625 * 2^5 -> 42 48 00 00.
Unit codes (common table 2): 7 bar, 0x20 = 32 degC, 0x39 = 57 %, 0x27 = 39 mA.
"""

from __future__ import annotations

import asyncio
import io
import struct
from functools import reduce
from typing import Any

import pytest
from hart_protocol import Unpacker, universal

from drivers.hart import protocol as p
from drivers.hart.protocol import FrameError, FrameReader, FrameType, LongAddress, ShortAddress
from peers.hart_sim import Fault, FrameDamaged, HartIpSim, RequestReader, SimDevice, parse_frame

UID = bytes.fromhex("261A123456")
PRE = b"\xff" * 5


def golden(spec: str, *, preambles: bool = True) -> bytes:
    """Hex with spaces -> bytes (preambles prefixed); the checksum is written out in `spec`."""
    return (PRE if preambles else b"") + bytes.fromhex(spec)


# --- requests (master -> device), as the driver and hart-protocol send them --------------------
# 02 STX short | 80 primary master, polling address 0 | 00 command 0 | 00 no data | 82 = 02^80^00^00
REQ_CMD0_POLL0 = golden("02 80 00 00 82")
# 82 STX long | A6 1A 12 34 56 | 01 command 1 | 00 | 4F = 82^A6^1A^12^34^56^01^00
REQ_CMD1 = golden("82 A6 1A 12 34 56 01 00 4F")
REQ_CMD2 = golden("82 A6 1A 12 34 56 02 00 4C")
REQ_CMD3 = golden("82 A6 1A 12 34 56 03 00 4D")
REQ_CMD48 = golden("82 A6 1A 12 34 56 30 00 7E")  # 0x30 = command 48
REQ_CMD13 = golden("82 A6 1A 12 34 56 0D 00 43")  # a command the simulator does not implement
# 26: secondary master (bit 7 clear)
REQ_CMD1_SECONDARY = golden("82 26 1A 12 34 56 01 00 CF")

# --- answers (device -> master) ----------------------------------------------------------------
# Command 0, HART 7 layout: 06 ACK short | 80 primary master, polling 0 | 00 command 0 |
# 18 byte count 24 = 2 status + 22 data | 00 response code | 00 device status | FE expansion code |
# 26 1A expanded device type | 05 request preambles | 07 HART 7 | 01 device rev | 01 software rev |
# 08 hardware rev 1 << 3, physical signaling 0 | 00 flags | 12 34 56 device id | 05 response preambles |
# 04 device variables | 00 00 config change counter | 00 extended status | 00 26 manufacturer |
# 00 00 private label | 00 device profile | 01 checksum
ACK_CMD0 = golden(
    "06 80 00 18 00 00 FE 26 1A 05 07 01 01 08 00 12 34 56 05 04 00 00 00 00 26 00 00 00 01",
)
# 86 ACK long | A6 1A 12 34 56 | 01 | 07 = 2 status + unit + float | 00 rc | 00 status | 07 bar | 2.5 | 2B
ACK_CMD1 = golden("86 A6 1A 12 34 56 01 07 00 00 07 40 20 00 00 2B")
# command 2: 0A = 2 status + 2 floats | 12.0 mA | 50.0 % | 49
ACK_CMD2 = golden("86 A6 1A 12 34 56 02 0A 00 00 41 40 00 00 42 48 00 00 49")
# command 3: 1A = 26 = 2 status + loop current + 4 x (unit + float) | 12.0 mA |
# 07 2.5 bar | 20 21.25 degC | 39 40.0 % | 27 12.0 mA | 83
ACK_CMD3 = golden(
    "86 A6 1A 12 34 56 03 1A 00 00 41 40 00 00 07 40 20 00 00 20 41 AA 00 00 39 42 20 00 00 27 41 40 00 00 83"
)
# command 48 with device status 0x10 (more status available): 0A = 2 status + 6 device-specific
# bytes 01..06 + extended device status 00 + operating mode 00 | 67
ACK_CMD48 = golden("86 A6 1A 12 34 56 30 0A 00 10 01 02 03 04 05 06 00 00 67")
# response code 0x40 = 64 "command not implemented", no data | 05
ACK_CMD13_NOT_IMPLEMENTED = golden("86 A6 1A 12 34 56 0D 02 40 00 05")
# to a secondary master, device in burst mode: 66 = 0x40 burst | 0x26 | EB
ACK_CMD1_SECONDARY_BURST = golden("86 66 1A 12 34 56 01 07 00 00 07 40 20 00 00 EB")
# burst frame: 81 BACK long | E6 = 0x80 primary | 0x40 burst | 0x26 | command 1 answer | 6C
BACK_CMD1 = golden("81 E6 1A 12 34 56 01 07 00 00 07 40 20 00 00 6C")

# --- fault answers to command 3 --------------------------------------------------------------
ACK_BUSY = golden("86 A6 1A 12 34 56 03 02 20 00 6B")  # 20 = 32 device busy
ACK_COMM_ERROR = golden("86 A6 1A 12 34 56 03 02 88 00 C3")  # 88: bit 7 comm error, bit 3 longitudinal parity
ACK_MALFORMED = golden("86 A6 1A 12 34 56 03 01 00 48")  # one data byte: no field device status
ACK_SHORT_DATA = golden("86 A6 1A 12 34 56 03 04 00 00 41 40 4C")  # 04 = 2 status + 2 data bytes | 4C
ACK_BAD_CHECKSUM = ACK_CMD3[:-1] + bytes([0x83 ^ 0x5A])  # the simulator's damage: parity XOR 5A
ACK_TRUNCATED = ACK_CMD3[:-4]  # the last four bytes never arrive


def xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


ALL_GOLDEN = [
    REQ_CMD0_POLL0,
    REQ_CMD1,
    REQ_CMD2,
    REQ_CMD3,
    REQ_CMD48,
    REQ_CMD13,
    REQ_CMD1_SECONDARY,
    ACK_CMD0,
    ACK_CMD1,
    ACK_CMD2,
    ACK_CMD3,
    ACK_CMD48,
    ACK_CMD13_NOT_IMPLEMENTED,
    ACK_CMD1_SECONDARY_BURST,
    BACK_CMD1,
    ACK_BUSY,
    ACK_COMM_ERROR,
    ACK_MALFORMED,
    ACK_SHORT_DATA,
]


@pytest.mark.parametrize("frame", ALL_GOLDEN, ids=lambda f: f[5:].hex()[:16])
def test_golden_frames_are_self_consistent(frame: bytes) -> None:
    """A typo in a golden frame would otherwise test nothing: byte count and parity must fit."""
    body = frame[5:]
    header = 1 + (5 if body[0] & 0x80 else 1) + 2
    assert len(body) == header + body[header - 1] + 1
    assert xor(body[:-1]) == body[-1]


def sim_answer(dev: SimDevice, request: bytes) -> bytes | None:
    """What the simulator writes to the serial line for `request` (preambles included)."""
    reader = RequestReader()
    reader.feed(request)
    frame = reader.next_frame()
    assert frame is not None and reader.next_frame() is None
    return dev.answer(frame, serial=True)


# ----------------------------------------------------------------------------------------- simulator


def test_golden_requests_match_the_hart_protocol_package() -> None:
    """The requests the simulator is fed are what an independent master builds."""
    assert universal.read_primary_variable(UID) == REQ_CMD1
    assert universal.read_loop_current_and_percent(UID) == REQ_CMD2
    assert universal.read_dynamic_variables_and_loop_current(UID) == REQ_CMD3
    assert p.build_request(ShortAddress(0), 0) == REQ_CMD0_POLL0  # and what the driver sends
    assert p.build_request(LongAddress(UID), 3) == REQ_CMD3


@pytest.mark.parametrize(
    ("command", "request_", "answer"),
    [
        (0, REQ_CMD0_POLL0, ACK_CMD0),
        (1, REQ_CMD1, ACK_CMD1),
        (2, REQ_CMD2, ACK_CMD2),
        (3, REQ_CMD3, ACK_CMD3),
        (13, REQ_CMD13, ACK_CMD13_NOT_IMPLEMENTED),
    ],
    ids=["cmd0", "cmd1", "cmd2", "cmd3", "cmd13"],
)
def test_simulator_answers_with_golden_bytes(command: int, request_: bytes, answer: bytes) -> None:
    dev = SimDevice()
    assert sim_answer(dev, request_) == answer
    assert dev.requests == [command]
    # over HART-IP the same frame without preambles
    assert dev.answer(parse_frame(request_[5:]), serial=False) == answer[5:]


def test_simulator_command_48_and_status() -> None:
    dev = SimDevice(status=0x10, additional_status=bytes([1, 2, 3, 4, 5, 6]))
    assert sim_answer(dev, REQ_CMD48) == ACK_CMD48


def test_simulator_master_and_burst_bits() -> None:
    dev = SimDevice(burst=True, burst_command=1)
    assert sim_answer(dev, REQ_CMD1_SECONDARY) == ACK_CMD1_SECONDARY_BURST
    assert dev.burst_frame(serial=True) == BACK_CMD1
    assert dev.burst_frame(serial=False) == BACK_CMD1[5:]


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        ("busy", ACK_BUSY),
        ("comm_error", ACK_COMM_ERROR),
        ("malformed", ACK_MALFORMED),
        ("bad_checksum", ACK_BAD_CHECKSUM),
        ("truncate", ACK_TRUNCATED),
        ("short_data", ACK_SHORT_DATA),
    ],
)
def test_simulator_fault_frames(fault: Fault, answer: bytes) -> None:
    dev = SimDevice()
    dev.set_fault(fault, count=1)
    assert sim_answer(dev, REQ_CMD3) == answer
    assert sim_answer(dev, REQ_CMD3) == ACK_CMD3  # healed after one answer


def test_simulator_noise_silence_and_addressing() -> None:
    dev = SimDevice()
    dev.set_fault("noise", count=1)
    out = sim_answer(dev, REQ_CMD1)
    assert out is not None and out[7:] == ACK_CMD1 and 0xFF not in out[:7]
    dev.set_fault("silent", count=1)
    assert sim_answer(dev, REQ_CMD1) is None
    assert sim_answer(SimDevice(polling_address=3), REQ_CMD0_POLL0) is None  # another polling address
    assert sim_answer(dev, golden("02 80 01 00 83")) is None  # short address: command 0 only
    assert sim_answer(SimDevice(device_id=0x123457), REQ_CMD1) is None  # another unique id
    assert sim_answer(dev, ACK_CMD1) is None  # another device's answer on the bus


def test_request_reader_syncs_resyncs_and_splits() -> None:
    reader = RequestReader()
    bad = REQ_CMD1[:-1] + b"\x00"
    stream = b"\x00\x13\x82\xff\x06" + bad + b"\xff\xff" + REQ_CMD3[3:] + REQ_CMD0_POLL0
    got: list[int] = []
    damaged = 0
    for b in stream:  # byte by byte, as a pty may deliver it
        reader.feed(bytes([b]))
        while True:
            try:
                frame = reader.next_frame()
            except FrameDamaged:
                damaged += 1
                continue
            if frame is None:
                break
            got.append(frame.command)
    assert (got, damaged) == ([3, 0], 1)  # two preambles are enough to sync
    with pytest.raises(FrameDamaged):
        parse_frame(REQ_CMD1[5:] + b"\x00")  # exact: nothing after the checksum
    with pytest.raises(FrameDamaged):
        parse_frame(REQ_CMD1[5:-1])


# ----------------------------------------------------------------------------------------- driver


def driver_frame(raw: bytes) -> p.Frame:
    reader = FrameReader()
    reader.feed(raw)
    frame = reader.next_frame()
    assert frame is not None and reader.pending == 0
    assert p.decode_frame(raw[5:]) == frame
    return frame


def test_driver_decodes_golden_identity() -> None:
    f = driver_frame(ACK_CMD0)
    assert (f.frame_type, f.address, f.primary_master, f.burst) == (FrameType.ACK, ShortAddress(0), True, False)
    assert (f.command, f.response_code, f.device_status) == (0, 0, 0)
    ident = p.decode_identity(f.payload)
    assert (ident.manufacturer_id, ident.expanded_device_type, ident.device_id) == (0x26, 0x261A, 0x123456)
    assert (ident.request_preambles, ident.universal_revision, ident.hardware_revision) == (5, 7, 1)
    assert ident.address == LongAddress(UID)


def test_driver_decodes_golden_variables() -> None:
    f = driver_frame(ACK_CMD1)
    assert (f.address, f.command, f.response_code, f.device_status) == (LongAddress(UID), 1, 0, 0)
    pv = p.decode_pv(f.payload)
    assert (pv.unit, pv.value) == ("bar", 2.5)
    assert p.decode_current_percent(driver_frame(ACK_CMD2).payload) == (12.0, 50.0)
    dyn = p.decode_dynamic(driver_frame(ACK_CMD3).payload)
    assert dyn.loop_current == 12.0
    assert [(v.unit, v.value) for v in dyn.variables] == [("bar", 2.5), ("degC", 21.25), ("%", 40.0), ("mA", 12.0)]
    f = driver_frame(ACK_CMD48)
    assert f.device_status == p.DeviceStatus.MORE_STATUS_AVAILABLE
    assert p.decode_additional_status(f.payload) == bytes([1, 2, 3, 4, 5, 6, 0, 0])


def test_driver_decodes_golden_bits_and_codes() -> None:
    f = driver_frame(ACK_CMD1_SECONDARY_BURST)
    assert (f.address, f.primary_master, f.burst) == (LongAddress(UID), False, True)
    f = driver_frame(BACK_CMD1)
    assert (f.frame_type, f.address, f.primary_master, f.burst) == (FrameType.BACK, LongAddress(UID), True, True)
    assert p.decode_pv(f.payload).value == 2.5
    assert driver_frame(ACK_CMD13_NOT_IMPLEMENTED).response_code == p.NOT_IMPLEMENTED
    assert driver_frame(ACK_BUSY).response_code == p.BUSY
    f = driver_frame(ACK_COMM_ERROR)
    assert f.comm_error and "longitudinal parity" in p.response_code_text(f.response_code)


def test_driver_rejects_golden_damage() -> None:
    for raw, kind in ((ACK_MALFORMED, "malformed"), (ACK_BAD_CHECKSUM, "checksum"), (ACK_TRUNCATED, "truncated")):
        with pytest.raises(FrameError) as err:
            p.decode_frame(raw[5:])
        assert err.value.kind == kind
    reader = FrameReader()
    reader.feed(ACK_TRUNCATED)
    assert reader.next_frame() is None and reader.in_frame
    with pytest.raises(p.DecodeError):
        p.decode_dynamic(driver_frame(ACK_SHORT_DATA).payload)


# ----------------------------------------------------------------------------------------- hart-protocol


class _Port(io.BytesIO):
    """What hart-protocol's Unpacker reads from: a file with pyserial's `in_waiting`."""

    @property
    def in_waiting(self) -> int:
        return len(self.getbuffer()) - self.tell()


def unpack(raw: bytes) -> Any:
    """One answer as hart-protocol reads it: a namedtuple of its field names."""
    return next(Unpacker(_Port(raw)))  # type: ignore[no-untyped-call]


def test_hart_protocol_unpacker_reads_golden_answers() -> None:
    ident = unpack(ACK_CMD0)
    assert (ident.command, ident.response_code, ident.device_status) == (0, 0, 0)
    assert (ident.manufacturer_id, ident.manufacturer_device_type, ident.device_id) == (0x26, 0x1A, 0x123456)
    assert ident.number_response_preamble_characters == 5  # its name for byte 3
    assert ident.universal_command_revision_level == 7
    pv = unpack(ACK_CMD1)
    assert (pv.address, pv.primary_variable_units, pv.primary_variable) == (0xA61A123456, 7, 2.5)
    cp = unpack(ACK_CMD2)
    assert (cp.analog_signal, cp.primary_variable) == (12.0, 50.0)
    dyn = unpack(ACK_CMD3)
    assert (dyn.analog_signal, dyn.primary_variable_units, dyn.primary_variable) == (12.0, 7, 2.5)
    assert (dyn.secondary_variable_units, dyn.secondary_variable) == (32, 21.25)
    busy = unpack(ACK_BUSY)
    assert (busy.command, busy.response_code) == (3, 32)
    with pytest.raises(StopIteration):  # it rejects the damaged parity too
        unpack(ACK_BAD_CHECKSUM)


# ----------------------------------------------------------------------------------------- HART-IP
# Header: version 01 | message type (00 request, 01 response, 02 publish, 03 error, 0F NAK) |
# message id (00 session initiate, 01 close, 02 keep alive, 03 token-passing PDU) | status |
# sequence (2 bytes) | byte count including the 8 header bytes (2 bytes).

# session initiate, seq 7, 13 bytes: body 01 primary master, 0000EA60 = 60000 ms inactivity timer
HIP_INITIATE = bytes.fromhex("01 00 00 00 0007 000D 01 0000EA60")
HIP_INITIATE_OK = bytes.fromhex("01 01 00 00 0007 000D 01 0000EA60")  # the body is echoed
HIP_INITIATE_BUSY = bytes.fromhex("01 03 00 0F 0007 000D 01 0000EA60")  # error, 15 = all sessions in use
HIP_KEEP_ALIVE = bytes.fromhex("01 00 02 00 0009 0008")
HIP_KEEP_ALIVE_OK = bytes.fromhex("01 01 02 00 0009 0008")
HIP_CMD1 = bytes.fromhex("01 00 03 00 000A 0011") + REQ_CMD1[5:]  # 17 = 8 + 9-byte frame
HIP_CMD1_OK = bytes.fromhex("01 01 03 00 000A 0018") + ACK_CMD1[5:]  # 24 = 8 + 16-byte frame
HIP_BAD_PDU = bytes.fromhex("01 00 03 00 000B 0011") + REQ_CMD1[5:-1] + b"\x00"
HIP_BAD_PDU_NAK = bytes.fromhex("01 0F 03 05 000B 0008")  # NAK, status 5
HIP_UNKNOWN = bytes.fromhex("01 00 04 00 000C 0008")  # message id 4: not served by the simulator
HIP_UNKNOWN_NAK = bytes.fromhex("01 0F 04 02 000C 0008")  # NAK, status 2
HIP_PUBLISH_CMD1 = bytes.fromhex("01 02 03 00 0000 0018") + BACK_CMD1[5:]  # publish, sequence 0, 8 + 16


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes) -> bytes:
    writer.write(msg)
    header = await reader.readexactly(8)
    return header + await reader.readexactly(struct.unpack(">H", header[6:])[0] - 8)


async def test_hartip_golden_exchange() -> None:
    sim = HartIpSim(SimDevice())
    port = await sim.start()
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await exchange(reader, writer, HIP_INITIATE) == HIP_INITIATE_OK
            assert await exchange(reader, writer, HIP_KEEP_ALIVE) == HIP_KEEP_ALIVE_OK
            assert await exchange(reader, writer, HIP_CMD1) == HIP_CMD1_OK
            assert await exchange(reader, writer, HIP_BAD_PDU) == HIP_BAD_PDU_NAK
            assert await exchange(reader, writer, HIP_UNKNOWN) == HIP_UNKNOWN_NAK
            writer.close()
            await writer.wait_closed()
            sim.refuse_status = 15
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await exchange(reader, writer, HIP_INITIATE) == HIP_INITIATE_BUSY
            assert await reader.read() == b""  # and it hangs up
            writer.close()
        assert (sim.sessions, sim.keepalives) == (1, 1)
    finally:
        await sim.stop()


async def test_hartip_golden_publish() -> None:
    sim = HartIpSim(SimDevice(burst=True, burst_command=1, burst_period=0.02))
    port = await sim.start()
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await exchange(reader, writer, HIP_INITIATE) == HIP_INITIATE_OK
            header = await reader.readexactly(8)
            assert header + await reader.readexactly(len(HIP_PUBLISH_CMD1) - 8) == HIP_PUBLISH_CMD1
            writer.close()
    finally:
        await sim.stop()


def test_driver_decodes_golden_hartip_headers() -> None:
    hdr = p.HartIpHeader.decode(HIP_CMD1_OK)
    assert (hdr.version, hdr.message_type, hdr.message_id, hdr.status, hdr.sequence, hdr.length) == (1, 1, 3, 0, 10, 24)
    assert p.decode_frame(HIP_CMD1_OK[8:]) == driver_frame(ACK_CMD1)
    hdr = p.HartIpHeader.decode(HIP_PUBLISH_CMD1)
    assert (hdr.message_type, hdr.message_id) == (p.MessageType.PUBLISH, p.MessageId.TOKEN_PASSING_PDU)
    assert p.hartip_message(p.MessageType.REQUEST, p.MessageId.TOKEN_PASSING_PDU, 10, REQ_CMD1[5:]) == HIP_CMD1
    hdr = p.HartIpHeader.decode(HIP_INITIATE_BUSY)
    assert (hdr.message_type, hdr.status) == (p.MessageType.ERROR, 15)
