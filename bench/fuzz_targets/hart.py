"""HART frames off a serial line or HART-IP, their response codes and the command payload decoders."""

from __future__ import annotations

from drivers.hart import protocol as p

ACCEPTS = (p.HartError,)  # FrameError and DecodeError: a refused frame or payload
_MAX_BUFFERED = p.SYNC_PREAMBLES + 1 + 5 + 3 + 2 + 255 + 1  # FrameReader's promise: memory is bounded

_DECODERS = (p.decode_identity, p.decode_pv, p.decode_current_percent, p.decode_dynamic, p.decode_additional_status)


def _use(frame: p.Frame) -> None:
    """What the driver reads of every frame it gets."""
    str(frame.address)
    if frame.is_response:
        p.response_code_text(frame.response_code)
        if frame.comm_error:
            p.comm_error_text(frame.data[1])
        else:
            p.is_warning(frame.response_code)
            p.DeviceStatus(frame.device_status)
    payload = frame.payload
    for decode in _DECODERS:
        try:
            result = decode(payload)
        except p.DecodeError:
            continue
        str(result)
        if isinstance(result, p.DynamicVariables):
            for v in result.variables:
                v.unit  # noqa: B018 - the unit lookup must take any code


def target(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:  # HART-IP: one frame without preambles
        _use(p.decode_frame(body))
    elif mode == 1:  # serial: a stream fed in chunks, resyncing after every bad frame
        reader = p.FrameReader()
        step = 1 + data[0] // 3 % 40
        for i in range(0, len(body), step):
            reader.feed(body[i : i + step])
            for _ in range(len(body) + 1):  # each call consumes or waits: never spins
                try:
                    frame = reader.next_frame()
                except p.FrameError:
                    continue
                if frame is None:
                    break
                _use(frame)
            else:
                raise AssertionError("FrameReader.next_frame made no progress")
            assert reader.pending <= _MAX_BUFFERED, f"{reader.pending} bytes buffered"
    else:
        header = p.HartIpHeader.decode(body)
        assert header.length >= p.HARTIP_HEADER
        _use(p.decode_frame(body[p.HARTIP_HEADER :]))


def seeds() -> list[bytes]:
    short, long = p.ShortAddress(1), p.LongAddress(bytes.fromhex("2606123456"))
    pv = p.encode_pv(7, 1.5)
    frames = [
        p.build_response(short, 0, 0, 0, p.encode_identity(0x26, 0x06, 0x123456)),
        p.build_response(long, 1, 0, 0x10, pv),
        p.build_response(long, 2, 0, 0, p.encode_current_percent(12.0, 50.0)),
        p.build_response(long, 3, 0, 0, p.encode_dynamic(12.0, [(7, 1.0), (32, 20.5), (250, 0.0)])),
        p.build_response(long, 48, 0x88, 0, bytes(6), frame_type=p.FrameType.BACK, burst=True),
        p.build_request(long, 1),
    ]
    out = [b"\x01" + f for f in frames]
    out += [b"\x00" + f.lstrip(b"\xff") for f in frames]
    out += [b"\x02" + p.hartip_message(1, 3, 7, f.lstrip(b"\xff")) for f in frames[:2]]
    return out
