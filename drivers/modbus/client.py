"""The only module that talks to pymodbus: connections, one transaction at a time, error mapping.

pymodbus reports problems two ways: it raises (ConnectionException, ModbusIOException, timeouts)
and it returns error PDUs (`isError()`, an ExceptionResponse carrying the device's exception code).
Both are turned here into one of two things, so nothing above this module sees pymodbus:

* a `Failure` value for a problem with one request (the device is there, or may be): an exception
  response, a timeout, a garbled or short answer. The driver reports it as Bad samples.
* a `LinkDown` exception when the connection or the serial port itself is gone. The driver turns it
  into `Transient`, so the supervisor marks the tags Bad and reconnects with backoff.

Timeouts and retries are ours, not pymodbus's: several devices with different timeouts can share one
serial client, and a device that does not answer costs exactly its own `timeout * (retries + 1)`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.modbus.plan import Table
from edged.aio import honour_cancel
from edged.errors import Permanent
from edged.model import Status

log = logging.getLogger("edged.modbus")

# pymodbus's own request timeout; ours (asyncio.timeout around each attempt) always fires first.
_LIBRARY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Failure:
    """One request that produced no data. `answered` is True when the device itself replied (an
    exception response), i.e. the link and the device are alive."""

    status: Status
    kind: str  # short, stable: used as a counter key ("timeout", "bad_frame", "exception_02", ...)
    reason: str
    answered: bool


class LinkDown(Exception):
    """The TCP connection or the serial port is gone; nothing on this link can succeed now."""


# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7) -> status and reason.
EXCEPTION_CODES: dict[int, tuple[Status, str, bool]] = {
    0x01: (Status.BAD_CONFIGURATION_ERROR, "illegal function (the device does not support this table)", True),
    0x02: (Status.BAD_CONFIGURATION_ERROR, "illegal data address (check the register map)", True),
    0x03: (Status.BAD_CONFIGURATION_ERROR, "illegal data value (request refused; check counts)", True),
    0x04: (Status.BAD_DEVICE_FAILURE, "server device failure", True),
    0x05: (Status.BAD_TIMEOUT, "acknowledge: long operation in progress, no data yet", True),
    0x06: (Status.BAD_TIMEOUT, "server device busy", True),
    0x07: (Status.BAD_DEVICE_FAILURE, "negative acknowledge", True),
    0x08: (Status.BAD_DEVICE_FAILURE, "memory parity error", True),
    # A gateway answered for a device behind it that did not: the device is not alive.
    0x0A: (Status.BAD_NO_COMMUNICATION, "gateway path unavailable", False),
    0x0B: (Status.BAD_TIMEOUT, "gateway target device failed to respond", False),
}


def exception_failure(code: int) -> Failure:
    status, reason, answered = EXCEPTION_CODES.get(
        code, (Status.BAD_DEVICE_FAILURE, f"unknown exception code 0x{code:02X}", True)
    )
    return Failure(status, f"exception_{code:02x}", f"exception 0x{code:02X}: {reason}", answered)


def no_answer(timeout: float) -> Failure:
    return Failure(Status.BAD_TIMEOUT, "timeout", f"no answer within {timeout:g}s", False)


def bad_frame(detail: str = "garbled or incomplete answer (CRC error or short frame)") -> Failure:
    return Failure(Status.BAD_COMMUNICATION_ERROR, "bad_frame", detail, False)


Reply = list[int] | list[bool]


class Link:
    """One Modbus connection (a TCP socket or a serial port): one transaction on the wire at a time.

    Subclasses provide the pymodbus client and how to (re)open it.
    """

    client: AsyncModbusTcpClient | AsyncModbusSerialClient

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = asyncio.Lock()
        self.transactions = 0
        self._rx_bytes = 0  # bytes received, to tell a garbled answer from silence

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx_bytes += len(data)
        return data

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    async def open(self, limit: float) -> None:
        """Connect; raises LinkDown when the peer or port cannot be reached."""
        try:
            async with asyncio.timeout(limit):
                ok = await honour_cancel(self.client.connect())
        except (TimeoutError, OSError, ModbusException) as exc:
            raise LinkDown(f"cannot connect to {self.name}: {str(exc) or type(exc).__name__}") from None
        if not ok:
            raise LinkDown(f"cannot connect to {self.name}")

    def close(self) -> None:
        self.client.close()

    async def _before(self) -> None:
        """Called with the lock held before each attempt."""
        if not self.connected:
            raise LinkDown(f"connection to {self.name} lost")

    def _after(self) -> None:
        """Called with the lock held after each attempt."""

    async def _transact(
        self, call: Callable[[], Awaitable[ModbusPDU]], per_try: float, retries: int
    ) -> ModbusPDU | Failure:
        failure = no_answer(per_try)
        for _ in range(retries + 1):
            async with self.lock:
                await self._before()
                rx = self._rx_bytes
                self.transactions += 1
                try:
                    async with asyncio.timeout(per_try):
                        pdu = await honour_cancel(call())  # pymodbus waits with wait_for
                except TimeoutError:
                    failure = bad_frame() if self._rx_bytes != rx else no_answer(per_try)
                    continue
                except ConnectionException as exc:
                    raise LinkDown(f"{self.name}: {exc.string}") from None
                except ModbusIOException as exc:  # an answer pymodbus could not use (wrong unit, undecodable)
                    failure = bad_frame(exc.string)
                    continue
                except ModbusException as exc:  # e.g. a parameter pymodbus refuses: no point retrying
                    return Failure(Status.BAD_CONFIGURATION_ERROR, "request_error", exc.string, False)
                except OSError as exc:
                    raise LinkDown(f"{self.name}: {exc}") from None
                finally:
                    self._after()
            if pdu.isError():
                return exception_failure(int(getattr(pdu, "exception_code", 0)))
            return pdu
        if not self.connected:
            raise LinkDown(f"connection to {self.name} lost")
        return failure

    async def read(
        self, table: Table, address: int, count: int, unit: int, per_try: float, retries: int
    ) -> Reply | Failure:
        """Read `count` registers or bits; a short answer is a Failure, extra padding bits are cut."""
        c = self.client
        calls: dict[Table, Callable[[], Awaitable[ModbusPDU]]] = {
            "coil": lambda: c.read_coils(address, count=count, device_id=unit),
            "discrete_input": lambda: c.read_discrete_inputs(address, count=count, device_id=unit),
            "holding_register": lambda: c.read_holding_registers(address, count=count, device_id=unit),
            "input_register": lambda: c.read_input_registers(address, count=count, device_id=unit),
        }
        res = await self._transact(calls[table], per_try, retries)
        if isinstance(res, Failure):
            return res
        values: list[int] | list[bool] = list(res.bits) if table in ("coil", "discrete_input") else list(res.registers)
        if len(values) < count:
            return Failure(
                Status.BAD_COMMUNICATION_ERROR,
                "short_reply",
                f"answer holds {len(values)} of {count} values",
                True,
            )
        return values[:count]

    async def write(
        self,
        table: Table,
        address: int,
        values: Sequence[int] | Sequence[bool],
        unit: int,
        per_try: float,
        retries: int,
    ) -> Failure | None:
        """Write coils (function 5/15) or holding registers (6/16); None when the device confirmed."""
        c = self.client
        call: Callable[[], Awaitable[ModbusPDU]]
        if table == "coil":
            bits = [bool(v) for v in values]
            call = (
                (lambda: c.write_coil(address, bits[0], device_id=unit))
                if len(bits) == 1
                else (lambda: c.write_coils(address, bits, device_id=unit))
            )
        elif table == "holding_register":
            regs = [int(v) for v in values]
            call = (
                (lambda: c.write_register(address, regs[0], device_id=unit))
                if len(regs) == 1
                else (lambda: c.write_registers(address, regs, device_id=unit))
            )
        else:
            raise ValueError(f"a {table} cannot be written")
        res = await self._transact(call, per_try, retries)
        return res if isinstance(res, Failure) else None


class TcpLink(Link):
    """A Modbus TCP connection owned by one device. Lost -> LinkDown; the supervisor reconnects."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port}")
        self.client = AsyncModbusTcpClient(
            host,
            port=port,
            name=self.name,
            timeout=_LIBRARY_TIMEOUT,
            retries=0,
            reconnect_delay=0,  # no background reconnect task: reconnecting is the supervisor's job
            trace_packet=self._trace,
        )


