"""The only module that talks to bacpypes3: one shared application per local address, requests with
our own timeouts, COV notifications routed to their subscriber, and the error mapping.

bacpypes3 reports problems as exceptions derived from `ErrorRejectAbortNack`, which is a
BaseException (not an Exception): an ErrorPDU (errorClass/errorCode), a RejectPDU, or an AbortPDU
(its own timeout is `no-response`). Per-property errors of a ReadPropertyMultiple come back as
`ErrorType` values instead. Both become a `Failure` here; a socket that cannot be opened becomes
`LinkDown`. Nothing above this module sees bacpypes3's exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bacpypes3.apdu import (
    AbortPDU,
    ConfirmedCOVNotificationRequest,
    ErrorPDU,
    ErrorRejectAbortNack,
    IAmRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
    UnconfirmedCOVNotificationRequest,
)
from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import ErrorType, PropertyIdentifier
from bacpypes3.comm import bind
from bacpypes3.constructeddata import Any as BAny
from bacpypes3.errors import ServicesError
from bacpypes3.ipv4.app import NormalApplication
from bacpypes3.ipv4.link import NormalLinkLayer
from bacpypes3.local.device import DeviceObject
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.pdu import Address, GlobalBroadcast, IPv4Address
from bacpypes3.primitivedata import ObjectIdentifier
from bacpypes3.vendor import get_vendor_info

from edged.model import Status


@dataclass(frozen=True, slots=True)
class Failure:
    """A request (or one property of it) that produced no value. `answered`: the device replied."""

    status: int
    kind: str  # stable counter key: "timeout", "unknown_object", "abort_segmentation_not_supported" ...
    reason: str
    answered: bool

    @property
    def too_big(self) -> bool:
        """The device cannot take or send an answer this large: a smaller request may work."""
        return self.kind in _SPLIT


class LinkDown(Exception):
    """Our UDP socket cannot be opened (address in use, no such interface)."""


_SPLIT = frozenset(
    {"abort_segmentation_not_supported", "abort_buffer_overflow", "abort_apdu_too_long", "abort_out_of_resources"}
)

# (errorClass, errorCode) -> status; by code alone when the class does not matter
_ERROR_CODES: dict[str, int] = {
    "unknown-object": Status.BAD_NODE_ID_UNKNOWN,
    "unknown-property": Status.BAD_NODE_ID_UNKNOWN,
    "write-access-denied": 0x803B0000,  # BadNotWritable
    "read-access-denied": 0x803A0000,  # BadNotReadable
    "value-out-of-range": Status.BAD_OUT_OF_RANGE,
    "invalid-data-type": Status.BAD_TYPE_MISMATCH,
    "invalid-array-index": Status.BAD_CONFIGURATION_ERROR,
    "property-is-not-an-array": Status.BAD_CONFIGURATION_ERROR,
    "optional-functionality-not-supported": Status.BAD_CONFIGURATION_ERROR,
    "service-request-denied": Status.BAD_CONFIGURATION_ERROR,
    "password-failure": 0x801F0000,  # BadUserAccessDenied
    "device-busy": Status.BAD_TIMEOUT,
    "timeout": Status.BAD_TIMEOUT,
    "communication-disabled": Status.BAD_NO_COMMUNICATION,
    "operational-problem": Status.BAD_DEVICE_FAILURE,
    "no-space-to-write-property": Status.BAD_DEVICE_FAILURE,
}


def _slug(text: object) -> str:
    return str(text).replace("-", "_")


def error_failure(error_class: object, error_code: object) -> Failure:
    code = str(error_code)
    status = _ERROR_CODES.get(code, Status.BAD_DEVICE_FAILURE)
    return Failure(status, _slug(code), f"{error_class}: {code}", True)


def map_nack(exc: BaseException, timeout: float) -> Failure:
    """bacpypes3's Error/Reject/Abort (and our timeout) -> Failure."""
    if isinstance(exc, TimeoutError):
        return Failure(Status.BAD_TIMEOUT, "timeout", f"no answer within {timeout:g}s", False)
    if isinstance(exc, ErrorPDU):
        return error_failure(exc.errorClass, exc.errorCode)
    if isinstance(exc, RejectPDU):
        reason = str(exc.apduAbortRejectReason)
        status = Status.BAD_CONFIGURATION_ERROR if "service" in reason else Status.BAD_COMMUNICATION_ERROR
        return Failure(status, f"reject_{_slug(reason)}", f"request rejected: {reason}", True)
    if isinstance(exc, AbortPDU):
        reason = str(exc.apduAbortRejectReason)
        if reason in ("no-response", "tsm-timeout", "application-exceeded-reply-time", "server-timeout"):
            return Failure(Status.BAD_TIMEOUT, "timeout", f"no answer ({reason})", False)
        return Failure(Status.BAD_COMMUNICATION_ERROR, f"abort_{_slug(reason)}", f"request aborted: {reason}", True)
    return Failure(Status.BAD_COMMUNICATION_ERROR, "bad_answer", f"unexpected answer: {exc!r}", True)


