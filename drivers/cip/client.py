"""The only module that touches pycomm3: one Logix connection, driven from a thread of its own.

pycomm3 is blocking (plain sockets, no asyncio). Each connection gets one worker thread and every
call goes through it, so the calls on one connection are serialised (a pycomm3 driver is not
thread-safe, and its explicit messages are request/reply on one socket) while the event loop stays
free for the other devices. A call cancelled on our side still finishes in its thread (at most the
socket timeout); closing waits for it in the same queue.

Every pycomm3 exception stops here: a socket failure is `LinkDown`; a per-tag error is an
`Outcome` with the CIP general/extended status, mapped to an OPC UA status by `status_of`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pycomm3 import CommError, LogixDriver, PycommError, RequestError
from pycomm3.cip.data_types import Array, ArrayType, DataTypes
from pycomm3.packets.logix import MultiServiceResponsePacket, ReadTagResponsePacket

from drivers.cip.config import Config
from edged.model import Status, Value

T = TypeVar("T")
_log = logging.getLogger("edged.drivers.cip")

# CIP general status codes (CIP Vol 1, Appendix B) and the Logix extended codes (1756-PM020).
_PATH_SEGMENT_ERROR = 0x04
_PATH_DESTINATION_UNKNOWN = 0x05
_GENERAL_ERROR = 0xFF
_EXT_STATUS: dict[int, tuple[Status, str]] = {
    0x2105: (Status.BAD_OUT_OF_RANGE, "out_of_range"),  # access beyond the end of the object
    0x2107: (Status.BAD_TYPE_MISMATCH, "type_mismatch"),  # the data type does not match the tag's
    0x2104: (Status.BAD_OUT_OF_RANGE, "out_of_range"),  # offset beyond the end
}
_GENERAL: dict[int, tuple[Status, str]] = {
    _PATH_SEGMENT_ERROR: (Status.BAD_NODE_ID_UNKNOWN, "unknown_tag"),
    _PATH_DESTINATION_UNKNOWN: (Status.BAD_NODE_ID_UNKNOWN, "unknown_tag"),
    0x08: (Status.BAD_CONFIGURATION_ERROR, "service_not_supported"),
    0x0E: (Status.BAD_CONFIGURATION_ERROR, "not_settable"),
    0x0F: (Status.BAD_CONFIGURATION_ERROR, "privilege_violation"),
    0x10: (Status.BAD_DEVICE_FAILURE, "device_state_conflict"),  # e.g. the keyswitch in RUN
    0x13: (Status.BAD_CONFIGURATION_ERROR, "not_enough_data"),
    0x15: (Status.BAD_CONFIGURATION_ERROR, "too_much_data"),
    0x1E: (Status.BAD_DEVICE_FAILURE, "embedded_service_error"),
}


def status_of(general: int | None, extended: int | None) -> tuple[Status, str]:
    """A CIP error reply -> (OPC UA status, counter key)."""
    if general == _GENERAL_ERROR and extended in _EXT_STATUS:
        return _EXT_STATUS[extended]
    if general is not None and general in _GENERAL:
        return _GENERAL[general]
    return Status.BAD_DEVICE_FAILURE, f"cip_status_{general or 0:02x}"


class LinkDown(Exception):
    """The connection is gone (refused, reset, timed out): reconnect."""


@dataclass(frozen=True, slots=True)
class Described:
    """What the controller (or the config, without upload) says a tag is."""

    type_name: str  # "DINT", "REAL", a structure's name
    atomic: bool
    array: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """One service's result: a value (a list for several elements) or an error."""

    value: Any = None
    status: Status = Status.GOOD
    kind: str = ""  # the counter key of the error
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.GOOD


