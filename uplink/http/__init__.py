"""HTTP uplink (httpx): each batch is one JSON POST, acknowledged by a 2xx answer.

Every batch carries an `Idempotency-Key` made of (gateway, lo_seq, hi_seq), so the receiver can
drop a batch it already stored when an answer was lost on the way back. To keep that key valid,
a failed POST is retried *in place* (same body, same key) for up to `retry_for`; only then is the
batch handed back to the Sender, which re-sends it with the same bounds after a reconnect.
Exceptions from httpx and the HTTP status codes are mapped to Transient/Permanent/Partial in
`edged.protocols.http.classify` and `_status_error` and nowhere else. Body and statuses: README.md.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import httpx
import msgspec

import edged
from edged.alarms.config import is_alarm_path
from edged.alarms.model import event_dict
from edged.config import Duration, Secret
from edged.errors import EdgedError, Partial, Permanent, RetryAfter, Transient
from edged.model import Batch, Gap, Sample, Value, severity
from edged.plugin import Backoff, PluginContext, UplinkSpec
from edged.protocols.http import classify
from edged.protocols.payload import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    Compression,
    Encoding,
    check_compression,
    columns,
    compressor,
)
from edged.tls import TlsUplink, client_context

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_RESERVED = {"authorization", "content-type", "content-encoding", "content-length", "idempotency-key", "host"}
# Statuses that say the endpoint or our credentials are wrong, not this batch: every batch would
# get the same answer, so skipping would throw the whole stream away. Kept and retried instead.
_ENDPOINT_STATUSES = {401, 403, 404, 405, 407, 410, 421, 426}
_RETRY_STATUSES = {408, 425, 429}  # plus every 5xx
_BODY_SHOWN = 1000  # characters of an error body put into logs and exceptions
_DELAY_SECONDS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "١٢"
_RETRY_AFTER_CAP = 3600.0  # a longer Retry-After (or a date further ahead) is read as an hour


class Config(TlsUplink, kw_only=True):
    url: str  # http(s)://host[:port]/path the batches are POSTed to
    encoding: Encoding = "rows"  # rows (the body in README.md) | columns (compact, docs/payload.md)
    compression: Compression = "none"  # none | gzip | zlib | zstd (pip install 'edged[zstd]')
    bearer_token: Secret | None = None  # Authorization: Bearer <token>
    username: str | None = None  # Authorization: Basic, with password
    password: Secret | None = None
    # ca_file, cert_file, key_file, key_password, tls_insecure_skip_verify: edged.tls.TlsUplink
    proxy: str | None = None  # http://proxy:3128; the environment's *_PROXY variables are ignored
    headers: dict[str, Secret] = {}  # extra headers, e.g. { "X-Api-Key" = { env = "ERP_KEY" } }; never logged
    timeout: Duration = Duration(10.0)  # per attempt: connect, send, and wait for the answer
    retry_for: Duration = Duration(300.0)  # retry one batch in place this long before giving it back
    retry_after_max: Duration = Duration(300.0)  # the longest Retry-After honoured

    def __post_init__(self) -> None:
        super().__post_init__()
        check_compression(self.compression)
        parts = urlsplit(self.url)
        if "@" in parts.netloc:  # checked first: the messages below show the url
            raise ValueError("url must not contain credentials: use username and password, or bearer_token")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} must be http://host/... or https://host/...")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"url {self.url!r} has an invalid port") from None
        if self.bearer_token is not None and (self.username is not None or self.password is not None):
            raise ValueError("use either bearer_token or username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and ":" in self.username:
            raise ValueError("username cannot contain ':' (HTTP Basic authentication)")
        self.check_tls(enabled=parts.scheme == "https", otherwise="url is not https://")
        if self.proxy is not None and urlsplit(self.proxy).scheme not in ("http", "https", "socks5"):
            raise ValueError(f"proxy {self.proxy!r} must be http://, https:// or socks5:// host:port")
        for name, value in self.headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"headers: {name!r} is set by the uplink itself")
            if "\r" in value.reveal() or "\n" in value.reveal():
                raise ValueError(f"headers: the value of {name!r} contains a line break")
        if not 0 < self.timeout <= 600:
            raise ValueError("timeout must be between 0 and 10m")
        if self.retry_for < 0 or self.retry_after_max < 0:
            raise ValueError("retry_for and retry_after_max cannot be negative")

    def peer_address(self) -> tuple[str, int] | None:
        if self.proxy is not None:  # the peer is behind the proxy: a probe of either proves little
            return None
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return host, parts.port or (443 if parts.scheme == "https" else 80)


# ----------------------------------------------------------------------------------------- wire format


class WireSample(msgspec.Struct):
    tag: str
    ts: datetime  # RFC 3339, UTC, microseconds: for people and ERP date columns
    ts_ns: int  # the exact source timestamp
    value: Value  # non-finite floats are encoded as null
    status: int  # OPC UA StatusCode
    quality: Literal["Good", "Uncertain", "Bad"]
    score: int
    unit: str | None
    seq: int | None


class WireGap(msgspec.Struct):
    lo_seq: int
    hi_seq: int
    lo_ts: datetime
    hi_ts: datetime
    lo_ts_ns: int
    hi_ts_ns: int
    count: int


class WireBatch(msgspec.Struct, omit_defaults=True):  # `alarms` only when there are some
    version: int
    gateway: str
    lo_seq: int
    hi_seq: int
    historical: bool
    samples: list[WireSample]
    gaps: list[WireGap]
    alarms: list[dict[str, Any]] = []  # alarm events (edged.alarms, README "Alarm events")


class _Ack(msgspec.Struct):
    """An optional per-item answer in a 2xx body: indices into `samples` the receiver refused."""

    rejected: list[int] = []
    message: str = ""


def _ts(ts_ns: int) -> datetime:
    """RFC 3339 for people; a time outside years 1..9999 (a device's broken clock) is clamped, and
    `ts_ns` beside it stays exact. Never an exception: one bad sample must not block a batch."""
    try:
        return _EPOCH + timedelta(microseconds=ts_ns // 1000)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if ts_ns > 0 else datetime.min.replace(tzinfo=UTC)


def _wire_sample(s: Sample) -> WireSample:
    q = severity(s.status).name.capitalize()
    return WireSample(s.tag, _ts(s.ts_ns), s.ts_ns, s.value, s.status, q, s.score, s.unit, s.seq)  # type: ignore[arg-type]


def _wire_gap(g: Gap) -> WireGap:
    return WireGap(g.lo_seq, g.hi_seq, _ts(g.lo_ts_ns), _ts(g.hi_ts_ns), g.lo_ts_ns, g.hi_ts_ns, g.count)


def _split_alarms(batch: Batch) -> tuple[Batch, list[dict[str, Any]]]:
    """The batch without its alarm events, and the events as the body's `alarms` records."""
    if not any(is_alarm_path(s.tag) for s in batch.samples):
        return batch, []
    alarms = [event_dict(s, historical=batch.historical) for s in batch.samples if is_alarm_path(s.tag)]
    data = msgspec.structs.replace(batch, samples=[s for s in batch.samples if not is_alarm_path(s.tag)])
    return data, alarms


def idempotency_key(batch: Batch) -> str:
    """`<gateway>-<lo>-<hi>`; a gaps-only batch is `<gateway>-gaps-<lo>-<hi>` so it never collides."""
    kind = "gaps-" if batch.gaps and not batch.samples else ""
    return f"{batch.gateway}-{kind}{batch.lo_seq}-{batch.hi_seq}"


# ----------------------------------------------------------------------------------------- errors


def _body_excerpt(resp: httpx.Response) -> str:
    """The start of the body for a log line. Not `resp.text`: the server names the charset, and one
    that is no text codec (rot13, base64) or that refuses "replace" (idna) makes httpx raise, which
    would turn a 503 into a plugin crash. Those fall back to UTF-8."""
    raw = resp.content[: 8 * _BODY_SHOWN]
    try:
        text = raw.decode(resp.charset_encoding or "utf-8", "replace")
    except (LookupError, UnicodeError):
        text = raw.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:_BODY_SHOWN] + ("..." if len(text) > _BODY_SHOWN else "")


