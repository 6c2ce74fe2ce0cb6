"""An S7 PLC for the tests: python-snap7's own server on 127.0.0.1, with a job counter and faults.

snap7.server.Server emulates a CPU's DB/M/I/Q memory over ISO-on-TCP. This subclass adds what the
tests need: it listens on 127.0.0.1 (a free port by default), counts the jobs it answers (requests
per cycle measured at the PLC side, not only by the driver), closes its client connections when
stopped (a real CPU going away), answers bit writes the way a CPU does (the library's server writes
the whole byte), and injects faults: "mute" (reads the job, never answers), "garbage" (answers
bytes that are no S7 PDU), "ignore_writes" (acknowledges writes, stores nothing) and "refuse"
(every read job refused with header error 0x8104, what an S7-1200/1500 without PUT/GET answers).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any

from snap7.server import Server
from snap7.type import SrvArea

AREAS = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}
_WIRE_AREAS = {0x81: "I", 0x82: "Q", 0x83: "M", 0x84: "DB"}


class S7Peer(Server):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log=False)
        self.fault = "ok"
        self.jobs = 0  # read jobs answered
        self.items = 0  # items in them
        self.memory: dict[tuple[str, int], bytearray] = {}
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def area(self, area: str, size: int, db: int = 0) -> bytearray:
        """Register `size` zero bytes of an area (of DB `db`); returns the live memory."""
        mem = bytearray(size)
        self.register_area(AREAS[area], db, mem)
        self.memory[(area, db)] = mem
        return mem

    def start_local(self, port: int = 0) -> int:
        self.start_to("127.0.0.1", port)
        assert self.server_socket is not None
        self.port = self.server_socket.getsockname()[1]
        return int(self.port)

    def stop(self) -> int:
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):  # already closed by the client
                    s.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()
        return int(super().stop())

    def _handle_client(self, client_socket: socket.socket, address: tuple[str, int]) -> None:
        with self._lock:
            self._sockets.append(client_socket)
        super()._handle_client(client_socket, address)

    def _process_request(self, request_data: bytes, client_address: tuple[str, int]) -> Any:
        if len(request_data) >= 12 and request_data[1] == 0x01:
            function = request_data[10]
            if function in (0x04, 0x05) and self.fault == "mute":
                return None
            if function in (0x04, 0x05) and self.fault == "garbage":
                return b"\x32\x03\x00\x00" + request_data[4:6] + b"\x00\x02\x00\x09\x00\x00\x04"
            if function == 0x04:
                if self.fault == "refuse":
                    return b"\x32\x02\x00\x00" + request_data[4:6] + b"\x00\x00\x00\x00\x81\x04"
                with self._lock:
                    self.jobs += 1
                    self.items += request_data[11]
            if function == 0x05 and self.fault == "ignore_writes":  # acknowledged, not stored
                return b"\x32\x03\x00\x00" + request_data[4:6] + b"\x00\x02\x00\x01\x00\x00\x05\x01\xff"
            if function == 0x05 and request_data[15] == 0x01:  # transport size BIT
                return self._bit_write(request_data)
        return super()._process_request(request_data, client_address)

    def _bit_write(self, pdu: bytes) -> bytes:
        db, wire_area = struct.unpack(">HB", pdu[18:21])
        address = int.from_bytes(pdu[21:24], "big")
        value = pdu[28] & 1
        mem = self.memory.get((_WIRE_AREAS[wire_area], db if wire_area == 0x84 else 0))
        code = 0xFF
        if mem is None:
            code = 0x0A
        elif address // 8 >= len(mem):
            code = 0x05
        else:
            byte, bit = divmod(address, 8)
            mem[byte] = mem[byte] | 1 << bit if value else mem[byte] & ~(1 << bit)
        return b"\x32\x03\x00\x00" + pdu[4:6] + b"\x00\x02\x00\x01\x00\x00\x05\x01" + bytes((code,))


def main() -> None:
    """Serve zeroed DB1..DB9 and DB100 (4 KiB each) and 1 KiB of M, I, Q; print "PORT n"."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    peer = S7Peer()
    for db in (*range(1, 10), 100):
        peer.area("DB", 4096, db=db)
    for area in ("M", "I", "Q"):
        peer.area(area, 1024)
    print(f"PORT {peer.start_local(args.port)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