@dataclass(frozen=True, slots=True)
class IAm:
    """One device that answered Who-Is."""

    instance: int
    address: str
    vendor: int
    max_apdu: int
    segmentation: str


# called with {property name: value (or the exception that decoding it raised)} per notification
Listener = Callable[[dict[str, object]], None]


class _App(NormalApplication):  # type: ignore[misc]  # bacpypes3 is untyped
    """Routes COV notifications to the driver that subscribed (by source and process id) instead of
    bacpypes3's SubscriptionContextManager, whose renewal runs in tasks of its own.

    `__init__` is NormalApplication's, except that the link layer gets our socket (bacpypes3 0.0.110
    accepts `bind_socket` there but does not pass it on)."""

    def __init__(self, device: DeviceObject, local: IPv4Address, bind_socket: socket.socket | None = None) -> None:
        Application.__init__(self)
        self.asap = ApplicationServiceAccessPoint(device, self.device_info_cache)
        self.nsap = NetworkServiceAccessPoint()
        self.nse = NetworkServiceElement()
        bind(self.nse, self.nsap)
        bind(self, self.asap, self.nsap)
        self.normal = NormalLinkLayer(local, bind_socket=bind_socket)
        self.nsap.bind(self.normal, address=local)
        self.add_object(device)
        self.listeners: dict[tuple[Address, int], tuple[ObjectIdentifier, Listener]] = {}

    def _dispatch(self, apdu: Any) -> bool:
        found = self.listeners.get((apdu.pduSource, int(apdu.subscriberProcessIdentifier)))
        if found is None or apdu.monitoredObjectIdentifier != found[0]:
            return False
        objid, listener = found
        cls = get_vendor_info(0).get_object_class(objid[0])
        values: dict[str, object] = {}
        for pv in apdu.listOfValues:
            ptype = cls.get_property_type(pv.propertyIdentifier) if cls is not None else None
            value: object = pv.value
            if ptype is not None and isinstance(value, BAny):
                try:
                    value = value.cast_out(ptype)
                except (ValueError, TypeError, AttributeError, IndexError) as exc:
                    value = exc
            values[str(pv.propertyIdentifier)] = value
        listener(values)
        return True

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: UnconfirmedCOVNotificationRequest) -> None:
        self._dispatch(apdu)

    async def do_ConfirmedCOVNotificationRequest(self, apdu: ConfirmedCOVNotificationRequest) -> None:
        if not self._dispatch(apdu):
            raise ServicesError(errorCode="unknownSubscription")
        await self.response(SimpleAckPDU(context=apdu))


