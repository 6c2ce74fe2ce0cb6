"""Modbus TCP server uplink (pymodbus): SCADA masters that only speak Modbus read the tags of a
configured map as holding/input registers and coils/discrete inputs, each value beside its status.

The register image (`image.py`) is kept current by `send` from the Sender's live stream: a batch is
acknowledged once its values are in the image, where the next read sees them; a slot only moves
forward in time, so a replayed (historical) sample never hides a newer value. pymodbus parses and
answers the protocol; its datastore is this uplink (`_pymodbus.Context`).

Writes: a master's write of a holding register or coil whose tag `[commands]` lets this uplink
write goes through the command gate (allow-list, limits, device write and read-back, audit, the
master's address as the user), from `command_clients` only; anything else is refused with a Modbus
exception, as a whole (nothing is written): 01 for what may not be written, 02 for an address not
in the map or part of a multi-register value, 03 for a value the gate refuses, 04/06/0B for a
failure (README: the table).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Final, Self

from pymodbus.constants import ExcCodes

import edged
from edged.commands import Command, CommandGate, CommandResult, new_id
from edged.config import Config as EdgedConfig
from edged.config import parse_listen
from edged.errors import Permanent, Transient
from edged.model import Batch, Sample, Value
from edged.plugin import PluginContext, UplinkSpec
from edged.protocols import modbus as codec
from uplink.modbus_server import image
from uplink.modbus_server._pymodbus import PEER, TABLES, Context, Server
from uplink.modbus_server.config import WRITABLE_TABLES, Config

__all__ = ["Config", "Uplink", "exception_for"]

_COUNTERS: Final = (
    "reads", "writes_accepted", "writes_refused", "illegal_address", "unknown_unit", "connections_refused",
    "values_not_served",
)  # fmt: skip
_LOG_EVERY: Final = 60.0  # s: a refused connection is logged at most once per this

# the gate's code -> the Modbus exception a master gets for a refused or failed write
_EXCEPTIONS: Final[dict[str, int]] = {
    "disabled": image.ILLEGAL_FUNCTION,
    "unauthorised": image.ILLEGAL_FUNCTION,
    "not_writable": image.ILLEGAL_FUNCTION,
    "unknown_tag": image.ILLEGAL_FUNCTION,
    "type": image.ILLEGAL_VALUE,
    "not_allowed": image.ILLEGAL_VALUE,
    "out_of_range": image.ILLEGAL_VALUE,
    "max_step": image.ILLEGAL_VALUE,
    "too_large": image.ILLEGAL_VALUE,
    "malformed": image.ILLEGAL_VALUE,
    "min_interval": image.DEVICE_BUSY,
    "device_down": image.GATEWAY_NO_RESPONSE,
    "timeout": image.GATEWAY_NO_RESPONSE,
}


def exception_for(result: CommandResult) -> int:
    """The Modbus exception code for a write the gate did not accept: 04 unless the table says."""
    return _EXCEPTIONS.get(result.code, image.DEVICE_FAILURE)


def _as_kind(value: Value, kind: str | None) -> Value:
    """A register's number as the tag's kind: 0/1 for a bool tag, a coil's bit for a number."""
    if kind == "bool" and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if kind == "number" and isinstance(value, bool):
        return int(value)
    return value


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log: logging.Logger = ctx.log
        self.image = image.Image(config)
        gate = ctx.commands
        self._gate: CommandGate | None = gate if isinstance(gate, CommandGate) else None
        self._clients = [ipaddress.ip_network(n, strict=False) for n in config.command_clients]
        self._server: Server | None = None
        self._counts: Counter[str] = Counter()
        self.skipped_older = 0
        self._logged: dict[str, float] = {}

    def counters(self) -> dict[str, float]:
        """Reported by the Sender in status and metrics."""
        out = {k: float(self._counts[k]) for k in _COUNTERS}
        out["skipped_older"] = float(self.skipped_older)
        out["connections"] = float(self._server.connections() if self._server else 0)
        return out

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        c = self.config
        self._check_tags()
        self._open_for_commands()
        host, port = parse_listen(c.listen)
        _probe(host, port, c.listen)
        context = Context(list(c.unit_ids), self._on_read, self._on_write)
        server = Server(
            context, (host, port), max_connections=c.max_connections, on_refused=self._refused,
            version=edged.__version__,
        )  # fmt: skip
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:  # pymodbus logs the OSError and says only this
            raise Transient(f"cannot listen on {c.listen}: {exc}") from exc
        self._server = server
        await self._seed()
        self.log.info(
            "uplink %s: Modbus server on %s, unit ids %s, %d map entries (%d writable through the command gate)",
            c.name, c.listen, ", ".join(map(str, c.unit_ids)), len(c.map),
            sum(s.commandable for s in self.image.slots),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _check_tags(self) -> None:
        """A map entry for a tag the daemon's config does not have stays BadWaitingForInitialData:
        say so once at start (a typo is the likely cause)."""
        full = self.ctx.config
        if not isinstance(full, EdgedConfig):
            return
        known = {d.tag_path(t) for d in [*full.devices, *full.computed] if d.enabled for t in d.tags}
        for i, m in enumerate(self.config.map):
            if m.tag not in known:
                self.log.warning(
                    "uplink %s: map[%d] names tag %s, which no enabled device has: it stays Bad (waiting for data)",
                    self.config.name, i, m.tag,
                )  # fmt: skip

    def _open_for_commands(self) -> None:
        """Slots of coils and holding registers whose tag [commands] lists for this uplink (enabled
        or not: the gate audits each write, refusing it while commands are disabled)."""
        c, gate = self.config, self._gate
        routed = {e.tag for e in gate.config.tags if c.name in e.sources} if gate is not None else set()
        for slot in self.image.slots:
            slot.commandable = slot.entry.table in WRITABLE_TABLES and slot.entry.tag in routed
        if any(s.commandable for s in self.image.slots) and not self._clients:
            self.log.warning(
                "uplink %s: tags take commands from this uplink but command_clients is empty: writes are refused",
                c.name,
            )

    def _refused(self, peer: str) -> None:
        self._counts["connections_refused"] += 1
        now = time.monotonic()
        if now - self._logged.get(peer.rpartition(":")[0], -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[peer.rpartition(":")[0]] = now
            if len(self._logged) > 1000:
                self._logged.clear()
            self.log.warning(
                "uplink %s: refused a connection from %s: max_connections (%d) masters are connected",
                self.config.name, peer, self.config.max_connections,
            )  # fmt: skip

    # ------------------------------------------------------------------ data

    async def _seed(self) -> None:
        """Serve each tag's last stored value right after a (re)start (the buffer has it)."""
        latest = self.ctx.latest
        if not callable(latest):
            return
        try:
            samples = await latest()
        except Exception as exc:  # a buffer problem must not keep the SCADA server down
            self.log.warning("uplink %s: no last values to serve: %s", self.config.name, exc)
            return
        keep = [s for s in samples if s.tag in self.image.by_tag]
        if keep:
            await self.send(Batch(self.ctx.gateway_id, 0, 0, True, keep))

    async def send(self, batch: Batch) -> None:
        """Put the newest sample of each mapped tag into the image; the next read sees it."""
        if self._server is None:
            raise Transient("the Modbus server is not running")
        newest: dict[str, Sample] = {}
        for s in batch.samples:
            cur = newest.get(s.tag)
            if cur is None or s.ts_ns >= cur.ts_ns:
                newest[s.tag] = s
        for s in newest.values():
            skipped, problems = self.image.apply(s)
            self.skipped_older += skipped
            for p in problems:
                self._counts["values_not_served"] += 1
                self.log.warning("uplink %s: %s", self.config.name, p)

    # ------------------------------------------------------------------ requests

    async def _on_read(self, unit: int, fc: int, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        if unit not in self.config.unit_ids:
            self._counts["unknown_unit"] += 1
            return ExcCodes.GATEWAY_NO_RESPONSE
        got = self.image.read(unit, TABLES.get(fc, ""), address, count)
        if isinstance(got, int):
            self._counts["illegal_address"] += 1
            return ExcCodes(got)
        self._counts["reads"] += 1
        return got

    async def _on_write(
        self, unit: int, fc: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """A master's write, as a whole: every slot it covers is planned first (nothing is written
        unless all are mapped, whole and commandable), then each becomes one command, in address
        order; the first one refused ends the request with its exception (the ones before it were
        written and stay so: Modbus has no partial answer)."""
        if unit not in self.config.unit_ids:
            self._counts["unknown_unit"] += 1
            return ExcCodes.GATEWAY_NO_RESPONSE
        plan = self.image.plan_write(unit, TABLES.get(fc, ""), address, len(values))
        if isinstance(plan, int):
            self._counts["writes_refused" if plan == image.ILLEGAL_FUNCTION else "illegal_address"] += 1
            return ExcCodes(plan)
        gate = self._gate
        assert gate is not None  # a slot is commandable only with a gate
        peer = PEER.get()
        offset = 0
        for slot in plan:
            size = slot.entry.size
            words = list(values[offset : offset + size])
            offset += size
            result = await self._command(gate, slot, words, peer)
            if not result.ok:
                self._counts["writes_refused"] += 1
                return ExcCodes(exception_for(result))
            self._counts["writes_accepted"] += 1
            shown = result.readback if result.readback is not None else result.new
            # the read-back in the image: the echo and the next read show the device's value (one
            # that cannot be served is left to the data path, which says why)
            with contextlib.suppress(codec.CodecError):
                slot.words = image.encode(slot.entry, shown)
        return None

    async def _command(
        self, gate: CommandGate, slot: image.Slot, words: list[int] | list[bool], peer: str
    ) -> CommandResult:
        c, tag = self.config, slot.entry.tag
        problem: str | None = None
        value: Value = None
        try:
            value = _as_kind(image.written_value(slot, words), gate.kind(tag))
        except codec.CodecError as exc:
            problem = f"registers {words} are no {slot.entry.dtype}: {exc}"
        cmd = Command(new_id(), c.name, peer, tag, value, time.time_ns())
        if not self._client_allowed(peer):
            return await gate.refuse(cmd, "unauthorised", f"master {peer} is not in command_clients of uplink {c.name}")
        if problem is not None:
            return await gate.refuse(cmd, "type", problem)
        return await gate.submit(cmd)

    def _client_allowed(self, peer: str) -> bool:
        host = peer.rpartition(":")[0].strip("[]")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._clients)


def _probe(host: str, port: int, listen: str) -> None:
    """Bind the address once to learn why listening would fail (pymodbus only logs it): a port
    below 1024 without the capability, or an address this machine does not have, never works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except PermissionError as exc:
        raise Permanent(
            f"cannot listen on {listen}: {exc.strerror} (a port below 1024 needs CAP_NET_BIND_SERVICE; "
            "systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE, or use a port above 1023)"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise Permanent(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        raise Transient(f"cannot listen on {listen}: {exc.strerror or exc}") from exc


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
