"""The NATS connection (nats-py), the stream check at connect, and the one mapping of nats-py's and
JetStream's errors into Transient and Permanent.

nats-py's own reconnecting is off: a lost connection closes the client, every PubAck still owed
fails as Transient at once, and the Sender reconnects with its backoff (trying every server listed
and discovered), then re-sends what was in flight with the same Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

from edged.aio import honour_cancel
from edged.errors import EdgedError, Permanent, Transient
from edged.tls import client_context

from .config import Config, subject_matches

# JetStream API error codes (nats-server errors.json) that mean "this account has no JetStream".
_NO_JETSTREAM = {10039, 10076}
_NOT_FOUND = 10059  # stream not found


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """The stream's answer to one publish: stored at `seq`, `duplicate` when the id was seen already."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


def auth_failed(exc: BaseException | None) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def _cert_rejected(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def connect_error(exc: BaseException, servers: list[str], errors: list[BaseException]) -> EdgedError:
    """A failed connect: Permanent when retrying cannot fix it (refused credentials, a rejected
    certificate, TLS required on one side only), else Transient. `errors` are the ones nats-py
    reported per server before giving up (NoServersError alone says nothing)."""
    where = ", ".join(servers)
    for e in [exc, *errors]:
        if auth_failed(e):
            return Permanent(f"NATS {where} refused the credentials (authorization violation)")
        if _cert_rejected(e):
            return Permanent(f"NATS {where}: TLS certificate rejected: {e}")
        if isinstance(e, nats.errors.SecureConnRequiredError | nats.errors.SecureConnWantedError):
            return Permanent(f"NATS {where}: TLS is required on one side only: set tls to match the server ({e})")
    last = errors[-1] if errors else exc
    # without the server's address or errno text, so the same outage logs once (the Sender logs changes)
    detail = last.strerror if isinstance(last, OSError) and last.strerror else str(last)
    return Transient(f"cannot connect to NATS {where}: {type(last).__name__}: {detail}")


def api_error(exc: BaseException, stream: str) -> EdgedError:
    """A failed JetStream API call at connect (stream info / create)."""
    if isinstance(exc, nats.js.errors.APIError):
        if exc.err_code in _NO_JETSTREAM:
            return Permanent(f"JetStream is not enabled for this account: {exc.description}")
        if exc.code in (500, 503) or exc.code is None:
            return Transient(f"JetStream unavailable (stream {stream}): {exc.description}")
        return Permanent(f"JetStream refused (stream {stream}): {exc.description} (err_code {exc.err_code})")
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        return Transient("no JetStream answers on this server (not enabled, or no meta leader yet)")
    return Transient(f"JetStream API: {type(exc).__name__}: {exc}")


def puback_error(err: ApiError, stream: str, subject: str) -> EdgedError:
    """A PubAck carrying an error: the server's 5xx (no leader yet, store failed, stream full with
    discard new) are Transient; a 4xx refusal of this message (too large, sealed stream, the subject
    lands in another stream) is Permanent."""
    text = f"stream {stream} refused the batch on {subject}: {err.description}"
    text += f" (code {err.code}, err_code {err.err_code})"
    return Transient(text) if err.code >= 500 or err.code == 0 else Permanent(text)


async def connect(
    c: Config,
    log: logging.Logger,
    *,
    name: str,
    errors: list[BaseException],
    on_error: Callable[[Exception], None],
    on_closed: Callable[[], None],
) -> NATS:
    """A connected nats-py client, its errors routed to `on_error`, its close to `on_closed`."""
    nc = NATS()

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)
        del errors[:-8]
        on_error(exc)

    async def closed_cb() -> None:
        on_closed()

    async def disconnected_cb() -> None:
        on_closed()

    opts: dict[str, Any] = {
        "servers": c.urls(),
        "name": name,
        "allow_reconnect": False,  # the Sender reconnects: it knows what was in flight
        "max_reconnect_attempts": 1,  # per connect: each server is tried twice
        "reconnect_time_wait": 0.2,
        "connect_timeout": max(1, round(float(c.timeout))),
        "error_cb": error_cb,
        "closed_cb": closed_cb,
        "disconnected_cb": disconnected_cb,
        "pending_size": 64 * 1024**2,  # a window of batches is written before the first flush
    }
    if c.uses_tls():
        opts["tls"] = client_context(c, log)
    if c.user is not None:
        opts["user"] = c.user
        opts["password"] = c.password.reveal() if c.password else ""
    elif c.token is not None:
        opts["token"] = c.token.reveal()
    elif c.nkey_seed is not None:
        opts["nkeys_seed_str"] = c.nkey_seed.reveal().strip()
    elif c.creds is not None:
        opts["user_credentials"] = RawCredentials(c.creds.reveal())
    try:
        async with asyncio.timeout(float(c.timeout) * 3):
            await honour_cancel(nc.connect(**opts))
    except (nats.errors.Error, OSError, TimeoutError, ssl.SSLError) as exc:
        await close(nc)
        raise connect_error(exc, c.urls(), errors) from None
    return nc


async def close(nc: NATS) -> None:
    """Close without raising (but cancellation): the connection is gone either way."""
    if nc.is_closed:
        return
    try:
        async with asyncio.timeout(2):
            await honour_cancel(nc.close())
    except (nats.errors.Error, OSError, TimeoutError):
        pass


async def ensure_stream(nc: NATS, c: Config, subjects: list[str], log: logging.Logger) -> StreamInfo:
    """The stream's info, created first when missing and `create_stream`; Permanent when it is missing
    otherwise, or when it does not take all of `subjects` (a publish would find no stream)."""
    js = nc.jetstream(timeout=float(c.timeout))
    try:
        try:
            info = await honour_cancel(js.stream_info(c.stream))
        except nats.js.errors.NotFoundError:
            if not c.create_stream:
                raise Permanent(
                    f"stream {c.stream} does not exist: create it (subjects {', '.join(c.filters())}) or set "
                    "create_stream = true"
                ) from None
            cfg = StreamConfig(
                name=c.stream,
                subjects=c.filters(),
                num_replicas=c.replicas,
                storage=StorageType.FILE if c.storage == "file" else StorageType.MEMORY,
                max_age=float(c.max_age) or None,
                duplicate_window=float(c.duplicate_window),
                discard=DiscardPolicy.OLD,
            )
            info = await honour_cancel(js.add_stream(cfg))
            log.info(
                "uplink %s: created stream %s (subjects %s, replicas %d)",
                c.name, c.stream, ", ".join(c.filters()), c.replicas, extra={"uplink": c.name},
            )  # fmt: skip
    except EdgedError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise api_error(exc, c.stream) from None
    filters = info.config.subjects or []
    for s in subjects:
        if not any(subject_matches(f, s) for f in filters):
            raise Permanent(
                f"stream {c.stream} does not take subject {s} (its subjects: {', '.join(filters) or 'none'}): "
                "add it to the stream or change subject"
            )
    return info
