"""The nats uplink's keys: the servers, the authentication (each a Secret), the subject template and
the stream it must land in, and what a stream edged creates looks like."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from edged.config import Duration, Secret
from edged.protocols.payload import Compression, Encoding, check_compression
from edged.tls import TlsUplink

KINDS = ("live", "historical", "gap")
_STREAM_RE = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")  # no '.', '*', '>' or spaces (a JetStream stream name)
_TOKEN_RE = re.compile(r"^[^\s.*>]+$")  # one subject token


def subject_token(text: str) -> str:
    """A value as one subject token: '.' (a gateway id may have them) would split it, so it becomes '_'."""
    return text.replace(".", "_")


def check_subject(subject: str, *, wildcards: bool = False) -> None:
    """ValueError unless `subject` is a NATS subject: dot-separated non-empty tokens, no spaces, and
    no wildcards unless `wildcards` (`*` a whole token, `>` the whole last one)."""
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if wildcards and (tok == "*" or (tok == ">" and i == len(tokens) - 1)):
            continue
        if not _TOKEN_RE.match(tok):
            what = "a wildcard" if tok in ("*", ">") or "*" in tok or ">" in tok else "an empty token or a space"
            raise ValueError(f"subject {subject!r} has {what} (token {i + 1})")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject filter (`*` one token, `>` the rest) covers a literal subject."""
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


class Config(TlsUplink):
    # ca_file, cert_file, key_file, key_password, tls_insecure_skip_verify: edged.tls.TlsUplink
    # any node(s) of the cluster, nats:// or tls://; the others are discovered from the first one reached
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    tls: bool = False  # also on when a server URL is tls://
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    nkey_seed: Secret | None = None  # a user NKey seed (SU...), as `nk -gen user` or nsc print it
    creds: Secret | None = None  # the text of a .creds file (user JWT + seed): { file = "gw.creds" }
    subject: str = "edged.{gateway}.{kind}"  # {gateway}, {uplink}, {kind} = live | historical | gap
    stream: str = "EDGED"  # the stream the subjects must land in (Nats-Expected-Stream)
    encoding: Encoding = "rows"
    compression: Compression = "none"
    timeout: Duration = Duration(10.0)  # connect, JetStream API and PubAck wait
    # create_stream: edged creates the stream when it is missing, with these (an existing one is used as it is)
    create_stream: bool = False
    stream_subjects: list[str] = []  # default: the subject template with every placeholder a '*'
    replicas: int = 1  # 1..5; 3 on a three-node cluster survives the loss of any one node
    storage: Literal["file", "memory"] = "file"
    max_age: Duration = Duration(0.0)  # 0: kept until other limits remove it
    duplicate_window: Duration = Duration(3600.0)  # at least the longest outage to ride out (README)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.servers:
            raise ValueError("servers must list at least one nats://host:port")
        for url in self.servers:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError(f"server {url!r}: expected nats://host:port or tls://host:port")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"server {url!r}: port out of range") from None
            if port == 0:
                raise ValueError(f"server {url!r}: port out of range")
            if parts.username or parts.password:
                raise ValueError(f"server {url!r}: put credentials in user/password or token, not in the URL")
        self.check_tls(enabled=self.uses_tls(), otherwise="tls = false and no server is tls://")
        if self.password is not None and self.user is None:
            raise ValueError("password needs a user")
        methods = [k for k in ("user", "token", "nkey_seed", "creds") if getattr(self, k) is not None]
        if len(methods) > 1:
            raise ValueError(f"{' and '.join(methods)} set: choose one way to authenticate")
        if self.nkey_seed is not None and not self.nkey_seed.reveal().strip().startswith("SU"):
            raise ValueError("nkey_seed is not a user NKey seed (it starts with SU)")
        if self.creds is not None:
            text = self.creds.reveal()
            if "BEGIN NATS USER JWT" not in text or "BEGIN USER NKEY SEED" not in text:
                raise ValueError("creds is not a .creds file (it needs the user JWT and the user NKey seed)")
        check_compression(self.compression)
        try:
            subjects = [self.subject.format(gateway="g", uplink="u", kind=k) for k in KINDS]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"subject template {self.subject!r}: unknown placeholder {exc}") from None
        for s in subjects:
            check_subject(s)
        if "{kind}" not in self.subject:
            raise ValueError("subject needs {kind}: live, historical and gap batches go to subjects of their own")
        if not _STREAM_RE.match(self.stream):
            raise ValueError(f"stream {self.stream!r}: letters, digits, _ and - only")
        for s in self.stream_subjects:
            check_subject(s, wildcards=True)
        if self.create_stream and not self.stream_subjects:
            try:
                check_subject(self.filters()[0], wildcards=True)
            except ValueError:
                raise ValueError(
                    f"create_stream: the subject template {self.subject!r} gives no stream subject by making each "
                    "placeholder a '*' (a placeholder shares a token with text): set stream_subjects"
                ) from None
        if not 1 <= self.replicas <= 5:
            raise ValueError("replicas must be between 1 and 5")
        if not 0.5 <= self.timeout <= 300:
            raise ValueError("timeout must be between 500ms and 5m")
        if self.max_age < 0:
            raise ValueError("max_age must not be negative")
        if not 1.0 <= self.duplicate_window <= 7 * 86400:
            raise ValueError("duplicate_window must be between 1s and 7d")
        if self.max_age and self.duplicate_window > self.max_age:
            raise ValueError("duplicate_window must not be longer than max_age (the server refuses such a stream)")

    def uses_tls(self) -> bool:
        return self.tls or any(u.startswith("tls://") for u in self.servers)

    def urls(self) -> list[str]:
        return [u if "://" in u else f"nats://{u}" for u in self.servers]

    def subjects(self, gateway: str) -> dict[str, str]:
        """kind -> the subject batches of that kind go to."""
        gw, up = subject_token(gateway), subject_token(self.name)
        return {k: self.subject.format(gateway=gw, uplink=up, kind=k) for k in KINDS}

    def filters(self) -> list[str]:
        """The subjects of a stream edged creates: `stream_subjects`, else the template with every
        placeholder a wildcard token (edged.{gateway}.{kind} -> edged.*.*: every gateway's)."""
        if self.stream_subjects:
            return list(self.stream_subjects)
        return [self.subject.format(gateway="*", uplink="*", kind="*")]

    def peer_address(self) -> tuple[str, int] | None:
        """The first server: probed while the cluster is down, so the reconnect comes soon after."""
        parts = urlsplit(self.urls()[0])
        return parts.hostname or "127.0.0.1", parts.port or 4222
