"""The command gate: the one way a setpoint or control write goes from SCADA/cloud down to a device
(docs/commands.md). One concern per module:

- `model`: `Command`, `CommandResult`, `Result`, the codes (`STATUS`) and the size limits;
- `values`: value type checks, `edged write`'s VALUE parsing, the `ts` field;
- `signing`: the canonical bytes a signature covers, the HMAC-SHA256 check;
- `gate`: `CommandGate` (the checks, in their fixed order, documented there), `AuditTrail`, how a
  driver's write exception becomes an outcome;
- `export`: `edged export --audit`;
- `cli`: `edged write`, standalone or through the daemon's inbox.

Every name the sources, the daemon and the CLI use is importable from here.
"""

from edged.commands.cli import describe, write_standalone, write_via_daemon
from edged.commands.export import AuditExport, export_audit
from edged.commands.gate import AuditTrail, CommandGate, DriverLookup, Writer, write_outcome
from edged.commands.model import (
    AUDIT_VALUE_CHARS,
    INT64,
    LOG_VALUE_CHARS,
    MAX_ID,
    MAX_REASON,
    MAX_REPLY_TO,
    MAX_TAG,
    MAX_TEXT_VALUE,
    MAX_USER,
    STATUS,
    Command,
    CommandResult,
    Result,
    Signature,
    answer,
    audit_value,
    cut,
    new_id,
    oversized,
)
from edged.commands.signing import canonical, sign, signature_problem
from edged.commands.values import Kind, is_number, parse_value, same_value, timestamp_ns, type_problem
from edged.errors import ReadbackMismatch  # where the gate's users have always found it

__all__ = [
    "AUDIT_VALUE_CHARS",
    "INT64",
    "LOG_VALUE_CHARS",
    "MAX_ID",
    "MAX_REASON",
    "MAX_REPLY_TO",
    "MAX_TAG",
    "MAX_TEXT_VALUE",
    "MAX_USER",
    "STATUS",
    "AuditExport",
    "AuditTrail",
    "Command",
    "CommandGate",
    "CommandResult",
    "DriverLookup",
    "Kind",
    "ReadbackMismatch",
    "Result",
    "Signature",
    "Writer",
    "answer",
    "audit_value",
    "canonical",
    "cut",
    "describe",
    "export_audit",
    "is_number",
    "new_id",
    "oversized",
    "parse_value",
    "same_value",
    "sign",
    "signature_problem",
    "timestamp_ns",
    "type_problem",
    "write_outcome",
    "write_standalone",
    "write_via_daemon",
]
