"""One Sparkplug session: bdSeq (persisted) and the NDEATH Will at CONNECT, seq per message, NBIRTH
and DBIRTHs, the primary host's STATE, coalesced Rebirth requests, the confirmation of QoS 0 data,
and the NDEATH at the end."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

import aiomqtt
import msgspec

from edged.aio import honour_cancel
from edged.errors import Transient
from edged.plugin import PluginContext
from edged.protocols import mqtt
from uplink.sparkplug import sparkplug_b_pb2 as pb
from uplink.sparkplug.config import Config, check_id
from uplink.sparkplug.metrics import BDSEQ, REBIRTH, Registry, now_ms, write_atomic

NAMESPACE = "spBv1.0"
REPORT_S = 60.0  # a recurring problem (oversized payloads, rebirth floods) is logged at most this often
MAX_UNCONFIRMED = 1 << 20  # bytes published and not yet confirmed before a send waits for a confirmation


@dataclass(slots=True)
class Burst:
    """Counts a recurring problem and says when to log it: the first time, then at most once per
    `REPORT_S` with how many there were meanwhile, so a flood costs one log line, not one per message."""

    total: int = 0
    unreported: int = 0
    reported_at: float = -math.inf

    def hit(self) -> int | None:
        """Count one; the number to report when a log line is due, else None."""
        self.total += 1
        self.unreported += 1
        now = time.monotonic()
        if now - self.reported_at < REPORT_S:
            return None
        self.reported_at, n, self.unreported = now, self.unreported, 0
        return n


class _HostState(msgspec.Struct):
    online: bool
    timestamp: int | None = None


class Session:
    """The broker side of one session; the Uplink makes a new one after each failure."""

    def __init__(self, config: Config, ctx: PluginContext, registry: Registry) -> None:
        self.config = config
        self.log = ctx.log
        self.registry = registry
        self.node_id = config.edge_node_id or ctx.gateway_id
        check_id("edge_node_id", self.node_id)
        self.identifier = config.identifier(ctx.gateway_id)
        self.bdseq_path = ctx.data_dir / f"sparkplug-{config.name}.bdseq"
        self.bdseq = 0
        self.seq = 0  # of the next message in this session
        self.published = 0  # messages published in this session (births included)
        self.published_bytes = 0  # their payload bytes
        self.confirmed_bytes = 0  # of those, what the broker has provably read (`confirm`)
        self.confirmations = 0  # confirmation round trips
        self._confirming: list[tuple[int, asyncio.Event]] = []  # round trips under way: (bytes covered, done)
        self.lock = asyncio.Lock()  # one publisher at a time, so seq order is publish order
        self.changed = asyncio.Event()  # host state or session state changed
        self.host_online = config.primary_host_id is None
        self._host_ts: int | None = None
        self.born = False
        self._ndeath_sent = False
        self.dead: str | None = None  # why this session can no longer publish
        self.client: aiomqtt.Client | None = None
        self._last_birth = -math.inf  # loop time the last birth started
        self._rebirth_wanted = -math.inf  # loop time of the newest Rebirth request
        self.rebirth_pending: asyncio.Task[None] | None = None  # the coalesced answer to a Rebirth flood
        self.rebirth_requests = 0
        self.rebirths_coalesced = Burst()
        base = f"{NAMESPACE}/{config.group_id}"
        self.topic = {k: f"{base}/{k}/{self.node_id}" for k in ("NBIRTH", "NDEATH", "NDATA", "NCMD")}
        self.topic["DCMD"] = f"{base}/DCMD/{self.node_id}/+"
        # never subscribed: its UNSUBSCRIBE changes nothing and publishes nothing, only the UNSUBACK matters
        self.confirm_topic = f"{self.topic['NCMD']}/edged-confirm"
        self.state_topic = f"{NAMESPACE}/STATE/{config.primary_host_id}" if config.primary_host_id else None

    def device_topic(self, kind: str, device: str) -> str:
        return f"{NAMESPACE}/{self.config.group_id}/{kind}/{self.node_id}/{device}"

    def _advance_bdseq(self) -> int:
        """The next bdSeq (0..255, +1 per CONNECT), written to disk before it is used."""
        try:
            last = int(self.bdseq_path.read_text().strip())
            nxt = (last + 1) % 256 if 0 <= last <= 255 else 0
        except FileNotFoundError:
            nxt = 0
        except (OSError, ValueError) as exc:
            self.log.warning(
                "uplink %s: cannot read %s (%s); bdSeq starts at 0", self.config.name, self.bdseq_path, exc
            )
            nxt = 0
        try:
            write_atomic(self.bdseq_path, f"{nxt}\n".encode(), fsync=True)
        except OSError as exc:
            raise Transient(f"cannot persist bdSeq in {self.bdseq_path}: {exc.strerror}") from exc
        return nxt

    # ------------------------------------------------------------------ connection

    async def connect(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        """CONNECT with the NDEATH as Will (clean session, as Sparkplug requires); the stack ends the
        session: NDEATH and state, then DISCONNECT."""
        self.bdseq = await asyncio.to_thread(self._advance_bdseq)
        will = aiomqtt.Will(self.topic["NDEATH"], self._ndeath(), qos=1, retain=False)
        # No Nagle: a DATA right after a small packet (the PUBACK of a DCMD) would otherwise wait ~40 ms
        # for the broker's delayed ACK; our payloads are whole messages, so nothing is left to coalesce.
        session = mqtt.session(self.config, self.log, self.identifier, clean_session=True, nodelay=True, will=will)
        self.client = client = await stack.enter_async_context(session)
        stack.push_async_callback(self._end)
        return client

    async def subscribe(self, *, dcmd: bool) -> None:
        """STATE first: its retained message says whether the host is online before any command."""
        assert self.client is not None
        if self.state_topic:
            await mqtt.subscribe(self.client, self.state_topic, qos=1)
        await mqtt.subscribe(self.client, self.topic["NCMD"], qos=1)
        if dcmd:
            await mqtt.subscribe(self.client, self.topic["DCMD"], qos=1)

    async def wait_for_host(self) -> None:
        if not self.host_online:
            self.log.info("uplink %s: waiting for primary host %s to be online", self.config.name,
                          self.config.primary_host_id)  # fmt: skip
        while not self.host_online:
            if self.dead is not None:
                raise Transient(self.dead)
            self.changed.clear()
            await self.changed.wait()

    async def _end(self) -> None:
        """Intentional disconnect: NDEATH first (Sparkplug requires it), then DISCONNECT follows.

        Also after a failed publish: a clean DISCONNECT makes the broker drop the Will, so without this
        NDEATH a host would keep the node online. Never born: nothing to retract, no NDEATH.
        """
        self.kill("session closed")
        if self.client is not None and self.born:
            await self._send_ndeath(self.client)
        await asyncio.to_thread(self.registry.save_state)

    def kill(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        self.changed.set()

    # ------------------------------------------------------------------ publishing

    def _ndeath(self) -> bytes:
        p = pb.Payload(timestamp=now_ms())
        p.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=self.bdseq, timestamp=p.timestamp)
        data: bytes = p.SerializeToString()
        return data

    async def _send_ndeath(self, client: aiomqtt.Client) -> None:
        if self._ndeath_sent:
            return
        self._ndeath_sent = True
        with contextlib.suppress(Transient, TimeoutError):  # a lost connection sent the Will
            async with asyncio.timeout(2.0):
                await mqtt.publish(client, self.topic["NDEATH"], self._ndeath(), qos=1)

    async def publish(self, topic: str, payload: pb.Payload, qos: int) -> None:
        """Stamp the session's next seq and publish; called with the lock held."""
        client = self.client
        if client is None or self.dead is not None:
            raise Transient(self.dead or "not connected")
        payload.seq = self.seq
        self.seq = (self.seq + 1) % 256
        data = payload.SerializeToString()
        try:
            await mqtt.publish(client, topic, data, qos=qos)
        except Transient as exc:
            self.kill(str(exc))
            raise
        self.published += 1
        self.published_bytes += len(data)
        if qos:
            self.confirmed_bytes = self.published_bytes  # a PUBACK: the broker read it and all before it

    def unconfirmed(self) -> int:
        return self.published_bytes - self.confirmed_bytes

    async def confirm(self) -> None:
        """Return once the broker has provably read every message published so far on this connection.

        A QoS 0 publish returns when paho has queued the bytes: they may still sit in paho's buffer or
        the socket's, and a connection that breaks then loses them. So the node sends an UNSUBSCRIBE
        of a topic filter it never subscribed to and waits for the UNSUBACK (MQTT 3.1.1 3.10.4: the
        server answers every UNSUBSCRIBE). The connection is one ordered TCP stream and the broker
        handles one connection's packets in the order they arrive, so the UNSUBACK proves it has read
        and routed everything published before. Overlapping sends pipeline their round trips, and one
        whose bytes a round trip already under way covers waits for that one instead. A timeout or a
        lost connection kills the session (Transient): what was not confirmed is sent again, as history.
        """
        target = self.published_bytes
        if self.confirmed_bytes >= target:
            return
        for covers, done in self._confirming:
            if covers >= target:  # sent after our bytes: its UNSUBACK proves them too
                await done.wait()
                if self.confirmed_bytes >= target:
                    return
                raise Transient(self.dead or "the broker did not confirm the data")
        client = self.client
        if client is None or self.dead is not None:
            raise Transient(self.dead or "not connected")
        entry = (target, asyncio.Event())
        self._confirming.append(entry)
        try:
            await honour_cancel(client.unsubscribe(self.confirm_topic, timeout=float(self.config.timeout)))
        except (aiomqtt.MqttError, OSError) as exc:
            reason = f"the broker did not confirm the data (timeout {float(self.config.timeout):g}s): {exc}"
            self.kill(reason)
            raise Transient(reason) from exc
        else:
            self.confirmations += 1
            self.confirmed_bytes = max(self.confirmed_bytes, target)
        finally:  # after the else: a waiter woken here sees the bytes confirmed
            self._confirming.remove(entry)
            entry[1].set()

    async def birth(self) -> None:
        """NBIRTH (seq 0, bdSeq, rebirth control) and a DBIRTH per device, each metric with its newest
        value in the buffer; called with the lock held."""
        await self.registry.refresh()
        self.seq = 0
        self._last_birth = asyncio.get_running_loop().time()  # a Rebirth request from now on needs another
        devices = self.registry.by_device()
        nb = pb.Payload(timestamp=now_ms())
        nb.metrics.add(name=BDSEQ, datatype=pb.Int64, long_value=self.bdseq, timestamp=nb.timestamp)
        nb.metrics.add(name=REBIRTH, datatype=pb.Boolean, boolean_value=False, timestamp=nb.timestamp)
        for m in devices.pop(None):
            self.registry.birth_metric(nb, m)
        await self.publish(self.topic["NBIRTH"], nb, 0)
        for device, metrics in devices.items():
            assert device is not None
            db = pb.Payload(timestamp=now_ms())
            for m in metrics:
                self.registry.birth_metric(db, m)
            await self.publish(self.device_topic("DBIRTH", device), db, 0)
        self.born = True
        self.log.info("uplink %s: Sparkplug session born (bdSeq %d, %d devices, %d metrics)", self.config.name,
                      self.bdseq, len(devices), len(self.registry.metrics))  # fmt: skip

    # ------------------------------------------------------------------ primary host, rebirth

    async def on_state(self, client: aiomqtt.Client, payload: bytes) -> None:
        text = payload.strip()
        if text in (b"ONLINE", b"OFFLINE"):  # a Sparkplug 2.x host
            state = _HostState(online=text == b"ONLINE")
        else:
            try:
                state = msgspec.json.decode(payload, type=_HostState)
            except msgspec.DecodeError as exc:
                self.log.warning("uplink %s: malformed STATE ignored: %s", self.config.name, exc)
                return
        if state.timestamp is not None and self._host_ts is not None and state.timestamp < self._host_ts:
            self.log.debug("uplink %s: STATE older than the last one ignored (timestamp %d < %d)",
                           self.config.name, state.timestamp, self._host_ts)  # fmt: skip
            return  # older than what we already know: an out-of-order retained message
        self._host_ts = state.timestamp if state.timestamp is not None else self._host_ts
        was, self.host_online = self.host_online, state.online
        self.changed.set()
        if was and not state.online and self.born:
            # Sparkplug 3.0: publish NDEATH, disconnect, and start the session over.
            self.log.warning("uplink %s: primary host %s went offline; ending the session",
                             self.config.name, self.config.primary_host_id)  # fmt: skip
            async with self.lock:
                self.kill(f"primary host {self.config.primary_host_id} is offline")
                await self._send_ndeath(client)
                await mqtt.disconnect(client)

    def rebirth_requested(self, tg: asyncio.TaskGroup) -> None:
        """A Rebirth NCMD: at most one rebirth per `rebirth_min_interval`; the requests in between
        are counted and answered together by one rebirth when the interval is over."""
        self.rebirth_requests += 1
        if not self.born:  # not born yet: the birth that is about to happen answers it
            return
        loop = asyncio.get_running_loop()
        self._rebirth_wanted = loop.time()
        if self.rebirth_pending is None and self._rebirth_wanted >= self._last_birth + self.config.rebirth_min_interval:
            self.log.info("uplink %s: rebirth requested by NCMD", self.config.name)
        elif (n := self.rebirths_coalesced.hit()) is not None:
            self.log.warning("uplink %s: %d Rebirth request(s) within rebirth_min_interval %gs of the last birth "
                             "coalesced into one rebirth (%d in this session)", self.config.name, n,
                             float(self.config.rebirth_min_interval), self.rebirths_coalesced.total)  # fmt: skip
        if self.rebirth_pending is None:
            self.rebirth_pending = tg.create_task(self._rebirth(), name=f"sparkplug:{self.config.name}:rebirth")

    async def _rebirth(self) -> None:
        """Rebirth once the interval since the last birth is over, until no request is newer than the
        last birth's start (a data-driven rebirth answers requests too)."""
        loop = asyncio.get_running_loop()
        try:
            while self._rebirth_wanted >= self._last_birth:
                wait = self._last_birth + self.config.rebirth_min_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self.lock:
                    if self.dead is not None or not self.host_online:
                        return  # the next session starts with a birth
                    if self._rebirth_wanted >= self._last_birth:
                        await self.birth()
        except Transient as exc:  # the session is dead now; the Sender starts a new one, with a birth
            self.log.warning("uplink %s: rebirth not published: %s", self.config.name, exc)
        finally:
            self.rebirth_pending = None
