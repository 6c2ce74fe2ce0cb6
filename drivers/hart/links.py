"""The two ways to reach a HART device: a serial HART modem and HART-IP over TCP.

Both hand the driver whole frames (`protocol.Frame`) and raise only `LinkDown` (the port or
connection is gone; `permanent` when retrying cannot help), `TimeoutError` (deadline passed)
or `protocol.HartError` (a frame arrived but cannot be used). Library exceptions are mapped
into LinkDown in `_link_error` and nowhere else.

Serial reads use `loop.add_reader` on the port's non-blocking file descriptor rather than
blocking reads in a thread: a HART answer is a few dozen bytes at 1200 bit/s, the callback
feeds the sans-io FrameReader directly, a cancelled wait costs nothing, and there is no thread
left blocked in `read()` when the driver stops. (pyserial opens POSIX ports with O_NONBLOCK;
it is used for the termios setup only.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import termios
from typing import Any, Protocol

from drivers.hart.protocol import (
    HARTIP_HEADER,
    PREAMBLE,
    Frame,
    FrameError,
    FrameReader,
    HartIpHeader,
    MessageId,
    MessageType,
    decode_frame,
    hartip_message,
    session_initiate_body,
)

__all__ = ["HartIpLink", "Link", "LinkDown", "SerialLink"]


class LinkDown(Exception):
    """The serial port or TCP connection cannot be used (any more)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _link_error(exc: BaseException, where: str) -> LinkDown:
    """The one place where pyserial/OS/asyncio exceptions become LinkDown."""
    if isinstance(exc, LinkDown):
        return exc
    if isinstance(exc, OSError) and "exclusively lock" in str(exc):  # pyserial's exclusive=True
        return LinkDown(f"{where}: in use by another program")
    if isinstance(exc, OSError) and isinstance(exc.__context__, OSError) and "could not open" in str(exc):
        exc = exc.__context__  # pyserial's SerialException wraps the OS error: use the original
    if isinstance(exc, PermissionError):
        return LinkDown(f"{where}: permission denied (is the edged user in the dialout group?)", permanent=True)
    if isinstance(exc, FileNotFoundError):
        return LinkDown(f"{where}: does not exist (unplugged?)")
    if isinstance(exc, asyncio.IncompleteReadError):
        return LinkDown(f"{where}: connection closed by the peer")
    if isinstance(exc, ConnectionRefusedError):
        return LinkDown(f"{where}: connection refused")
    if isinstance(exc, termios.error):
        return LinkDown(f"{where}: cannot configure the port: {exc.args[-1] if exc.args else exc}")
    if isinstance(exc, OSError):
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
        return LinkDown(f"{where}: {reason}")
    # pyserial's SerialException (an IOError subclass) is covered above; keep any other as transient
    return LinkDown(f"{where}: {type(exc).__name__}: {exc}")


