"""OPC UA client driver (asyncua): subscriptions, with polling as a fallback.

Each connect builds one session: security is set up against an explicit trust list, browse paths are
resolved, and one subscription is created with a monitored item per tag. Data-change notifications
are converted where they arrive and queued; `samples()` yields everything one publish cycle
delivered as one batch. The server's StatusCode becomes the sample's status unchanged and its
source timestamp the sample's time.

A lost session is not repaired here: asyncua's own reconnect is off, the loss surfaces as
`Transient`, and the daemon's supervisor backs off and re-enters, which re-creates the session and
the subscription from scratch. Exceptions of asyncua and the socket layer are mapped to
Transient/Permanent in `map_error` and nowhere else.

`Driver.write` (used by the command gate, edged.commands) writes one tag's variable with the node's
own DataType and reads it back: a refusal by the server is a `WriteError` (nothing was written), a
different read-back a `ReadbackMismatch`, anything else on the wire `Transient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import urlparse

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes, get_name_and_doc
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from drivers.opcua import certs
from edged.config import DeviceBase, Duration, Secret, TagBase
from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Severity, Status, Value, severity
from edged.plugin import DriverSpec, PluginContext

T = TypeVar("T")


def ua_struct(cls: type[T], **fields: Any) -> T:
    """Build an asyncua struct from plain values. asyncua annotates its fields with int/float
    subclasses and a non-bool `Boolean` (UInt32, Duration, Counter, ...) that it never requires at
    run time; this is the one place that bridges its annotations and ordinary Python values."""
    return cls(**fields)


SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["Sign", "SignAndEncrypt"]

POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES: Final[dict[str, ua.MessageSecurityMode]] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}

# Retrying these cannot help until someone changes a password, a certificate or the config.
_PERMANENT_STATUS: Final = frozenset(
    {
        "BadIdentityTokenRejected",
        "BadIdentityTokenInvalid",
        "BadUserAccessDenied",
        "BadUserSignatureInvalid",
        "BadSecurityChecksFailed",
        "BadSecurityPolicyRejected",
        "BadSecurityModeRejected",
        "BadApplicationSignatureInvalid",
        "BadNoValidCertificates",
        "BadTcpEndpointUrlInvalid",
    }
)
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
# A write the server refuses for what it is (nothing was written): answered as "rejected".
_WRITE_REFUSED: Final = frozenset(
    {
        StatusCodes.BadUserAccessDenied,
        StatusCodes.BadNotWritable,
        StatusCodes.BadWriteNotSupported,
        StatusCodes.BadTypeMismatch,
        StatusCodes.BadOutOfRange,
        StatusCodes.BadIndexRangeInvalid,
        StatusCodes.BadNodeIdUnknown,
        StatusCodes.BadNodeIdInvalid,
        StatusCodes.BadAttributeIdInvalid,
    }
)
_INT_RANGES: Final[dict[ua.VariantType, range]] = {
    ua.VariantType.SByte: range(-(2**7), 2**7),
    ua.VariantType.Byte: range(2**8),
    ua.VariantType.Int16: range(-(2**15), 2**15),
    ua.VariantType.UInt16: range(2**16),
    ua.VariantType.Int32: range(-(2**31), 2**31),
    ua.VariantType.UInt32: range(2**32),
    ua.VariantType.Int64: range(-(2**63), 2**63),
    ua.VariantType.UInt64: range(2**64),
}
_FLOAT32_MAX: Final = 3.4028234663852886e38
_HIERARCHICAL: Final = ua_struct(ua.NodeId, Identifier=ObjectIds.HierarchicalReferences)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INT64 = range(-(2**63), 2**63)
_CLOSE_TIMEOUT = 2.0
_DEFAULT_APP_URI = "urn:edged:{gateway}:opcua-client"


# ----------------------------------------------------------------------------------------- config


def parse_node_id(text: str) -> ua.NodeId:
    """'ns=2;s=Boiler.Pressure', 'ns=2;i=7', 'i=2258': ValueError with an example when malformed."""
    try:
        return ua.NodeId.from_string(text.strip())
    except (UaError, ValueError):
        raise ValueError(
            f"invalid node {text!r}: expected a NodeId such as 'ns=2;s=Boiler.Pressure' or 'ns=2;i=7'"
        ) from None


def parse_browse_path(text: str) -> ua.RelativePath:
    """'0:Objects/2:Boiler/2:Pressure' from the Root folder. Each segment is `nsindex:BrowseName`
    (ns 0 when the prefix is left out); '.' and other characters inside a name are literal."""
    elements = []
    for seg in text.strip().strip("/").split("/"):
        if not seg:
            raise ValueError(f"invalid browse_path {text!r}: empty segment")
        try:
            name = ua.QualifiedName.from_string(seg)
        except (UaError, ValueError):
            raise ValueError(f"invalid browse_path {text!r}: segment {seg!r} is not 'nsindex:Name'") from None
        elements.append(
            ua_struct(
                ua.RelativePathElement,
                ReferenceTypeId=_HIERARCHICAL,
                IsInverse=False,
                IncludeSubtypes=True,
                TargetName=name,
            )
        )
    if not elements:
        raise ValueError(f"invalid browse_path {text!r}: expected e.g. '0:Objects/2:Boiler/2:Pressure'")
    return ua.RelativePath(elements)


class OpcuaTag(TagBase):
    node: str | None = None  # "ns=2;s=Boiler.Pressure"
    browse_path: str | None = None  # "0:Objects/2:Boiler/2:Pressure", from the Root folder
    sampling_interval: Duration | None = None  # default: the device's sampling_interval
    # `deadband` (TagBase) is also sent to the server as an absolute DataChangeFilter, unless the tag
    # has a `heartbeat`: the core needs samples inside the deadband to store one per heartbeat.

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.node is None) == (self.browse_path is None):
            raise ValueError(
                "give exactly one of `node` (e.g. 'ns=2;s=Boiler.Pressure') "
                "or `browse_path` (e.g. '0:Objects/2:Boiler/2:Pressure')"
            )
        if self.node is not None:
            parse_node_id(self.node)
        if self.browse_path is not None:
            parse_browse_path(self.browse_path)
        if self.sampling_interval is not None and self.sampling_interval < 0:
            raise ValueError("sampling_interval must be >= 0 (0 = as fast as the server can)")


class Config(DeviceBase):
    endpoint: str = ""  # opc.tcp://host:4840/path (required)
    # Required: "None" must be written out to connect without security.
    security_policy: SecurityPolicyName | None = None
    security_mode: SecurityMode = "SignAndEncrypt"
    certificate: str | None = None  # client certificate (DER or PEM); relative to gateway.data_dir
    private_key: str | None = None
    private_key_password: Secret | None = None
    trusted_server_certificates: list[str] = []  # files or directories; required with a security policy
    application_uri: str | None = None  # default: the certificate's URI, else urn:edged:<gateway>:opcua-client
    username: str | None = None
    password: Secret | None = None
    mode: Literal["subscribe", "poll"] = "subscribe"
    publishing_interval: Duration = Duration(1.0)
    sampling_interval: Duration | None = None  # default: publishing_interval
    poll_interval: Duration = Duration(1.0)  # mode = "poll", or when the server has no subscriptions
    timeout: Duration = Duration(10.0)  # per request; connecting may take a few
    session_timeout: Duration = Duration(60.0)
    keepalive: Duration = Duration(5.0)  # how often an idle session is checked
    max_nodes_per_read: int = 500  # per Read/CreateMonitoredItems/TranslateBrowsePaths request
    tags: list[OpcuaTag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.endpoint:
            raise ValueError("endpoint is required, e.g. 'opc.tcp://plc1:4840'")
        url = urlparse(self.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError(f"endpoint {self.endpoint!r} must look like 'opc.tcp://host:4840/path'")
        if "@" in url.netloc:
            raise ValueError("endpoint must not contain credentials: use username and password")
        try:
            port = url.port
        except ValueError:
            port = None
        if port is None:
            raise ValueError(f"endpoint {self.endpoint!r} needs a port (OPC UA's usual one is 4840)")
        if self.security_policy is None:
            raise ValueError(
                "security_policy is required: set it to 'Basic256Sha256', 'Aes128_Sha256_RsaOaep' or "
                "'Aes256_Sha256_RsaPss' (with certificate, private_key and trusted_server_certificates), "
                "or to 'None' to connect without any security on purpose"
            )
        if self.security_policy != "None":
            if not (self.certificate and self.private_key):
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs certificate and private_key "
                    "(create a pair with `edged opcua-cert`)"
                )
            if not self.trusted_server_certificates:
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs trusted_server_certificates: "
                    "the server's certificate (or its CA) that edged may trust"
                )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username == "":
            raise ValueError("username must not be empty")
        if self.publishing_interval < 0.01:
            raise ValueError("publishing_interval must be at least 10ms")
        if self.sampling_interval is not None and self.sampling_interval < 0:
            raise ValueError("sampling_interval must be >= 0")
        if self.poll_interval < 0.01:
            raise ValueError("poll_interval must be at least 10ms")
        if not 0 < self.timeout <= 600:
            raise ValueError("timeout must be between 0 and 10m")
        if not 0.1 <= self.keepalive <= 600:
            raise ValueError("keepalive must be between 100ms and 10m")
        if self.session_timeout < max(10.0, 2 * self.keepalive):
            raise ValueError("session_timeout must be at least 10s and twice keepalive")
        if not 1 <= self.max_nodes_per_read <= 100_000:
            raise ValueError("max_nodes_per_read must be between 1 and 100000")


# ----------------------------------------------------------------------------------------- errors


def status_text(code: int) -> str:
    """'BadNodeIdUnknown (0x80340000)': the name operators search for, plus the raw code."""
    return f"{get_name_and_doc(code & 0xFFFF0000)[0]} (0x{code:08X})"


def map_error(exc: BaseException, what: str) -> Transient | Permanent:
    """The one place asyncua and socket exceptions become edged's errors: authentication, security
    and certificate refusals are Permanent; everything else (timeouts, lost connections, a server
    shutting down or busy) is Transient."""
    code: int | None = None
    if isinstance(exc, UaStatusCodeError | ServiceError):
        code = exc.code
    if code is not None:
        name, doc = get_name_and_doc(code & 0xFFFF0000)
        doc = doc.rstrip(".")
        msg = f"{what}: the server answered {name} ({doc})"
        if name in _PERMANENT_STATUS or name.startswith("BadCertificate"):
            return Permanent(msg)
        return Transient(msg)
    if isinstance(exc, TimeoutError):
        return Transient(f"{what}: timed out")
    if isinstance(exc, OSError):
        return Transient(f"{what}: {exc.strerror or str(exc) or type(exc).__name__}")
    return Transient(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (UaError, ServiceError, OSError, TimeoutError) as exc:
        raise map_error(exc, what) from exc


# ----------------------------------------------------------------------------------------- values


def datetime_ns(t: dt.datetime) -> int:
    """Exact integer ns (no float rounding); OPC UA times are UTC, naive ones included."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def sample_ts(dv: ua.DataValue, received_ns: int) -> int:
    """Source timestamp, else the server's, else when we received it (a year <= 1601 is OPC UA's 'unset')."""
    for t in (dv.SourceTimestamp, dv.ServerTimestamp):
        if t is not None and t.year > 1601:
            return datetime_ns(t)
    return received_ns


