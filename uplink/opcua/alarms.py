"""Alarm events (edged.alarms) as OPC UA AlarmConditionType events (Part 9), emitted by the Server
object, where SCADA clients subscribe for alarms.

One condition per alarm, made on its first event (asyncua's event generator, one per alarm so each
keeps its own state for ConditionRefresh: a condition with Retain true is kept by asyncua and sent
again on a client's refresh). The fields set: SourceNode (the tag's variable) and SourceName (the
tag), ConditionName, ConditionId (`ns=<ns>;s=<alarm path>`), Severity/LastSeverity (the priority),
Message, Time (the event's source time), EnabledState, ActiveState, AckedState (with /Id and
TransitionTime), SuppressedOrShelved, Retain (while not normal), Quality and Comment (who
acknowledged or shelved). A replayed (historical) event keeps its time; its Message says
"(historical)". A flood summary is one event of its own, from the device."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from edged.alarms.config import split_path
from edged.alarms.model import AlarmEvent, from_sample
from edged.model import Sample
from edged.protocols.opcua.values import ns_datetime, ua_struct
from uplink.opcua._asyncua import Server

_ACTIVE = ("Active", "Inactive")
_ACKED = ("Acknowledged", "Unacknowledged")
_ENABLED = ("Enabled", "Disabled")


def _lt(text: str) -> ua.LocalizedText:
    return ua.LocalizedText(text, "en")


def _utc(when: dt.datetime) -> ua.Variant:
    """A UtcTime field: asyncua types it by the DataType NodeId, which its Variant cannot take."""
    return ua.Variant(when, ua.VariantType.DateTime)


class AlarmConditions:
    """The server's alarm conditions, fed the alarm samples of each batch."""

    def __init__(self, server: Server, ns: int, log: logging.Logger, node_id: Any) -> None:
        self._server = server
        self._ns = ns
        self._log = log
        self._node_id = node_id  # the uplink's NodeId for a tag path (the variable of the source tag)
        self._gens: dict[str, Any] = {}  # alarm path -> EventGenerator
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
        self.fired += 1

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
        if ev.user is not None or ev.source is not None:
            e.ClientUserId = ev.user or ""
            e.Comment = _lt(f"{ev.event} by {ev.user or '-'} via {ev.source or '-'}")
