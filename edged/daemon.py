"""The daemon: one root TaskGroup owning the buffer writer, a supervisor per device and per uplink,
the watchdog and the status writer.

Shutdown is ordered so nothing read is lost: drivers stop first, the writer commits what they
produced, then uplinks and the rest are cancelled and the buffer is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from buffer import Buffer
from buffer.history import History
from edged import registry
from edged.aio import closing
from edged.alarms.engine import AlarmEngine
from edged.commands import AuditTrail, CommandGate, Writer
from edged.compute.engine import Engine
from edged.config import Config, DeviceBase, UplinkBase
from edged.config import load as load_config
from edged.delivery import Sender
from edged.errors import ConfigError, Permanent, Transient
from edged.files import write_atomic
from edged.model import Sample, Severity, Status, severity
from edged.plugin import Backoff, Driver, DriverSpec, PluginContext, Tally, Writable
from edged.quality import TagProcessor
from edged.sdnotify import Notifier

log = logging.getLogger("edged")

STATUS_FILE = "status.json"
STOP_GRACE_S = 15.0
EXIT_STOP_TIMEOUT = 70


class _Shutdown(Exception):
    """Raised inside the root TaskGroup to stop it after the ordered drain."""


@dataclass(slots=True)
class DeviceStats:
    state: str = "starting"  # starting | connecting | running | backoff | stopped
    polls: int = 0
    samples: int = 0
    errors: int = 0
    connects: int = 0
    last_error: str | None = None
    last_sample_ns: int | None = None


class DeviceRunner:
    """Supervises one device: connect, read, hand to the buffer; on failure mark its tags Bad once,
    back off (capped, jittered) and reconnect. Never lets its failure reach the other devices."""

    def __init__(
        self,
        config: DeviceBase,
        spec: DriverSpec[Any],
        buffer: Buffer,
        ctx: PluginContext,
        put: Callable[[list[Sample]], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.spec = spec
        self.buffer = buffer
        self.put = put or buffer.put  # the daemon's: the buffer, with the computed tags they lead to
        self.ctx = ctx
        self.processor = TagProcessor(config)
        self.backoff = Backoff(initial=1.0, cap=60.0)
        self.stats = DeviceStats()
        self._down = False
        self.driver: Driver | None = None  # the connected driver, for the command gate; None while down
        self.tally = Tally()  # the driver's own counters over its reconnects (status, metrics)

    async def run(self) -> None:
        extra = {"device": self.name}
        while True:
            self.stats.state = "connecting"
            try:
                async with self.spec.driver(self.config, self.ctx) as drv:
                    self.stats.connects += 1
                    self.stats.state = "running"
                    self.driver = drv
                    self.tally.attach(drv)
                    try:
                        async with closing(drv.samples()) as stream:
                            async for batch in stream:
                                self._accept(batch)
                    finally:
                        self.driver = None
                        self.tally.detach()
            except (Transient, Permanent, OSError, TimeoutError) as exc:
                self._failed(exc)
            except Exception as exc:  # a driver bug: log the traceback, keep the daemon up
                log.exception("device %s: unexpected driver error", self.name, extra=extra)
                self._failed(exc)
            else:
                self._failed(Transient("the driver's sample stream ended"))
            self.stats.state = "backoff"
            await asyncio.sleep(self.backoff.next_delay())

    def _accept(self, batch: list[Sample]) -> None:
        self.stats.polls += 1
        self.stats.samples += len(batch)
        if batch:
            self.stats.last_sample_ns = batch[-1].ts_ns
        if self._down and any(severity(s.status) != Severity.BAD for s in batch):
            # recovered only when the device really answers: an all-Bad batch keeps the backoff growing
            log.info("device %s recovered", self.name, extra={"device": self.name})
            self._down = False
            self.backoff.reset()
        self.put(self.processor.process(batch))

    def _failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        msg = f"{type(exc).__name__}: {exc}"
        if not self._down or msg != self.stats.last_error:
            log.warning("device %s: %s", self.name, msg, extra={"device": self.name})
        self.stats.last_error = msg
        if not self._down:
            # One Bad sample per tag per outage: a receiver sees the device is gone, not a frozen value.
            # Recorded through the processor, so the first value after the outage passes the deadband.
            status = Status.BAD_CONFIGURATION_ERROR if isinstance(exc, Permanent) else Status.BAD_NO_COMMUNICATION
            self.put(self.processor.outage(status))
            self._down = True


class Daemon:
    """Everything `edged run` starts, built from a validated Config."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None, hard_exit: bool = False) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.stop_event = asyncio.Event()
        self.buffer = Buffer(config.buffer_path, config.buffer)
        # Process alarms (edged.alarms): fed every sample about to be stored, events stored beside them.
        self.alarms: AlarmEngine | None = None
        if config.alarms.tags:
            refresh_alarms = min(3600.0, float(config.buffer.retention) / 4)
            self.alarms = AlarmEngine(config.alarms, refresh_s=refresh_alarms)
        # Computed tags (edged.compute): fed what the drivers store, stored in the same flush.
        self.compute: Engine | None = None
        if config.computed:
            from edged.compute.plan import build

            plans = build(config.devices, config.computed, file=config.source or "<config>")
            # a silent totalizer is stored again well within the retention, so it is never trimmed away
            refresh = min(3600.0, float(config.buffer.retention) / 4)
            hook = self.alarms.hook if self.alarms is not None else None
            self.compute = Engine(plans, sink=self._store, refresh_s=refresh, on_event=hook)
        self.started_ns = time.time_ns()
        self.current: dict[str, Sample] = {}  # each tag's newest sample handed to the buffer (the web UI)
        self.loop_lag_s = 0.0
        self.stopped = False
        self._devices: dict[str, tuple[DeviceRunner, asyncio.Task[None]]] = {}
        self._uplinks: dict[str, tuple[Sender, asyncio.Task[None]]] = {}
        self._reload_requested = asyncio.Event()
        self.reloads = 0
        self.backlog: dict[str, tuple[int, int | None]] = {}  # uplink -> (samples owed, oldest owed ts)
        self.delivery: dict[str, tuple[int, int]] = {}  # uplink -> (dropped before delivery, gap records owed)
        self.buffer_file_bytes = 0  # db + wal + shm on disk, measured off the event loop
        # Setpoint writes (edged.commands): one gate for every source, audited in the buffer database.
        self.commands = CommandGate(config, AuditTrail(lambda: self.buffer.store, self.buffer.call), self._writer,
                                    alarms=self._alarm_command)  # fmt: skip
        self.history = History(lambda: self.buffer.store, self.buffer.call)  # HistoryRead (OPC UA server)
        self._listeners: dict[str, asyncio.Task[None]] = {}  # uplink -> its command listener task
        self._force_exit_timer: asyncio.TimerHandle | None = None
        self._hard_exit = hard_exit  # the `edged run` process only: a library user is never os._exit'ed

    async def _writer(self, device: str) -> Writer | None:
        if self.compute is not None and device in self.compute.groups:
            return self.compute.writer(device)  # a totalizer reset
        entry = self._devices.get(device)
        driver = entry[0].driver if entry is not None else None
        return driver if isinstance(driver, Writable) else None

    async def _alarm_command(
        self, path: str, action: str, seconds: float | None, user: str | None, source: str
    ) -> tuple[str, str]:
        """Acknowledge / shelve through the gate (it authorised and audits it); the event is stored."""
        if self.alarms is None:
            from edged.alarms.engine import Refused

            raise Refused("unknown_tag", f"unknown alarm {path!r}")
        before, after, event = self.alarms.command(path, action, seconds, user=user, source=source)
        self.buffer.put([event])
        return before, after

    async def _latest(self) -> list[Sample]:
        """Each tag's newest stored sample, for uplinks that show current values (OPC UA server)."""
        return await self.buffer.call(self.buffer.store.latest)

    def _ctx(self, kind: str, name: str) -> PluginContext:
        return PluginContext(
            gateway_id=self.config.gateway.id,
            data_dir=self.config.data_dir,
            log=logging.getLogger(f"edged.{kind}.{name}"),
            config=self.config,
            commands=self.commands,
            latest=self._latest,
            history=self.history.read,
        )

    def _runner(self, dev: DeviceBase) -> DeviceRunner:
        ctx = self._ctx("device", dev.name)
        return DeviceRunner(dev, registry.driver_spec(dev.type), self.buffer, ctx, put=self._put)

    def _put(self, samples: list[Sample]) -> None:
        """Samples to store, and the computed samples they lead to: one list, so one transaction."""
        if self.compute is not None and samples:
            computed = self.compute.feed(samples)
            if computed:
                samples = [*samples, *computed]
        self._store(samples)

    def _store(self, samples: list[Sample]) -> None:
        """Samples to store and the alarm events they lead to (one list, so one transaction), each
        tag's newest noted for the web UI (no disk read per page; alarm events are not tags)."""
        current = self.current
        for s in samples:
            current[s.tag] = s
        if self.alarms is not None and samples:
            events = self.alarms.feed(samples)
            if events:
                samples = [*samples, *events]
        self.buffer.put(samples)

    def _sender(self, up: UplinkBase) -> Sender:
        spec = registry.uplink_spec(up.type)
        ctx = self._ctx("uplink", up.name)
        return Sender(
            self.buffer,
            up,
            lambda: spec.uplink(up, ctx),
            gateway_id=self.config.gateway.id,
            log=logging.getLogger(f"edged.uplink.{up.name}"),
        )

    @property
    def devices(self) -> list[DeviceRunner]:
        return [r for r, _ in self._devices.values()]

    @property
    def senders(self) -> list[Sender]:
        return [s for s, _ in self._uplinks.values()]

    def _start_device(self, tg: asyncio.TaskGroup, dev: DeviceBase) -> None:
        runner = self._runner(dev)
        self._devices[dev.name] = (runner, tg.create_task(runner.run(), name=f"driver:{dev.name}"))

    def _start_uplink(self, tg: asyncio.TaskGroup, up: UplinkBase) -> None:
        sender = self._sender(up)
        self._uplinks[up.name] = (sender, tg.create_task(sender.run(), name=f"uplink:{up.name}"))
        # An uplink that receives commands on a connection of its own declares serve_commands.
        serve = registry.uplink_spec(up.type).serve_commands
        if serve is not None and up.takes_commands():
            listener = serve(up, self._ctx("uplink", up.name), self.commands)
            self._listeners[up.name] = tg.create_task(listener, name=f"commands:{up.name}")

    def request_reload(self) -> None:
        self._reload_requested.set()

    def request_stop(self) -> None:
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        # A stop that hangs (a plugin ignoring cancellation) must not keep the gateway from restarting:
        # committed data is safe in the buffer, so after the grace period exit hard, with the stacks.
        # Only in the daemon's own process: a test or a tool running a Daemon must not be killed.
        if self._hard_exit:
            self._force_exit_timer = asyncio.get_running_loop().call_later(STOP_GRACE_S, self._force_exit)

    def _force_exit(self) -> None:
        stuck = [t for t in asyncio.all_tasks() if not t.done()]
        log.critical("stop did not finish in %ss; exiting hard. Stuck tasks: %s", STOP_GRACE_S,
                     ", ".join(t.get_name() for t in stuck))  # fmt: skip
        for t in stuck:
            log.critical("task %s stack: %s", t.get_name(), t.get_stack(limit=3))
        logging.shutdown()
        os._exit(EXIT_STOP_TIMEOUT)

    async def run(self) -> None:
        """Run until request_stop() (SIGTERM/SIGINT); SIGHUP reloads the config file."""
        try:
            await self._run()
        finally:
            if self._force_exit_timer is not None:  # stopped (buffer closed too): no hard exit later
                self._force_exit_timer.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        handlers = ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                    (signal.SIGHUP, self.request_reload))  # fmt: skip
        for sig, handler in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        async with self.buffer:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.buffer.run_writer(), name="buffer-writer")
                    tg.create_task(self.buffer.run_maintenance(), name="buffer-maintenance")
                    if self.compute is not None:
                        resumed = await self.buffer.call(self.compute.recover, self.buffer.store)
                        log.info("computed tags: %d, %d totalizers resumed from the buffer",
                                 len(self.compute.tags), resumed)  # fmt: skip
                        tg.create_task(self._compute_ticker(self.compute), name="compute-ticker")
                    if self.alarms is not None:
                        resumed = await self.buffer.call(self.alarms.recover, self.buffer.store)
                        log.info("alarms: %d, %d resumed their state from the buffer",
                                 len(self.alarms.alarms), resumed)  # fmt: skip
                        tg.create_task(self._alarm_ticker(self.alarms), name="alarm-ticker")
                    for up in self.config.uplinks:
                        if up.enabled:
                            self._start_uplink(tg, up)
                    for dev in self.config.devices:
                        if dev.enabled:
                            self._start_device(tg, dev)
                    tg.create_task(self._watchdog(), name="watchdog")
                    tg.create_task(self._status_writer(), name="status-writer")
                    tg.create_task(self._stale_sweeper(), name="stale-sweeper")
                    tg.create_task(self._reloader(tg), name="reloader")
                    inbox = tg.create_task(self.commands.serve_inbox(), name="commands-inbox")
                    if self.config.gateway.metrics_listen:
                        from edged.metrics import serve

                        tg.create_task(serve(self, self.config.gateway.metrics_listen), name="metrics")
                    if self.config.ui.enabled and self.config.ui.listen != self.config.gateway.metrics_listen:
                        from edged.ui import serve as serve_ui

                        tg.create_task(serve_ui(self), name="ui")
                    self.notifier.ready(f"{len(self._devices)} devices, {len(self._uplinks)} uplinks")
                    log.info(
                        "edged running: gateway %s, %d devices, %d uplinks, buffer %s",
                        self.config.gateway.id, len(self._devices), len(self._uplinks), self.config.buffer_path,
                    )  # fmt: skip
                    await self.stop_event.wait()
                    log.info("stopping: draining drivers and flushing the buffer")
                    self.notifier.stopping()
                    for t in [inbox, *self._listeners.values()]:
                        t.cancel()  # no new writes while the drivers stop
                    drivers = [t for _, t in self._devices.values()]
                    for t in drivers:
                        t.cancel()
                    if drivers:
                        await asyncio.wait(drivers)
                    if self.alarms is not None:
                        self.buffer.put(self.alarms.flush())  # the last flood summaries
                    await self.buffer.flush_at_exit()
                    raise _Shutdown
            except* _Shutdown:
                pass
            finally:
                self.stopped = True
                for runner in self.devices:
                    runner.stats.state = "stopped"
                for sender in self.senders:
                    sender.stats.state = "stopped"
                self._write_status()
        log.info("edged stopped")

    async def _reloader(self, tg: asyncio.TaskGroup) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            self.notifier.reloading()
            try:
                await self.reload(tg)
            finally:
                self.notifier.ready(f"{len(self._devices)} devices, {len(self._uplinks)} uplinks")

    async def reload(self, tg: asyncio.TaskGroup) -> None:
        """Apply a changed config file: changed, added and removed devices/uplinks restart, the others
        keep running undisturbed. An invalid file is rejected and the running config stays in force."""
        source = self.config.source
        if not source or source.startswith("<"):
            log.warning("reload ignored: the daemon runs the embedded demo, not a config file")
            return
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays in force: %s", exc)
            return
        if new.gateway != self.config.gateway or new.buffer != self.config.buffer:
            log.warning("reload: [gateway] and [buffer] changes take effect only after a restart")
        if new.computed != self.config.computed:
            log.warning("reload: [[computed]] changes take effect only after a restart")
        if new.alarms != self.config.alarms:
            log.warning("reload: [alarms] changes take effect only after a restart")
        old_dev = {d.name: d for d in self.config.devices if d.enabled}
        new_dev = {d.name: d for d in new.devices if d.enabled}
        old_up = {u.name: u for u in self.config.uplinks if u.enabled}
        new_up = {u.name: u for u in new.uplinks if u.enabled}
        dev_stop = [n for n in old_dev if new_dev.get(n) != old_dev[n]]
        up_stop = [n for n in old_up if new_up.get(n) != old_up[n]]
        stopping = [self._devices.pop(n)[1] for n in dev_stop] + [self._uplinks.pop(n)[1] for n in up_stop]
        stopping += [self._listeners.pop(n) for n in up_stop if n in self._listeners]
        for t in stopping:
            t.cancel()
        if stopping:
            await asyncio.wait(stopping)
        # gateway and buffer stay as started
        self.config = msgspec.structs.replace(
            self.config, devices=new.devices, uplinks=new.uplinks, commands=new.commands
        )
        self.commands.configure(self.config)
        for n, up in new_up.items():
            if n not in self._uplinks:
                self._start_uplink(tg, up)
        for n, dev in new_dev.items():
            if n not in self._devices:
                self._start_device(tg, dev)
        self.reloads += 1
        changed = sorted({*dev_stop, *up_stop, *(set(new_dev) - set(old_dev)), *(set(new_up) - set(old_up))})
        log.info("config reloaded: restarted %s", ", ".join(changed) if changed else "nothing (no changes)")

    async def _watchdog(self) -> None:
        """Ping systemd from the event loop itself, so a stuck loop is restarted; measure loop lag."""
        interval = self.notifier.watchdog_interval or 1.0
        interval = min(interval, 1.0)
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag_s = max(0.0, loop.time() - t0 - interval)
            if self.notifier.watchdog_interval:
                self.notifier.watchdog()

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "gateway": self.config.gateway.id,
            "started_ns": self.started_ns,
            "updated_ns": time.time_ns(),
            "loop_lag_s": self.loop_lag_s,
            "reloads": self.reloads,
            "stopped": self.stopped,
            "buffer": {
                "head": self.buffer.head,
                "stored": self.buffer.stored,
                "dropped_ingest": self.buffer.dropped_ingest,
                "write_errors": self.buffer.write_errors,
                "alarm": self.buffer.alarm,
                "last_trim": asdict(self.buffer.last_trim),
                "set_aside": msgspec.to_builtins(list(self.buffer.set_aside)),
            },
            "devices": {d.name: {**asdict(d.stats), "counters": d.tally.totals()} for d in self.devices},
            "compute": self.compute.counters() if self.compute is not None else {},
            "alarms": self.alarms.summary() if self.alarms is not None else {},
            "uplinks": {
                s.name: {
                    **asdict(s.stats),
                    "counters": s.tally.totals(),
                    "backlog": self.backlog.get(s.name, (0, None))[0],
                    "oldest_unsent_ns": self.backlog.get(s.name, (0, None))[1],
                    "dropped": self.delivery.get(s.name, (0, 0))[0],
                    "gaps_pending": self.delivery.get(s.name, (0, 0))[1],
                }
                for s in self.senders
            },
        }

    def _write_status(self, doc: bytes | None = None) -> None:
        """Write status.json (0640 whatever the umask); `doc`: a snapshot encoded on the loop, when
        this runs on a worker thread."""
        path = self.config.data_dir / STATUS_FILE
        try:
            write_atomic(path, doc if doc is not None else msgspec.json.encode(self.snapshot()))
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    async def _stale_sweeper(self) -> None:
        """Once a second, mark tags whose device went quiet without an error (no batches at all)
        as stale; tags that still arrive are handled inside `process` without this timer."""
        while True:
            await asyncio.sleep(1.0)
            for runner in self.devices:
                stale = runner.processor.sweep()
                if stale:
                    self._put(stale)

    async def _compute_ticker(self, engine: Engine) -> None:
        """Once a second: close aligned windows whose end passed while their input was silent."""
        while True:
            await asyncio.sleep(1.0)
            out = engine.tick()
            if out:
                self._store(out)

    async def _alarm_ticker(self, alarms: AlarmEngine) -> None:
        """Once a second: alarm delays run out, shelves expire, flood summaries, state refresh."""
        while True:
            await asyncio.sleep(1.0)
            out = alarms.tick()
            if out:
                self.buffer.put(out)

    async def _status_writer(self) -> None:
        """Refresh the per-uplink figures and file sizes (on the buffer thread) and write the status
        file (on a worker thread) every 2 s: no disk access on the event loop."""
        store, call = self.buffer.store, self.buffer.call
        while True:
            for name in list(self._uplinks):
                try:
                    self.backlog[name] = await call(store.backlog, name)
                    self.delivery[name] = await call(store.delivery_counts, name)
                except sqlite3.Error as exc:
                    log.debug("backlog query failed: %s", exc)
            with contextlib.suppress(OSError):
                self.buffer_file_bytes = await call(store.file_bytes)
            await asyncio.to_thread(self._write_status, msgspec.json.encode(self.snapshot()))
            await asyncio.sleep(2.0)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = msgspec.json.decode((data_dir / STATUS_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return doc


STATUS_FRESH_S = 10.0  # the status file is rewritten every 2 s: older than this, no daemon runs


def status_age_s(doc: dict[str, Any]) -> float:
    """How old a status file's last update is."""
    return (time.time_ns() - int(doc.get("updated_ns", 0))) / 1e9


def is_running(doc: dict[str, Any]) -> bool:
    """Whether the daemon that wrote this status runs now: not stopped, fresh, its process there."""
    return not doc.get("stopped") and status_age_s(doc) < STATUS_FRESH_S and pid_alive(int(doc.get("pid", 0)))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a daemon's, from its status file)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's (the edged service user)
        return True
    return True