def _retry_after(resp: httpx.Response, now: float) -> float | None:
    """Seconds from a Retry-After header, RFC 9110: delay-seconds (ASCII digits) or an HTTP-date,
    at most `_RETRY_AFTER_CAP`. None when absent or anything else: the normal backoff applies then,
    since a garbled header must neither crash the send nor make us wait for a made-up time."""
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip(" \t")
    if _DELAY_SECONDS.fullmatch(raw):
        return _RETRY_AFTER_CAP if len(raw) > 5 else min(float(raw), _RETRY_AFTER_CAP)
    if not raw.isascii() or not 0 < len(raw) <= 64:
        return None
    try:
        when = parsedate_to_datetime(raw)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ahead = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, ahead), _RETRY_AFTER_CAP)


def _status_error(resp: httpx.Response, url: str) -> EdgedError:
    """A non-2xx answer as Transient (retry: busy, down, or misconfigured endpoint) or Permanent (this batch)."""
    code = resp.status_code
    what = f"HTTP {code} {resp.reason_phrase} from {url}"
    body = _body_excerpt(resp)
    detail = f"{what}: {body}" if body else what
    if code >= 500 or code in _RETRY_STATUSES:
        return Transient(detail)
    if 300 <= code < 400:
        where = resp.headers.get("location", "?")
        return Transient(f"{what}: the endpoint redirects to {where}; set url to the final address")
    if code in _ENDPOINT_STATUSES:
        return Transient(f"{detail} (the endpoint or the credentials are wrong; data is kept)")
    if code == 413:
        return Permanent(f"{detail} (batch too large: lower batch_size)")
    return Permanent(detail)