class Stack:
    """One bacpypes3 application on one local address, shared by the devices that use it."""

    def __init__(self, local: str, instance: int) -> None:
        self.local = local
        self.users = 0
        self._next_spid = 1
        device = DeviceObject(
            objectIdentifier=("device", instance),
            objectName=f"edged-{instance}",
            vendorIdentifier=999,
            apduTimeout=60000,  # our asyncio.timeout fires first
            numberOfApduRetries=0,  # retries are ours
        )
        addr = IPv4Address(local)
        # bacpypes3 binds with SO_REUSEPORT and retries forever: a port held by another process would
        # silently share its answers. Bind here without it, so a taken port is a clear error.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(addr.addrTuple)
        except OSError as exc:
            sock.close()
            raise LinkDown(f"cannot open BACnet/IP socket {local}: {exc.strerror or exc}") from None
        self._sock: socket.socket | None = sock
        if addr.addrBroadcastTuple != addr.addrTuple:  # bacpypes3 also binds the broadcast address
            sock.close()
            self._sock = None
            self.app = _App(device, addr)
        else:
            self.app = _App(device, addr, bind_socket=sock)

    def close(self) -> None:
        """Close now: the transport would release the port only at the next loop iteration, and a
        supervisor reconnecting at once must be able to bind it again."""
        self.app.close()
        if self._sock is not None:
            self._sock.close()

    def new_spid(self) -> int:
        spid = self._next_spid
        self._next_spid = self._next_spid % 4194303 + 1
        return spid

    async def call(self, make: Callable[[], Awaitable[Any]], timeout: float, retries: int) -> Any:
        """Run one request with our timeout and retries; returns its result or a Failure."""
        failure: Failure | None = None
        for _ in range(retries + 1):
            try:
                async with asyncio.timeout(timeout):
                    return await make()
            except TimeoutError as exc:
                failure = map_nack(exc, timeout)
            except ErrorRejectAbortNack as exc:
                failure = map_nack(exc, timeout)
                if failure.answered:
                    return failure
            except OSError as exc:
                raise LinkDown(f"BACnet/IP socket {self.local}: {exc}") from None
        return failure

    async def who_is(self, address: str | None, low: int | None, high: int | None, wait: float) -> list[IAm]:
        """Who-Is to one address (directed) or broadcast (None); every I-Am heard within `wait`."""
        dest = Address(address) if address else GlobalBroadcast()
        found: dict[int, IAm] = {}
        future = self.app.who_is(low, high, dest, timeout=wait)
        try:
            answers = await future
        except ErrorRejectAbortNack:
            answers = []
        for iam in answers or []:
            if not isinstance(iam, IAmRequest):
                continue
            inst = int(iam.iAmDeviceIdentifier[1])
            found[inst] = IAm(
                inst,
                str(iam.pduSource),
                int(iam.vendorID),
                int(iam.maxAPDULengthAccepted),
                str(iam.segmentationSupported),
            )
        return sorted(found.values(), key=lambda d: d.instance)

    async def read(self, address: str, objid: ObjectIdentifier, prop: str, timeout: float, retries: int) -> Any:
        return await self.call(
            lambda: self.app.read_property(Address(address), objid, PropertyIdentifier(prop)), timeout, retries
        )

    async def read_multiple(
        self, address: str, specs: list[tuple[ObjectIdentifier, list[str]]], timeout: float, retries: int
    ) -> dict[tuple[ObjectIdentifier, str], object] | Failure:
        """ReadPropertyMultiple: {(object, property): value or Failure (a per-property error)}."""
        flat: list[Any] = []
        for objid, props in specs:
            flat += [objid, [PropertyIdentifier(p) for p in props]]
        res = await self.call(lambda: self.app.read_property_multiple(Address(address), flat), timeout, retries)
        if isinstance(res, Failure):
            return res
        out: dict[tuple[ObjectIdentifier, str], object] = {}
        for objid, prop, _index, value in res or []:
            key = (ObjectIdentifier(objid), str(prop))
            out[key] = error_failure(value.errorClass, value.errorCode) if isinstance(value, ErrorType) else value
        return out

    async def write(
        self, address: str, objid: ObjectIdentifier, value: Any, priority: int | None, timeout: float, retries: int
    ) -> Failure | None:
        res = await self.call(
            lambda: self.app.write_property(Address(address), objid, PropertyIdentifier("present-value"), value,
                                            priority=priority),
            timeout, retries,
        )  # fmt: skip
        return res if isinstance(res, Failure) else None

    async def subscribe(
        self,
        address: str,
        objid: ObjectIdentifier,
        spid: int,
        confirmed: bool,
        lifetime: int | None,
        timeout: float,
        retries: int,
    ) -> Failure | None:
        """SubscribeCOV (lifetime None: cancel the subscription)."""

        async def send() -> Any:
            req = SubscribeCOVRequest(
                subscriberProcessIdentifier=spid, monitoredObjectIdentifier=objid, destination=Address(address)
            )
            if lifetime is not None:
                req.issueConfirmedNotifications = confirmed
                req.lifetime = lifetime
            return await self.app.request(req)

        res = await self.call(send, timeout, retries)
        return res if isinstance(res, Failure) else None

    def listen(self, address: str, spid: int, objid: ObjectIdentifier, listener: Listener) -> None:
        self.app.listeners[(Address(address), spid)] = (objid, listener)

    def unlisten(self, address: str, spid: int) -> None:
        self.app.listeners.pop((Address(address), spid), None)


class Stacks:
    """The open stacks, by local address, reference-counted: the first device opens the socket, the
    last closes it. `default_stacks()` keeps one registry per event loop (nothing outlives it)."""

    def __init__(self) -> None:
        self._stacks: dict[str, Stack] = {}

    @contextlib.asynccontextmanager
    async def use(self, local: str, instance: int) -> AsyncIterator[Stack]:
        stack = self._stacks.get(local)
        if stack is None:
            stack = self._stacks[local] = Stack(local, instance)
        stack.users += 1
        try:
            yield stack
        finally:
            stack.users -= 1
            if stack.users == 0:
                stack.close()
                del self._stacks[local]


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Stacks] = weakref.WeakKeyDictionary()


def default_stacks() -> Stacks:
    loop = asyncio.get_running_loop()
    stacks = _PER_LOOP.get(loop)
    if stacks is None:
        stacks = _PER_LOOP[loop] = Stacks()
    return stacks
