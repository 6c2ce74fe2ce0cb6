"""The one place asyncua and socket exceptions become edged's errors (Transient/Permanent), for the
OPC UA driver and the OPC UA server uplink alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from asyncua.common.utils import ServiceError
from asyncua.ua.status_codes import get_name_and_doc
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edged.errors import Permanent, Transient

# Retrying these cannot help until someone changes a password, a certificate or the config.
_PERMANENT_STATUS: Final = frozenset(
    {
        "BadIdentityTokenRejected",
        "BadIdentityTokenInvalid",
        "BadUserAccessDenied",
        "BadUserSignatureInvalid",
        "BadSecurityChecksFailed",
        "BadSecurityPolicyRejected",
        "BadSecurityModeRejected",
        "BadApplicationSignatureInvalid",
        "BadNoValidCertificates",
        "BadTcpEndpointUrlInvalid",
    }
)


def status_text(code: int) -> str:
    """'BadNodeIdUnknown (0x80340000)': the name operators search for, plus the raw code."""
    return f"{get_name_and_doc(code & 0xFFFF0000)[0]} (0x{code:08X})"


def map_error(exc: BaseException, what: str) -> Transient | Permanent:
    """Authentication, security and certificate refusals are Permanent; everything else (timeouts,
    lost connections, a server shutting down or busy) is Transient."""
    code: int | None = None
    if isinstance(exc, UaStatusCodeError | ServiceError):
        code = exc.code
    if code is not None:
        name, doc = get_name_and_doc(code & 0xFFFF0000)
        doc = doc.rstrip(".")
        msg = f"{what}: the server answered {name} ({doc})"
        if name in _PERMANENT_STATUS or name.startswith("BadCertificate"):
            return Permanent(msg)
        return Transient(msg)
    if isinstance(exc, TimeoutError):
        return Transient(f"{what}: timed out")
    if isinstance(exc, OSError):
        return Transient(f"{what}: {exc.strerror or str(exc) or type(exc).__name__}")
    return Transient(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (UaError, ServiceError, OSError, TimeoutError) as exc:
        raise map_error(exc, what) from exc
