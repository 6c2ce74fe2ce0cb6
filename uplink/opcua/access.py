"""Who may do what on the OPC UA server: the trust list and logins (throttled per client and user),
the read-side services every session may use, and client writes, which only the command gate serves.
Refusals are counted and logged by the uplink (`Reporter`)."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from edged.model import Value
from edged.protocols.opcua import certs
from edged.protocols.opcua.values import ua_struct
from uplink.opcua._asyncua import Channel, current_channel
from uplink.opcua.config import BACKOFF_CAP, Config


class Reporter(Protocol):
    """What `Users` needs of the uplink: its config, and where refusals are counted and logged."""

    config: Config
    log: logging.Logger

    def count(self, name: str) -> None: ...

    def log_limited(self, key: tuple[str, str], msg: str, *args: object) -> None: ...


# What a logged-in client may do: discover, browse, read, subscribe. Write, Call, HistoryUpdate and
# node management are absent, so they are refused with BadUserAccessDenied before reaching a node.
_READ_ONLY_SERVICES: Final = frozenset(
    ua_struct(ua.NodeId, Identifier=i)
    for i in (
        ObjectIds.ReadRequest_Encoding_DefaultBinary,
        ObjectIds.BrowseRequest_Encoding_DefaultBinary,
        ObjectIds.BrowseNextRequest_Encoding_DefaultBinary,
        ObjectIds.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
        ObjectIds.RegisterNodesRequest_Encoding_DefaultBinary,
        ObjectIds.UnregisterNodesRequest_Encoding_DefaultBinary,
        ObjectIds.CreateSubscriptionRequest_Encoding_DefaultBinary,
        ObjectIds.ModifySubscriptionRequest_Encoding_DefaultBinary,
        ObjectIds.DeleteSubscriptionsRequest_Encoding_DefaultBinary,
        ObjectIds.TransferSubscriptionsRequest_Encoding_DefaultBinary,
        ObjectIds.SetPublishingModeRequest_Encoding_DefaultBinary,
        ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
        ObjectIds.ModifyMonitoredItemsRequest_Encoding_DefaultBinary,
        ObjectIds.DeleteMonitoredItemsRequest_Encoding_DefaultBinary,
        ObjectIds.SetMonitoringModeRequest_Encoding_DefaultBinary,
        ObjectIds.PublishRequest_Encoding_DefaultBinary,
        ObjectIds.RepublishRequest_Encoding_DefaultBinary,
        ObjectIds.CloseSessionRequest_Encoding_DefaultBinary,
        ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
        ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
        ObjectIds.FindServersRequest_Encoding_DefaultBinary,
    )
)
_WRITE_SERVICE: Final = ua_struct(ua.NodeId, Identifier=ObjectIds.WriteRequest_Encoding_DefaultBinary)
_CALL_SERVICE: Final = ua_struct(ua.NodeId, Identifier=ObjectIds.CallRequest_Encoding_DefaultBinary)
_NUMERIC_VARIANTS: Final = frozenset(
    {
        ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
        ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
        ua.VariantType.Float, ua.VariantType.Double,
    }
)  # fmt: skip
THROTTLE_PAIRS: Final = 10_000  # (client, user) pairs remembered, so guessing cannot fill memory


class Throttle:
    """Wrong passwords in a row per (client address, username): after `attempts` of them, logins
    for that pair are refused unchecked until a backoff passes (doubling at each further lockout,
    capped), so a password cannot be guessed at network speed. Per client, so a stranger cannot
    lock the SCADA (at its own address) out. A good password clears the pair."""

    def __init__(self, attempts: int, backoff: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._attempts = attempts
        self._backoff = backoff
        self._clock = clock
        self._pairs: dict[tuple[str, str], tuple[int, float]] = {}  # -> (failures, locked until)

    def locked_for(self, key: tuple[str, str]) -> float:
        """Seconds the pair stays locked (0: it may try)."""
        found = self._pairs.get(key)
        return max(0.0, found[1] - self._clock()) if found else 0.0

    def failed(self, key: tuple[str, str]) -> float:
        """Count a wrong password; the lockout it starts in seconds (0: none)."""
        failures = self._pairs.pop(key, (0, 0.0))[0] + 1
        lock = 0.0
        if failures >= self._attempts:
            lock = min(BACKOFF_CAP, self._backoff * 2 ** (failures - self._attempts))
        self._pairs[key] = (failures, self._clock() + lock)  # re-inserted: newest last
        while len(self._pairs) > THROTTLE_PAIRS:  # bounded: forget the longest-quiet pair
            del self._pairs[next(iter(self._pairs))]
        return lock

    def succeeded(self, key: tuple[str, str]) -> None:
        self._pairs.pop(key, None)


class Users(UserManager):
    """Who may open a session: the trust list on every endpoint, then username/password (throttled
    per client and user) or anonymous when allowed. Nobody is ever an admin."""

    def __init__(self, uplink: Reporter, trusted: list[x509.Certificate]) -> None:
        c = uplink.config
        self._users = {name: pw.reveal().encode() for name, pw in c.users.items()}
        self._anonymous = c.allow_anonymous
        self._trusted = trusted
        self._throttle = Throttle(c.login_attempts, c.login_backoff)
        self._up = uplink

    def client_problem(self, channel: Channel | None) -> tuple[int, str] | None:
        """Why no session may open on this channel (StatusCode, reason), or None."""
        if channel is None or not channel.offered:
            return StatusCodes.BadSecurityPolicyRejected, "its secure channel uses a security policy not offered"
        if not self._trusted:
            return None
        if channel.mode == ua.MessageSecurityMode.None_ or channel.certificate is None:
            # Nothing is signed on None: a certificate sent there proves nothing, so none is trusted.
            return StatusCodes.BadSecurityModeRejected, (
                "trusted_client_certificates is set: a session needs a Sign or SignAndEncrypt endpoint "
                "and a trusted client certificate (the None endpoint carries no proven certificate)"
            )
        try:
            cert = x509.load_der_x509_certificate(channel.certificate)
        except ValueError as exc:
            return StatusCodes.BadCertificateInvalid, f"its certificate does not parse: {exc}"
        problem = certs.check_trusted(cert, self._trusted)
        if problem is not None:
            return StatusCodes.BadCertificateUntrusted, f"{certs.describe(cert)}: {problem}"
        return None

    def check_client(self, channel: Channel | None) -> None:
        problem = self.client_problem(channel)
        if problem is not None:
            status, reason = problem
            self._up.count("sessions_refused")
            peer = channel.peer if channel else "?"
            self._up.log_limited(("session", peer), "uplink %s: refused a session from %s: %s", peer, reason)
            raise ServiceError(status)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        channel = current_channel()
        self.check_client(channel)  # `certificate` is the channel's too; the channel says whether it is proven
        if username is None:  # the anonymous token (X509 user tokens are not offered)
            return User(role=UserRole.Anonymous) if self._anonymous else None
        peer = channel.peer if channel else "?"
        key = (peer, username)
        if self._throttle.locked_for(key) > 0:
            self._up.count("logins_throttled")  # refused without looking at the password
            return None
        expected = self._users.get(username)
        given = (password or "").encode()
        # Compare even for an unknown user, so timing does not tell which usernames exist.
        ok = hmac.compare_digest(given, expected if expected is not None else b"\0" * 16) and expected is not None
        if ok:
            self._throttle.succeeded(key)
            return User(role=UserRole.User, name=username)
        self._up.count("logins_failed")
        lock = self._throttle.failed(key)
        log = self._up.log
        if lock:
            log.warning(
                "OPC UA login refused for user %r from %s: locked for %.0f s after repeated wrong passwords",
                username, peer, lock,
            )  # fmt: skip
        else:
            log.warning("OPC UA login refused for user %r from %s", username, peer)
        return None


class ReadOnly(SimpleRoleRuleset):
    """Every session may use the read-side services only, whatever its role; plus the Write service
    when some tag takes commands here (`GatedWrites` then decides per node and user), and the Call
    service with `calls` (`uplink.opcua.alarms.GatedCalls` then decides per method and user). (A
    subclass only because asyncua's server is typed to take this class; the parent's role table is
    not used.)"""

    def __init__(self, writes: bool = False, calls: bool = False) -> None:
        self._writes = writes
        self._calls = calls

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return (
            action_type_id in _READ_ONLY_SERVICES
            or (self._writes and action_type_id == _WRITE_SERVICE)
            or (self._calls and action_type_id == _CALL_SERVICE)
        )


WriteHandler = Callable[[User, ua.WriteValue], Awaitable[ua.StatusCode]]
_ADMIN: Final = User(role=UserRole.Admin)  # the server's own writes (asyncua's default user)


class GatedWrites(AttributeService):
    """The server's attribute service with client writes replaced: the Value of a commandable tag
    goes to the command gate (never into the address space), a node that does not exist is
    BadNodeIdUnknown, everything else is refused. The server's own writes (admin) pass as before."""

    def __init__(self, aspace: AddressSpace, targets: Mapping[ua.NodeId, str], handler: WriteHandler) -> None:
        super().__init__(aspace)
        self._targets = targets
        self._handler = handler

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        out: list[ua.StatusCode] = []
        for wv in params.NodesToWrite:
            if user.role == UserRole.Admin:
                out.extend(await super().write(ua_struct(ua.WriteParameters, NodesToWrite=[wv]), user))
            elif wv.AttributeId == AttributeIds.Value and wv.NodeId in self._targets:
                out.append(await self._handler(user, wv))
            elif wv.NodeId not in self._aspace:
                out.append(ua_struct(ua.StatusCode, value=StatusCodes.BadNodeIdUnknown))
            else:
                out.append(ua_struct(ua.StatusCode, value=StatusCodes.BadUserAccessDenied))
        return out


