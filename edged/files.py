"""File modes for what edged keeps under its data directory: the buffer (samples, the command audit
trail), status.json and state files are readable by the owner and group `edged` only, whatever the
umask of whoever started the daemon (a container runtime, a shell with umask 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edged.errors import ConfigError

UMASK = 0o027  # files 0640, directories 0750 at most
FILE_MODE = 0o640
PRIVATE_MODE = 0o600  # private keys


def restrict_umask(environ: Mapping[str, str] = os.environ) -> int:
    """Tighten the process umask to at least UMASK and `$EDGED_UMASK` (octal, e.g. 0077 in an image
    that wants it stricter); a stricter umask of the caller stays. Returns the umask now in force."""
    extra = 0
    if text := environ.get("EDGED_UMASK", "").strip():
        try:
            extra = int(text, 8)
        except ValueError:
            extra = -1
        if not 0 <= extra <= 0o777:
            raise ConfigError(f"EDGED_UMASK={text!r} is not an octal umask such as 0027")
    old = os.umask(UMASK)
    new = old | UMASK | extra
    os.umask(new)
    return new


def ensure_mode(path: str | os.PathLike[str], mode: int = FILE_MODE) -> None:
    """Create `path` if it does not exist, and give it exactly `mode` (it may be older and looser)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = FILE_MODE, fsync: bool = False) -> None:
    """Replace `path` with `data` through a temporary file created with `mode` (readers never see
    a half-written file, and never a moment with a looser mode)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # a leftover .tmp from an older version may have a looser mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
