"""OPC UA client driver (asyncua): subscriptions, with polling as a fallback.

Each connect builds one session: security is set up against an explicit trust list (`security.py`),
browse paths are resolved, and one subscription is created with a monitored item per tag. Data-change
notifications are converted where they arrive (`codec.py`) and queued; `samples()` yields everything
one publish cycle delivered as one batch. The server's StatusCode becomes the sample's status
unchanged and its source timestamp the sample's time. The device entry is `config.py`.

A lost session is not repaired here: asyncua's own reconnect is off, the loss surfaces as
`Transient`, and the daemon's supervisor backs off and re-enters, which re-creates the session and
the subscription from scratch. Exceptions of asyncua and the socket layer are mapped to
Transient/Permanent in `edged.protocols.opcua.errors.map_error` and nowhere else.

`Driver.write` (used by the command gate, edged.commands) writes one tag's variable with the node's
own DataType and reads it back (`writes.py`): a refusal by the server is a `WriteError` (nothing was
written), a different read-back a `ReadbackMismatch`, anything else on the wire `Transient`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif
from asyncua.common.utils import ServiceError
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.opcua.codec import sample_ts, score_for, to_value
from drivers.opcua.config import Config, OpcuaTag, parse_browse_path, parse_node_id
from drivers.opcua.security import set_security
from drivers.opcua.writes import WriteError, check_read_back, node_variant_type, to_variant, write_and_read_back
from edged.errors import Permanent, Transient
from edged.model import Sample, Severity, Status, Value, severity
from edged.plugin import DriverSpec, PluginContext
from edged.protocols.opcua.errors import map_error, mapped_errors, status_text
from edged.protocols.opcua.values import ua_struct

__all__ = ["Config", "Driver", "OpcuaTag", "WriteError"]

# Per-node results meaning "this tag does not address a readable variable on this server".
_MISSING: Final = frozenset(
    {
        StatusCodes.BadNodeIdUnknown,
        StatusCodes.BadNodeIdInvalid,
        StatusCodes.BadNoMatch,
        StatusCodes.BadAttributeIdInvalid,
        StatusCodes.BadBrowseNameInvalid,
    }
)
# The server refuses a deadband on this node (not numeric, or no filters): retry without it.
_FILTER_REFUSED: Final = frozenset(
    {
        StatusCodes.BadFilterNotAllowed,
        StatusCodes.BadMonitoredItemFilterUnsupported,
        StatusCodes.BadDeadbandFilterInvalid,
    }
)
_NO_SUBSCRIPTIONS: Final = frozenset({StatusCodes.BadServiceUnsupported, StatusCodes.BadNotSupported})
_CLOSE_TIMEOUT = 2.0
_DEFAULT_APP_URI = "urn:edged:{gateway}:opcua-client"


@dataclass(slots=True)
class _Tag:
    path: str  # device/tag
    cfg: OpcuaTag
    node: ua.NodeId | None = None  # None until resolved, and for good when it does not exist
    type_warned: bool = False

    @property
    def address(self) -> str:
        return f"node {self.cfg.node}" if self.cfg.node is not None else f"browse_path {self.cfg.browse_path}"


# ----------------------------------------------------------------------------------------- driver


class _Handler:
    """asyncua calls this from its own tasks, once per notification: convert, queue, return."""

    def __init__(
        self,
        queue: asyncio.Queue[Sample | Transient | Permanent],
        by_handle: dict[int, _Tag],
        convert: Callable[[_Tag, ua.DataValue, int], Sample],
    ) -> None:
        self._queue = queue
        self._by_handle = by_handle
        self._convert = convert

    def datachange_notification(self, node: object, val: object, data: DataChangeNotif) -> None:
        tag = self._by_handle.get(data.monitored_item.ClientHandle)
        if tag is not None:
            self._queue.put_nowait(self._convert(tag, data.monitored_item.Value, time.time_ns()))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        code = status.Status.value if status.Status is not None else 0
        if severity(code) == Severity.BAD:
            self._queue.put_nowait(Transient(f"subscription ended: {status_text(code)}"))


class Driver:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log: logging.Logger = ctx.log
        self._tags = [_Tag(config.tag_path(t), t) for t in config.tags]
        self._by_handle: dict[int, _Tag] = {}
        self._queue: asyncio.Queue[Sample | Transient | Permanent] = asyncio.Queue()
        self._initial: list[Sample] = []  # one Bad sample per tag that cannot be read, sent first
        self._client: Client | None = None
        self._connected = False  # asyncua's session tasks run and need closing
        self.mode: Literal["subscribe", "poll"] = config.mode  # may fall back to "poll"
        self._vtypes: dict[str, ua.VariantType] = {}  # tag path -> its node's type, read at the first write
        self._write_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        c = self.config
        try:
            async with asyncio.timeout(float(c.timeout) * 3):
                await self._connect()
                await self._resolve()
                if self.mode == "subscribe":
                    await self._subscribe()
        except TimeoutError as exc:
            await self._close()
            raise Transient(f"connect to {c.endpoint} timed out") from exc
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def _new_client(self) -> Client:
        c = self.config
        client = Client(c.endpoint, timeout=float(c.timeout), watchdog_intervall=float(c.keepalive))
        client.name = client.description = f"edged {self.ctx.gateway_id}/{c.name}"
        client.application_uri = c.application_uri or _DEFAULT_APP_URI.format(gateway=self.ctx.gateway_id)
        client.product_uri = "urn:edged"
        client.session_timeout = int(c.session_timeout * 1000)
        client.connection_lost_callback = self._connection_lost
        return client

    async def _connect(self) -> None:
        c = self.config
        client = self._client = self._new_client()
        if c.security_policy == "None":
            self.log.info("device %s: connecting to %s without security (security_policy = 'None')", c.name, c.endpoint)
        else:
            await set_security(client, c, self.ctx.data_dir, self.log)
        if c.username is not None and c.password is not None:
            client.set_user(c.username)
            client.set_password(c.password.reveal())
        t0 = time.perf_counter()
        with mapped_errors(f"connect to {c.endpoint}"):
            await client.connect()
        self._connected = True
        self.log.debug("device %s: session open in %.0f ms", c.name, (time.perf_counter() - t0) * 1e3)

    async def _close(self) -> None:
        client, self._client = self._client, None
        connected, self._connected = self._connected, False
        if client is None:
            return
        try:
            if connected:
                alive = client.uaclient.state is UaClientState.CONNECTED
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await client.close_session()  # also stops asyncua's keep-alive and renew tasks
                    if alive:
                        await client.close_secure_channel()
        except (UaError, ServiceError, OSError, TimeoutError) as exc:
            self.log.debug("device %s: closing the session: %r", self.config.name, exc)
        finally:
            client.disconnect_socket()

    async def _connection_lost(self, exc: Exception) -> None:
        """asyncua's keep-alive noticed the session is gone (it does not reconnect: we do)."""
        self._queue.put_nowait(map_error(exc, f"connection to {self.config.endpoint} lost"))

    # ------------------------------------------------------------------ nodes

    def _unreadable(self, tag: _Tag, code: int, what: str = "") -> Sample:
        """Log once, clearly, and make the one Bad sample that tells receivers the tag is dead."""
        tag.node = None
        status = Status.BAD_NODE_ID_UNKNOWN if code in _MISSING else code
        self.log.warning(
            "device %s: tag %s (%s): the server answered %s%s; this tag reports %s, the others keep running",
            self.config.name, tag.cfg.name, tag.address, status_text(code), what, status_text(status),
            extra={"device": self.config.name},
        )  # fmt: skip
        return Sample(tag.path, time.time_ns(), None, status, 0, tag.cfg.unit)

    async def _resolve(self) -> None:
        """NodeIds as written; browse paths translated in batches (a missing one is reported)."""
        for tag in self._tags:
            if tag.cfg.node is not None:
                tag.node = parse_node_id(tag.cfg.node)
        pending = [t for t in self._tags if t.cfg.browse_path is not None]
        assert self._client is not None
        root = ua_struct(ua.NodeId, Identifier=ObjectIds.RootFolder)
        for chunk in _chunks(pending, self.config.max_nodes_per_read):
            paths = [parse_browse_path(t.cfg.browse_path or "") for t in chunk]
            with mapped_errors("translate browse paths"):
                results = await self._client.translate_browsepaths(root, paths)
            for tag, res in zip(chunk, results, strict=True):
                if res.StatusCode.is_good() and res.Targets:
                    target = res.Targets[0].TargetId
                    tag.node = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                else:
                    self._initial.append(self._unreadable(tag, res.StatusCode.value))

    async def _subscribe(self) -> None:
        c = self.config
        assert self._client is not None
        publishing_ms = float(c.publishing_interval) * 1000
        keepalive_count = max(1, math.ceil(float(c.keepalive) / float(c.publishing_interval)))
        params = ua_struct(
            ua.CreateSubscriptionParameters,
            RequestedPublishingInterval=publishing_ms,
            RequestedLifetimeCount=keepalive_count * 3,  # spec: at least 3x the keep-alive count
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=0,  # no limit: one publish carries a whole cycle
            PublishingEnabled=True,
            Priority=0,
        )
        handler = _Handler(self._queue, self._by_handle, self._sample)
        try:
            sub = await self._client.create_subscription(params, handler)
        except UaStatusCodeError as exc:
            if exc.code not in _NO_SUBSCRIPTIONS:
                raise map_error(exc, "create subscription") from exc
            self.log.warning(
                "device %s: %s does not support subscriptions (%s): polling every %ss instead",
                c.name, c.endpoint, status_text(exc.code), float(c.poll_interval),
            )  # fmt: skip
            self.mode = "poll"
            return
        except (UaError, ServiceError, OSError, TimeoutError) as exc:
            raise map_error(exc, "create subscription") from exc
        todo = [(i + 1, t, True) for i, t in enumerate(self._tags) if t.node is not None]
        while todo:
            retry: list[tuple[int, _Tag, bool]] = []
            for chunk in _chunks(todo, c.max_nodes_per_read):
                requests = [self._monitor_request(handle, tag, use_filter) for handle, tag, use_filter in chunk]
                for handle, tag, _ in chunk:
                    self._by_handle[handle] = tag
                with mapped_errors("create monitored items"):
                    results = await sub.create_monitored_items(requests)
                for (handle, tag, use_filter), res in zip(chunk, results, strict=True):
                    if not isinstance(res, ua.StatusCode):
                        continue
                    if use_filter and res.value in _FILTER_REFUSED:
                        self.log.info(
                            "device %s: tag %s: the server refuses a deadband here (%s); the core applies it",
                            c.name, tag.cfg.name, status_text(res.value),
                        )  # fmt: skip
                        retry.append((handle, tag, False))
                    else:
                        del self._by_handle[handle]
                        self._initial.append(self._unreadable(tag, res.value, " when subscribing"))
            todo = retry

    def _monitor_request(self, handle: int, tag: _Tag, use_filter: bool) -> ua.MonitoredItemCreateRequest:
        c = self.config
        assert tag.node is not None
        sampling = tag.cfg.sampling_interval
        if sampling is None:
            sampling = c.sampling_interval if c.sampling_interval is not None else c.publishing_interval
        # Keep every sample taken between two publishes, not only the last one.
        queue_size = max(1, min(100, math.ceil(float(c.publishing_interval) / max(float(sampling), 0.001))))
        params = ua_struct(
            ua.MonitoringParameters,
            ClientHandle=handle,
            SamplingInterval=float(sampling) * 1000,
            QueueSize=queue_size,
            DiscardOldest=True,
        )
        if use_filter and tag.cfg.deadband > 0 and tag.cfg.heartbeat is None:
            params.Filter = ua_struct(
                ua.DataChangeFilter,
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute,
                DeadbandValue=float(tag.cfg.deadband),
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua_struct(ua.ReadValueId, NodeId=tag.node, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=params,
        )

    def _sample(self, tag: _Tag, dv: ua.DataValue, received_ns: int) -> Sample:
        status = dv.StatusCode.value if dv.StatusCode is not None else Status.GOOD
        ts = sample_ts(dv, received_ns)
        if severity(status) == Severity.BAD:
            return Sample(tag.path, ts, None, status, 0, tag.cfg.unit)
        raw = dv.Value.Value if dv.Value is not None else None
        value, ok = to_value(raw)
        if not ok:
            if not tag.type_warned:
                tag.type_warned = True
                self.log.warning(
                    "device %s: tag %s (%s) holds a %s, which edged cannot store (arrays and structures "
                    "are not supported): point the tag at a scalar variable",
                    self.config.name, tag.cfg.name, tag.address, type(raw).__name__,
                )  # fmt: skip
            return Sample(tag.path, ts, None, Status.BAD_CONFIGURATION_ERROR, 0, tag.cfg.unit)
        return Sample(tag.path, ts, value, status, score_for(status), tag.cfg.unit)

    # ------------------------------------------------------------------ data

    async def samples(self) -> AsyncIterator[list[Sample]]:
        if self._initial:
            batch, self._initial = self._initial, []
            yield batch
        if self.mode == "subscribe":
            async for batch in self._notifications():
                yield batch
        else:
            async for batch in self._polls():
                yield batch

    async def _notifications(self) -> AsyncIterator[list[Sample]]:
        """One batch per publish cycle. asyncua hands each notification of a publish response to the
        handler in a task of its own, all scheduled in the same loop turn; the first one's wake-up of
        this consumer is scheduled after them (asyncio runs ready callbacks FIFO), so when it runs
        the whole cycle is queued."""
        queue = self._queue
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            batch = [i for i in items if isinstance(i, Sample)]
            if batch:
                yield batch
            lost = next((i for i in items if not isinstance(i, Sample)), None)
            if lost is not None:
                raise lost

    async def _polls(self) -> AsyncIterator[list[Sample]]:
        c = self.config
        interval = float(c.poll_interval)
        loop = asyncio.get_running_loop()
        active = [t for t in self._tags if t.node is not None]
        next_at = loop.time()
        while True:
            if not self._queue.empty():  # the keep-alive saw the session die between polls
                item = self._queue.get_nowait()
                if not isinstance(item, Sample):
                    raise item
            if active:
                batch, active = await self._read(active)
                if batch:
                    yield batch
            next_at += interval
            delay = next_at - loop.time()
            if delay < -interval:  # fell behind: skip missed polls, never burst
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    async def _read(self, tags: Sequence[_Tag]) -> tuple[list[Sample], list[_Tag]]:
        """Read values (with status and both timestamps) in chunks; drop tags whose node is gone."""
        assert self._client is not None
        batch: list[Sample] = []
        keep: list[_Tag] = []
        for chunk in _chunks(list(tags), self.config.max_nodes_per_read):
            params = ua_struct(
                ua.ReadParameters,
                MaxAge=0,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[ua_struct(ua.ReadValueId, NodeId=t.node, AttributeId=AttributeIds.Value) for t in chunk],
            )
            with mapped_errors(f"read from {self.config.endpoint}"):
                results = await self._client.uaclient.read(params)
            now = time.time_ns()
            for tag, dv in zip(chunk, results, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if code in _MISSING:
                    batch.append(self._unreadable(tag, code))
                    continue
                keep.append(tag)
                batch.append(self._sample(tag, dv, now))
        return batch, keep

    # ------------------------------------------------------------------ writing

    async def write(self, tag: str, value: Value) -> Sample:
        """Write one tag (`name` or `device/name`) with its node's DataType and read it back.

        Returns the read-back sample. Raises WriteError (with the server's status) when the tag is
        unknown, the value does not fit the node's type or the server refuses the write
        (BadUserAccessDenied, BadNotWritable, ...): nothing was written. ReadbackMismatch when the
        server reads back another value; Transient for anything else on the wire.
        """
        c = self.config
        name = tag.removeprefix(c.name + "/")
        t = next((x for x in self._tags if x.cfg.name == name), None)
        if t is None:
            raise WriteError(f"{c.name} has no tag {tag!r}", StatusCodes.BadNodeIdUnknown)
        if t.node is None:
            raise WriteError(f"{t.path} ({t.address}) does not exist on the server", StatusCodes.BadNodeIdUnknown)
        client = self._client
        if client is None or not self._connected:
            raise Transient(f"{c.name}: not connected")
        async with self._write_lock:
            vtype = self._vtypes.get(t.path)
            if vtype is None:
                vtype = self._vtypes[t.path] = await node_variant_type(client, t.node)
            variant = to_variant(value, vtype)
            dv = await write_and_read_back(client, t.node, t.path, variant)
        sample = self._sample(t, dv, time.time_ns())
        check_read_back(t.path, value, variant, dv, sample)
        return sample


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
