"""What a command and its answer are: `Command`, `CommandResult`, the result codes and the sizes a
command's fields may have. Pure data, imported by every source (uplinks, `edged write`) and the gate."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Final

import msgspec

from edged.model import Value


class Result(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    READBACK_MISMATCH = "readback_mismatch"


# code -> OPC UA StatusCode, what a SCADA client writing through the OPC UA server uplink receives.
STATUS: Final[dict[str, int]] = {
    "ok": 0x00000000,  # Good
    "disabled": 0x803B0000,  # BadNotWritable
    "malformed": 0x80070000,  # BadDecodingError
    "too_large": 0x80080000,  # BadEncodingLimitsExceeded
    "unsigned": 0x80130000,  # BadSecurityChecksFailed
    "bad_signature": 0x80130000,  # BadSecurityChecksFailed
    "stale": 0x80230000,  # BadInvalidTimestamp
    "duplicate": 0x80E40000,  # BadRequestNotAllowed
    "unknown_tag": 0x80340000,  # BadNodeIdUnknown
    "not_writable": 0x803B0000,  # BadNotWritable
    "unauthorised": 0x801F0000,  # BadUserAccessDenied
    "type": 0x80740000,  # BadTypeMismatch
    "not_allowed": 0x803C0000,  # BadOutOfRange
    "out_of_range": 0x803C0000,  # BadOutOfRange
    "no_current_value": 0x80320000,  # BadWaitingForInitialData
    "max_step": 0x803C0000,  # BadOutOfRange
    "min_interval": 0x80100000,  # BadTooManyOperations
    "audit_unavailable": 0x80040000,  # BadResourceUnavailable
    "device_down": 0x808A0000,  # BadNotConnected
    "device_refused": 0x803B0000,  # BadNotWritable, unless the device gave its own status
    "wire": 0x80050000,  # BadCommunicationError
    "timeout": 0x800A0000,  # BadTimeout
    "readback": 0x808B0000,  # BadDeviceFailure
    "stopping": 0x800C0000,  # BadShutdown
    "internal": 0x80020000,  # BadInternalError
}


class Signature(msgspec.Struct, frozen=True):
    """`sig` of a signed command: the key id and the hex HMAC-SHA256 of `canonical(cmd)`."""

    kid: str
    hmac: str


class Command(msgspec.Struct, frozen=True):
    """One write request. `ts_ns` is when the sender issued it (its clock), for the staleness check;
    `id` is the sender's id (duplicates from one source are refused); `user` is who asked, as the
    source knows it (authenticated for OPC UA sessions, self-declared in an MQTT payload, where the
    signature proves the whole command came from a key holder). `reply_to` is signed with it."""

    id: str
    source: str  # uplink name, or "cli"
    user: str | None
    tag: str  # device/tag
    value: Value
    ts_ns: int
    reply_to: str | None = None
    sig: Signature | None = None


# Sizes a command's fields may have; a command beyond them is refused as too_large (and audited
# truncated). Text in the audit trail, in answers and in logs is cut to these sizes as well.
MAX_ID, MAX_TAG, MAX_USER, MAX_REPLY_TO, MAX_TEXT_VALUE = 128, 256, 128, 256, 1024
AUDIT_VALUE_CHARS, MAX_REASON, LOG_VALUE_CHARS = 1024, 512, 120
INT64 = 2**63


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def oversized(cmd: Command) -> str | None:
    """Why the command is too large, or None: checked before anything else looks at it."""
    for name, text, limit in (
        ("id", cmd.id, MAX_ID),
        ("tag", cmd.tag, MAX_TAG),
        ("user", cmd.user, MAX_USER),
        ("reply_to", cmd.reply_to, MAX_REPLY_TO),
        ("value", cmd.value if isinstance(cmd.value, str) else None, MAX_TEXT_VALUE),
    ):
        if text is not None and len(text) > limit:
            return f"command too large: {name} has {len(text)} characters (at most {limit})"
    if isinstance(cmd.value, int) and not isinstance(cmd.value, bool) and not -INT64 <= cmd.value < INT64:
        return "command too large: the value does not fit 64 bits"
    return None


def audit_value(value: Value) -> Value:
    """A value as the audit trail and the answers hold it: a long text cut (it was refused anyway)."""
    if isinstance(value, str) and len(value) > AUDIT_VALUE_CHARS:
        return cut(value, AUDIT_VALUE_CHARS)
    return value


def new_id() -> str:
    return uuid.uuid4().hex


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer on the command's reply channel, and what the audit trail records."""

    id: str | None
    tag: str | None
    result: Result
    code: str  # machine-readable reason: a key of STATUS
    reason: str  # for people: why, in words
    old: Value = None  # last known value before the write (None: unknown)
    new: Value = None  # the value asked for
    readback: Value = None  # what the device reads back after the write
    ts_ns: int = 0  # when the outcome was decided
    device_status: int | None = None  # the device's own StatusCode for a refusal, when it gave one

    @property
    def ok(self) -> bool:
        return self.result is Result.ACCEPTED

    @property
    def status(self) -> int:
        """As an OPC UA StatusCode."""
        if self.device_status is not None and self.code == "device_refused":
            return self.device_status
        return STATUS.get(self.code, STATUS["internal"])


def answer(
    cmd: Command,
    result: Result,
    code: str,
    reason: str,
    ts_ns: int,
    *,
    old: Value = None,
    readback: Value = None,
    device_status: int | None = None,
) -> CommandResult:
    """The answer to `cmd`, decided at `ts_ns`, with its texts cut to bounded sizes: the one place
    an answer is made (the gate's, and `edged write`'s own when the daemon does not answer)."""
    return CommandResult(
        id=cut(cmd.id, MAX_ID) or None,
        tag=cut(cmd.tag, MAX_TAG) or None,
        result=result,
        code=code,
        reason=cut(reason, MAX_REASON),
        old=old,
        new=audit_value(cmd.value),
        readback=readback,
        ts_ns=ts_ns,
        device_status=device_status,
    )
