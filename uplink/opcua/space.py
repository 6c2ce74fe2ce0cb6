"""The nodes the uplink adds, and what the server says about itself.

A tag's Variable is described from the config before any value arrives, so a SCADA that browses
once caches what stays true: its DataType (the tag's `value_type()`: integers of their width,
other numbers Double; BaseDataType where only the device knows, and then for good, since a DataType
that changed later would go unnoticed by such a client), AnalogItemType with EURange when the tag
has a range (BaseAnalogType for a number with a unit only), EngineeringUnits with the UNECE code,
and MinimumSamplingInterval = how often the driver reads the tag.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from edged.config import ValueType
from edged.model import Status, Value
from edged.protocols.opcua.values import ua_struct
from uplink.opcua import units
from uplink.opcua._asyncua import Server, publish

# OPC UA DataType (and the Variant type its values travel as) of each tag value type.
DATATYPES: Final[dict[ValueType, tuple[int, ua.VariantType]]] = {
    "bool": (ObjectIds.Boolean, ua.VariantType.Boolean),
    "string": (ObjectIds.String, ua.VariantType.String),
    "int16": (ObjectIds.Int16, ua.VariantType.Int16),
    "uint16": (ObjectIds.UInt16, ua.VariantType.UInt16),
    "int32": (ObjectIds.Int32, ua.VariantType.Int32),
    "uint32": (ObjectIds.UInt32, ua.VariantType.UInt32),
    "int64": (ObjectIds.Int64, ua.VariantType.Int64),
    "uint64": (ObjectIds.UInt64, ua.VariantType.UInt64),
    "double": (ObjectIds.Double, ua.VariantType.Double),
}
_DATATYPE_OF: Final = {vt: dt_id for dt_id, vt in DATATYPES.values()}
_INT_RANGES: Final[dict[ua.VariantType, tuple[int, int]]] = {
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
CHUNK: Final = 64  # nodes added between two yields to the event loop (~15 ms on a slow core)
_CURRENT_READ: Final = ua.AccessLevel.CurrentRead.mask
_HISTORY_READ: Final = ua.AccessLevel.HistoryRead.mask
# Micro Embedded Device 2017: the Nano profile (sessions, read, browse) plus data change
# subscriptions and at least two sessions. Not certified: what asyncua and this uplink implement.
PROFILES: Final = ["http://opcfoundation.org/UA-Profile/Server/MicroEmbeddedDevice2017"]


@dataclass(frozen=True, slots=True)
class TagNode:
    """What the config says about one tag's variable."""

    path: str
    name: str
    vtype: ua.VariantType | None = None  # None: BaseDataType, any value
    unit: str | None = None
    description: str = ""
    low: float | None = None
    high: float | None = None
    interval_s: float | None = None  # how often the driver reads it; None: unknown


def variant_type(value_type: ValueType | None) -> ua.VariantType | None:
    return None if value_type is None else DATATYPES[value_type][1]


def value_variant_type(value: Value) -> ua.VariantType:
    """A tag the config does not type takes the type of its first value (numbers as Double)."""
    if isinstance(value, bool):
        return ua.VariantType.Boolean
    if isinstance(value, int | float):
        return ua.VariantType.Double
    return ua.VariantType.String