@dataclass(frozen=True, slots=True)
class LineSettings:
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def silence(self) -> float:
        """RTU inter-frame gap: 3.5 characters of 11 bits, 1.75 ms above 19200 baud."""
        return 1.75e-3 if self.baudrate > 19200 else 3.5 * 11 / self.baudrate


class SerialLine(Link):
    """An RTU serial port shared by every device on it: one client, one lock, so one transaction on
    the wire at a time, with the inter-frame silence respected between them.

    A port that fails (USB adapter unplugged) is reopened lazily by the next transaction, because the
    port belongs to the line, not to any one device; if reopening fails each device gets LinkDown.
    """

    def __init__(self, port: str, settings: LineSettings) -> None:
        super().__init__(port)
        self.settings = settings
        self.users = 0
        self._quiet_until = 0.0
        self.client = AsyncModbusSerialClient(
            port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            name=port,
            timeout=_LIBRARY_TIMEOUT,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    async def _before(self) -> None:
        if not self.connected:
            log.info("serial port %s: reopening", self.name)
            await self.open(_LIBRARY_TIMEOUT)
        loop = asyncio.get_running_loop()
        wait = self._quiet_until - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _after(self) -> None:
        self._quiet_until = asyncio.get_running_loop().time() + self.settings.silence


class SerialLines:
    """The open RTU lines, keyed by port path, with reference-counted ownership.

    The serial port is a process-wide resource: two devices on "/dev/ttyUSB0" must share one file
    descriptor, one pymodbus client and one lock, or their frames would collide on the wire. The first
    device to `use` a port opens it, the last one to leave closes it. `default_lines()` gives one
    registry per event loop (asyncio objects are bound to their loop), so nothing outlives the loop.
    """

    def __init__(self) -> None:
        self._lines: dict[str, SerialLine] = {}

    def get(self, port: str) -> SerialLine | None:
        return self._lines.get(port)

    @asynccontextmanager
    async def use(self, port: str, settings: LineSettings, device: str) -> AsyncIterator[SerialLine]:
        line = self._lines.get(port)
        if line is None:
            line = self._lines[port] = SerialLine(port, settings)
        elif line.settings != settings:
            raise Permanent(
                f"{device}: serial port {port} is in use at {line.settings}, not {settings};"
                " every device on one line needs the same baudrate, parity, stopbits and bytesize"
            )
        line.users += 1
        try:
            async with line.lock:
                if not line.connected:
                    await line.open(_LIBRARY_TIMEOUT)
            yield line
        finally:
            line.users -= 1
            if line.users == 0:
                line.close()
                del self._lines[port]


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SerialLines] = weakref.WeakKeyDictionary()


def default_lines() -> SerialLines:
    """The registry of the running event loop (created on first use, dropped with the loop)."""
    loop = asyncio.get_running_loop()
    lines = _PER_LOOP.get(loop)
    if lines is None:
        lines = _PER_LOOP[loop] = SerialLines()
    return lines
