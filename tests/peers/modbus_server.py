"""Real Modbus peers for the tests and the bench, on 127.0.0.1 only.

* `ModbusPeer`: a pymodbus server (the 3.16 simulator datastore, `SimDevice`/`SimData`) serving one
  or more unit ids over TCP or over RTU on a serial port, with a fault switch:
  "ok", "mute" (stop answering, connection kept), "bad_crc" and "short" (damaged answers), and a
  set of `silent` unit ids that stop answering while the others on the same line keep going.
  Unit ids not in the map do not answer on RTU (like an empty slot on a real line) and get
  exception 0x0B "gateway target failed to respond" on TCP.
* `socat_pair`: a virtual null-modem cable (two linked ptys) for RTU.
* Run as a script it serves a dense map (every address 0..9999 of every table) over TCP in its own
  process, for the bench: `python tests/peers/modbus_server.py --port 0` prints `PORT <n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Fault = Literal["ok", "mute", "bad_crc", "short"]
CATCH_ALL = 0  # pymodbus simulator: device id 0 serves every id not listed


@dataclass
class Unit:
    """The register map of one unit id. Addresses not listed are unmapped (exception 0x02)."""

    id: int
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    faults: dict[int, int] = field(default_factory=dict)  # holding address -> exception code on read
    clamp: dict[int, int] = field(default_factory=dict)  # holding address -> max value a write stores
    readonly: set[int] = field(default_factory=set)  # holding addresses that refuse writes


def _register_blocks(regs: dict[int, int], readonly: set[int]) -> list[SimData]:
    """One SimData per run of consecutive addresses with the same write protection."""
    out: list[SimData] = []
    addrs = sorted(regs)
    runs = itertools.groupby(enumerate(addrs), key=lambda p: (p[1] - p[0], p[1] in readonly))
    for (_, ro), run in runs:
        block = [a for _, a in run]
        out.append(SimData(block[0], values=[regs[a] for a in block], datatype=DataType.REGISTERS, readonly=ro))
    return out or [SimData(60000, values=[0], datatype=DataType.REGISTERS)]


def _bit_blocks(bits: dict[int, bool]) -> list[SimData]:
    if not bits:
        return [SimData(60000, values=[False], datatype=DataType.BITS)]
    lo, hi = min(bits), max(bits)
    return [SimData(lo, values=[bits.get(a, False) for a in range(lo, hi + 1)], datatype=DataType.BITS)]


def _device(unit: Unit) -> SimDevice:
    async def action(
        function_code: int,
        _start: int,
        address: int,
        count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code == 3:
            for a in range(address, address + count):
                if a in unit.faults:
                    return ExcCodes(unit.faults[a])
        if function_code in (6, 16) and set_values is not None:
            for i, a in enumerate(range(address, address + len(set_values))):
                if a in unit.clamp:
                    set_values[i] = min(int(set_values[i]), unit.clamp[a])
        return None

    return SimDevice(
        id=unit.id,
        simdata=(
            _bit_blocks(unit.coils),
            _bit_blocks(unit.discrete),
            _register_blocks(unit.holding, unit.readonly),
            _register_blocks(unit.input, set()),
        ),
        action=action,
    )


def _catch_all() -> SimDevice:
    async def gone(*_args: object) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    empty = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    bits = [SimData(0, values=[False], datatype=DataType.BITS)]
    return SimDevice(id=CATCH_ALL, simdata=(bits, bits, empty, empty), action=gone)


class ModbusPeer:
    """A pymodbus server on 127.0.0.1 (TCP) or a serial port (RTU) that tests can stop, restart and
    damage. Restarting rebuilds the map, so values written before are lost."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.units = {u.id: u for u in units}
        self.fault: Fault = "ok"
        self.silent: set[int] = set()  # unit ids that stop answering (the others keep going)
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = 0
        self.serial: str | None = None

    def _devices(self) -> list[SimDevice]:
        return [*(_device(u) for u in self.units.values()), _catch_all()]

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        unit = data[0] if self.serial else data[6]
        if self.fault == "mute" or unit in self.silent or (self.serial and unit not in self.units):
            return b""
        if self.fault == "bad_crc" and self.serial:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if self.fault == "short":
            return data[:3] if self.serial else data[:7]
        return data

    async def start_tcp(self, port: int | None = None) -> int:
        """Serve on 127.0.0.1; port 0 or None picks a free one the first time, then keeps it."""
        port = self.port if port is None else port
        server = ModbusTcpServer(self._devices(), address=("127.0.0.1", port), trace_packet=self._trace)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        self.server = server
        return self.port

    async def start_rtu(self, path: str, baudrate: int = 115200) -> None:
        self.serial = path
        server = ModbusSerialServer(
            self._devices(), port=path, baudrate=baudrate, trace_packet=self._trace, reconnect_delay=0
        )
        await server.serve_forever(background=True)
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports deliver connection_lost

    def registers(self, unit: int, table: Literal["h", "i", "c", "d"], address: int, count: int = 1) -> list[int]:
        """The live values in the server's datastore (registers; coils as 0/1)."""
        assert self.server is not None
        runtime = self.server.context.devices[unit]  # type: ignore[union-attr]
        start, _, regs, _ = runtime.block[table]
        if table in ("c", "d"):
            word, bit = divmod(address, 16)
            bits = [(regs[word - start + (bit + i) // 16] >> ((bit + i) % 16)) & 1 for i in range(count)]
            return bits
        return list(regs[address - start : address - start + count])


@contextlib.contextmanager
def socat_pair(directory: Path) -> Iterator[tuple[str, str]]:
    """Two linked ptys (`directory`/client, `directory`/server); socat is stopped on exit."""
    exe = shutil.which("socat") or "/usr/bin/socat"
    a, b = str(directory / "client"), str(directory / "server")
    proc = subprocess.Popen(
        [exe, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (Path(a).exists() and Path(b).exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield a, b
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dense_unit(unit_id: int = 1, size: int = 10000) -> Unit:
    """Every address 0..size-1 of every table mapped, values derived from the address."""
    return Unit(
        unit_id,
        holding={a: a & 0xFFFF for a in range(size)},
        input={a: (a * 7) & 0xFFFF for a in range(size)},
        coils={a: a % 3 == 0 for a in range(size)},
        discrete={a: a % 5 == 0 for a in range(size)},
    )


async def _serve(port: int) -> None:
    peer = ModbusPeer([dense_unit()])
    bound = await peer.start_tcp(port)
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a dense pymodbus TCP server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
