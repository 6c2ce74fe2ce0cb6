"""The MQTT session the mqtt and Sparkplug uplinks share (aiomqtt): the connection keys, connect and
disconnect, subscribe and publish, and the one mapping of aiomqtt/paho/socket errors into Transient
and Permanent. Every aiomqtt call that runs `asyncio.wait_for` inside goes through `honour_cancel`."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.aio import honour_cancel
from edged.config import Duration, Secret
from edged.errors import EdgedError, Permanent, Transient
from edged.tls import TlsUplink, client_context

# CONNACK codes that retrying will not fix: MQTT 3.1.1 (1 protocol version, 2 identifier rejected,
# 4 bad credentials, 5 not authorised) and the MQTT 5 reason codes paho maps them to (0x84-0x8A, 0x8C).
_PERMANENT_CONNACK = {1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
_PENDING_CALLS = 10_000  # aiomqtt warns about pending publishes beyond this; a backlog flush has many
_SESSION_EXPIRY_S = 86_400  # MQTT 5 persistent sessions: what the broker keeps for us while we are away


class MqttUplink(TlsUplink):
    """The broker keys of an MQTT-based uplink's Config (it subclasses this; TLS keys: TlsUplink)."""

    host: str = "127.0.0.1"
    port: int | None = None  # 1883, or 8883 with TLS
    client_id: str | None = None  # default: edged-<gateway>-<uplink>
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    keepalive: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)  # connect and PUBACK wait

    def check_broker(self) -> None:
        """ValueError for broker keys out of range or TLS keys without `tls = true`."""
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        self.check_tls(enabled=self.tls, otherwise="tls = false")

    def peer_address(self) -> tuple[str, int] | None:
        return self.host, self.port or (8883 if self.tls else 1883)

    def identifier(self, gateway: str) -> str:
        """The MQTT client id: `client_id`, else edged-<gateway>-<uplink>."""
        return self.client_id or f"edged-{gateway}-{self.name}"


def _cert_rejected(exc: BaseException) -> bool:
    # aiomqtt re-raises connect errors as MqttError "from None": the original is the __context__
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in (exc, exc.__cause__, exc.__context__))


def connect_error(exc: BaseException, host: str) -> EdgedError:
    """A failed connect as Permanent when retrying cannot fix it (bad credentials, not authorised,
    an untrusted or mismatched broker certificate: they stay that way until someone acts), else
    Transient."""
    if isinstance(exc, MqttConnectError) and getattr(exc.rc, "value", exc.rc) in _PERMANENT_CONNACK:
        return Permanent(f"broker {host} refused the connection: {exc}")
    if _cert_rejected(exc):
        return Permanent(f"broker {host}: TLS certificate rejected: {exc}")
    return Transient(f"cannot connect to {host}: {exc}")


class Client(aiomqtt.Client):
    """aiomqtt's client, keeping the broker's CONNACK properties, which aiomqtt drops: under MQTT 5
    they carry the Receive Maximum, the QoS 1/2 publishes the broker takes unacknowledged."""

    connack: Properties | None = None
    v5 = False

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any = None
    ) -> None:
        self.connack = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def receive_maximum(self) -> int | None:
        """The broker's Receive Maximum (MQTT 5 only; absent means 65535), else None."""
        if not self.v5:
            return None
        return int(getattr(self.connack, "ReceiveMaximum", 65535))


@contextlib.asynccontextmanager
async def session(
    c: MqttUplink,
    log: logging.Logger,
    identifier: str,
    *,
    clean_session: bool | None = None,
    nodelay: bool = False,
    will: aiomqtt.Will | None = None,
    max_inflight: int | None = None,
    protocol: str = "3.1.1",
) -> AsyncIterator[Client]:
    """A connected client for the body, disconnected after it. Connect errors are mapped with
    `connect_error`; the body's own exceptions pass unchanged. `nodelay` turns Nagle off for small
    request/reply traffic: with it on, a small packet can wait ~40 ms for the peer's delayed ACK.
    `max_inflight`: QoS 1/2 publishes paho lets be outstanding (default 20; more queue in order).
    `protocol` "5": MQTT 5, where a persistent session (clean_session=False) is a clean start of
    False with a session expiry of a day."""
    v5 = protocol == "5"
    props = None
    if v5 and clean_session is False:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = _SESSION_EXPIRY_S
    client = Client(
        c.host,
        c.port or (8883 if c.tls else 1883),
        username=c.username,
        password=c.password.reveal() if c.password else None,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else clean_session,
        clean_start=bool(clean_session is not False) if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        properties=props,
        keepalive=int(c.keepalive),
        timeout=float(c.timeout),
        tls_context=client_context(c, log) if c.tls else None,
        will=will,
        max_inflight_messages=max_inflight,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if nodelay else None,
        logger=logging.getLogger("aiomqtt"),
    )
    client.pending_calls_threshold = _PENDING_CALLS
    client.v5 = v5
    connected = False

    async def connect() -> None:
        # flagged inside: a cancellation aiomqtt swallowed (and honour_cancel re-raises after the
        # CONNACK) must still close the connection it made
        nonlocal connected
        await client.__aenter__()
        connected = True

    try:
        try:
            await honour_cancel(connect())
        except (aiomqtt.MqttError, OSError) as exc:
            raise connect_error(exc, c.host) from exc
        yield client
    finally:
        if connected:
            await disconnect(client)


async def disconnect(client: aiomqtt.Client) -> None:
    """DISCONNECT; a connection already gone is fine (nothing owed is lost: the buffer or the audit
    trail has it), and a second call does nothing."""
    with contextlib.suppress(aiomqtt.MqttError, OSError):
        await honour_cancel(client.__aexit__(None, None, None))


async def subscribe(client: aiomqtt.Client, topic: str, qos: int) -> None:
    try:
        await honour_cancel(client.subscribe(topic, qos=qos))
    except (aiomqtt.MqttError, OSError) as exc:
        raise Transient(f"subscribe to {topic} failed: {exc}") from exc


def publish_properties(content_type: str, content_encoding: str | None) -> Properties:
    """MQTT 5 PUBLISH properties saying what a payload is: Content Type, and the compression as the
    user property "content-encoding" (MQTT 5 has no field of its own for it)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    if content_encoding is not None:
        props.UserProperty = [("content-encoding", content_encoding)]
    return props


async def publish(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool = False,
    properties: Properties | None = None,
) -> None:
    """Publish; returns at PUBACK for QoS 1 (PUBCOMP for 2). A lost connection is Transient."""
    try:
        await honour_cancel(client.publish(topic, payload, qos=qos, retain=retain, properties=properties))
    except (aiomqtt.MqttError, OSError) as exc:
        raise Transient(f"publish failed: {exc}") from exc


def payload_bytes(raw: object) -> bytes:
    """A message's payload as bytes (aiomqtt hands out bytes, or str/int/float/None)."""
    return bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
