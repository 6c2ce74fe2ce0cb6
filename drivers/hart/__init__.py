"""HART driver: polls (or listens to the burst frames of) one field device, over a serial HART
modem or HART-IP.

Per poll the driver sends the fewest universal commands that cover the configured variables:
command 3 (loop current + PV..QV) when a secondary variable or both PV and loop current are
wanted, otherwise command 1 (PV) and/or command 2 (loop current, percent of range). Command 48 is
read when the device sets "more status available". On connect, command 0 maps the polling
address to the device's unique id (long frame address), unless `unique_id` is configured.

Failure handling, by scope:

* A request that fails (silence, truncated or damaged answer, checksum, "device busy",
  communication error reported by the device) is retried `retries` times; if it still fails, its
  variables get a Bad sample with the reason's status, the reason is counted in
  `Driver.counters` and logged once (and once when it clears); the driver keeps running.
* The device status byte maps to quality: malfunction -> BadDeviceFailure; PV (non-PV) out of
  limits -> UncertainEngineeringUnitsExceeded on the PV (SV/TV/QV); loop current saturated ->
  the same on the loop current; loop current fixed -> Uncertain on the loop current (it no longer
  follows the PV: multidrop or loop test). Config changed / cold start are logged only.
* `max_failed_polls` polls in a row without any answer, or a lost serial port / TCP connection,
  raise Transient: the daemon's supervisor marks the tags Bad once, backs off and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from drivers.hart.config import Config, Tag, Variable
from drivers.hart.links import HartIpLink, Link, LinkDown, SerialLink
from drivers.hart.protocol import (
    BUSY,
    NOT_IMPLEMENTED,
    Address,
    DecodeError,
    DeviceIdentity,
    DeviceStatus,
    Frame,
    FrameType,
    HartError,
    ShortAddress,
    build_request,
    comm_error_text,
    decode_additional_status,
    decode_current_percent,
    decode_dynamic,
    decode_identity,
    decode_pv,
    is_warning,
    response_code_text,
)
from edged.errors import EdgedError, Permanent, Transient
from edged.model import Sample, Severity, Status, Value, severity
from edged.plugin import DriverSpec, PluginContext
from edged.problems import Problems

__all__ = ["Config", "Driver", "Tag"]

# Which variables each universal command carries.
_PROVIDES: dict[int, tuple[Variable, ...]] = {
    1: ("pv",),
    2: ("loop_current", "percent_range"),
    3: ("loop_current", "pv", "sv", "tv", "qv"),
}
_SCORE = {Severity.GOOD: 100, Severity.UNCERTAIN: 50, Severity.BAD: 0}
_MORE_STATUS_EVERY_S = 60.0  # re-read command 48 at most this often while the flag stays set
_IDLE_TICK_S = 1.0  # between polls and while listening: wake this often to keep a HART-IP session alive


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request produced no usable answer."""

    kind: str  # counter key: timeout, truncated, checksum, busy, comm_error, not_implemented, ...
    status: int
    reason: str
    answered: bool  # the device sent something: it is alive
    retry: bool = True


@dataclass(frozen=True, slots=True)
class _Reading:
    value: Value
    unit: str | None
    status: int
    ts_ns: int


def plan_commands(variables: Iterable[Variable]) -> tuple[int, ...]:
    """The fewest universal commands covering `variables`, in the order they are sent."""
    want = set(variables)
    dynamic = bool(want & {"sv", "tv", "qv"}) or {"pv", "loop_current"} <= want
    cmds: list[int] = [3] if dynamic else []
    if "percent_range" in want or ("loop_current" in want and not dynamic):
        cmds.append(2)
    if "pv" in want and not dynamic:
        cmds.append(1)
    return tuple(cmds)


def _worst(a: int, b: int) -> int:
    """The status with the higher severity; on a tie the first (the more specific reason)."""
    return b if severity(b) > severity(a) else a


def status_bits_quality(variable: Variable, device_status: int) -> int:
    """What the field device status byte says about one variable."""
    ds = DeviceStatus(device_status & 0xFF)
    if DeviceStatus.DEVICE_MALFUNCTION in ds:
        return Status.BAD_DEVICE_FAILURE
    if variable in ("pv", "percent_range") and DeviceStatus.PV_OUT_OF_LIMITS in ds:
        return Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
    if variable in ("sv", "tv", "qv") and DeviceStatus.NON_PV_OUT_OF_LIMITS in ds:
        return Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
    if variable == "loop_current":
        if DeviceStatus.LOOP_CURRENT_SATURATED in ds:
            return Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
        if DeviceStatus.LOOP_CURRENT_FIXED in ds:
            return Status.UNCERTAIN
    return Status.GOOD


