"""What the httpx-based uplinks (http, influxdb) share: the one mapping of httpx/ssl exceptions
into Transient and Permanent, as httpx itself maps httpcore's (`map_httpcore_exceptions`)."""

from __future__ import annotations

import ssl

import httpx

from edged.errors import EdgedError, Permanent, Transient


def classify(exc: Exception) -> EdgedError:
    """An httpx/ssl exception as Transient (worth another attempt) or Permanent (never will be).

    TLS failures are Transient on purpose: the batch is not at fault, and a Permanent here would make
    the Sender skip it. They keep failing (and are logged) until the certificate or config is fixed.
    """
    tls = ssl_cause(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return Transient(f"TLS certificate verification failed: {tls.verify_message or tls} (check ca_file)")
    if tls is not None:
        return Transient(f"TLS handshake failed: {tls}")
    if isinstance(exc, httpx.TimeoutException):
        return Transient(f"{type(exc).__name__}: no answer within the timeout")
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol | httpx.InvalidURL):
        return Permanent(f"cannot build the request: {exc}")
    if isinstance(exc, httpx.HTTPError | OSError):
        return Transient(f"{type(exc).__name__}: {exc or 'connection failed'}")
    return Permanent(f"{type(exc).__name__}: {exc}")


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind an httpx one (httpx wraps httpcore wraps ssl; the chain is short)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