def to_value(v: object) -> tuple[Value, bool]:
    """A Variant's value as a Sample value; False for what a Sample cannot hold (arrays, structures)."""
    if v is None or isinstance(v, bool | str | float):
        return v, True
    if isinstance(v, int):
        return (int(v), True) if v in _INT64 else (float(v), True)
    if isinstance(v, dt.datetime):
        return v.isoformat(), True
    if isinstance(v, ua.LocalizedText):
        return v.Text, True
    if isinstance(v, ua.NodeId | ua.QualifiedName):
        return v.to_string(), True
    if isinstance(v, ua.StatusCode):
        return v.value, True
    if isinstance(v, uuid.UUID):
        return str(v), True
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex(), True
    return None, False


def score_for(status: int) -> int:
    sev = severity(status)
    return 100 if sev == Severity.GOOD else 60 if sev == Severity.UNCERTAIN else 0


@dataclass(slots=True)
class _Tag:
    path: str  # device/tag
    cfg: OpcuaTag
    node: ua.NodeId | None = None  # None until resolved, and for good when it does not exist
    type_warned: bool = False

    @property
    def address(self) -> str:
        return f"node {self.cfg.node}" if self.cfg.node is not None else f"browse_path {self.cfg.browse_path}"


def to_variant(value: Value, vtype: ua.VariantType) -> ua.Variant:
    """A command value as a Variant of the node's type; WriteError when it does not fit."""
    what = f"{value!r} does not fit a {vtype.name} variable"
    if vtype == ua.VariantType.Boolean:
        if isinstance(value, bool):
            return ua.Variant(value, vtype)
    elif vtype == ua.VariantType.String:
        if isinstance(value, str):
            return ua.Variant(value, vtype)
    elif vtype in _INT_RANGES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise WriteError(f"{what}: not a whole number", StatusCodes.BadTypeMismatch)
            if int(value) not in _INT_RANGES[vtype]:
                raise WriteError(f"{what}: outside its range", StatusCodes.BadOutOfRange)
            return ua.Variant(int(value), vtype)
    elif vtype in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, int | float) and not isinstance(value, bool):
            if vtype == ua.VariantType.Float and abs(value) > _FLOAT32_MAX:
                raise WriteError(f"{what}: outside its range", StatusCodes.BadOutOfRange)
            return ua.Variant(float(value), vtype)
    else:
        raise WriteError(f"a {vtype.name} variable cannot be written by edged", StatusCodes.BadTypeMismatch)
    raise WriteError(what, StatusCodes.BadTypeMismatch)