class _Logix(LogixDriver):
    """pycomm3's Logix driver, counting packets, keeping each reply's CIP status, and checking that
    an atomic reply has the type the tag is declared with (pycomm3 decodes by the declared type)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packets = 0
        self.statuses: dict[str, tuple[int | None, int | None]] = {}

    def _send(self, message: bytes) -> None:
        self.packets += 1
        super()._send(message)  # type: ignore[no-untyped-call]

    def _write_build_single_request(self, parsed_tag: Any) -> Any:
        # pycomm3 1.2.16 builds a single Write Tag message, then clears `_msg_setup`, so sending it
        # builds the message a second time and appends it: the controller gets the service twice in
        # one packet (cpppo drops the session). The first build is complete: keep it.
        request = super()._write_build_single_request(parsed_tag)  # type: ignore[no-untyped-call]
        if request is not None and type(request).__name__ == "WriteTagRequestPacket":
            request._msg_setup = True
        return request

    def send(self, request: Any) -> Any:
        response = super().send(request)
        parts = response.responses if isinstance(response, MultiServiceResponsePacket) else [response]
        for part in parts:
            raw = part.raw or b""
            general = raw[48] if len(raw) > 48 else None
            extended = struct.unpack_from("<H", raw, 50)[0] if len(raw) >= 52 and raw[49] else None
            tag = getattr(part.request, "tag", None)
            if tag is not None:
                self.statuses[tag] = (general, extended)
            if isinstance(part, ReadTagResponsePacket) and general == 0 and part.data:
                _check_type(part)
        return response


def _check_type(part: Any) -> None:
    info = part.tag_info
    if info.get("tag_type") != "atomic" or info.get("data_type") == "DWORD":
        return
    cls = info["type_class"]
    element = getattr(cls, "element_type", cls) if isinstance(cls, type) and issubclass(cls, ArrayType) else cls
    want = getattr(element, "code", None)
    got = struct.unpack_from("<H", part.data, 0)[0]
    if got != want:
        codes = {getattr(getattr(DataTypes, n), "code", None): n for n in DataTypes.attributes}
        name = codes.get(got, f"0x{got:04X}")
        part._error = f"type mismatch: the controller answers {name.upper()}, the tag says {info['data_type_name']}"


def _declared(name: str, type_name: str, length: int) -> dict[str, Any]:
    """A tag definition in pycomm3's format, for a controller whose tag list is not uploaded."""
    cls = DataTypes.get(type_name)  # type: ignore[no-untyped-call]
    return {
        "tag_name": name,
        "dim": 1 if length else 0,
        "dimensions": [length, 0, 0],
        "data_type": type_name,
        "data_type_name": type_name,
        "tag_type": "atomic",
        "type_class": Array(length_=length, element_type_=cls) if length else cls,
        "alias": False,
    }