class Link(Protocol):
    """What the driver needs from a transport."""

    endpoint: str

    @property
    def noise(self) -> int:
        """Bytes received that belonged to no frame (monotonic)."""
        ...

    @property
    def partial(self) -> bool:
        """Part of a frame or message has arrived: a timeout now means a truncated answer."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def discard_input(self) -> None:
        """Drop whatever arrived before a new request (a late answer to an earlier one)."""

    async def send(self, frame: bytes, preambles: int) -> None:
        """Send one frame (delimiter..checksum); the link adds preambles or the HART-IP header."""

    async def receive(self, deadline: float) -> Frame:
        """The next frame, by loop time `deadline`; TimeoutError, HartError or LinkDown otherwise."""
        ...

    async def idle(self) -> None:
        """Called between requests and while listening, so a session can be kept alive."""

    def wire_time(self, nbytes: int) -> float:
        """Seconds `nbytes` take on the wire (the answer deadline starts after the request left)."""
        ...


class SerialLink:
    """A HART modem on a serial port: 8 data bits, odd parity, 1 stop bit."""

    def __init__(self, port: str, baudrate: int = 1200) -> None:
        self.endpoint = port
        self.baudrate = baudrate
        self._ser: Any = None
        self._fd = -1
        self._reader = FrameReader()
        self._wake = asyncio.Event()
        self._error: LinkDown | None = None

    @property
    def noise(self) -> int:
        return self._reader.noise

    @property
    def partial(self) -> bool:
        return self._reader.in_frame

    async def open(self) -> None:
        try:
            import serial  # the optional dependency (edged[hart]) is needed only here
        except ImportError:
            raise LinkDown("the serial transport needs pyserial: pip install 'edged[hart]'", permanent=True) from None

        where = f"serial port {self.endpoint}"
        try:
            # Opened without parity, then switched to odd: Linux ptys keep PARODD but drop PARENB on
            # close and then refuse to enable odd parity directly ("Invalid argument").
            ser = serial.Serial(
                port=self.endpoint,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                exclusive=True,  # one owner per port: two masters on one modem garble each other
            )
        except (OSError, ValueError, termios.error) as exc:
            raise _link_error(exc, where) from None
        try:
            ser.parity = serial.PARITY_ODD
        except (OSError, ValueError, termios.error) as exc:
            ser.close()
            raise LinkDown(f"{where}: cannot set 8O1 (odd parity): {exc}", permanent=True) from None
        self._ser = ser
        self._fd = ser.fileno()
        self._error = None
        self._reader.clear()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    async def close(self) -> None:
        if self._ser is None:
            return
        ser, self._ser = self._ser, None
        try:
            asyncio.get_running_loop().remove_reader(self._fd)
        finally:
            self._fd = -1
            ser.close()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(_link_error(exc, f"serial port {self.endpoint}"))
            return
        if not data:
            self._fail(LinkDown(f"serial port {self.endpoint}: closed (end of file)"))
            return
        self._reader.feed(data)
        self._wake.set()

    def _fail(self, err: LinkDown) -> None:
        self._error = err
        asyncio.get_running_loop().remove_reader(self._fd)
        self._wake.set()

    def discard_input(self) -> None:
        self._reader.clear()
        if self._ser is not None and self._error is None:
            try:
                self._ser.reset_input_buffer()  # also what the kernel holds but we have not read yet
            except (OSError, termios.error) as exc:
                self._fail(_link_error(exc, f"serial port {self.endpoint}"))

    async def send(self, frame: bytes, preambles: int) -> None:
        if self._error is not None:
            raise self._error
        if self._ser is None:
            raise LinkDown(f"serial port {self.endpoint}: not open")
        data = memoryview(bytes([PREAMBLE]) * preambles + frame)
        while data:
            try:
                n = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise _link_error(exc, f"serial port {self.endpoint}") from None
            data = data[n:]

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_writer(self._fd, ready)
        try:
            await fut
        finally:
            loop.remove_writer(self._fd)

    async def receive(self, deadline: float) -> Frame:
        while True:
            if self._error is not None:
                raise self._error
            frame = self._reader.next_frame()  # may raise FrameError: the caller decides
            if frame is not None:
                return frame
            self._wake.clear()
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()

    async def idle(self) -> None:
        return None

    def wire_time(self, nbytes: int) -> float:
        return nbytes * 11 / self.baudrate  # start + 8 data + parity + stop bits


class HartIpLink:
    """HART-IP (version 1, TCP): a session carrying token-passing PDUs (HART frames without
    preambles), keep-alives, and published burst frames."""

    def __init__(
        self, host: str, port: int, *, primary_master: bool = True, inactivity_s: float = 60.0, timeout: float = 5.0
    ) -> None:
        self.endpoint = f"{host}:{port}"
        self.host = host
        self.port = port
        self.primary_master = primary_master
        self.inactivity_ms = max(1000, int(inactivity_s * 1000))
        self.timeout = timeout
        self.stale = 0  # messages that answered nothing we were waiting for
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._seq = 0
        self._expect: int | None = None
        self._header: HartIpHeader | None = None  # read, body pending (a timeout hit between the two)
        self._last_tx = 0.0

    @property
    def noise(self) -> int:
        return 0

    @property
    def partial(self) -> bool:
        return self._header is not None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def open(self) -> None:
        where = f"HART-IP {self.endpoint}"
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise LinkDown(f"{where}: connect timed out") from None
        except OSError as exc:
            raise _link_error(exc, where) from None
        self._header = None
        seq = self._next_seq()
        body = session_initiate_body(self.primary_master, self.inactivity_ms)
        await self._write(hartip_message(MessageType.REQUEST, MessageId.SESSION_INITIATE, seq, body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                hdr, _ = await self._read_message(deadline)
            except TimeoutError:
                await self.close()
                raise LinkDown(f"{where}: no answer to session initiate") from None
            except FrameError as exc:
                await self.close()
                raise LinkDown(f"{where}: session initiate: {exc}") from None
            if hdr.message_id != MessageId.SESSION_INITIATE or hdr.sequence != seq:
                self.stale += 1
                continue
            break
        if hdr.message_type != MessageType.RESPONSE or hdr.status not in (0, 8):  # 8: timer set to nearest
            await self.close()
            # 15: all sessions in use (another client will leave); anything else is a configuration problem
            busy = hdr.status == 15
            raise LinkDown(
                f"{where}: session refused (message type {hdr.message_type}, status {hdr.status})",
                permanent=not busy,
            )

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        try:
            if not writer.is_closing():
                writer.write(hartip_message(MessageType.REQUEST, MessageId.SESSION_CLOSE, self._next_seq()))
        except OSError:
            pass
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise LinkDown(f"HART-IP {self.endpoint}: not connected")
        try:
            self._writer.write(data)
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            raise LinkDown(f"HART-IP {self.endpoint}: send timed out (peer not reading)") from None
        except OSError as exc:
            raise _link_error(exc, f"HART-IP {self.endpoint}") from None
        self._last_tx = asyncio.get_running_loop().time()

    async def _read_message(self, deadline: float) -> tuple[HartIpHeader, bytes]:
        if self._reader is None:
            raise LinkDown(f"HART-IP {self.endpoint}: not connected")
        try:
            async with asyncio.timeout_at(deadline):
                if self._header is None:
                    # readexactly leaves the stream untouched when cancelled, so a timeout is harmless here
                    self._header = HartIpHeader.decode(await self._reader.readexactly(HARTIP_HEADER))
                body = await self._reader.readexactly(self._header.length - HARTIP_HEADER)
        except TimeoutError:
            raise  # the deadline, not the connection (TimeoutError is an OSError)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise _link_error(exc, f"HART-IP {self.endpoint}") from None
        except FrameError:
            raise LinkDown(f"HART-IP {self.endpoint}: stream out of sync (invalid header)") from None
        hdr, self._header = self._header, None
        return hdr, body

    def discard_input(self) -> None:
        self._expect = None

    async def send(self, frame: bytes, preambles: int) -> None:
        seq = self._next_seq()
        self._expect = seq
        await self._write(hartip_message(MessageType.REQUEST, MessageId.TOKEN_PASSING_PDU, seq, frame))

    async def receive(self, deadline: float) -> Frame:
        while True:
            hdr, body = await self._read_message(deadline)
            if hdr.message_id == MessageId.TOKEN_PASSING_PDU and hdr.message_type == MessageType.PUBLISH:
                return decode_frame(body)
            if hdr.message_id != MessageId.TOKEN_PASSING_PDU or hdr.sequence != self._expect:
                self.stale += 1  # keep-alive answers, late answers to abandoned requests
                continue
            if hdr.message_type in (MessageType.ERROR, MessageType.NAK):
                raise FrameError("hartip_refused", f"HART-IP message type {hdr.message_type}, status {hdr.status}")
            if hdr.status != 0 and not body:
                raise FrameError("hartip_status", f"HART-IP status {hdr.status} without a HART answer")
            return decode_frame(body)

    async def idle(self) -> None:
        """Keep the session alive while only listening: a keep-alive once a third of the timer passed."""
        if asyncio.get_running_loop().time() - self._last_tx >= self.inactivity_ms / 3000:
            await self._write(hartip_message(MessageType.REQUEST, MessageId.KEEP_ALIVE, self._next_seq()))

    def wire_time(self, nbytes: int) -> float:
        return 0.0