def to_variant(value: Value, vtype: ua.VariantType) -> ua.Variant | None:
    """The value as a Variant of the variable's type, or None when it is not one (BadTypeMismatch)."""
    if vtype == ua.VariantType.Boolean:
        return ua.Variant(value, vtype) if isinstance(value, bool) else None
    if vtype == ua.VariantType.String:
        return ua.Variant(value, vtype) if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if vtype == ua.VariantType.Double:
        return ua.Variant(float(value), vtype)
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    lo, hi = _INT_RANGES[vtype]
    return ua.Variant(value, vtype) if lo <= value <= hi else None


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits: the UNECE code where edged knows the unit, else its text and UnitId -1."""
    found = units.lookup(unit)
    if found is None:
        return ua_struct(
            ua.EUInformation,
            NamespaceUri=None,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    return ua_struct(
        ua.EUInformation,
        NamespaceUri=units.UNITS_NAMESPACE,
        UnitId=units.unit_id(found.code),
        DisplayName=ua.LocalizedText(found.display),
        Description=ua.LocalizedText(found.description),
    )


def _ns0(ident: int) -> ua.NodeId:
    return ua_struct(ua.NodeId, Identifier=ident)


def _qname(name: str, ns: int) -> ua.QualifiedName:
    return ua_struct(ua.QualifiedName, Name=name, NamespaceIndex=ns)


def _node_id(ident: str | int, ns: int) -> ua.NodeId:
    return ua_struct(ua.NodeId, Identifier=ident, NamespaceIndex=ns)


def _property(parent: ua.NodeId, nodeid: ua.NodeId, name: str, value: object, datatype: int) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.DataType = _ns0(datatype)
    attrs.Value = ua.Variant(value, ua.VariantType.ExtensionObject)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = _CURRENT_READ
    return ua_struct(
        ua.AddNodesItem,
        RequestedNewNodeId=nodeid,
        BrowseName=_qname(name, 0),
        NodeClass=ua.NodeClass.Variable,
        ParentNodeId=parent,
        ReferenceTypeId=_ns0(ObjectIds.HasProperty),
        TypeDefinition=_ns0(ObjectIds.PropertyType),
        NodeAttributes=attrs,
    )


def variable_items(tag: TagNode, parent: ua.NodeId, ns: int, *, history: bool = False) -> list[ua.AddNodesItem]:
    """The AddNodes items of one tag: its Variable, then its properties. With `history` the
    variable is Historizing and readable as history (HistoryRead served from the buffer)."""
    nodeid = _node_id(tag.path, ns)
    numeric = tag.vtype is not None and tag.vtype not in (ua.VariantType.Boolean, ua.VariantType.String)
    ranged = tag.low is not None and tag.high is not None
    if ranged and (numeric or tag.vtype is None):
        typedef = ObjectIds.AnalogItemType
    elif numeric and tag.unit:
        typedef = ObjectIds.BaseAnalogType
    else:
        typedef = ObjectIds.BaseDataVariableType
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(tag.name)
    attrs.Description = ua.LocalizedText(tag.description or None)
    attrs.DataType = _ns0(_DATATYPE_OF[tag.vtype] if tag.vtype is not None else ObjectIds.BaseDataType)
    attrs.Value = ua.Variant(None, ua.VariantType.Null)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = _CURRENT_READ | (_HISTORY_READ if history else 0)
    attrs.Historizing = history
    # ms; -1 is "indeterminate" (Part 3 5.6.2): the tag's driver does not say how often it reads
    attrs.MinimumSamplingInterval = -1.0 if tag.interval_s is None else tag.interval_s * 1000.0
    items = [
        ua_struct(
            ua.AddNodesItem,
            RequestedNewNodeId=nodeid,
            BrowseName=_qname(tag.name, ns),
            NodeClass=ua.NodeClass.Variable,
            ParentNodeId=parent,
            ReferenceTypeId=_ns0(ObjectIds.Organizes),
            TypeDefinition=_ns0(typedef),
            NodeAttributes=attrs,
        )
    ]
    if tag.unit:
        eu_id = _node_id(f"{tag.path}#EngineeringUnits", ns)
        items.append(_property(nodeid, eu_id, "EngineeringUnits", eu_information(tag.unit), ObjectIds.EUInformation))
    if tag.low is not None and tag.high is not None:
        eu_range = ua_struct(ua.Range, Low=tag.low, High=tag.high)
        items.append(_property(nodeid, _node_id(f"{tag.path}#EURange", ns), "EURange", eu_range, ObjectIds.Range))
    return items


def folder_item(nodeid: ua.NodeId, name: str, parent: ua.NodeId) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    return ua_struct(
        ua.AddNodesItem,
        RequestedNewNodeId=nodeid,
        BrowseName=_qname(name, nodeid.NamespaceIndex),
        NodeClass=ua.NodeClass.Object,
        ParentNodeId=parent,
        ReferenceTypeId=_ns0(ObjectIds.Organizes),
        TypeDefinition=_ns0(ObjectIds.FolderType),
        NodeAttributes=attrs,
    )


def waiting() -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(None, ua.VariantType.Null), ua_struct(ua.StatusCode, value=Status.BAD_WAITING_FOR_INITIAL_DATA)
    )


async def add_nodes(server: Server, items: Sequence[ua.AddNodesItem]) -> None:
    """Add nodes in chunks, yielding to the event loop between them: building thousands of tags
    must not stall the rest of the daemon (asyncua adds nodes synchronously)."""
    service = server.iserver.node_mgt_service
    session_user = server.iserver.isession.user
    for start in range(0, len(items), CHUNK):
        chunk = list(items[start : start + CHUNK])
        for item, result in zip(chunk, service.add_nodes(chunk, session_user), strict=True):
            if not result.StatusCode.is_good():
                raise ServiceError(result.StatusCode.value)  # mapped by the uplink's boundary
            if item.NodeClass == ua.NodeClass.Variable and item.ReferenceTypeId != _ns0(ObjectIds.HasProperty):
                await publish(server.iserver.aspace, item.RequestedNewNodeId, waiting())
        await asyncio.sleep(0)


async def describe_server(server: Server, version: str, build_date: dt.datetime) -> None:
    """ServerCapabilities and BuildInfo, truthfully (asyncua leaves the capabilities null and
    says "1.0pre")."""
    limits = server.limits
    iserver = server.iserver
    values: dict[int, ua.Variant] = {
        ObjectIds.Server_ServerCapabilities_ServerProfileArray: ua.Variant(PROFILES, ua.VariantType.String),
        ObjectIds.Server_ServerCapabilities_LocaleIdArray: ua.Variant(["en"], ua.VariantType.String),
        # Data changes are reported as they are written (exception-based, Part 4 5.12.1.2): 0
        ObjectIds.Server_ServerCapabilities_MinSupportedSampleRate: ua.Variant(0.0, ua.VariantType.Double),
        # Browse answers every reference at once, so it never hands out a continuation point
        ObjectIds.Server_ServerCapabilities_MaxBrowseContinuationPoints: ua.Variant(0, ua.VariantType.UInt16),
        # Nothing longer than one message can be sent or received
        ObjectIds.Server_ServerCapabilities_MaxArrayLength: ua.Variant(limits.max_message_size, ua.VariantType.UInt32),
        ObjectIds.Server_ServerCapabilities_MaxStringLength: ua.Variant(limits.max_message_size, ua.VariantType.UInt32),
        ObjectIds.Server_ServerCapabilities_MaxByteStringLength: ua.Variant(
            limits.max_message_size, ua.VariantType.UInt32
        ),
        ObjectIds.Server_ServerCapabilities_MaxSubscriptions: ua.Variant(
            iserver.max_subscriptions, ua.VariantType.UInt32
        ),
        ObjectIds.Server_ServerCapabilities_MaxMonitoredItemsQueueSize: ua.Variant(
            iserver.max_monitored_item_queue_size, ua.VariantType.UInt32
        ),
    }
    for ident, variant in values.items():
        nodeid = _ns0(ident)
        if nodeid not in iserver.aspace:  # an older standard nodeset without this property
            continue
        status = await iserver.aspace.write_attribute_value(nodeid, AttributeIds.Value, ua.DataValue(variant))
        if not status.is_good():
            raise ServiceError(status.value)
    await server.set_build_info(server.product_uri, server.manufacturer_name, "edged", version, version, build_date)
