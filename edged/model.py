"""The data types that flow end to end: one `Sample` from driver to buffer to uplink."""

from __future__ import annotations

import time
from enum import IntEnum

import msgspec

Value = float | int | bool | str | None


class Status(IntEnum):
    """OPC UA StatusCodes (Part 4/6) used by edged. Severity lives in the top two bits."""

    GOOD = 0x00000000
    GOOD_CLAMPED = 0x00300000
    GOOD_LOCAL_OVERRIDE = 0x00960000
    UNCERTAIN = 0x40000000
    UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
    UNCERTAIN_INITIAL_VALUE = 0x40920000
    UNCERTAIN_SENSOR_NOT_ACCURATE = 0x40930000
    UNCERTAIN_ENGINEERING_UNITS_EXCEEDED = 0x40940000
    UNCERTAIN_SUB_NORMAL = 0x40950000
    UNCERTAIN_SENSOR_CALIBRATION = 0x420A0000
    UNCERTAIN_CONFIGURATION_ERROR = 0x420F0000
    UNCERTAIN_DATA_SUB_NORMAL = 0x40A40000  # an aggregate over less data than required (edged.compute)
    BAD = 0x80000000
    BAD_COMMUNICATION_ERROR = 0x80050000
    BAD_DECODING_ERROR = 0x80070000
    BAD_TIMEOUT = 0x800A0000
    BAD_NO_COMMUNICATION = 0x80310000
    BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
    BAD_NODE_ID_UNKNOWN = 0x80340000
    BAD_OUT_OF_RANGE = 0x803C0000
    BAD_TYPE_MISMATCH = 0x80740000
    BAD_NO_DATA = 0x809B0000
    BAD_AGGREGATE_INVALID_INPUTS = 0x80D60000  # a computation failed on its inputs (1/0, log of a negative)
    BAD_CONFIGURATION_ERROR = 0x80890000
    BAD_NOT_CONNECTED = 0x808A0000
    BAD_DEVICE_FAILURE = 0x808B0000
    BAD_SENSOR_FAILURE = 0x808C0000
    BAD_OUT_OF_SERVICE = 0x808D0000


class Severity(IntEnum):
    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


def severity(status: int) -> Severity:
    """Severity from the top two bits; 0b11 is reserved and treated as Bad (never trust it)."""
    top = (status >> 30) & 0b11
    return Severity.GOOD if top == 0 else Severity.UNCERTAIN if top == 1 else Severity.BAD


def status_name(status: int) -> str:
    try:
        return "".join(p.capitalize() for p in Status(status).name.split("_"))
    except ValueError:
        return f"{severity(status).name.capitalize()}(0x{status:08X})"


def now_ns() -> int:
    return time.time_ns()


class Sample(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One value of one tag at one instant, with its quality.

    `seq` is assigned by the buffer when the sample is stored and is never reused, so
    (gateway id, seq) identifies a record for receivers that drop duplicates.
    """

    tag: str
    ts_ns: int
    value: Value
    status: int = Status.GOOD
    score: int = 100
    unit: str | None = None
    seq: int | None = None


class Gap(msgspec.Struct, frozen=True, gc=False):
    """Samples an uplink never received because retention or the size cap deleted them first."""

    lo_seq: int
    hi_seq: int
    lo_ts_ns: int
    hi_ts_ns: int
    count: int


class Batch(msgspec.Struct, frozen=True, gc=False):
    """What an uplink sends in one acknowledged unit.

    `lo_seq..hi_seq` is the seq window the batch covers (samples may be fewer where retention
    deleted some); acknowledging the batch acknowledges the whole window.
    """

    gateway: str
    lo_seq: int
    hi_seq: int
    historical: bool
    samples: list[Sample]
    gaps: list[Gap] = []
