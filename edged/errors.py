"""The small error tree every plugin maps its library's exceptions into.

Supervisors only need to know whether to retry (Transient), to give up on this input
(Permanent), or that part of a batch was accepted (Partial).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edged.model import Value


class EdgedError(Exception):
    """Base of every error edged raises on purpose."""


class ConfigError(EdgedError):
    """A configuration problem, phrased as `file: key.path: reason`."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None) -> None:
        self.file = file
        self.path = path
        self.reason = message
        parts = [p for p in (file, path) if p]
        super().__init__(": ".join([*parts, message]))


class Transient(EdgedError):
    """Worth retrying: the peer is down, slow or busy. Nothing was accepted."""


class RetryAfter(Transient):
    """The peer asked us to come back later (HTTP 429/503 Retry-After, a broker's quota)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(EdgedError):
    """Retrying the same thing will fail again: bad credentials, rejected payload, missing node."""


class ReadbackMismatch(Permanent):
    """A driver wrote the value but the device reads back something else (clamped, refused silently)."""

    def __init__(self, message: str, readback: Value = None) -> None:
        super().__init__(message)
        self.readback = readback


class Partial(EdgedError):
    """The peer accepted some items and rejected others (indices into the sent sequence)."""

    def __init__(self, message: str, accepted: Sequence[int], rejected: Sequence[int]) -> None:
        super().__init__(message)
        self.accepted = list(accepted)
        self.rejected = list(rejected)


class StorageError(EdgedError):
    """The buffer database cannot be used (corrupt, foreign, or unwritable)."""


class BufferUnavailable(StorageError):
    """The buffer is fine but cannot be used right now (locked by another process, an I/O or
    permission error, a full disk): wait, then exit 1 so systemd retries. Never set aside."""


class BufferRefused(StorageError):
    """The buffer is edged's but this edged must not touch it (written by a newer version): exit 1,
    the file stays as it is."""


class BufferUnusable(StorageError):
    """The file is no edged buffer this edged can read (not SQLite, corrupt, foreign, misshapen
    schema): it is set aside, never deleted, and what is readable is salvaged into a fresh one."""
