"""Alarm events (edged.alarms) as OPC UA AlarmConditionType events (Part 9), emitted by the Server
object, where SCADA clients subscribe for alarms.

One condition per alarm, made on its first event (asyncua's event generator, one per alarm so each
keeps its own state for ConditionRefresh: a condition with Retain true is kept by asyncua and sent
again on a client's refresh). The fields set: SourceNode (the tag's variable) and SourceName (the
tag), ConditionName, ConditionId (`ns=<ns>;s=<alarm path>`), Severity/LastSeverity (the priority),
Message, Time (the event's source time), EnabledState, ActiveState, AckedState (with /Id and
TransitionTime), SuppressedOrShelved, Retain (while not normal), Quality and Comment (who
acknowledged or shelved). A replayed (historical) event keeps its time; its Message says
"(historical)". A flood summary is one event of its own, from the device.

Operators act on a condition with Part 9's methods, called with the ConditionId as ObjectId (no
node is made per condition; a shelving method also takes `<ConditionId>/ShelvingState`):
Acknowledge (AcknowledgeableConditionType, EventId and Comment), TimedShelve and Unshelve
(ShelvedStateMachineType). Each is a command through the gate (source the uplink, user the
session's), audited, answered with Part 9's StatusCodes; the state changes with the event the
engine stores, which comes back here through the buffer like every event. OneShotShelve is refused
(BadNotSupported): the engine's shelves are timed. At start, the conditions not normal (or shelved)
are made from their newest stored event (`restore`), so ConditionRefresh lists them at once."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, MethodService
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from edged.alarms.config import AlarmsConfig, is_alarm_path, split_path
from edged.alarms.model import AlarmEvent, from_sample
from edged.commands import Command, CommandGate, CommandResult, new_id
from edged.commands.model import MAX_TAG, cut
from edged.model import Sample, Value
from edged.protocols.opcua.values import ns_datetime, ua_struct
from uplink.opcua._asyncua import Server, current_channel, current_user

_ACTIVE = ("Active", "Inactive")
_ACKED = ("Acknowledged", "Unacknowledged")
_ENABLED = ("Enabled", "Disabled")


def _lt(text: str) -> ua.LocalizedText:
    return ua.LocalizedText(text, "en")


def _utc(when: dt.datetime) -> ua.Variant:
    """A UtcTime field: asyncua types it by the DataType NodeId, which its Variant cannot take."""
    return ua.Variant(when, ua.VariantType.DateTime)


ACK: Final = ObjectIds.AcknowledgeableConditionType_Acknowledge  # i=9111
# the ShelvedStateMachineType's methods (i=2949, 2947, 2948) and AlarmConditionType's ShelvingState's
TIMED_SHELVE: Final = frozenset({ObjectIds.ShelvedStateMachineType_TimedShelve,
                                 ObjectIds.AlarmConditionType_ShelvingState_TimedShelve})  # fmt: skip
UNSHELVE: Final = frozenset({ObjectIds.ShelvedStateMachineType_Unshelve,
                             ObjectIds.AlarmConditionType_ShelvingState_Unshelve})  # fmt: skip
ONE_SHOT: Final = frozenset({ObjectIds.ShelvedStateMachineType_OneShotShelve,
                             ObjectIds.AlarmConditionType_ShelvingState_OneShotShelve})  # fmt: skip
METHODS: Final = frozenset({ACK, *TIMED_SHELVE, *UNSHELVE, *ONE_SHOT})
_REFRESH: Final = frozenset({ObjectIds.ConditionType_ConditionRefresh, ObjectIds.ConditionType_ConditionRefresh2})
SHELVING_STATE: Final = "/ShelvingState"  # `<ConditionId>/ShelvingState`: the shelving methods' object
_RECENT_EVENTS: Final = 64  # EventIds an Acknowledge may name, per condition (newest kept)
_S: Final = StatusCodes


def _numeric(nodeid: ua.NodeId) -> int | None:
    return nodeid.Identifier if nodeid.NamespaceIndex == 0 and isinstance(nodeid.Identifier, int) else None


def _status(value: int, args: int = 0, bad_arg: int | None = None) -> ua.CallMethodResult:
    results = [ua_struct(ua.StatusCode, value=_S.Good) for _ in range(args)]
    if bad_arg is not None and bad_arg < args:
        results[bad_arg] = ua_struct(ua.StatusCode, value=_S.BadTypeMismatch)
    return ua_struct(ua.CallMethodResult, StatusCode=ua_struct(ua.StatusCode, value=value),
                     InputArgumentResults=results)  # fmt: skip


class AlarmConditions:
    """The server's alarm conditions, fed the alarm samples of each batch, and the Part 9 methods
    operators call on them (through the command gate)."""

    def __init__(
        self,
        server: Server,
        ns: int,
        log: logging.Logger,
        node_id: Any,
        *,
        name: str = "",
        gate: CommandGate | None = None,
        command_users: Iterable[str] = (),
        config: AlarmsConfig | None = None,
    ) -> None:
        self._server = server
        self._ns = ns
        self._log = log
        self._node_id = node_id  # the uplink's NodeId for a tag path (the variable of the source tag)
        self._gens: dict[str, Any] = {}  # alarm path -> EventGenerator
        self._recent: dict[str, collections.deque[bytes]] = {}  # alarm path -> EventIds, newest last
        self._name = name  # the uplink: the commands' source
        self._gate = gate
        self._users = frozenset(command_users)
        self._config = config or AlarmsConfig()
        self._paths = frozenset(a.path for a in self._config.tags)
        self._out_of_service = {a.path for a in self._config.tags if a.out_of_service}
        self.fired = 0

    async def fire(self, s: Sample, *, historical: bool) -> None:
        ev = from_sample(s)
        if ev is None:
            return
        gen = self._gens.get(s.tag)
        if gen is None:
            gen = self._gens[s.tag] = await self._server.get_event_generator(
                ua_struct(ua.NodeId, Identifier=ObjectIds.AlarmConditionType), ObjectIds.Server
            )
        self._fill(gen.event, s.tag, ev, ns_datetime(s.ts_ns))
        message = ev.message or f"{ev.tag} {ev.alarm} {ev.event}"
        if ev.event == "flood":
            message = ev.message
        if historical:
            message += " (historical)"
        await gen.trigger(ns_datetime(s.ts_ns), message)
        event_id = gen.event.EventId
        recent = self._recent.get(s.tag)
        if recent is None:
            recent = self._recent[s.tag] = collections.deque(maxlen=_RECENT_EVENTS)
        recent.append(event_id.Value if isinstance(event_id, ua.Variant) else event_id)
        self.fired += 1

    async def restore(self, samples: Iterable[Sample]) -> int:
        """At start: a condition for every alarm whose newest stored event (the buffer's `latest`)
        leaves it not normal or shelved, so ConditionRefresh lists it before its next event (the
        alarm engine recovers its state from the same events). Returns how many."""
        now = time.time_ns()
        n = 0
        for s in samples:
            if not is_alarm_path(s.tag) or s.tag in self._gens:
                continue
            ev = from_sample(s)
            if ev is None or ev.event == "flood":
                continue
            shelved = ev.shelved_until_ns is not None and ev.shelved_until_ns > now
            if ev.state == "normal" and not shelved:
                continue
            await self.fire(s, historical=False)
            n += 1
        return n

    # ------------------------------------------------------------------ methods

    def _condition(self, objectid: ua.NodeId, shelving: bool) -> str | None:
        """The alarm path a method's ObjectId names: the ConditionId, or for a shelving method also
        `<ConditionId>/ShelvingState`; None when it names no configured alarm."""
        raw = objectid.Identifier
        if objectid.NamespaceIndex != self._ns or not isinstance(raw, str):
            return None
        ident = str(raw)
        if shelving and ident.endswith(SHELVING_STATE):
            ident = ident.removesuffix(SHELVING_STATE)
        return ident if ident in self._paths else None

    async def call(self, user: User | None, m: ua.CallMethodRequest) -> ua.CallMethodResult:
        """Acknowledge, TimedShelve, Unshelve or OneShotShelve on a condition, as a command of this
        uplink through the gate (every call is audited, also the ones refused here)."""
        mid = _numeric(m.MethodId)
        args = list(m.InputArguments or [])
        gate = self._gate
        shelving = mid != ACK
        path = self._condition(m.ObjectId, shelving)
        name = user.name if user is not None and user.role == UserRole.User else None
        value, problem, bad_arg = self._action(mid, args)
        raw = m.ObjectId.Identifier
        named = str(raw) if m.ObjectId.NamespaceIndex == self._ns and isinstance(raw, str) else m.ObjectId.to_string()
        tag = path if path is not None else cut(named, MAX_TAG)
        cmd = Command(new_id(), self._name, name, tag, value, time.time_ns())
        if gate is None:
            return _status(_S.BadUserAccessDenied, len(args))  # no command gate: nothing can act
        if path is None:
            result = await gate.refuse(cmd, "unknown_tag", f"{m.ObjectId.to_string()} is not an alarm condition")
        elif name is None or name not in self._users:
            who = f"user {name!r}" if name else "an anonymous session"
            result = await gate.refuse(cmd, "unauthorised", f"{who} may not act on alarms through uplink "
                                       f"{self._name} (command_users)")  # fmt: skip
        elif problem is not None:
            result = await gate.refuse(cmd, problem[0], problem[1])
        elif mid == ACK and args[0].Value not in self._recent.get(path, ()):
            result = await gate.refuse(cmd, "unknown_event", f"EventId {args[0].Value!r} is not a recent event "
                                       f"of {path}")  # fmt: skip
        else:
            if mid == ACK:
                comment = args[1].Value
                text = comment.Text if isinstance(comment, ua.LocalizedText) else None
                if text:
                    self._log.info("uplink %s: %s acknowledges %s: %s", self._name, name, path, text)
            result = await gate.submit(cmd)
        return _status(self._code(mid, path, result), len(args), bad_arg)

    def _action(self, mid: int | None, args: list[ua.Variant]) -> tuple[Value, tuple[str, str] | None, int | None]:
        """(the command's value, (code, reason) when the arguments are wrong, the bad argument)."""
        if mid == ACK:
            expect = [ua.VariantType.ByteString, ua.VariantType.LocalizedText]
            value: Value = "ack"
        elif mid in TIMED_SHELVE:
            expect = [ua.VariantType.Double]  # ShelvingTime: a Duration, in milliseconds
            value = "shelve"
        elif mid in UNSHELVE:
            expect, value = [], "unshelve"
        else:
            return "shelve one-shot", ("not_supported", "OneShotShelve is not supported: shelves are timed"), None
        if len(args) < len(expect):
            return value, ("missing_arguments", f"{len(expect)} arguments expected, {len(args)} given"), None
        if len(args) > len(expect):
            return value, ("too_many_arguments", f"{len(expect)} arguments expected, {len(args)} given"), None
        for i, (a, t) in enumerate(zip(args, expect, strict=True)):
            if not isinstance(a, ua.Variant) or a.VariantType != t:
                got = a.VariantType.name if isinstance(a, ua.Variant) else type(a).__name__
                return value, ("bad_argument", f"argument {i + 1}: a {t.name} expected, not {got}"), i
        if mid in TIMED_SHELVE:
            ms = args[0].Value
            value = f"shelve {ms:.0f}ms" if isinstance(ms, float) and 0 <= ms < 1e15 else f"shelve {ms!r}ms"
        return value, None, None

    def _code(self, mid: int | None, path: str | None, result: CommandResult) -> int:
        """The gate's answer as Part 9's StatusCodes."""
        code = result.code
        if code == "ok":
            return int(_S.Good)
        if code == "not_allowed":
            if path in self._out_of_service:
                return int(_S.BadConditionDisabled)
            return int(_S.BadConditionBranchAlreadyAcked if mid == ACK else _S.BadConditionNotShelved)
        if code == "type" and mid in TIMED_SHELVE:
            return int(_S.BadShelvingTimeOutOfRange)  # beyond max_shelve (MaxTimeShelved), or 0
        special = {
            "unknown_event": _S.BadEventIdUnknown, "not_supported": _S.BadNotSupported,
            "missing_arguments": _S.BadArgumentsMissing, "too_many_arguments": _S.BadTooManyArguments,
            "bad_argument": _S.BadInvalidArgument, "type": _S.BadInvalidArgument, "unknown_tag": _S.BadNodeIdUnknown,
            "disabled": _S.BadUserAccessDenied,
        }  # fmt: skip
        return int(special.get(code, result.status))

    def _fill(self, e: Any, path: str, ev: AlarmEvent, when: dt.datetime) -> None:
        tag, name = split_path(path)  # a flood summary: (device, "flood"), from the device's folder
        e.SourceNode = self._node_id(tag)
        e.SourceName = ev.tag
        e.ConditionName = name
        e.NodeId = ua_struct(ua.NodeId, Identifier=path, NamespaceIndex=self._ns)
        e.ConditionClassId = ua_struct(ua.NodeId, Identifier=ObjectIds.ProcessConditionClassType)
        e.ConditionClassName = _lt("ProcessConditionClassType")
        e.BranchId = ua.NodeId()
        e.Severity = ev.priority
        e.LastSeverity = ev.priority
        e.Quality = ua_struct(ua.StatusCode, value=StatusCodes.Good)
        e.Retain = ev.state != "normal" or ev.shelved_until_ns is not None
        setattr(e, "EnabledState/Id", True)
        e.EnabledState = _lt(_ENABLED[0])
        setattr(e, "ActiveState/Id", ev.active)
        e.ActiveState = _lt(_ACTIVE[0] if ev.active else _ACTIVE[1])
        setattr(e, "AckedState/Id", ev.acked)
        e.AckedState = _lt(_ACKED[0] if ev.acked else _ACKED[1])
        if ev.event in ("active", "cleared"):
            setattr(e, "ActiveState/TransitionTime", _utc(when))
        if ev.event == "ack":
            setattr(e, "AckedState/TransitionTime", _utc(when))
        e.SuppressedOrShelved = ev.shelved_until_ns is not None
        e.MaxTimeShelved = ua.Variant(float(self._config.max_shelve) * 1000.0, ua.VariantType.Double)  # a Duration
        if ev.user is not None or ev.source is not None:
            e.ClientUserId = ev.user or ""
            e.Comment = _lt(f"{ev.event} by {ev.user or '-'} via {ev.source or '-'}")


class GatedCalls(MethodService):
    """The server's method service with client calls limited to ConditionRefresh (asyncua's) and
    the alarm methods (`AlarmConditions.call`); every other method a client calls is refused
    BadUserAccessDenied. The server's own calls (no client connection) pass as before."""

    def __init__(self, aspace: AddressSpace, alarms: AlarmConditions | None) -> None:
        super().__init__(aspace)
        self._alarms = alarms

    async def call(self, methods: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        out = []
        for m in methods:
            mid = _numeric(m.MethodId)
            if current_channel() is None or mid in _REFRESH:
                out.append(await self._call(m))
            elif mid in METHODS and self._alarms is not None:
                out.append(await self._alarms.call(current_user(), m))
            else:
                out.append(_status(_S.BadUserAccessDenied, len(m.InputArguments or [])))
        return out
