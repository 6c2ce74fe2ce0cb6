"""NATS JetStream uplink (nats-py): one message per batch on `edged.{gateway}.{kind}`, counted as
delivered at the stream's PubAck.

Each message carries `Nats-Msg-Id: <gateway>:<lo_seq>:<hi_seq>`, and the Sender re-sends a batch
that was in flight at a failure with the same bounds, so the stream's duplicate window drops a
batch it already stored: exactly once into the stream while the outage is shorter than the window.
Several publishes are in flight at once: each is written to the connection before the first await
(nats-py appends it to its pending buffer synchronously), and its PubAck comes back on an inbox of
this connection, matched by token; README "Delivery".
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Self

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edged.errors import Permanent, Transient
from edged.model import Batch
from edged.plugin import PluginContext, UplinkSpec
from edged.protocols.payload import Encoder

from . import client
from .client import PubAck
from .config import Config

__all__ = ["Config", "Uplink", "msg_id", "plugin"]


def msg_id(batch: Batch) -> str:
    """The JetStream deduplication id of a batch: the same window is the same id on every re-send."""
    if batch.gaps and not batch.samples:  # gap records: never the id of a batch of samples
        return f"{batch.gateway}:gaps:{batch.lo_seq}:{batch.hi_seq}"
    return f"{batch.gateway}:{batch.lo_seq}:{batch.hi_seq}"


def _twin(config: Config, ctx: PluginContext) -> str | None:
    """Another enabled nats uplink of this gateway into the same stream on a server in common."""
    if ctx.config is None:
        return None
    for other in ctx.config.uplinks:
        if (
            isinstance(other, Config)
            and other.name != config.name
            and other.enabled
            and other.stream == config.stream
            and set(other.urls()) & set(config.urls())
        ):
            return other.name
    return None


class _Owed(msgspec.Struct):
    subject: str
    future: asyncio.Future[PubAck]


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.gateway = ctx.gateway_id
        self.log = ctx.log
        self._twin = _twin(config, ctx)
        self._nc: NATS | None = None
        self._subjects = config.subjects(ctx.gateway_id)
        self._enc = Encoder(encoding=config.encoding, compression=config.compression)
        self._headers = {"Nats-Expected-Stream": config.stream, "Content-Type": self._enc.content_type}
        if self._enc.content_encoding:
            self._headers["Content-Encoding"] = self._enc.content_encoding
        self._owed: dict[str, _Owed] = {}  # inbox token -> the publish waiting for its PubAck
        self._tokens = itertools.count(1)
        self._inbox = ""
        self._errors: list[BaseException] = []
        self._lost: str | None = None  # why the connection closed
        self.payload_bytes = 0  # what this connection published: the Sender sizes batches by it
        self.messages = 0
        self.duplicates = 0  # PubAcks saying the stream had the batch already (a re-send it dropped)
        self.ack_timeouts = 0

    async def __aenter__(self) -> Self:
        c = self.config
        if self._twin is not None:
            raise Permanent(
                f"uplinks {c.name} and {self._twin} publish into the same stream {c.stream}: their batches share "
                "Nats-Msg-Ids (gateway:lo:hi), so the stream would drop one uplink's as duplicates of the other's"
            )
        name = f"edged-{self.gateway}-{c.name}"
        nc = await client.connect(
            c, self.log, name=name, errors=self._errors, on_error=self._on_error, on_closed=self._on_closed
        )
        try:
            info = await client.ensure_stream(nc, c, list(self._subjects.values()), self.log)
            window = float(info.config.duplicate_window or 0)
            if window < float(c.duplicate_window):
                self.log.warning(
                    "uplink %s: stream %s deduplicates for %gs only (duplicate_window %gs): a batch re-sent after "
                    "an outage longer than that is stored twice",
                    c.name, c.stream, window, float(c.duplicate_window), extra={"uplink": c.name},
                )  # fmt: skip
            if c.batch_bytes > nc.max_payload:
                raise Permanent(
                    f"batch_bytes ({int(c.batch_bytes)}) is larger than the server's max_payload ({nc.max_payload}): "
                    "lower batch_bytes"
                )
            self._inbox = f"{nc.new_inbox()}."
            await nc.subscribe(self._inbox + "*", cb=self._on_ack)
            async with asyncio.timeout(float(c.timeout)):
                await nc.flush()  # the server has the inbox subscription before the first PubAck
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await client.close(nc)
            raise Transient(f"NATS: {type(exc).__name__}: {exc}") from None
        except BaseException:
            await client.close(nc)
            raise
        self._nc = nc
        self.log.info(
            "uplink %s: connected to NATS %s, stream %s", c.name, nc.connected_url.netloc if nc.connected_url else "?",
            c.stream, extra={"uplink": c.name},
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        nc, self._nc = self._nc, None
        self._fail_all(Transient("uplink closed"))
        if nc is not None:
            await client.close(nc)

    # ------------------------------------------------------------------ callbacks (nats-py's tasks)

    async def _on_ack(self, msg: Msg) -> None:
        owed = self._owed.pop(msg.subject[len(self._inbox) :], None)
        if owed is not None and not owed.future.done():
            try:
                if msg.headers and msg.headers.get("Status") == "503":
                    owed.future.set_exception(Transient(f"no stream answers on {owed.subject} (no responders)"))
                else:
                    owed.future.set_result(msgspec.json.decode(msg.data, type=PubAck))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                owed.future.set_exception(Transient(f"malformed PubAck: {exc}"))

    def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            # the server refuses a publish without answering it: fail the publishes it names
            for token, owed in list(self._owed.items()):
                if f'"{owed.subject}"' in text or owed.subject in text:
                    self._owed.pop(token, None)
                    if not owed.future.done():
                        owed.future.set_exception(Permanent(f"NATS: not allowed to publish to {owed.subject}: {text}"))

    def _on_closed(self) -> None:
        err = self._nc.last_error if self._nc is not None else None
        self._lost = f"connection lost ({type(err).__name__}: {err})" if err else "connection lost"
        self._fail_all(Transient(self._lost))

    def _fail_all(self, exc: Exception) -> None:
        owed, self._owed = self._owed, {}
        for o in owed.values():
            if not o.future.done():
                o.future.set_exception(exc)

    # ------------------------------------------------------------------ the capabilities

    def window(self) -> int:
        """PubAcks outstanding at once: JetStream takes any number; the Sender's max_inflight bounds it."""
        return self.config.max_inflight

    def counters(self) -> dict[str, float]:
        return {
            "payload_bytes": self.payload_bytes,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "ack_timeouts": self.ack_timeouts,
        }

    def is_closed(self) -> bool:
        return self._nc is None or self._nc.is_closed

    def encode(self, batch: Batch) -> bytes:
        return self._enc.encode(batch)

    async def send(self, batch: Batch) -> None:
        # Nothing awaits before nc.publish appends the message to the connection's pending buffer,
        # so with several sends in flight the stream gets the batches in the order they were made.
        nc = self._nc
        if nc is None or nc.is_closed:
            raise Transient(self._lost or "not connected")
        kind = "gap" if batch.gaps and not batch.samples else "historical" if batch.historical else "live"
        subject = self._subjects[kind]
        payload = self.encode(batch)
        token = str(next(self._tokens))
        owed = _Owed(subject, asyncio.get_running_loop().create_future())
        self._owed[token] = owed
        headers = {**self._headers, "Nats-Msg-Id": msg_id(batch)}
        self.payload_bytes += len(payload)
        self.messages += 1
        try:
            await nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
            async with asyncio.timeout(float(self.config.timeout)):
                ack = await owed.future
        except TimeoutError:
            self.ack_timeouts += 1
            raise Transient(f"no PubAck within {self.config.timeout:g}s on {subject}") from None
        except nats.errors.MaxPayloadError:
            raise Permanent(f"batch of {len(payload)} bytes is larger than the server's max_payload") from None
        except (nats.errors.Error, OSError) as exc:
            raise Transient(f"NATS publish: {type(exc).__name__}: {exc}") from None
        finally:
            self._owed.pop(token, None)
        if ack.error is not None:
            raise client.puback_error(ack.error, self.config.stream, subject)
        if ack.stream and ack.stream != self.config.stream:
            raise Permanent(f"batch stored in stream {ack.stream}, not {self.config.stream}")
        if ack.duplicate:
            self.duplicates += 1


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
