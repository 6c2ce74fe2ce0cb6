"""Writing one variable for the command gate: the value as a Variant of the node's own DataType,
the Write, and the read-back that proves it. A refusal by the server is a `WriteError` (nothing
was written), a different read-back a `ReadbackMismatch`, anything else on the wire `Transient`."""

from __future__ import annotations

import struct
from typing import Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.common.utils import ServiceError
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edged.errors import Permanent, ReadbackMismatch, Transient
from edged.model import Sample, Severity, Value, severity
from edged.protocols.opcua.errors import map_error, mapped_errors, status_text
from edged.protocols.opcua.values import ua_struct

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


class WriteError(Permanent):
    """The server refused a write (nothing was written); `status` is its StatusCode."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


async def write_and_read_back(client: Client, node: ua.NodeId, path: str, variant: ua.Variant) -> ua.DataValue:
    """Write `variant` into the node's Value, then read the Value back (with both timestamps)."""
    request = ua_struct(
        ua.WriteParameters,
        NodesToWrite=[
            ua_struct(ua.WriteValue, NodeId=node, AttributeId=AttributeIds.Value, Value=ua.DataValue(variant))
        ],
    )
    try:
        (code,) = await client.uaclient.write(request)
    except UaStatusCodeError as exc:  # the whole service refused, e.g. no Write for this user
        if exc.code in _WRITE_REFUSED:
            raise WriteError(f"{path}: the server refused the write: {status_text(exc.code)}", exc.code) from exc
        raise map_error(exc, f"write {path}") from exc
    except (UaError, ServiceError, OSError, TimeoutError) as exc:
        raise map_error(exc, f"write {path}") from exc
    if not code.is_good():
        if code.value in _WRITE_REFUSED:
            raise WriteError(f"{path}: the server refused the write: {status_text(code.value)}", code.value)
        raise Transient(f"{path}: write answered {status_text(code.value)}")
    read = ua_struct(
        ua.ReadParameters,
        MaxAge=0,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        NodesToRead=[ua_struct(ua.ReadValueId, NodeId=node, AttributeId=AttributeIds.Value)],
    )
    with mapped_errors(f"read back {path} (the write was acknowledged)"):
        (dv,) = await client.uaclient.read(read)
    return dv


def check_read_back(path: str, value: Value, variant: ua.Variant, dv: ua.DataValue, sample: Sample) -> None:
    """Transient when the read-back is Bad, ReadbackMismatch when it differs from what was written."""
    back = dv.Value.Value if dv.Value is not None else None
    if severity(sample.status) == Severity.BAD:
        raise Transient(f"{path}: the write was acknowledged but the read-back is {status_text(sample.status)}")
    if type(back) is not type(_as_written(variant)) or back != _as_written(variant):
        raise ReadbackMismatch(f"{path}: wrote {value!r} but read back {sample.value!r}", sample.value)


async def node_variant_type(client: Client, node: ua.NodeId) -> ua.VariantType:
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
            raise WriteError(f"{node.to_string()} has an unsupported DataType", StatusCodes.BadTypeMismatch) from None
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
