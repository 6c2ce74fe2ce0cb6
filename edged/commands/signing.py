"""Signed commands: the canonical bytes a signature covers and the HMAC-SHA256 check against a
source's keys ([commands.sources.<name>], docs/commands.md)."""

from __future__ import annotations

import hashlib
import hmac
import json

from edged.commands.model import Command, Signature, cut
from edged.config import CommandSource
from edged.model import Value


def canonical(
    cmd_id: str, tag: str, value: Value, ts_ns: int, user: str | None = None, reply_to: str | None = None
) -> bytes:
    """The bytes a signature covers: the UTF-8 of this JSON object, keys in this order, no spaces,
    non-ASCII as is, `ts` in integer nanoseconds (unix ms x 1000000), absent `user`/`reply_to` as
    null. This is what Python's `json.dumps(doc, separators=(",", ":"), ensure_ascii=False)` and
    JavaScript's `JSON.stringify(doc)` produce (docs/commands.md)."""
    doc = {"id": cmd_id, "tag": tag, "value": value, "ts": ts_ns, "user": user, "reply_to": reply_to}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _mac(key: bytes, cmd: Command) -> hmac.HMAC:
    """HMAC-SHA256 of `canonical(cmd)`; raises ValueError/TypeError for a value JSON cannot hold."""
    return hmac.new(key, canonical(cmd.id, cmd.tag, cmd.value, cmd.ts_ns, cmd.user, cmd.reply_to), hashlib.sha256)


def sign(key: bytes, kid: str, cmd: Command) -> Signature:
    """The signature a sender holding `key` puts on `cmd` (for tests and Python senders)."""
    return Signature(kid, _mac(key, cmd).hexdigest())


def signature_problem(cmd: Command, rule: CommandSource) -> tuple[str, str] | None:
    """(code, reason) when `cmd` does not meet its source's signing rule, else None."""
    if cmd.sig is None:
        if rule.require_signature:
            return "unsigned", f"unsigned command: source {cmd.source} requires a signature (sig)"
        return None
    if not rule.keys:
        return None  # broker ACLs only: there is nothing to check a signature against
    key = rule.keys.get(cmd.sig.kid)
    if key is None:
        return "bad_signature", f"unknown key id {cut(cmd.sig.kid, 64)!r} for source {cmd.source}"
    secret = key.reveal().encode()
    try:
        given = bytes.fromhex(cmd.sig.hmac)
        mac = _mac(secret, cmd)
    except (ValueError, TypeError):
        return "bad_signature", "bad signature: hmac is not a hex HMAC-SHA256 of the command"
    expected = mac.digest()
    if not hmac.compare_digest(expected, given):
        return "bad_signature", f"bad signature (key {cmd.sig.kid}): the command was altered or signed otherwise"
    return None
