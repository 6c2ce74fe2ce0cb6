"""cpppo's EtherNet/IP CIP simulator (`python -m cpppo.server.enip`) in a subprocess on 127.0.0.1.

It serves Logix-style tags by name (Read/Write Tag, Multiple Service Packet, Forward Open) but not
the tag-list upload (Get Instance Attribute List on the Symbol class: it drops the session), so
the driver runs against it with `upload_tags = false` and declared types.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from peers.waiting import wait_until


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class CipSim:
    """`tags` are cpppo's `Name=TYPE[n]` arguments."""

    def __init__(self, tags: Sequence[str], log: Path, port: int | None = None) -> None:
        self.tags = list(tags)
        self.port = port or free_tcp_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpppo.server.enip", "--address", f"127.0.0.1:{self.port}", "--no-print",
             "--no-udp", *self.tags],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        wait_until(lambda: self.proc is not None and self.proc.poll() is None and _accepts(self.port), 20,
                   f"cpppo listening on {self.port}")  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def cip_sim(tags: Sequence[str], log: Path) -> Iterator[CipSim]:
    sim = CipSim(tags, log)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
