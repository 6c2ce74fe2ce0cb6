"""The pymodbus internals this uplink relies on, in one place (pymodbus 3.16; checked at import).

pymodbus parses and frames every request (MBAP header, function codes, counts, byte counts) and
answers malformed ones itself; what it asks of a datastore is `async_getValues` /
`async_setValues` per (unit id, function code, address). Its own datastore (the simulator's
SimDevice) keeps registers it owns and would apply a write before it could be refused, so this
server gives it a context of its own (`Context`) that asks the uplink instead. pymodbus uses a
`ModbusServerContext` whose `old_simulator` is set as it is, without building a simulator.

The server also needs what pymodbus does not offer: the master's address on each request (for the
command audit) and a bound on connections (`Server.callback_new_connection`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import pymodbus
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

if tuple(int(p) for p in pymodbus.__version__.split(".")[:2]) < (3, 16):  # pragma: no cover
    raise ImportError(f"the modbus_server uplink needs pymodbus 3.16 or newer (found {pymodbus.__version__})")

# function code -> table (Modbus Application Protocol V1.1b3, 6)
TABLES: Final[dict[int, str]] = {
    1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input", 3: "holding", 6: "holding", 16: "holding",
    22: "holding", 23: "holding",
}  # fmt: skip

PEER: contextvars.ContextVar[str] = contextvars.ContextVar("modbus_peer", default="?")

Reader = Callable[[int, int, int, int], Awaitable[list[int] | list[bool] | ExcCodes]]
Writer = Callable[[int, int, int, Sequence[int] | Sequence[bool]], Awaitable[ExcCodes | None]]


class Context(ModbusServerContext):
    """The datastore pymodbus asks: every read and write goes to the uplink."""

    def __init__(self, units: list[int], read: Reader, write: Writer) -> None:
        # not super().__init__(): that wants device contexts and logs a deprecation warning
        self.old_simulator = True  # ModbusBaseServer: use this context as it is
        self.simdevices = []
        self._units = units
        self._read = read
        self._write = write

    def device_ids(self) -> list[int]:
        return list(self._units)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return await self._read(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        return await self._write(device_id, func_code, address, values)


def peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        return "?"
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


class _Handler(ServerRequestHandler):
    """One master's connection: its address is known to each of its requests (PEER); one over
    the bound is closed as soon as it is made."""

    def __init__(self, server: Server, refuse: bool) -> None:
        super().__init__(server, server.trace_packet, server.trace_pdu, server.trace_connect)  # type: ignore[no-untyped-call]
        self._refuse = refuse
        self._on_refused = server.on_refused
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = peer_name(transport)
        if self._refuse:
            self.close()  # also forgets it in the listener's active_connections
            self._on_refused(self.peer)

    async def handle_request(self) -> None:
        token = PEER.set(self.peer)
        try:
            await super().handle_request()  # type: ignore[no-untyped-call]
        finally:
            PEER.reset(token)


class Server(ModbusTcpServer):
    """pymodbus' TCP server with a bound on connections."""

    def __init__(
        self,
        context: Context,
        address: tuple[str, int],
        *,
        max_connections: int,
        on_refused: Callable[[str], None],
        version: str,
    ) -> None:
        identity = ModbusDeviceIdentification(  # type: ignore[no-untyped-call]
            info_name={"VendorName": "edged", "ProductCode": "edged", "ProductName": "edged Modbus server",
                       "ModelName": "modbus_server uplink", "MajorMinorRevision": version}
        )  # fmt: skip
        super().__init__(context, address=address, identity=identity)
        self.max_connections = max_connections
        self.on_refused = on_refused

    def callback_new_connection(self) -> Any:
        return _Handler(self, refuse=len(self.active_connections) >= self.max_connections)

    def connections(self) -> int:
        return len(self.active_connections)
