"""Logins for the web UI: scrypt password hashes, in-memory sessions with their CSRF token, and a
throttle on failed logins. No state outside the UI server object (nothing global); a restart logs
everyone out, which is the safe side for a plant gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from edged.config import SCRYPT_HASH_RE, UiUser

# scrypt cost: N=2**15, r=8, p=1 takes ~50-100 ms and 32 MiB: slow enough against guessing, once per login
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 256 * 1024**2


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): what `[ui.users.NAME] password_hash` holds."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    m = SCRYPT_HASH_RE.match(stored)
    if m is None:
        return False
    n, r, p = (int(x) for x in m.groups())
    salt_b64, hash_b64 = stored.split("$")[4:6]
    want = base64.b64decode(hash_b64)
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=n, r=r, p=p, maxmem=_MAXMEM,
                         dklen=len(want))  # fmt: skip
    return hmac.compare_digest(got, want)


@dataclass(slots=True)
class Session:
    user: str
    role: str
    csrf: str
    expires: float


@dataclass(slots=True)
class Sessions:
    """Session id -> Session; the id is the cookie's value (HttpOnly, SameSite=Strict)."""

    ttl_s: float
    max_sessions: int = 256
    _by_id: dict[str, Session] = field(default_factory=dict)

    def create(self, user: str, role: str) -> tuple[str, Session]:
        now = time.monotonic()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        while len(self._by_id) >= self.max_sessions:  # oldest first
            self._by_id.pop(next(iter(self._by_id)))
        sid = secrets.token_urlsafe(32)
        session = Session(user, role, secrets.token_urlsafe(32), now + self.ttl_s)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None or s.expires <= time.monotonic():
            self._by_id.pop(sid, None)
            return None
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


@dataclass(slots=True)
class Throttle:
    """Failed logins per user name and per client address: after `free` failures within `window_s`,
    each further attempt waits out a lock that doubles (capped), whatever the password."""

    free: int = 5
    window_s: float = 300.0
    cap_s: float = 300.0
    _fails: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # key -> (count, first, locked_until)

    def wait_s(self, *keys: str) -> float:
        now = time.monotonic()
        return max((self._fails.get(k, (0, 0.0, 0.0))[2] - now for k in keys), default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        if len(self._fails) > 10_000:  # bounded memory under a spray of names
            self._fails = {k: v for k, v in self._fails.items() if now - v[1] < self.window_s}
        for k in keys:
            count, first, _ = self._fails.get(k, (0, now, 0.0))
            if now - first > self.window_s:
                count, first = 0, now
            count += 1
            lock = 0.0 if count <= self.free else min(self.cap_s, 2.0 ** (count - self.free))
            self._fails[k] = (count, first, now + lock)

    def succeeded(self, *keys: str) -> None:
        for k in keys:
            self._fails.pop(k, None)


def check_login(users: dict[str, UiUser], user: str, password: str) -> UiUser | None:
    """The user when the password matches; the same scrypt work when the user is unknown (no timing oracle)."""
    entry = users.get(user)
    if entry is None:
        verify_password(password, _DUMMY)
        return None
    return entry if verify_password(password, entry.password_hash.reveal()) else None


_DUMMY = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