def _as_written(v: ua.Variant) -> object:
    """What the server stores for a written Variant: a Float is rounded to 32 bits on the wire."""
    if v.VariantType == ua.VariantType.Float and isinstance(v.Value, float):
        return struct.unpack("<f", struct.pack("<f", v.Value))[0]
    return v.Value


class WriteError(Permanent):
    """The server refused a write (nothing was written); `status` is its StatusCode."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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

    def _path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.ctx.data_dir / path

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
            await self._set_security(client)
        if c.username is not None and c.password is not None:
            client.set_user(c.username)
            client.set_password(c.password.reveal())
        t0 = time.perf_counter()
        with mapped_errors(f"connect to {c.endpoint}"):
            await client.connect()
        self._connected = True
        self.log.debug("device %s: session open in %.0f ms", c.name, (time.perf_counter() - t0) * 1e3)

    async def _set_security(self, client: Client) -> None:
        """Pick the server's endpoint for the configured policy and mode, and accept its certificate
        only if the trust list vouches for it, before anything secret is sent."""
        c = self.config
        assert c.security_policy is not None
        assert c.certificate
        assert c.private_key
        policy, mode = POLICIES[c.security_policy], MODES[c.security_mode]
        cert_path, key_path = self._path(c.certificate), self._path(c.private_key)
        try:
            own = certs.load_certificate(cert_path)
            trusted = certs.load_trusted([self._path(p) for p in c.trusted_server_certificates])
        except OSError as exc:
            raise Permanent(f"device {c.name}: cannot read {exc.filename}: {exc.strerror}") from exc
        except ValueError as exc:
            raise Permanent(f"device {c.name}: {exc}") from exc
        if not trusted:
            raise Permanent(f"device {c.name}: trusted_server_certificates holds no certificate")
        if certs.expires_within(own, 30):
            self.log.warning(
                "device %s: client certificate %s expires on %s",
                c.name,
                cert_path,
                own.not_valid_after_utc.date(),
            )
        if c.application_uri is None:
            client.application_uri = certs.application_uri(own) or client.application_uri
        with mapped_errors(f"get endpoints of {c.endpoint}"):
            endpoints = await client.connect_and_get_server_endpoints()
        ep = next(
            (
                e
                for e in endpoints
                if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode and e.ServerCertificate
            ),
            None,
        )
        if ep is None:
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
            raise Permanent(
                f"{c.endpoint} offers no {c.security_policy}/{c.security_mode} endpoint"
                f" (it offers {', '.join(offered)})"
            )
        server_der = _first_certificate(ep.ServerCertificate)
        try:
            server_cert = x509.load_der_x509_certificate(server_der)
        except ValueError as exc:
            raise Permanent(f"{c.endpoint} sent an unreadable certificate: {exc}") from exc
        problem = certs.check_trusted(server_cert, trusted)
        if problem is not None:
            saved = self._save_rejected(server_der, server_cert)
            hint = (
                f"; it was saved to {saved}: if this is the right server, add that file to trusted_server_certificates"
                if saved
                else ""
            )
            raise Permanent(
                f"server certificate {certs.describe(server_cert)} of {c.endpoint} is not trusted: {problem}{hint}"
            )
        password = c.private_key_password.reveal() if c.private_key_password else None
        try:
            await client.set_security(policy, str(cert_path), str(key_path), password, server_der, mode)
        except (OSError, ValueError, TypeError) as exc:
            raise Permanent(f"device {c.name}: cannot load {cert_path} / {key_path}: {exc}") from exc

    def _save_rejected(self, der: bytes, cert: x509.Certificate) -> Path | None:
        """Keep a refused server certificate where the operator can inspect and trust it."""
        path = self.ctx.data_dir / "opcua" / "rejected" / f"{certs.thumbprint(cert)}.der"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(der)
        except OSError as exc:
            self.log.debug("cannot save rejected certificate to %s: %s", path, exc)
            return None
        return path

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
                vtype = self._vtypes[t.path] = await self._variant_type(client, t.node)
            variant = to_variant(value, vtype)
            request = ua_struct(
                ua.WriteParameters,
                NodesToWrite=[
                    ua_struct(ua.WriteValue, NodeId=t.node, AttributeId=AttributeIds.Value, Value=ua.DataValue(variant))
                ],
            )
            try:
                (code,) = await client.uaclient.write(request)
            except UaStatusCodeError as exc:  # the whole service refused, e.g. no Write for this user
                if exc.code in _WRITE_REFUSED:
                    raise WriteError(
                        f"{t.path}: the server refused the write: {status_text(exc.code)}", exc.code
                    ) from exc
                raise map_error(exc, f"write {t.path}") from exc
            except (UaError, ServiceError, OSError, TimeoutError) as exc:
                raise map_error(exc, f"write {t.path}") from exc
            if not code.is_good():
                if code.value in _WRITE_REFUSED:
                    raise WriteError(f"{t.path}: the server refused the write: {status_text(code.value)}", code.value)
                raise Transient(f"{t.path}: write answered {status_text(code.value)}")
            read = ua_struct(
                ua.ReadParameters,
                MaxAge=0,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[ua_struct(ua.ReadValueId, NodeId=t.node, AttributeId=AttributeIds.Value)],
            )
            with mapped_errors(f"read back {t.path} (the write was acknowledged)"):
                (dv,) = await client.uaclient.read(read)
        sample = self._sample(t, dv, time.time_ns())
        back = dv.Value.Value if dv.Value is not None else None
        if severity(sample.status) == Severity.BAD:
            raise Transient(f"{t.path}: the write was acknowledged but the read-back is {status_text(sample.status)}")
        if type(back) is not type(_as_written(variant)) or back != _as_written(variant):
            raise ReadbackMismatch(f"{t.path}: wrote {value!r} but read back {sample.value!r}", sample.value)
        return sample

    async def _variant_type(self, client: Client, node: ua.NodeId) -> ua.VariantType:
        """The node's DataType as a VariantType (read once per session); an abstract DataType
        (BaseDataType, Number) takes the type of the value the variable holds now."""
        with mapped_errors(f"read the DataType of {node.to_string()}"):
            (dtype,) = await client.uaclient.read_attributes([node], AttributeIds.DataType)
            good = dtype.StatusCode is None or dtype.StatusCode.is_good()
            if not good or dtype.Value is None or not isinstance(dtype.Value.Value, ua.NodeId):
                code = dtype.StatusCode.value if dtype.StatusCode is not None else StatusCodes.BadNodeIdUnknown
                raise WriteError(f"cannot read the DataType of {node.to_string()}: {status_text(code)}", code)
            try:
                vtype = await data_type_to_variant_type(client.get_node(dtype.Value.Value))
            except ValueError:  # a DataType with no Variant encoding (structures, custom types)
                raise WriteError(
                    f"{node.to_string()} has an unsupported DataType", StatusCodes.BadTypeMismatch
                ) from None
            if vtype == ua.VariantType.Variant:
                (current,) = await client.uaclient.read_attributes([node], AttributeIds.Value)
                if current.Value is None or current.Value.VariantType == ua.VariantType.Null:
                    raise WriteError(
                        f"{node.to_string()} has an abstract DataType and no value to take the type from",
                        StatusCodes.BadTypeMismatch,
                    )
                vtype = current.Value.VariantType
        if not isinstance(vtype, ua.VariantType):
            raise WriteError(f"{node.to_string()} has an unsupported DataType", StatusCodes.BadTypeMismatch)
        return vtype


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _first_certificate(der: bytes) -> bytes:
    """Servers may send their certificate followed by its chain; the leaf is the first DER SEQUENCE."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


plugin = DriverSpec(config=Config, driver=Driver)  # mypy checks it against edged.plugin