_CURRENT_WRITE: Final = ua.AccessLevel.CurrentWrite.mask


class UserAccess:
    """UserAccessLevel per session (Part 3 5.6.2: what *this* user may do): the stored one is
    everyone's (read), a user in `command_users` also sees CurrentWrite on the variables the gate
    lets this uplink write. Installed with `_asyncua.on_read`."""

    def __init__(self, writable: Mapping[ua.NodeId, str], command_users: list[str]) -> None:
        self._writable = writable
        self._writers = frozenset(command_users)

    def may_write(self, user: User) -> bool:
        return user.role == UserRole.User and user.name in self._writers

    def __call__(self, user: User, nodes: list[ua.ReadValueId], results: list[ua.DataValue]) -> None:
        if user.role == UserRole.Admin or not self.may_write(user):
            return
        for i, rv in enumerate(nodes):
            if rv.AttributeId != AttributeIds.UserAccessLevel or rv.NodeId not in self._writable:
                continue
            dv = results[i]
            if dv.Value is not None and isinstance(dv.Value.Value, int):
                level = dv.Value.Value | _CURRENT_WRITE
                results[i] = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))


def written_value(wv: ua.WriteValue) -> tuple[Value, str | None]:
    """A client's written Variant as a command value, or why it cannot be one."""
    if wv.IndexRange:
        return None, "writing an index range is not supported"
    dv = wv.Value
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None, "a write with a non-Good status carries no value"
    v = dv.Value
    if v is None or v.VariantType == ua.VariantType.Null or v.is_array or isinstance(v.Value, list):
        return None, "the value must be a scalar (a number, a boolean or a string)"
    if v.VariantType == ua.VariantType.Boolean and isinstance(v.Value, bool):
        return v.Value, None
    if v.VariantType == ua.VariantType.String and isinstance(v.Value, str):
        return v.Value, None
    if v.VariantType in _NUMERIC_VARIANTS and isinstance(v.Value, int | float):
        return v.Value, None
    return None, f"a {v.VariantType.name} value cannot be written (use a number, a boolean or a string)"