def decode_variables(command: int, payload: bytes) -> dict[Variable, tuple[float, str | None]]:
    """Values and units a command 1/2/3 answer carries; DecodeError when the payload is short.
    Variables the device marks "not used" (unit code 250) are left out."""
    if command == 1:
        pv = decode_pv(payload)
        return {} if pv.unit_code == 250 else {"pv": (pv.value, pv.unit)}
    if command == 2:
        current, percent = decode_current_percent(payload)
        return {"loop_current": (current, "mA"), "percent_range": (percent, "%")}
    if command == 3:
        dyn = decode_dynamic(payload)
        out: dict[Variable, tuple[float, str | None]] = {"loop_current": (dyn.loop_current, "mA")}
        names: tuple[Variable, ...] = ("pv", "sv", "tv", "qv")
        for name, var in zip(names, dyn.variables, strict=False):
            if var.unit_code != 250:
                out[name] = (var.value, var.unit)
        return out
    raise DecodeError(f"command {command} carries no dynamic variables")


class Driver:
    """One HART field device. See the module docstring for the error policy."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log
        # polls, requests, errors and one key per problem kind; each problem logged once
        self.problems = Problems(config.name, self.log, max_failed_polls=config.max_failed_polls)
        self.identity: DeviceIdentity | None = None
        self.additional_status: bytes | None = None  # last command 48 answer
        self._tags: list[Tag] = list(config.tags)
        self._paths = [config.tag_path(t) for t in self._tags]
        self._commands = plan_commands(t.variable for t in self._tags)
        self._link: Link | None = None
        self._address: Address = config.long_address or ShortAddress(config.polling_address)
        self._preambles = config.preambles
        self._device_status: int | None = None
        self._more_status_at: tuple[int, float] | None = None  # (status byte, loop time) of the last cmd 48
        # the last unit seen per variable, so a Bad sample keeps the tag's unit
        self._units: dict[Variable, str | None] = {"loop_current": "mA", "percent_range": "%"}

    @property
    def address(self) -> Address:
        return self._address

    # ------------------------------------------------------------------ lifecycle

    def _mapped(self, exc: LinkDown) -> EdgedError:
        """Transport failures into the edged error tree (the only place this happens)."""
        msg = f"{self.config.name}: {exc}"
        return Permanent(msg) if exc.permanent else Transient(msg)

    def counters(self) -> Mapping[str, int]:
        return self.problems.counts

    async def __aenter__(self) -> Self:
        await self.open_link()
        assert self._link is not None
        link = self._link
        try:
            await self._identify()
        except BaseException:
            self._link = None
            await link.close()
            raise
        self.problems.counts["connects"] += 1
        return self

    async def open_link(self) -> None:
        """The serial port or HART-IP session only, no command sent (`edged discover hart` polls
        the addresses itself); __aexit__ closes it."""
        cfg = self.config
        link: Link
        if cfg.transport == "serial":
            assert isinstance(cfg.port, str)
            link = SerialLink(cfg.port, cfg.baudrate)
        else:
            assert cfg.host is not None and isinstance(cfg.port, int)
            link = HartIpLink(
                cfg.host,
                cfg.port,
                primary_master=cfg.primary_master,
                inactivity_s=float(cfg.inactivity_timeout),
                timeout=max(float(cfg.timeout), 2.0),  # a TCP connect may take longer than an answer
            )
        try:
            await link.open()
        except LinkDown as exc:
            raise self._mapped(exc) from None
        self._link = link

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def _identify(self) -> None:
        """Command 0: confirms the device answers, gives its long address and preamble count."""
        cfg = self.config
        uid = cfg.long_address
        if cfg.burst and uid is not None:
            self._address = uid  # pure listener: never transmits
            return
        self._address = uid or ShortAddress(cfg.polling_address)
        res = await self._transact(0)
        if isinstance(res, Failure):
            self.problems.report("command 0", res.kind, res.reason)
            raise Transient(
                f"{cfg.name}: {self._address} at {cfg.endpoint} gave no usable answer to command 0: {res.reason}"
            )
        try:
            ident = decode_identity(res.payload)
        except DecodeError as exc:
            self.problems.counts["decode"] += 1
            raise Transient(f"{cfg.name}: {self._address} at {cfg.endpoint}: {exc}") from None
        self.problems.resolved("command 0")
        self.identity = ident
        self._address = ident.address
        self._preambles = max(cfg.preambles, min(20, ident.request_preambles))
        self._device_status_seen(res.device_status)
        self.log.info("%s: connected at %s: %s", cfg.name, cfg.endpoint, ident, extra={"device": cfg.name})

    async def probe(self, polling_address: int) -> tuple[DeviceIdentity, Frame] | Failure:
        """Command 0 to a polling address (discovery): the identity and its answer; the device's
        long address and preamble count are used for the requests that follow."""
        self._address = ShortAddress(polling_address)
        self._preambles = self.config.preambles
        res = await self._transact(0)
        if isinstance(res, Failure):
            return res
        try:
            ident = decode_identity(res.payload)
        except DecodeError as exc:
            return Failure("decode", Status.BAD_DECODING_ERROR, str(exc), True, retry=False)
        self._address = ident.address
        self._preambles = max(self.config.preambles, min(20, ident.request_preambles))
        return ident, res

    async def request(self, command: int, data: bytes = b"") -> Frame | Failure:
        """One request to the current address, with the configured retries."""
        return await self._transact(command, data)

    # ------------------------------------------------------------------ requests

    async def _transact(self, command: int, data: bytes = b"") -> Frame | Failure:
        """One request with retries; a Frame only for a success or warning response code."""
        last: Failure | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.problems.counts["retries"] += 1
                if last is not None and last.kind == "busy":
                    await asyncio.sleep(min(0.25, float(self.config.timeout) / 4))
            res = await self._exchange(command, data)
            if isinstance(res, Frame):
                rc = res.response_code
                if res.comm_error:
                    res = Failure("comm_error", Status.BAD_COMMUNICATION_ERROR, comm_error_text(rc), True)
                elif rc == BUSY:
                    res = Failure("busy", Status.BAD_TIMEOUT, "device busy (response code 32)", True)
                elif rc == NOT_IMPLEMENTED:
                    reason = f"command {command} is not implemented by the device"
                    res = Failure("not_implemented", Status.BAD_CONFIGURATION_ERROR, reason, True, retry=False)
                elif rc != 0 and not is_warning(rc):
                    res = Failure(f"response_code_{rc}", Status.BAD, response_code_text(rc), True, retry=False)
                else:
                    return res
            self.problems.counts[res.kind] += 1
            last = res
            if not res.retry:
                break
        assert last is not None
        self.problems.counts["errors"] += 1
        return last

    async def _exchange(self, command: int, data: bytes) -> Frame | Failure:
        """Send once and wait for the matching answer; frames for others are skipped."""
        link = self._link
        if link is None:
            raise Transient(f"{self.config.name}: not connected")
        cfg = self.config
        self.problems.counts["requests"] += 1
        link.discard_input()
        noise_before = link.noise
        request = build_request(self._address, command, data, preambles=0, primary_master=cfg.primary_master)
        loop = asyncio.get_running_loop()
        try:
            await link.send(request, self._preambles)
            # os.write returns once the kernel has the bytes: at 1200 bit/s they still need ~0.15 s
            deadline = loop.time() + link.wire_time(self._preambles + len(request)) + float(cfg.timeout)
            while True:
                try:
                    frame = await link.receive(deadline)
                except TimeoutError:
                    if link.partial:
                        return Failure("truncated", Status.BAD_COMMUNICATION_ERROR, "answer cut short", True)
                    return Failure("timeout", Status.BAD_TIMEOUT, f"no answer within {float(cfg.timeout):g}s", False)
                except HartError as exc:
                    return Failure(exc.kind, Status.BAD_COMMUNICATION_ERROR, str(exc), True)
                if (
                    frame.frame_type != FrameType.ACK
                    or frame.address != self._address
                    or frame.command != command
                    or frame.primary_master != cfg.primary_master
                ):
                    self.problems.counts["ignored_frames"] += 1  # echo, burst frame, another device or master
                    continue
                return frame
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise self._mapped(exc) from None
        finally:
            noise = link.noise - noise_before
            if noise:
                self.problems.counts["noise_bytes"] += noise

    # ------------------------------------------------------------------ polling

    async def samples(self) -> AsyncGenerator[list[Sample], None]:
        """Poll every `interval` (skipping missed polls, never bursting), or follow burst frames."""
        if not self._tags:
            await asyncio.Event().wait()  # nothing to read: idle until cancelled
            return
        if self.config.burst:
            async with contextlib.aclosing(self._listen()) as frames:
                async for batch in frames:
                    yield batch
            return
        loop = asyncio.get_running_loop()
        interval = float(self.config.interval)
        next_at = loop.time()
        while True:
            yield await self.poll()
            next_at += interval
            if next_at - loop.time() < -interval:  # fell behind: skip missed polls, never burst
                next_at = loop.time()
            while (delay := next_at - loop.time()) > 0:  # a long interval must not let a session expire
                await asyncio.sleep(min(delay, _IDLE_TICK_S))
                if self._link is not None:
                    await self._idle(self._link)

    async def poll(self) -> list[Sample]:
        """Read every tag now: one batch, one sample per tag."""
        self.problems.counts["polls"] += 1
        readings: dict[Variable, _Reading] = {}
        answered = False
        skip: Failure | None = None  # the device did not answer: do not spend a timeout per command
        for cmd in self._commands:
            if skip is not None:
                self._fail_vars(readings, cmd, skip, time.time_ns())
                continue
            res = await self._transact(cmd)
            ts = time.time_ns()
            where = f"command {cmd}"
            if isinstance(res, Failure):
                answered = answered or res.answered
                self.problems.report(where, res.kind, res.reason)
                self._fail_vars(readings, cmd, res, ts)
                if not res.answered:
                    skip = res
                continue
            answered = True
            self.problems.resolved(where)
            self._take(readings, cmd, res, ts, where)
        if answered:
            self.problems.poll_answered()
            await self._more_status()
        else:
            reason = skip.reason if skip is not None else "no answer"
            self.problems.poll_unanswered(
                lambda n: (
                    f"{self.config.name}: {self._address} at {self.config.endpoint} did not answer"
                    f" {n} polls in a row ({reason})"
                )
            )
        return self._samples(readings)

    def _fail_vars(self, readings: dict[Variable, _Reading], cmd: int, failure: Failure, ts: int) -> None:
        for var in _PROVIDES[cmd]:
            readings.setdefault(var, _Reading(None, None, failure.status, ts))

    def _take(self, readings: dict[Variable, _Reading], cmd: int, frame: Frame, ts: int, where: str) -> None:
        """Readings from a good answer (poll or burst), with the response code and status bits applied."""
        self._device_status_seen(frame.device_status)
        try:
            values = decode_variables(cmd, frame.payload)
        except DecodeError as exc:
            self.problems.counts["decode"] += 1
            self.problems.report(f"{where} data", "decode", str(exc))
            for var in _PROVIDES[cmd]:
                readings.setdefault(var, _Reading(None, None, Status.BAD_DECODING_ERROR, ts))
            return
        self.problems.resolved(f"{where} data")
        rc = frame.response_code
        base = Status.GOOD if rc == 0 else Status.UNCERTAIN_LAST_USABLE_VALUE if rc == 8 else Status.UNCERTAIN
        for var in _PROVIDES[cmd]:
            earlier = readings.get(var)
            if earlier is not None and severity(earlier.status) != Severity.BAD:
                continue  # the first good answer wins (command 3 over 2 for the loop current)
            if var not in values:
                self.problems.report(f"variable {var}", "not_reported", f"the device does not report {var} ({where})")
                readings[var] = _Reading(None, None, Status.BAD_CONFIGURATION_ERROR, ts)
                continue
            self.problems.resolved(f"variable {var}")
            value, unit = values[var]
            status = _worst(base, status_bits_quality(var, frame.device_status))
            if math.isnan(value) or math.isinf(value):
                status = _worst(status, Status.BAD_SENSOR_FAILURE)  # HART "no value" (0x7FA00000) or a dead sensor
            readings[var] = _Reading(value, unit, status, ts)

    def _samples(self, readings: dict[Variable, _Reading]) -> list[Sample]:
        out: list[Sample] = []
        for path, tag in zip(self._paths, self._tags, strict=True):
            r = readings.get(tag.variable)
            if r is None:
                continue  # a burst frame that does not carry this variable
            sev = severity(r.status)
            value = None if sev == Severity.BAD else r.value
            if r.unit is not None:
                self._units[tag.variable] = r.unit
            unit = tag.unit or (r.unit if r.unit is not None else self._units.get(tag.variable))
            out.append(Sample(path, r.ts_ns, value, r.status, _SCORE[sev], unit))
        return out

    def _device_status_seen(self, ds: int) -> None:
        """Count the status bits; log when the byte changes, not on every answer."""
        for flag in DeviceStatus:
            if ds & flag:
                self.problems.counts[f"status_{(flag.name or str(int(flag))).lower()}"] += 1
        if ds == self._device_status:
            return
        first = self._device_status is None
        self._device_status = ds
        if first and ds == 0:
            return
        names = ", ".join(f.name.lower().replace("_", " ") for f in DeviceStatus if ds & f and f.name) or "ok"
        serious = ds & ~(DeviceStatus.CONFIG_CHANGED | DeviceStatus.COLD_START | DeviceStatus.MORE_STATUS_AVAILABLE)
        level = "warning" if serious else "info"
        getattr(self.log, level)(
            "%s: device status 0x%02X: %s", self.config.name, ds, names, extra={"device": self.config.name}
        )

    async def _more_status(self) -> None:
        """Command 48 when the device says more status is available (not on every poll)."""
        ds = self._device_status or 0
        if not ds & DeviceStatus.MORE_STATUS_AVAILABLE:
            self._more_status_at = None
            return
        now = asyncio.get_running_loop().time()
        last = self._more_status_at
        if last is not None and last[0] == ds and now - last[1] < _MORE_STATUS_EVERY_S:
            return
        self._more_status_at = (ds, now)
        res = await self._transact(48)
        if isinstance(res, Failure):
            self.problems.report("command 48", res.kind, res.reason)
            return
        self.problems.resolved("command 48")
        try:
            extra = decode_additional_status(res.payload)
        except DecodeError as exc:
            self.problems.counts["decode"] += 1
            self.problems.report("command 48", "decode", str(exc))
            return
        self.problems.counts["additional_status"] += 1
        if extra != self.additional_status:
            self.additional_status = extra
            self.log.info(
                "%s: additional device status (command 48): %s",
                self.config.name,
                extra.hex(" "),
                extra={"device": self.config.name},
            )

    # ------------------------------------------------------------------ burst mode

    async def _listen(self) -> AsyncGenerator[list[Sample], None]:
        """Follow the device's burst frames. No frame for 3 intervals: Bad samples (the reason is
        the last damaged frame if there was one, else a timeout), and after `max_failed_polls`
        such silences the connection is given up (Transient)."""
        link = self._link
        if link is None:
            raise Transient(f"{self.config.name}: not connected")
        loop = asyncio.get_running_loop()
        silence = max(3 * float(self.config.interval), float(self.config.timeout))
        due = loop.time() + silence
        problem: Failure | None = None
        covered: set[int] = set()  # burst commands seen (to warn once about tags they do not carry)
        self.problems.counts["polls"] += 1
        while True:
            try:
                frame = await link.receive(min(due, loop.time() + _IDLE_TICK_S))
            except TimeoutError:
                if loop.time() >= due:
                    yield self._burst_silence(problem, silence)
                    problem = None
                    due = loop.time() + silence
                await self._idle(link)
                continue
            except HartError as exc:
                self.problems.counts[exc.kind] += 1
                problem = Failure(exc.kind, Status.BAD_COMMUNICATION_ERROR, str(exc), True)
                continue
            except LinkDown as exc:
                self.problems.counts["connection_lost"] += 1
                raise self._mapped(exc) from None
            await self._idle(link)
            if frame.frame_type != FrameType.BACK or frame.address != self._address:
                self.problems.counts["ignored_frames"] += 1
                continue
            if frame.command not in _PROVIDES:
                self.problems.counts["burst_other_command"] += 1
                self.problems.report(
                    "burst", "other_command", f"burst command {frame.command} carries no dynamic variables"
                )
                continue
            self.problems.counts["burst_frames"] += 1
            missing = sorted({t.variable for t in self._tags} - set(_PROVIDES[frame.command]))
            if missing and frame.command not in covered:
                reason = f"burst command {frame.command} does not carry {', '.join(missing)}: those tags get no values"
                self.log.warning("%s: %s", self.config.name, reason, extra={"device": self.config.name})
            covered.add(frame.command)
            self.problems.poll_answered()
            problem = None
            due = loop.time() + silence
            self.problems.resolved("burst")
            readings: dict[Variable, _Reading] = {}
            self._take(readings, frame.command, frame, time.time_ns(), f"burst command {frame.command}")
            yield self._samples(readings)

    async def _idle(self, link: Link) -> None:
        try:
            await link.idle()
        except LinkDown as exc:
            self.problems.counts["connection_lost"] += 1
            raise self._mapped(exc) from None

    def _burst_silence(self, problem: Failure | None, silence: float) -> list[Sample]:
        failure = problem or Failure("timeout", Status.BAD_TIMEOUT, f"no burst frame for {silence:g}s", False)
        if problem is None:
            self.problems.counts["timeout"] += 1
        self.problems.counts["errors"] += 1
        self.problems.report("burst", failure.kind, failure.reason)
        self.problems.poll_unanswered(
            lambda n: f"{self.config.name}: no usable burst frame from {self._address} for {n} periods"
        )
        ts = time.time_ns()
        readings = {t.variable: _Reading(None, None, failure.status, ts) for t in self._tags}
        return self._samples(readings)


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