class Connection:
    """One CIP connection (session + forward open) to one controller."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # one worker: every pycomm3 call on this connection runs in it, one at a time
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cip-{config.name}")
        self._plc: _Logix | None = None
        self.info: dict[str, Any] = {}

    @property
    def packets(self) -> int:
        return self._plc.packets if self._plc is not None else 0

    @property
    def connection_size(self) -> int:
        return int(self._plc.connection_size) if self._plc is not None else 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    # ------------------------------------------------------------------ lifecycle

    async def open(self, declared: dict[str, tuple[str, int]]) -> None:
        """Connect; `declared` is {tag: (type, array length or 0)} when the tag list is not uploaded."""
        await self._run(self._open, declared)

    def _open(self, declared: dict[str, tuple[str, int]]) -> None:
        cfg = self.config
        scoped = any(t.tag.startswith("Program:") for t in cfg.tags)
        plc = _Logix(f"{cfg.host}:{cfg.port}/{cfg.slot}", init_tags=cfg.upload_tags, init_program_tags=scoped)
        plc._cfg["socket_timeout"] = float(cfg.timeout)
        plc._cfg["connection_size"] = cfg.connection_size
        plc._cfg["extended forward open"] = cfg.connection_size > 511
        if not cfg.upload_tags:
            plc._tags = {name: _declared(name, t, n) for name, (t, n) in declared.items()}
        try:
            plc.open()  # type: ignore[no-untyped-call]
            if not plc.connected or not plc._target_is_connected:
                raise LinkDown("the controller did not accept a connection (Forward Open)")
        except CommError as exc:
            _close_quietly(plc)
            raise LinkDown(f"{exc}{_cause(exc)}") from None
        except PycommError as exc:
            _close_quietly(plc)
            raise LinkDown(f"connecting failed: {exc}{_cause(exc)}") from None
        self._plc = plc
        self.info = dict(plc.info)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(float(self.config.timeout) + 1):
                await self._run(self._close)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _close(self) -> None:
        plc, self._plc = self._plc, None
        if plc is not None:
            _close_quietly(plc)

    # ------------------------------------------------------------------ services

    async def describe(self, names: Sequence[str]) -> dict[str, Described | Outcome]:
        return await self._run(self._describe, list(names))

    def _describe(self, names: list[str]) -> dict[str, Described | Outcome]:
        plc = self._need()
        out: dict[str, Described | Outcome] = {}
        for name in names:
            try:
                info = plc._parse_tag_request(name)["tag_info"]
            except RequestError as exc:
                out[name] = Outcome(None, Status.BAD_NODE_ID_UNKNOWN, "unknown_tag", f"{exc}{_cause(exc)}")
                continue
            atomic = info.get("tag_type") == "atomic"
            out[name] = Described(str(info.get("data_type_name")), atomic, bool(info.get("dim")))
        return out

    async def read(self, names: Sequence[str]) -> list[Outcome]:
        """Read Tag services for `names` ("Temps[2]{5}" for 5 elements), packed by pycomm3 into
        Multiple Service Packets that fit the connection size."""
        return await self._run(self._read, list(names))

    def _read(self, names: list[str]) -> list[Outcome]:
        plc = self._need()
        plc.statuses.clear()
        try:
            got = plc.read(*names)
        except CommError as exc:
            self._drop()
            raise LinkDown(f"{exc}{_cause(exc)}") from None
        except Exception as exc:  # pycomm3 fails to parse some error replies (a StopIteration...)
            return [Outcome(None, Status.BAD_COMMUNICATION_ERROR, "bad_reply", f"unreadable reply: {exc!r}")] * len(
                names
            )
        results = got if isinstance(got, list) else [got]
        return [self._outcome(plc, name, r.value, r.error) for name, r in zip(names, results, strict=True)]

    async def write(self, name: str, value: Value) -> Outcome:
        return await self._run(self._write, name, value)

    def _write(self, name: str, value: Value) -> Outcome:
        plc = self._need()
        plc.statuses.clear()
        try:
            r = plc.write((name, value))
        except CommError as exc:
            self._drop()
            raise LinkDown(f"{exc}{_cause(exc)}") from None
        except Exception as exc:
            return Outcome(None, Status.BAD_COMMUNICATION_ERROR, "bad_reply", f"unreadable reply: {exc!r}")
        return self._outcome(plc, name, r.value, r.error)

    def _outcome(self, plc: _Logix, name: str, value: Any, error: str | None) -> Outcome:
        if error is None:
            return Outcome(value)
        if error.startswith("type mismatch"):
            return Outcome(None, Status.BAD_TYPE_MISMATCH, "type_mismatch", error)
        if "Tag doesn't exist" in error or "Failed to parse tag request" in error:
            return Outcome(None, Status.BAD_NODE_ID_UNKNOWN, "unknown_tag", error)
        if error.startswith("Failed to parse reply"):
            return Outcome(None, Status.BAD_DECODING_ERROR, "decode_error", error)
        if "Unable to create a writable value" in error:
            return Outcome(None, Status.BAD_TYPE_MISMATCH, "type_mismatch", error)
        general, extended = plc.statuses.get(name.split("{", 1)[0], (None, None))
        status, kind = status_of(general, extended)
        return Outcome(None, status, kind, error)

    def _need(self) -> _Logix:
        if self._plc is None:
            raise LinkDown("not connected")
        return self._plc

    def _drop(self) -> None:
        plc, self._plc = self._plc, None
        if plc is not None:
            _close_quietly(plc)


def _close_quietly(plc: LogixDriver) -> None:
    try:
        plc.close()  # type: ignore[no-untyped-call]
    except Exception as exc:  # the socket is already gone: nothing left to release
        _log.debug("closing the CIP connection: %r", exc)


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return f" ({cause})" if cause is not None and str(cause) else ""
