"""MQTT uplink (aiomqtt): JSON batches, QoS 1 by default; a batch counts as delivered at PUBACK.

Exceptions from aiomqtt/paho and the socket layer are mapped to Transient (retry) or Permanent
(bad credentials, TLS misconfiguration) here and nowhere else.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import ssl
import zlib
from typing import Literal, Self

import aiomqtt
import msgspec
from aiomqtt.exceptions import MqttConnectError

from edged.config import Duration, Secret, UplinkBase
from edged.errors import Permanent, Transient
from edged.model import Batch
from edged.plugin import PluginContext

# CONNACK codes that retrying will not fix: MQTT 3.1.1 (1 protocol version, 2 identifier rejected,
# 4 bad credentials, 5 not authorised) and the MQTT 5 reason codes paho maps them to (0x84-0x8A, 0x8C).
_PERMANENT_CONNACK = {1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}


class Config(UplinkBase):
    host: str = "127.0.0.1"
    port: int | None = None  # 1883, or 8883 with TLS
    client_id: str | None = None  # default: edged-<gateway>-<uplink>
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_file: str | None = None  # default: the system trust store
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    key_password: Secret | None = None
    tls_insecure_skip_verify: bool = False  # only for commissioning; logged as a warning
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    topic: str = "edged/{gateway}/{kind}"  # {gateway}, {uplink}, {kind} = live | historical | gap
    compression: Literal["none", "gzip", "zlib"] = "none"
    keepalive: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)  # connect and PUBACK wait

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.cert_file or self.ca_file or self.tls_insecure_skip_verify) and not self.tls:
            raise ValueError("TLS options are set but tls = false")
        try:
            self.topic.format(gateway="g", uplink="u", kind="k")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"topic template {self.topic!r}: unknown placeholder {exc}") from None


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.gateway = ctx.gateway_id
        self.log = ctx.log
        self._client: aiomqtt.Client | None = None
        self._enc = msgspec.json.Encoder()

    def _tls_context(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=c.ca_file)
            if c.cert_file and c.key_file:
                ctx.load_cert_chain(c.cert_file, c.key_file, c.key_password.reveal() if c.key_password else None)
        except (OSError, ssl.SSLError) as exc:
            raise Permanent(f"TLS setup failed: {exc}") from exc
        if c.tls_insecure_skip_verify:
            self.log.warning("uplink %s: TLS certificate verification is OFF (tls_insecure_skip_verify)", c.name)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def __aenter__(self) -> Self:
        c = self.config
        client = aiomqtt.Client(
            c.host,
            c.port or (8883 if c.tls else 1883),
            username=c.username,
            password=c.password.reveal() if c.password else None,
            identifier=c.client_id or f"edged-{self.gateway}-{c.name}",
            keepalive=int(c.keepalive),
            timeout=float(c.timeout),
            tls_context=self._tls_context(),
            logger=logging.getLogger("aiomqtt"),
        )
        client.pending_calls_threshold = 10_000
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            if isinstance(exc, MqttConnectError) and code in _PERMANENT_CONNACK:
                raise Permanent(f"broker {c.host} refused the connection: {exc}") from exc
            raise Transient(f"cannot connect to {c.host}: {exc}") from exc
        except (aiomqtt.MqttError, OSError) as exc:
            # aiomqtt re-raises connect errors as MqttError "from None": the original is the __context__
            if any(isinstance(e, ssl.SSLCertVerificationError) for e in (exc, exc.__cause__, exc.__context__)):
                # an untrusted or mismatched broker certificate stays that way until someone acts
                raise Permanent(f"broker {c.host}: TLS certificate rejected: {exc}") from exc
            raise Transient(f"cannot connect to {c.host}: {exc}") from exc
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            # a connection already gone is fine: nothing owed is lost, the buffer still has it
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)

    def encode(self, batch: Batch) -> bytes:
        data = self._enc.encode(batch)
        if self.config.compression == "gzip":
            return gzip.compress(data, compresslevel=5)
        if self.config.compression == "zlib":
            return zlib.compress(data, 5)
        return data

    async def send(self, batch: Batch) -> None:
        if self._client is None:
            raise Transient("not connected")
        kind = "gap" if batch.gaps and not batch.samples else "historical" if batch.historical else "live"
        topic = self.config.topic.format(gateway=self.gateway, uplink=self.config.name, kind=kind)
        try:
            await self._client.publish(topic, self.encode(batch), qos=self.config.qos, retain=self.config.retain)
        except (aiomqtt.MqttError, OSError) as exc:
            raise Transient(f"publish failed: {exc}") from exc
