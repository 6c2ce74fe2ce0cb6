"""MQTT Sparkplug B edge node (Sparkplug 3.0): the gateway is one edge node, its devices are Sparkplug devices.

One connection is one Sparkplug session: CONNECT with the NDEATH as Will (carrying a bdSeq persisted
across restarts), subscribe to NCMD and the primary host's STATE, wait until that host is online,
NBIRTH (seq 0) and one DBIRTH per device, each metric with its newest value in the buffer and a
datatype from the config, then NDATA/DDATA by alias. `send` acknowledges a batch once the broker has
provably read its DATA messages (QoS 0: an UNSUBACK after them; QoS 1: the PUBACKs). While the host
is offline or the broker is gone the batch raises Transient and stays in the buffer; after the next
birth it comes back as historical batches: a metric is historical unless it is newer than the value
the host holds as current. Topics, metrics and persisted files: README.md.

Writes: DCMD metrics (and NCMD metrics other than Node Control) are setpoint commands. Each goes
through the daemon's command gate (edged.commands: allow-list, limits, staleness, duplicates, audit),
which is closed without one. Sparkplug authenticates no sender, so the node takes as little as it can:
DCMD is subscribed only when the gate lets this uplink write some tag, writes only while the primary
host is online, payloads above `max_command_bytes` are dropped undecoded, and Rebirth requests are
rate-limited. A command's id is derived from its timestamps and metric, so a replayed DCMD is a
duplicate for the gate. The command handlers run beside the listener, never under the publish lock,
so STATE and rebirth handling never wait on a device. Sparkplug has no reply channel: an accepted
write is answered by a DDATA carrying the read-back value; every outcome is in the gate's log and audit.

Layout: config.py (the keys), metrics.py (metrics, aliases, value encoding, payloads), session.py
(bdSeq, seq, births and deaths, STATE, rebirth), commands.py (NCMD/DCMD); the MQTT connection itself
is edged.protocols.mqtt's. The Uplink here ties them together.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

import aiomqtt

from edged.errors import Transient
from edged.model import Batch, Sample
from edged.plugin import PluginContext, UplinkSpec
from edged.protocols import mqtt
from uplink.sparkplug.commands import Commands, command_value
from uplink.sparkplug.config import Config
from uplink.sparkplug.metrics import Registry, split_tag
from uplink.sparkplug.session import MAX_UNCONFIRMED, Session

__all__ = ["Config", "Uplink", "command_value"]


class Uplink:
    """One Sparkplug session per instance; the Sender makes a new one after each failure."""

    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self.registry = Registry(config, ctx)
        self.session = Session(config, ctx, self.registry)
        self.commands = Commands(config, ctx, self.registry, self.session)
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # Unwinds listener, NDEATH + state, DISCONNECT. The caller's exception is not passed in: the
            # TaskGroup would wrap it in an ExceptionGroup, and it propagates by itself anyway.
            await stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        c = self.config
        self.registry.build(await asyncio.to_thread(self.registry.load_state))
        client = await self.session.connect(stack)
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        if not self.commands.dcmd:
            self.log.info("uplink %s: DCMD not subscribed: no [[commands.tags]] entry lets source %r write (or "
                          "commands are disabled)", c.name, c.name)  # fmt: skip
        await self.session.subscribe(dcmd=self.commands.dcmd)
        listener = tg.create_task(self._listen(client), name=f"sparkplug:{c.name}:listen")
        stack.callback(listener.cancel)
        stack.push_async_callback(self.commands.drain)  # before the cancel (last in, first out)
        await self.session.wait_for_host()
        async with self.session.lock:
            await self.session.birth()
        await asyncio.to_thread(self.registry.save_state)  # aliases handed out by this birth

    async def _listen(self, client: aiomqtt.Client) -> None:
        """NCMD, DCMD and STATE; ends, marking the session dead, when the connection is lost.

        Writes run as tasks of `commands`, so this loop goes on reading STATE and rebirth requests
        while a device answers; a session that ends lets the writes already running finish.
        """
        s = self.session
        async with asyncio.TaskGroup() as commands:
            try:
                async for msg in client.messages:
                    raw = msg.payload
                    try:
                        if msg.topic.matches(s.topic["NCMD"]):
                            await self.commands.on_cmd(commands, None, raw, msg.retain)
                        elif self.commands.dcmd and msg.topic.matches(s.topic["DCMD"]):
                            await self.commands.on_cmd(commands, str(msg.topic).split("/")[4], raw, msg.retain)
                        elif s.state_topic and msg.topic.matches(s.state_topic):
                            await s.on_state(client, mqtt.payload_bytes(raw))
                    except (aiomqtt.MqttError, OSError, Transient) as exc:
                        s.kill(f"connection lost: {exc}")
                        return
                    except Exception:  # a malformed command must never take the uplink down
                        self.log.exception("uplink %s: cannot handle a message on %s", self.config.name, msg.topic)
                    if s.dead is not None:
                        return
            except aiomqtt.MqttError as exc:
                s.kill(f"connection lost: {exc}")

    # ------------------------------------------------------------------ Uplink protocol

    def counters(self) -> dict[str, float]:
        """This session's command-side figures (the Sender shows them in status and metrics)."""
        s, cmds = self.session, self.commands
        return {
            "rebirth_requests": s.rebirth_requests,
            "rebirths_coalesced": s.rebirths_coalesced.total,
            "rebirth_pending": int(s.rebirth_pending is not None),
            "commands_oversized": cmds.oversized.total,
            "commands_malformed_metrics": cmds.bad_metrics,
            "commands_in_flight": len(cmds.running),
            "values_mistyped": self.registry.mistyped,
            "data_confirmations": s.confirmations,
            "payload_bytes": s.published_bytes,  # births included; the Sender sizes batches by it
        }

    def is_closed(self) -> bool:
        """The session ended (connection lost, primary host offline). The Sender asks while idle,
        so a node re-births after a broker restart without waiting for the next sample."""
        return self.session.dead is not None

    def window(self) -> int:
        """Sends overlap (edged.plugin.Windowed): publishes keep their order under the session's
        lock, and QoS 0 confirmations pipeline their round trips (session.confirm)."""
        return self.config.max_inflight

    async def send(self, batch: Batch) -> None:
        s, reg = self.session, self.registry
        if s.dead is not None:
            raise Transient(s.dead)
        if not s.host_online:
            raise Transient(f"primary host {self.config.primary_host_id} is offline")
        groups: dict[str | None, list[Sample]] = {}
        for sample in batch.samples:
            groups.setdefault(split_tag(sample.tag)[0], []).append(sample)
        qos = self.config.data_qos
        async with s.lock:
            if reg.absorb(batch.samples):
                self.log.info("uplink %s: new tags or types: rebirth", self.config.name)
                await s.birth()
                await asyncio.to_thread(reg.save_state)
            if s.unconfirmed() > MAX_UNCONFIRMED:  # pace by bytes when sends overlap
                await s.confirm()
            for device, samples in groups.items():
                payload, current = reg.data(samples)
                topic = s.topic["NDATA"] if device is None else s.device_topic("DDATA", device)
                await s.publish(topic, payload, qos)
                reg.hold(current)
            if batch.gaps:
                await s.publish(s.topic["NDATA"], reg.gaps(batch.gaps), qos)
        if qos == 0:
            # QoS 0 has no acknowledgement: the batch counts as delivered once the broker has provably
            # read it (outside the lock, so overlapping sends pipeline their round trips)
            await s.confirm()


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
