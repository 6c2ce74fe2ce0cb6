"""The few asyncua (2.1) server internals the uplink has to reach, kept here in one place.

asyncua has extension points for users (UserManager), client certificates at CreateSession
(set_certificate_validator) and services (SimpleRoleRuleset), but none for the secure channel,
and its user manager is not told which channel (client address, security policy) a login
arrives on. Three gaps follow, each closed here:

* A client asking for a security policy (or mode) the server does not offer is not answered:
  asyncua raises inside its message loop, logs a traceback at error level and leaves the socket
  open until the client gives up. `Server` below answers it as OPC UA Part 6 says: an ERR message
  with BadSecurityPolicyRejected (or BadSecurityModeRejected), then the connection is closed.
* A client asking for the None policy on a server that does not offer it gets asyncua's fallback
  None channel, without the service rules; sessions on it must be refused (discovery, i.e.
  GetEndpoints/FindServers, stays possible there, as OPC UA clients expect).
* Throttling logins per client and the trust list on every endpoint need the channel of the
  login: `current_channel()` gives it to the user manager while a message is processed.
* Publishing a value: `Server.write_attribute_value` drops the StatusCode asyncua's check
  returns (a refused value vanishes silently) and its check refuses any value of a BaseDataType
  variable; `publish` stores the value the uplink has already typed and notifies the monitored
  items, as asyncua does after its check.
* Every monitored item deep-copies each value it is given (MonitoredItemValues), in case the
  writer changes it later: at 10,000 tags that copy was 60 % of the server's CPU. The uplink never
  changes a value it has published (a new DataValue per sample, scalar Variants), so `Published`
  values copy as themselves.
* The user's UserAccessLevel: asyncua stores one per node; `on_read` lets the uplink answer it
  per session (the Read service's PostRead callback carries the session's user).
* Method calls: asyncua's MethodService is not told the caller's session; `current_user()`
  gives the user of the message being processed (the alarm methods go to the gate as them).

How: `Server` replaces the BinaryServer that `asyncua.server.Server.start` creates with one whose
connections are `_Protocol`, which wraps each message's processing; a last, never-matching
security policy factory (`_Refuser`) turns "no offered policy matches" into `Rejected`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User
from asyncua.crypto.security_policies import SecurityPolicyFactory, SecurityPolicyNone
from asyncua.server.address_space import AddressSpace
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.server import Server as AsyncuaServer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import uatcp_to_binary

from edged.protocols.opcua.values import ua_struct

_log = logging.getLogger(__name__)
NONE_URI: Final = SecurityPolicyNone.URI
_NO_SECURITY: Final = ua.MessageSecurityMode.None_
_ERROR: Final = cast(ua.MessageType, ua.MessageType.Error)  # asyncua types its constants as bytes


@dataclass(frozen=True, slots=True)
class Channel:
    """The secure channel a message arrived on."""

    peer: str  # the client's IP address
    policy_uri: str
    mode: ua.MessageSecurityMode
    offered: bool  # False: asyncua's fallback None channel on a server that does not offer None
    certificate: bytes | None  # the client certificate the channel was opened with (proven unless None)


# Per task: each client connection processes its messages in its own asyncio task, so the value
# set around one message is the one its login sees (a ContextVar, not shared state).
_CHANNEL: Final[contextvars.ContextVar[Channel | None]] = contextvars.ContextVar("edged_opcua_channel", default=None)


def current_channel() -> Channel | None:
    """The channel of the message being processed (None outside a client connection)."""
    return _CHANNEL.get()


_USER: Final[contextvars.ContextVar[User | None]] = contextvars.ContextVar("edged_opcua_user", default=None)


def current_user() -> User | None:
    """The session user of the message being processed (None outside a client connection, or
    before the session is activated)."""
    return _USER.get()


class Rejected(Exception):
    """A secure channel asked for what the server does not offer: answered with an ERR message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Refuser:
    """Last in asyncua's list of security policy factories: reached only when no offered policy
    matched, so it raises instead of matching (None excepted, see the module docstring)."""

    def __init__(self, offered: list[SecurityPolicyFactory]) -> None:
        self._uris = {f.cls.URI for f in offered}

    def matches(self, uri: str, mode: ua.MessageSecurityMode | None = None) -> bool:
        if uri == NONE_URI and NONE_URI not in self._uris:
            return False  # asyncua's fallback None channel: discovery only, sessions are refused
        if uri in self._uris:
            raise Rejected(StatusCodes.BadSecurityModeRejected, f"{uri} is not offered in mode {mode}")
        raise Rejected(StatusCodes.BadSecurityPolicyRejected, f"security policy {uri!r} is not offered")


RejectHook = Callable[[str, Rejected], None]