# ----------------------------------------------------------------------------------------- uplink


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self._client: httpx.AsyncClient | None = None
        self._enc = msgspec.json.Encoder()
        self._compress = compressor(config.compression)
        self._ack = msgspec.json.Decoder(_Ack)
        self._headers = self._static_headers()
        self.attempts = 0  # POSTs made by this instance, retries included
        self.retries = 0
        self.payload_bytes = 0  # bodies of the batches sent (once each): the Sender sizes batches by it

    def _static_headers(self) -> dict[str, str]:
        c = self.config
        h = {"User-Agent": f"edged/{edged.__version__}", "Content-Type": CONTENT_TYPE[c.encoding]}
        h.update((k, v.reveal()) for k, v in c.headers.items())
        if (coding := CONTENT_ENCODING[c.compression]) is not None:
            h["Content-Encoding"] = coding
        if c.bearer_token is not None:
            h["Authorization"] = f"Bearer {c.bearer_token.reveal()}"
        elif c.username is not None and c.password is not None:
            pair = f"{c.username}:{c.password.reveal()}".encode()
            h["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return h

    def _tls(self) -> ssl.SSLContext | bool:
        return client_context(self.config, self.log) if self.config.url.startswith("https:") else True

    async def __aenter__(self) -> Self:
        c = self.config
        host = urlsplit(c.url).hostname or ""
        if "Authorization" in self._headers and c.url.startswith("http:") and not _loopback(host):
            self.log.warning("uplink %s: credentials are sent over plain http to %s; use https", c.name, host)
        t = float(c.timeout)
        self._client = httpx.AsyncClient(
            verify=self._tls(),
            timeout=httpx.Timeout(t),
            trust_env=False,  # the same behaviour under systemd and in a shell
            proxy=c.proxy,
            follow_redirects=False,  # a POST must not silently land somewhere else
            headers=self._headers,
            # one connection per batch in flight (the Sender's window): requests overlap
            limits=httpx.Limits(max_connections=c.max_inflight, max_keepalive_connections=c.max_inflight),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def encode(self, batch: Batch) -> bytes:
        """The body; deterministic, so a batch retried under its Idempotency-Key is the same bytes."""
        data, alarms = _split_alarms(batch)
        if self.config.encoding == "columns":
            doc_c = columns(data)
            if alarms:
                doc_c["alarms"] = alarms
            return self._compress(self._enc.encode(doc_c))
        doc = WireBatch(
            1, batch.gateway, batch.lo_seq, batch.hi_seq, batch.historical,
            [_wire_sample(s) for s in data.samples], [_wire_gap(g) for g in batch.gaps], alarms,
        )  # fmt: skip
        return self._compress(self._enc.encode(doc))

    def window(self) -> int:
        """Requests at once, each on a connection of its own (httpx pool): a receiver may get batch
        N+1 before batch N; lo_seq/hi_seq and the Idempotency-Key say where each belongs."""
        return self.config.max_inflight

    def counters(self) -> dict[str, float]:
        return {"payload_bytes": self.payload_bytes, "requests": self.attempts, "retries": self.retries}

    async def send(self, batch: Batch) -> None:
        """POST until acknowledged; retry in place (same key) while the failure is worth retrying."""
        client = self._client
        if client is None:
            raise Transient("not connected")
        c = self.config
        body = self.encode(batch)
        self.payload_bytes += len(body)
        headers = {"Idempotency-Key": idempotency_key(batch)}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(c.retry_for)
        backoff = Backoff(initial=0.5, cap=30.0)
        last: str | None = None
        while True:
            self.attempts += 1
            wait: float | None = None
            try:
                resp = await client.post(c.url, content=body, headers=headers)
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                err = classify(exc)
                if isinstance(err, Permanent):
                    raise err from exc
            else:
                if resp.is_success:
                    self._check_partial(resp, batch)
                    return
                err = _status_error(resp, c.url)
                if isinstance(err, Permanent):  # the Sender logs it (once) and counts or halts
                    raise Permanent(f"batch {headers['Idempotency-Key']} refused: {err}")
                wait = _retry_after(resp, time.time())
            if str(err) != last:
                self.log.warning("uplink %s: %s; retrying", c.name, err)
                last = str(err)
            if wait is not None:  # the server said when: never earlier, up to retry_after_max
                wait = min(wait, float(c.retry_after_max))
                if loop.time() + wait > deadline:
                    # past retry_for: the Sender waits it out (RetryAfter.delay), then resends this window
                    raise RetryAfter(f"{err} (Retry-After: {wait:g} s)", wait)
                await asyncio.sleep(wait)
            else:
                delay = backoff.next_delay()
                if loop.time() + delay > deadline:
                    raise err
                await asyncio.sleep(delay)
            self.retries += 1

    def _check_partial(self, resp: httpx.Response, batch: Batch) -> None:
        """A 2xx may list refused samples (README); anything else in the body is ignored."""
        if not resp.content or "json" not in resp.headers.get("content-type", ""):
            return
        try:
            ack = self._ack.decode(resp.content)
        except msgspec.DecodeError:
            return  # a body that is not our optional schema is just an acknowledgement
        n = len(batch.samples)
        # indices into the body's `samples`, which leaves the alarm events out: map them back
        where = [i for i, s in enumerate(batch.samples) if not is_alarm_path(s.tag)]
        refused = {where[i] for i in ack.rejected if 0 <= i < len(where)}
        if refused:
            rejected = sorted(refused)
            accepted = [i for i in range(n) if i not in refused]
            msg = ack.message or f"the endpoint refused {len(rejected)} of {n} samples"
            raise Partial(msg, accepted, rejected)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
