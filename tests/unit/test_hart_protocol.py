"""HART framing and payloads against hand-written reference frames, plus fuzzing of the parser."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.hart import protocol as p
from drivers.hart.protocol import FrameError, FrameReader, FrameType, HartError, LongAddress, ShortAddress

UID = bytes.fromhex("261A123456")

# Reference frames written out by hand (checksums computed by hand as the XOR of delimiter..data).
CMD0_POLL0 = bytes.fromhex("FFFFFFFFFF 02 80 00 00 82")  # the classic "who is at address 0"
CMD1_LONG = bytes.fromhex("FFFFFFFFFF 82 A61A123456 01 00 4F")
# Slave answer to command 1, short address 0: rc 0, status 0, unit 7 (bar), 2.5 = 0x40200000
ACK_CMD1 = bytes.fromhex("FFFFFFFFFF 06 80 01 07 00 00 07 40200000 E7")


def test_cmd0_request_matches_reference() -> None:
    assert p.build_request(ShortAddress(0), 0) == CMD0_POLL0


def test_long_request_matches_reference() -> None:
    assert p.build_request(LongAddress(UID), 1) == CMD1_LONG


def test_long_request_matches_hart_protocol_package() -> None:
    """An independent implementation (PyPI hart-protocol) builds the same long frame."""
    tools = pytest.importorskip("hart_protocol.tools")
    for cmd in (0, 1, 2, 3, 48):
        assert p.build_request(LongAddress(UID), cmd) == tools.pack_command(UID, cmd)


def test_reference_answer_decodes() -> None:
    r = FrameReader()
    r.feed(ACK_CMD1)
    f = r.next_frame()
    assert f is not None
    assert f.frame_type is FrameType.ACK
    assert f.address == ShortAddress(0) and f.primary_master and not f.burst
    assert (f.command, f.response_code, f.device_status) == (1, 0, 0)
    pv = p.decode_pv(f.payload)
    assert (pv.unit, pv.value) == ("bar", 2.5)
    assert r.next_frame() is None and r.pending == 0 and r.noise == 0


def test_response_round_trip_with_master_and_burst_bits() -> None:
    raw = p.build_response(
        LongAddress(UID), 3, 8, 0x81, b"\x01\x02", frame_type=FrameType.BACK, primary_master=False, burst=True
    )
    assert raw[5] == 0x81  # long BACK delimiter
    assert raw[6] == 0x40 | 0x26  # secondary master, burst bit, id byte 0
    f = p.decode_frame(raw[5:])
    assert f.frame_type is FrameType.BACK and f.address == LongAddress(UID)
    assert not f.primary_master and f.burst
    assert (f.response_code, f.device_status, f.payload) == (8, 0x81, b"\x01\x02")


def test_reader_skips_noise_and_splits_byte_by_byte() -> None:
    r = FrameReader()
    stream = b"\x00\x13\xfe\x06\x80" + ACK_CMD1 + ACK_CMD1
    frames = []
    for b in stream:
        r.feed(bytes([b]))
        while (f := r.next_frame()) is not None:
            frames.append(f)
    assert len(frames) == 2
    assert r.noise == 5


def test_reader_resyncs_after_a_bad_checksum() -> None:
    r = FrameReader()
    bad = ACK_CMD1[:-1] + bytes([ACK_CMD1[-1] ^ 1])
    r.feed(bad + ACK_CMD1)
    with pytest.raises(FrameError) as err:
        r.next_frame()
    assert err.value.kind == "checksum"
    f = r.next_frame()
    assert f is not None and p.decode_pv(f.payload).value == 2.5
    assert r.next_frame() is None


def test_reader_reports_a_started_frame() -> None:
    r = FrameReader()
    r.feed(ACK_CMD1[:9])
    assert r.next_frame() is None
    assert r.in_frame
    r.clear()
    assert not r.in_frame and r.pending == 0
    r.feed(b"\xff\xff\xff")  # preambles only: not yet a frame
    assert r.next_frame() is None and not r.in_frame


def test_reader_needs_two_preambles() -> None:
    r = FrameReader()
    r.feed(ACK_CMD1[4:])  # one preamble only
    assert r.next_frame() is None
    assert r.noise > 0


def test_response_without_status_bytes_is_malformed() -> None:
    body = bytes([0x06, 0x80, 0x01, 0x01, 0x00])
    raw = b"\xff\xff" + body + bytes([p.checksum(body)])
    r = FrameReader()
    r.feed(raw + ACK_CMD1)
    with pytest.raises(FrameError) as err:
        r.next_frame()
    assert err.value.kind == "malformed"
    assert r.next_frame() is not None  # the bad frame was consumed, the stream goes on


def test_decode_frame_is_exact() -> None:
    frame = ACK_CMD1[5:]
    assert p.decode_frame(frame).command == 1
    with pytest.raises(FrameError, match="after the end"):
        p.decode_frame(frame + b"\x00")
    with pytest.raises(FrameError) as err:
        p.decode_frame(frame[:-3])
    assert err.value.kind == "truncated"
    with pytest.raises(FrameError) as err:
        p.decode_frame(frame[:-1] + b"\x00")
    assert err.value.kind == "checksum"
    with pytest.raises(FrameError, match="delimiter"):
        p.decode_frame(b"\x03" + frame[1:])


def test_expansion_bytes_are_skipped() -> None:
    body = bytes([0x06 | 0x20, 0x80, 0xAB, 0x01, 0x02, 0x00, 0x00])  # one expansion byte (0xAB)
    f = p.decode_frame(body + bytes([p.checksum(body)]))
    assert f.expansion == b"\xab" and f.command == 1 and f.data == b"\x00\x00"


def test_comm_error_response() -> None:
    raw = p.build_response(ShortAddress(0), 1, 0x88, 0)
    f = p.decode_frame(raw[5:])
    assert f.comm_error
    assert "longitudinal parity" in p.response_code_text(f.response_code)


def test_response_codes() -> None:
    assert p.is_warning(8) and p.is_warning(24) and p.is_warning(100)
    assert not p.is_warning(0) and not p.is_warning(p.BUSY) and not p.is_warning(p.NOT_IMPLEMENTED)
    assert "busy" in p.response_code_text(32)
    assert "not implemented" in p.response_code_text(64)
    assert "error" in p.response_code_text(65)


def test_identity_hart5_layout() -> None:
    """A HART 5 command 0 answer (12 bytes): manufacturer 0x26, type 0x06, id 0x001234."""
    payload = bytes([254, 0x26, 0x06, 5, 5, 2, 3, 0x08, 0, 0x00, 0x12, 0x34])
    ident = p.decode_identity(payload)
    assert ident.manufacturer_id == 0x26 and ident.universal_revision == 5
    assert ident.request_preambles == 5 and ident.device_id == 0x1234
    assert ident.address == LongAddress(bytes.fromhex("2606001234"))


def test_identity_hart7_round_trip() -> None:
    ident = p.decode_identity(p.encode_identity(0x1126, 0x1A, 0xABCDEF, request_preambles=7))
    assert ident.manufacturer_id == 0x1126
    assert ident.request_preambles == 7 and ident.universal_revision == 7
    assert ident.address.unique_id == bytes([0x26, 0x1A, 0xAB, 0xCD, 0xEF])


def test_identity_rejects_bad_payloads() -> None:
    with pytest.raises(p.DecodeError, match="254"):
        p.decode_identity(bytes(12))
    with pytest.raises(p.DecodeError, match="at least 12"):
        p.decode_identity(bytes([254, 1, 2]))


def test_dynamic_variables() -> None:
    dyn = p.decode_dynamic(p.encode_dynamic(12.0, [(7, 2.5), (32, 21.25), (57, 40.0), (39, 12.0)]))
    assert dyn.loop_current == 12.0
    assert [(v.unit, v.value) for v in dyn.variables] == [("bar", 2.5), ("degC", 21.25), ("%", 40.0), ("mA", 12.0)]
    assert len(p.decode_dynamic(p.encode_dynamic(4.0, [(12, 1.0)])).variables) == 1
    with pytest.raises(p.DecodeError):
        p.decode_dynamic(struct.pack(">f", 4.0) + b"\x07")


def test_current_percent_and_hart_nan() -> None:
    assert p.decode_current_percent(p.encode_current_percent(20.0, 100.0)) == (20.0, 100.0)
    nan = p.decode_pv(b"\xfa\x7f\xa0\x00\x00")  # "not used": unit 250, NaN 0x7FA00000
    assert nan.unit is None and math.isnan(nan.value)


@pytest.mark.parametrize(
    ("code", "unit"),
    [(32, "degC"), (33, "degF"), (7, "bar"), (6, "psi"), (39, "mA"), (57, "%"), (12, "kPa"), (237, "MPa")],
)
def test_unit_codes(code: int, unit: str) -> None:
    assert p.unit_name(code) == unit


def test_unknown_and_empty_units() -> None:
    assert p.unit_name(200) == "hart:200"
    assert p.unit_name(250) is None and p.unit_name(251) is None


def test_parse_unique_id() -> None:
    for text in ("261A123456", "26 1a 12 34 56", "26:1A:12:34:56"):
        assert p.parse_unique_id(text) == LongAddress(UID)
    with pytest.raises(ValueError, match="hexadecimal"):
        p.parse_unique_id("xyz")
    with pytest.raises(ValueError, match="5 bytes"):
        p.parse_unique_id("2612")
    with pytest.raises(ValueError, match="at most 3F"):
        p.parse_unique_id("A61A123456")


def test_addresses_validate() -> None:
    with pytest.raises(ValueError, match=r"0\.\.63"):
        ShortAddress(64)
    with pytest.raises(ValueError, match="5 bytes"):
        LongAddress(b"\x80\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="255"):
        p.encode_frame(FrameType.STX, ShortAddress(0), 0, bytes(256))


def test_hartip_header() -> None:
    msg = p.hartip_message(p.MessageType.REQUEST, p.MessageId.SESSION_INITIATE, 7, p.session_initiate_body(True, 60000))
    assert msg == bytes.fromhex("01 00 00 00 0007 000D 01 0000EA60")
    hdr = p.HartIpHeader.decode(msg)
    assert (hdr.message_type, hdr.message_id, hdr.sequence, hdr.length) == (0, 0, 7, 13)
    with pytest.raises(FrameError, match="version"):
        p.HartIpHeader.decode(b"\x09" + msg[1:8])
    with pytest.raises(FrameError, match="shorter"):
        p.HartIpHeader.decode(msg[:6] + b"\x00\x04")
    with pytest.raises(FrameError):
        p.HartIpHeader.decode(msg[:5])


# ----------------------------------------------------------------------------------------- fuzzing

MAX_BUFFERED = p.SYNC_PREAMBLES + 1 + 5 + 3 + 2 + 255 + 1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_reader_never_raises_anything_else_and_stays_bounded(chunks: list[bytes]) -> None:
    r = FrameReader()
    for chunk in chunks:
        r.feed(chunk)
        for _ in range(len(chunk) + 2):  # every call makes progress: this many always drain it
            try:
                f = r.next_frame()
            except HartError:
                continue
            if f is None:
                break
            assert isinstance(f, p.Frame)
        else:
            pytest.fail("the reader did not drain")
        assert r.pending < MAX_BUFFERED


@settings(max_examples=300, deadline=None)
@given(
    noise=st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != 0xFF)),
    long=st.booleans(),
    command=st.integers(0, 255),
    data=st.binary(min_size=2, max_size=255),
    preambles=st.integers(2, 20),
    split=st.integers(1, 64),
)
def test_any_frame_survives_noise_and_splitting(
    noise: bytes, long: bool, command: int, data: bytes, preambles: int, split: int
) -> None:
    addr: p.Address = LongAddress(UID) if long else ShortAddress(5)
    raw = p.encode_frame(FrameType.ACK, addr, command, data, preambles=preambles)
    r = FrameReader()
    stream = noise + raw
    got = []
    for i in range(0, len(stream), split):
        r.feed(stream[i : i + split])
        while True:
            try:
                f = r.next_frame()
            except HartError:
                continue
            if f is None:
                break
            got.append(f)
    assert got[-1] == p.Frame(FrameType.ACK, addr, command, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_raise_only_their_own_errors(data: bytes) -> None:
    for fn in (
        p.decode_frame,
        p.decode_identity,
        p.decode_pv,
        p.decode_current_percent,
        p.decode_dynamic,
        p.decode_additional_status,
        p.HartIpHeader.decode,
    ):
        with contextlib.suppress(HartError):
            fn(data)