class _Protocol(OPCUAProtocol):
    """One client connection: its channel is known to the login, a refused channel is answered."""

    on_reject: RejectHook
    offered: frozenset[tuple[str, ua.MessageSecurityMode]]

    async def _process_one_msg(self, header: Any, buf: Any) -> bool:
        token = _CHANNEL.set(self._channel())
        session = getattr(self.processor, "session", None)
        user_token = _USER.set(getattr(session, "user", None))
        try:
            return bool(await super()._process_one_msg(header, buf))
        except Rejected as r:
            self._refuse(r)
            return False
        except Exception as exc:
            # A channel that fails to open (garbage, a certificate that does not parse, a bad
            # signature) is answered and closed, as Part 6 says; later failures stay asyncua's.
            if header.MessageType != ua.MessageType.SecureOpen or self._is_open():
                raise
            reason = f"cannot open a secure channel ({type(exc).__name__})"  # no details to a stranger
            self._refuse(Rejected(StatusCodes.BadSecurityChecksFailed, reason))
            return False
        finally:
            _USER.reset(user_token)
            _CHANNEL.reset(token)

    def _is_open(self) -> bool:
        return self.processor is not None and bool(self.processor._connection.is_open())

    def _channel(self) -> Channel:
        peer = str(self.peer_name[0]) if self.peer_name else "?"
        if self.processor is None:
            return Channel(peer, NONE_URI, _NO_SECURITY, False, None)
        policy = self.processor._connection.security_policy
        uri, mode = str(policy.URI), policy.Mode
        cert = policy.peer_certificate if mode != _NO_SECURITY else None
        return Channel(peer, uri, mode, (uri, mode) in self.offered, cert)

    def _refuse(self, r: Rejected) -> None:
        self.on_reject(str(self.peer_name[0]) if self.peer_name else "?", r)
        if self.transport is not None:
            err = ua_struct(ua.ErrorMessage, Error=ua_struct(ua.StatusCode, value=r.status), Reason=r.reason)
            self.transport.write(uatcp_to_binary(_ERROR, err))
            self.transport.close()  # after the ERR message is flushed


class _BinaryServer(BinaryServer):
    def __init__(self, base: BinaryServer, on_reject: RejectHook) -> None:
        super().__init__(base.iserver, base.hostname, base.port, base.limits)
        self._on_reject = on_reject
        self._offered: frozenset[tuple[str, ua.MessageSecurityMode]] = frozenset()

    def set_policies(self, policies: list[Any]) -> None:
        self._offered = frozenset((f.cls.URI, f.mode) for f in policies)
        super().set_policies([*policies, _Refuser(policies)])

    def _make_protocol(self) -> OPCUAProtocol:
        proto = _Protocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )
        proto.on_reject = self._on_reject
        proto.offered = self._offered
        return proto


class Server(AsyncuaServer):
    """asyncua's Server whose connections are `_Protocol` (see the module docstring)."""

    def __init__(self, *args: Any, on_reject: RejectHook, **kwargs: Any) -> None:
        self._on_reject = on_reject
        self._bserver: BinaryServer | None = None
        super().__init__(*args, **kwargs)

    # `start()` builds a BinaryServer and assigns it here before starting it: the one place to
    # put ours in without copying asyncua's start sequence.
    @property
    def bserver(self) -> BinaryServer | None:
        return self._bserver

    @bserver.setter
    def bserver(self, value: BinaryServer | None) -> None:
        if value is not None and not isinstance(value, _BinaryServer):
            value = _BinaryServer(value, self._on_reject)
        self._bserver = value


class Published(ua.DataValue):
    """A DataValue that is never changed once published: deepcopy() returns it (see the module
    docstring). Encoded as a DataValue: asyncua picks the encoder from the declared field type."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, object]) -> Published:
        return self


async def publish(aspace: AddressSpace, nodeid: ua.NodeId, dv: ua.DataValue) -> bool:
    """Store a Variable's value and notify its monitored items; False when the node is unknown."""
    node = aspace.get(nodeid)
    if node is None:
        return False
    attval = node.attributes[AttributeIds.Value]
    attval.value = dv
    attval.value_callback = None
    for handle, callback in list(attval.datachange_callbacks.items()):
        try:
            await callback(handle, dv)
        except Exception:  # one broken subscription must not stop the others (as asyncua does)
            _log.exception("OPC UA data change callback %s failed", handle)
    return True


ReadHook = Callable[[User, list[ua.ReadValueId], list[ua.DataValue]], None]


def on_read(server: AsyncuaServer, hook: ReadHook) -> None:
    """Call `hook(user, nodes_to_read, results)` after every Read, to amend the results in place."""

    def listener(event: object, _: object) -> None:
        if isinstance(event, ServerItemCallback) and event.user is not None and event.response_params is not None:
            hook(event.user, event.request_params.NodesToRead, event.response_params)

    server.subscribe_server_callback(CallbackType.PostRead, listener)
