"""MQTT uplink (aiomqtt): JSON batches, QoS 1 by default; a batch counts as delivered at PUBACK.

With `commands = true` it also receives setpoint commands (JSON on `command_topic`) and answers each
on its reply topic: see `serve_commands` and docs/commands.md.

The MQTT session (connect, TLS, publish, subscribe) and the mapping of aiomqtt/paho and socket
errors to Transient (retry) or Permanent (bad credentials, an untrusted broker certificate, TLS
misconfiguration) are edged.protocols.mqtt's, shared with the Sparkplug uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal, Self

import aiomqtt
import msgspec

from edged.aio import honour_cancel
from edged.alarms.config import is_alarm_path
from edged.alarms.model import event_dict
from edged.commands import (
    MAX_ID,
    MAX_REPLY_TO,
    MAX_TAG,
    MAX_USER,
    Command,
    CommandGate,
    CommandResult,
    Signature,
    cut,
    timestamp_ns,
)
from edged.config import ByteSize
from edged.errors import Permanent, Transient
from edged.model import Batch, Sample
from edged.plugin import Backoff, PluginContext, UplinkSpec
from edged.protocols import mqtt
from edged.protocols.mqtt import MqttUplink
from edged.protocols.payload import Compression, Encoder, Encoding, check_compression


class Config(MqttUplink):
    # host, port, client_id, username, password, tls, keepalive, timeout: edged.protocols.mqtt.MqttUplink
    # ca_file, cert_file, key_file, key_password, tls_insecure_skip_verify: edged.tls.TlsUplink
    protocol: Literal["3.1.1", "5"] = "3.1.1"  # 5: payloads say their Content Type and compression
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    topic: str = "edged/{gateway}/{kind}"  # {gateway}, {uplink}, {kind} = live | historical | gap | alarm
    encoding: Encoding = "rows"  # rows (JSON arrays) | columns (compact, docs/payload.md)
    compression: Compression = "none"  # none | gzip | zlib | zstd (pip install 'edged[zstd]')
    # Setpoint commands (docs/commands.md): received on a connection of their own, QoS 1.
    commands: bool = False
    command_topic: str = "edged/{gateway}/cmd"  # {gateway}, {uplink}
    reply_topic: str = "edged/{gateway}/cmd/reply"  # where results go when a command has no reply_to
    reply_to_prefix: str | None = None  # a command's reply_to must start with it; default "<reply_topic>/"
    max_command_size: ByteSize = ByteSize(8192)  # larger payloads are refused unread

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_broker()
        check_compression(self.compression)
        try:
            self.topic.format(gateway="g", uplink="u", kind="k")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"topic template {self.topic!r}: unknown placeholder {exc}") from None
        for key in ("command_topic", "reply_topic"):
            template = getattr(self, key)
            try:
                topic = template.format(gateway="g", uplink="u")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"{key} {template!r}: unknown placeholder {exc} (use {{gateway}}, {{uplink}})"
                ) from None
            if not topic or "+" in topic or "#" in topic:
                raise ValueError(f"{key} {template!r} must be a topic without wildcards")
        if self.command_topic == self.reply_topic:
            raise ValueError("command_topic and reply_topic must differ (replies would come back as commands)")
        if not 256 <= self.max_command_size <= 65536:
            raise ValueError("max_command_size must be between 256 and 65536 bytes")
        if self.reply_to_prefix is not None:
            try:
                prefix = self.reply_to_prefix.format(gateway="g", uplink="u")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"reply_to_prefix: unknown placeholder {exc} (use {{gateway}}, {{uplink}})") from None
            if not prefix or "+" in prefix or "#" in prefix or prefix.startswith("$"):
                raise ValueError("reply_to_prefix must be a topic prefix without wildcards")
        prefix = self.reply_prefix("g")
        ours = {self.command_topic.format(gateway="g", uplink="u")}
        ours |= {self.topic.format(gateway="g", uplink="u", kind=k) for k in ("live", "historical", "gap", "alarm")}
        for topic in sorted(ours):
            if topic.startswith(prefix) or topic == self.reply_topic.format(gateway="g", uplink="u"):
                raise ValueError(
                    f"replies could land on the gateway's own topic {topic!r}: choose a reply_topic / "
                    "reply_to_prefix apart from topic and command_topic"
                )

    def reply_prefix(self, gateway: str) -> str:
        """What a command's reply_to must start with: the gateway's broker rights answer there only."""
        if self.reply_to_prefix is not None:
            return self.reply_to_prefix.format(gateway=gateway, uplink=self.name)
        return self.reply_topic.format(gateway=gateway, uplink=self.name) + "/"

    def takes_commands(self) -> bool:
        return self.commands


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.gateway = ctx.gateway_id
        self.log = ctx.log
        self._client: mqtt.Client | None = None
        self._stack = contextlib.AsyncExitStack()
        self._enc = Encoder(encoding=config.encoding, compression=config.compression)
        self._props = (
            mqtt.publish_properties(self._enc.content_type, self._enc.content_encoding)
            if config.protocol == "5"
            else None
        )
        self.payload_bytes = 0  # what this connection published: the Sender sizes batches by it
        self.messages = 0

    async def __aenter__(self) -> Self:
        c = self.config
        # paho keeps at most max_inflight_messages QoS 1/2 publishes outstanding and queues the rest
        # in order: it is set to the window the Sender uses, so nothing waits unseen inside paho.
        session = mqtt.session(
            c, self.log, c.identifier(self.gateway), max_inflight=c.max_inflight, protocol=c.protocol
        )
        self._client = await self._stack.enter_async_context(session)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client = None
        await self._stack.aclose()

    def encode(self, batch: Batch) -> bytes:
        return self._enc.encode(batch)

    def window(self) -> int:
        """Publishes outstanding at once: QoS 1/2 are acknowledged in order on one connection, so a
        window keeps a long link busy, up to an MQTT 5 broker's Receive Maximum; QoS 0 has no
        acknowledgement to wait for."""
        if self.config.qos == 0:
            return 1
        most = self._client.receive_maximum() if self._client is not None else None
        return min(self.config.max_inflight, most or self.config.max_inflight)

    def counters(self) -> dict[str, float]:
        return {"payload_bytes": self.payload_bytes, "messages": self.messages}

    async def send(self, batch: Batch) -> None:
        # no await before the publish: paho queues it at once, so with several sends in flight
        # the broker gets the batches in the order the Sender made them (edged.plugin.Windowed)
        if self._client is None:
            raise Transient("not connected")
        c = self.config
        events = [s for s in batch.samples if is_alarm_path(s.tag)]
        if events:  # alarm events (edged.alarms) go on {kind} = alarm, the samples as before
            data = msgspec.structs.replace(batch, samples=[s for s in batch.samples if not is_alarm_path(s.tag)])
            messages = [self._alarm_message(batch, events)]
            if data.samples or data.gaps:
                messages.insert(0, self._message(data))
            await _publish_all(self._client, messages, qos=c.qos, retain=c.retain)
            return
        topic, payload, props = self._message(batch)
        await mqtt.publish(self._client, topic, payload, qos=c.qos, retain=c.retain, properties=props)

    def _message(self, batch: Batch) -> tuple[str, bytes, Any]:
        kind = "gap" if batch.gaps and not batch.samples else "historical" if batch.historical else "live"
        topic = self.config.topic.format(gateway=self.gateway, uplink=self.config.name, kind=kind)
        payload = self.encode(batch)
        self.payload_bytes += len(payload)
        self.messages += 1
        return topic, payload, self._props

    def _alarm_message(self, batch: Batch, events: list[Sample]) -> tuple[str, bytes, Any]:
        """Alarm events as one JSON document (never compressed: few, and read by alarm clients)."""
        topic = self.config.topic.format(gateway=self.gateway, uplink=self.config.name, kind="alarm")
        alarms = [event_dict(s, historical=batch.historical) for s in events]
        doc = {"gateway": batch.gateway, "lo_seq": batch.lo_seq, "hi_seq": batch.hi_seq,
               "historical": batch.historical, "alarms": alarms}  # fmt: skip
        payload = msgspec.json.encode(doc)
        self.payload_bytes += len(payload)
        self.messages += 1
        props = mqtt.publish_properties("application/json", None) if self.config.protocol == "5" else None
        return topic, payload, props


async def _publish_all(client: mqtt.Client, messages: list[tuple[str, bytes, Any]], *, qos: int, retain: bool) -> None:
    """Publish several messages, all handed to paho before the first await (so with several sends
    in flight every topic keeps the Sender's order, edged.plugin.Windowed), then wait for each
    acknowledgement. aiomqtt's publish writes and waits in one call; this splits the two, using
    the same internals it does (`_pending_call`); without them it publishes one after another."""
    pending_call = getattr(client, "_pending_call", None)
    pending = getattr(client, "_pending_publishes", None)
    paho = getattr(client, "_client", None)
    if pending_call is None or pending is None or paho is None:
        for topic, payload, props in messages:
            await mqtt.publish(client, topic, payload, qos=qos, retain=retain, properties=props)
        return
    waits: list[asyncio.Event] = []
    with contextlib.ExitStack() as stack:
        for topic, payload, props in messages:
            info = paho.publish(topic, payload, qos, retain, props)
            if info.rc != 0:  # MQTT_ERR_SUCCESS
                raise Transient(f"publish failed: paho error {info.rc}")
            if info.is_published():
                continue
            confirmation = asyncio.Event()
            stack.enter_context(pending_call(info.mid, confirmation, pending))
            waits.append(confirmation)
        try:
            for confirmation in waits:
                async with asyncio.timeout(client.timeout):
                    await honour_cancel(confirmation.wait())
        except TimeoutError as exc:
            raise Transient("publish failed: no acknowledgement in time") from exc


# ----------------------------------------------------------------------------------------- commands

_MAX_IN_FLIGHT = 16  # commands handled at once (the gate serialises the writes per device)


class WireSig(msgspec.Struct, forbid_unknown_fields=True):
    kid: str
    hmac: str


class WireCommand(msgspec.Struct, forbid_unknown_fields=True):
    """A command as published on the command topic (JSON)."""

    id: str
    tag: str
    value: bool | int | float | str
    ts: int | float | str  # unix milliseconds, or ISO 8601 with a time zone
    user: str | None = None
    reply_to: str | None = None
    sig: WireSig | None = None  # HMAC-SHA256 over edged.commands.canonical (docs/commands.md)


class WireReply(msgspec.Struct):
    """The answer published on the reply topic (QoS 1)."""

    id: str | None
    tag: str | None
    result: str
    code: str
    reason: str
    old: Any
    new: Any
    readback: Any
    ts: int  # unix milliseconds of the outcome


def reply_payload(r: CommandResult) -> bytes:
    return msgspec.json.encode(
        WireReply(r.id, r.tag, r.result.value, r.code, r.reason, r.old, r.new, r.readback, r.ts_ns // 1_000_000)
    )


class Decoded(msgspec.Struct, frozen=True):
    """A command payload as read: the command (what could be read of it when malformed), where its
    answer goes, and when it is refused already, the code and reason."""

    cmd: Command
    reply_to: str | None
    code: str | None = None
    problem: str | None = None


def reply_to_ok(topic: str, prefix: str) -> bool:
    return 0 < len(topic) <= MAX_REPLY_TO and topic.startswith(prefix) and "+" not in topic and "#" not in topic


def decode_command(payload: bytes, source: str, *, reply_prefix: str, max_bytes: int = 8192) -> Decoded:
    """Read one command payload; never raises. A malformed payload still yields what could be read
    of it (id, tag, user, reply_to), so the refusal is answered and audited under the sender's id;
    an oversized one is not read at all."""
    if len(payload) > max_bytes:
        why = f"command too large: {len(payload)} bytes (max_command_size {max_bytes}): not read"
        return Decoded(Command("", source, None, "", None, 0), None, "too_large", why)
    try:
        # typed first: it stops at the first wrong type, so nesting cannot run deep
        wire = msgspec.json.decode(payload, type=WireCommand)
    except (msgspec.DecodeError, RecursionError) as exc:
        return _partial(payload, source, reply_prefix, f"malformed command: {exc}")
    problem = None
    try:
        ts_ns = timestamp_ns(wire.ts)
    except ValueError as exc:
        ts_ns, problem = 0, f"malformed command: {exc}"
    for key, text, limit in (("id", wire.id, MAX_ID), ("tag", wire.tag, MAX_TAG), ("user", wire.user, MAX_USER)):
        if text is not None and not 0 < len(text) <= limit:
            problem = problem or f"malformed command: {key} must be 1 to {limit} characters"
    reply_to = wire.reply_to
    if reply_to is not None and not reply_to_ok(reply_to, reply_prefix):
        problem = problem or (
            f"malformed command: reply_to {cut(reply_to, 80)!r} is not under {reply_prefix!r}, where edged answers"
        )
        reply_to = None
    sig = Signature(wire.sig.kid, wire.sig.hmac) if wire.sig is not None else None
    cmd = Command(
        cut(wire.id, MAX_ID), source, wire.user, cut(wire.tag, MAX_TAG), wire.value, ts_ns, wire.reply_to, sig
    )
    if problem is not None:
        return Decoded(msgspec.structs.replace(cmd, value=None), reply_to, "malformed", problem)
    return Decoded(cmd, reply_to)


def _partial(payload: bytes, source: str, reply_prefix: str, problem: str) -> Decoded:
    """What can be read of a malformed payload, for the answer and the audit row."""
    partial: dict[str, str] = {}
    try:
        doc = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:
        problem = "malformed JSON: nested too deeply" if isinstance(exc, RecursionError) else f"malformed JSON: {exc}"
    else:
        if not isinstance(doc, dict):
            problem = "malformed command: expected a JSON object"
        else:
            keys = ("id", "tag", "user", "reply_to")
            partial = {k: v for k, v in doc.items() if k in keys and isinstance(v, str)}
    reply_to = partial.get("reply_to")
    if reply_to is not None and not reply_to_ok(reply_to, reply_prefix):
        reply_to = None
    user = partial.get("user")
    cmd = Command(
        cut(partial.get("id", ""), MAX_ID),
        source,
        cut(user, MAX_USER) if user is not None else None,
        cut(partial.get("tag", ""), MAX_TAG),
        None,
        0,
    )
    return Decoded(cmd, reply_to, "malformed", cut(problem, 400))


async def serve_commands(config: Config, ctx: PluginContext, gate: CommandGate) -> None:
    """Receive commands for as long as the daemon runs: a task of its own, beside the sender.

    It uses a connection of its own (client id `<client_id>-cmd`, persistent session, QoS 1), so
    commands never queue behind a data backlog, a slow device write never holds up publishing, and
    the sender's reconnects do not drop the subscription. Commands the broker kept while the gateway
    was away arrive on reconnect and are refused as stale, each with a reply and an audit row.
    Never raises but cancellation: a broker problem is retried with capped, jittered backoff.
    """
    await _CommandListener(config, ctx, gate).run()


class _CommandListener:
    def __init__(self, config: Config, ctx: PluginContext, gate: CommandGate) -> None:
        self.config = config
        self.gate = gate
        self.log = ctx.log
        self.topic = config.command_topic.format(gateway=ctx.gateway_id, uplink=config.name)
        self.reply_topic = config.reply_topic.format(gateway=ctx.gateway_id, uplink=config.name)
        self.reply_prefix = config.reply_prefix(ctx.gateway_id)
        self.identifier = f"{config.identifier(ctx.gateway_id)}-cmd"
        self._client: aiomqtt.Client | None = None
        self._slots = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        last_error: str | None = None
        # Handlers outlive a lost connection: a write in progress finishes and its reply goes out on
        # the next connection, or is logged as lost (the audit trail has the outcome either way).
        async with asyncio.TaskGroup() as handlers:
            while True:
                try:
                    session = mqtt.session(
                        self.config, self.log, self.identifier, clean_session=False, nodelay=True,
                        protocol=self.config.protocol,
                    )  # fmt: skip
                    async with session as client:
                        try:
                            await mqtt.subscribe(client, self.topic, qos=1)
                            self._client = client
                            self.log.info("uplink %s: listening for commands on %s", self.config.name, self.topic)
                            backoff.reset()
                            last_error = None
                            async for msg in client.messages:
                                await self._slots.acquire()
                                handlers.create_task(self._handle(msg), name=f"commands:{self.config.name}:message")
                        finally:
                            self._client = None
                except (Transient, Permanent, aiomqtt.MqttError, OSError) as exc:
                    text = f"{type(exc).__name__}: {exc}"
                    if text != last_error:
                        self.log.warning("uplink %s: command connection: %s", self.config.name, text)
                    last_error = text
                except Exception:  # a bug here must not take the daemon down: log it, retry
                    self.log.exception("uplink %s: command listener failed unexpectedly", self.config.name)
                await asyncio.sleep(backoff.next_delay())

    async def _handle(self, msg: aiomqtt.Message) -> None:
        """One command, from payload to reply; never raises (a bad message must not stop the listener)."""
        try:
            payload = mqtt.payload_bytes(msg.payload)
            got = decode_command(
                payload, self.config.name, reply_prefix=self.reply_prefix, max_bytes=int(self.config.max_command_size)
            )
            if msg.retain:
                why = "retained message refused: a command must not be retained (it would repeat on every subscribe)"
                result = await self.gate.refuse(got.cmd, "malformed", why)
            elif got.problem is not None:
                result = await self.gate.refuse(got.cmd, got.code or "malformed", got.problem)
            else:
                result = await self.gate.submit(got.cmd)
            await self._reply(got.reply_to or self.reply_topic, result)
        except Exception:
            self.log.exception("uplink %s: cannot handle a command on %s", self.config.name, msg.topic)
        finally:
            self._slots.release()

    async def _reply(self, topic: str, result: CommandResult) -> None:
        client = self._client
        try:
            if client is None:
                raise Transient("not connected")
            await mqtt.publish(client, topic, reply_payload(result), qos=1)
        except Transient as exc:
            self.log.warning(
                "uplink %s: the reply to command %s was lost (%s); its outcome (%s) is in the audit trail",
                self.config.name, result.id, exc, result.result.value,
            )  # fmt: skip


plugin = UplinkSpec(config=Config, uplink=Uplink, serve_commands=serve_commands)  # mypy checks it against edged.plugin
