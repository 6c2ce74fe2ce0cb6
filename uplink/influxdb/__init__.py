"""InfluxDB uplink (httpx): each batch is one POST of line protocol to the 1.x `/write` API.

A point is identified by measurement, tag set and timestamp, and rewriting one with the same
fields changes nothing: a batch resent after a lost answer, or replayed after an outage, writes
the same points again. So duplicates are harmless by construction and there is no key to keep;
failed writes are still retried in place for `retry_for` (like the http uplink) before the batch
goes back to the Sender.

InfluxDB 1.x writes the good lines of a batch and answers 400 for the rest. Where its message
names the lines (parse errors), those are the rejected ones; where it only says how many it
dropped (a field type conflict, a point outside the retention policy), the batch is narrowed down
by resending parts of it, which only rewrites points already there (`_isolate`). httpx
exceptions and statuses are mapped to edged.errors in `edged.protocols.http.classify`, `_status_error` and `_isolate`
only. Mapping, statuses and limits: README.md.
"""

from __future__ import annotations

import asyncio
import base64
import re
import string
from typing import Literal, Self
from urllib.parse import urlsplit

import httpx
import msgspec

import edged
from edged.config import Duration, Secret
from edged.errors import EdgedError, Partial, Permanent, Transient
from edged.model import Batch
from edged.plugin import Backoff, PluginContext, UplinkSpec
from edged.protocols.http import classify
from edged.protocols.payload import compressor
from edged.tls import TlsUplink, client_context
from uplink.influxdb.lineproto import (
    FIELD_SCORE,
    FIELD_STATUS,
    FIELDS,
    Line,
    LineEncoder,
    Unrepresentable,
    check_key,
    check_measurement,
)

# Statuses that say the endpoint or the credentials are wrong, not this batch (401/403: bad
# credentials or no WRITE privilege, 404: no such database): every batch would get the same
# answer, so skipping would throw the whole stream away. Kept, retried and counted instead.
_ENDPOINT_STATUSES = {401, 403, 404, 405, 407, 410, 421, 426}
_AUTH_STATUSES = {401, 403}
_RETRY_STATUSES = {408, 425, 429}  # plus every 5xx
_BODY_SHOWN = 1000
_RESERVED_TAGS = {"gateway", "device", "time", "_field", "_measurement", *FIELDS}
_DROPPED = re.compile(r"dropped=([0-9]+)\s*$")
_CONFLICT = re.compile(r'field type conflict: input field "(.*?)" on measurement "(.*?)" is type (\w+)')


class Config(TlsUplink, kw_only=True):
    url: str = "http://127.0.0.1:8086"  # the server; /write is appended (a path prefix is kept)
    database: str  # the database written to (it must exist: CREATE DATABASE)
    retention_policy: str | None = None  # default: the database's default retention policy
    username: str | None = None  # HTTP Basic authentication, with password
    password: Secret | None = None
    measurement: str = "{device}"  # per point; {device} and {gateway} are replaced
    tag_key: str = "tag"  # the tag key that holds the tag's name (InfluxQL: quote it, "tag")
    extra_tags: dict[str, str] = {}  # fixed tags on every point, e.g. { site = "plant1" }
    integers: Literal["float", "integer"] = "float"  # how integer values are written (README)
    gaps_measurement: str = "edged_gaps"  # where gap records go; {gateway} is replaced
    compression: Literal["none", "gzip"] = "gzip"
    # ca_file, cert_file, key_file, key_password, tls_insecure_skip_verify: edged.tls.TlsUplink
    proxy: str | None = None  # http://proxy:3128; the environment's *_PROXY variables are ignored
    timeout: Duration = Duration(10.0)  # per attempt
    retry_for: Duration = Duration(300.0)  # retry one batch in place this long before giving it back

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = urlsplit(self.url)
        if "@" in parts.netloc:
            raise ValueError("url must not contain credentials: use username and password")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} must be http://host:8086 or https://host:8086")
        if parts.query or parts.fragment:
            raise ValueError(f"url {self.url!r}: no query or fragment (database and retention_policy are keys)")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"url {self.url!r} has an invalid port") from None
        if not self.database or len(self.database) > 255:
            raise ValueError("database must be a name of 1 to 255 characters")
        if self.retention_policy == "":
            raise ValueError("retention_policy cannot be empty: leave it out for the database's default")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and ":" in self.username:
            raise ValueError("username cannot contain ':' (HTTP Basic authentication)")
        self.check_tls(enabled=parts.scheme == "https", otherwise="url is not https://")
        if self.proxy is not None and urlsplit(self.proxy).scheme not in ("http", "https", "socks5"):
            raise ValueError(f"proxy {self.proxy!r} must be http://, https:// or socks5:// host:port")
        _check_template("measurement", self.measurement, {"device", "gateway"})
        _check_template("gaps_measurement", self.gaps_measurement, {"gateway"})
        for what, name in (("tag_key", self.tag_key), *((f"extra_tags: key {k!r}", k) for k in self.extra_tags)):
            try:
                check_key(name)
            except Unrepresentable as exc:
                raise ValueError(f"{what}: {exc}") from None
            if name in _RESERVED_TAGS:
                raise ValueError(f"{what}: {name!r} is a tag or field the uplink writes itself, or reserved")
        if self.tag_key in self.extra_tags:
            raise ValueError(f"extra_tags: {self.tag_key!r} is the tag_key")
        for k, v in self.extra_tags.items():
            try:
                check_key(v, "value")
            except Unrepresentable as exc:
                raise ValueError(f"extra_tags: {k!r}: {exc}") from None
        if not 0 < self.timeout <= 600:
            raise ValueError("timeout must be between 0 and 10m")
        if self.retry_for < 0:
            raise ValueError("retry_for cannot be negative")

    def peer_address(self) -> tuple[str, int] | None:
        if self.proxy is not None:
            return None
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    def write_url(self) -> str:
        return self.url.rstrip("/") + "/write"


def _check_template(key: str, template: str, allowed: set[str]) -> None:
    """Only `{name}` placeholders from `allowed`; the fixed text must make a writable measurement."""
    try:
        names = {f for _, f, spec, conv in string.Formatter().parse(template) if f is not None or spec or conv}
    except ValueError as exc:
        raise ValueError(f"{key}: {exc} (write {{{{ and }}}} for braces)") from None
    bad = names - allowed
    if bad:
        raise ValueError(f"{key}: unknown placeholder {{{sorted(b or '' for b in bad)[0]}}}: use {sorted(allowed)}")
    sample = template.replace("{device}", "d").replace("{gateway}", "g")
    try:
        check_measurement(sample)
    except Unrepresentable as exc:
        raise ValueError(f"{key}: {exc}") from None


# ----------------------------------------------------------------------------------------- errors


class _ErrorBody(msgspec.Struct):
    error: str = ""


_ERROR = msgspec.json.Decoder(_ErrorBody)


def error_text(resp: httpx.Response) -> tuple[str, bool]:
    """InfluxDB's `{"error": "..."}` message, and whether the body was one (a proxy's 400 is not).
    Decoded by hand as UTF-8: a server-named charset must never make this raise."""
    raw = resp.content[: 1 << 20]
    try:
        msg = _ERROR.decode(raw).error
        if msg:
            return msg, True
    except msgspec.DecodeError:
        pass
    text = " ".join(raw[: 8 * _BODY_SHOWN].decode("utf-8", "replace").split())
    return text[:_BODY_SHOWN], False


def _short(msg: str) -> str:
    return msg if len(msg) <= _BODY_SHOWN else msg[:_BODY_SHOWN] + "..."


def _status_error(resp: httpx.Response, url: str) -> EdgedError:
    """A non-2xx answer other than 400/413 (those go to `_isolate`): Transient when the server is
    busy or down, or the endpoint/credentials are wrong (data kept); Permanent for this batch."""
    code = resp.status_code
    what = f"HTTP {code} {resp.reason_phrase} from {url}"
    body, _ = error_text(resp)
    detail = f"{what}: {body}" if body else what
    if code >= 500 or code in _RETRY_STATUSES:
        return Transient(detail)
    if 300 <= code < 400:
        return Transient(f"{what}: the server redirects to {resp.headers.get('location', '?')}; set url to it")
    if code in _AUTH_STATUSES:
        return Transient(f"endpoint unusable: {detail} (check username, password and WRITE privilege; data is kept)")
    if code in _ENDPOINT_STATUSES:
        return Transient(f"endpoint unusable: {detail} (check url and database; data is kept)")
    return Permanent(detail)


# ----------------------------------------------------------------------------------------- uplink


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.log = ctx.log
        self.gateway = ctx.gateway_id
        c = config
        self._lines = LineEncoder(
            gateway=ctx.gateway_id,
            measurement=c.measurement,
            tag_key=c.tag_key,
            extra_tags=c.extra_tags,
            integers_as_float=c.integers == "float",
            gaps_measurement=c.gaps_measurement,
        )
        self._compress = compressor(c.compression)
        self._client: httpx.AsyncClient | None = None
        params = {"db": c.database, "precision": "ns"}
        if c.retention_policy is not None:
            params["rp"] = c.retention_policy
        self._params = params
        self._headers = self._static_headers()
        self.payload_bytes = 0  # bodies of the batches sent (once each): the Sender sizes batches by it
        self.requests = 0  # POSTs, retries and narrowing-down included
        self.retries = 0
        self.narrowing = 0  # extra POSTs to find which lines of a partly refused batch were dropped
        self.rejected = 0  # lines the server refused for good, and samples that cannot be written
        self.auth_failures = 0  # 401/403 answers: the endpoint is unusable until the credentials are fixed

    def _static_headers(self) -> dict[str, str]:
        c = self.config
        h = {"User-Agent": f"edged/{edged.__version__}", "Content-Type": "text/plain; charset=utf-8"}
        if c.compression == "gzip":
            h["Content-Encoding"] = "gzip"
        if c.username is not None and c.password is not None:
            pair = f"{c.username}:{c.password.reveal()}".encode()
            h["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return h

    async def __aenter__(self) -> Self:
        c = self.config
        host = urlsplit(c.url).hostname or ""
        if (
            "Authorization" in self._headers
            and c.url.startswith("http:")
            and host not in ("127.0.0.1", "localhost", "::1")
        ):
            self.log.warning("uplink %s: credentials are sent over plain http to %s; use https", c.name, host)
        self._client = httpx.AsyncClient(
            verify=client_context(c, self.log) if c.url.startswith("https:") else True,
            timeout=httpx.Timeout(float(c.timeout)),
            trust_env=False,
            proxy=c.proxy,
            follow_redirects=False,
            headers=self._headers,
            limits=httpx.Limits(max_connections=c.max_inflight, max_keepalive_connections=c.max_inflight),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def window(self) -> int:
        """Writes at once, each on a connection of its own: they may land in any order, which
        InfluxDB does not mind (a point's place is its timestamp)."""
        return self.config.max_inflight

    def counters(self) -> dict[str, float]:
        return {
            "payload_bytes": self.payload_bytes, "requests": self.requests, "retries": self.retries,
            "narrowing_requests": self.narrowing, "rejected": self.rejected, "auth_failures": self.auth_failures,
        }  # fmt: skip

    def encode(self, batch: Batch) -> tuple[list[Line | None], dict[int, str]]:
        """One line per sample then per gap (None where it cannot be written, with the reason)."""
        lines: list[Line | None] = []
        refused: dict[int, str] = {}
        for i, s in enumerate(batch.samples):
            try:
                lines.append(self._lines.sample(s))
            except Unrepresentable as exc:
                lines.append(None)
                refused[i] = f"{s.tag}: {exc}"
        lines.extend(self._lines.gap(g) for g in batch.gaps)
        return lines, refused

    def body(self, lines: list[Line | None], idx: list[int]) -> bytes:
        text = "".join(f"{line.text}\n" for i in idx if (line := lines[i]) is not None)
        return self._compress(text.encode("utf-8"))

    async def send(self, batch: Batch) -> None:
        """Write until the server answered for every line; Partial names the lines it refused."""
        if self._client is None:
            raise Transient("not connected")
        lines, refused = self.encode(batch)
        todo = [i for i, line in enumerate(lines) if line is not None]
        deadline = asyncio.get_running_loop().time() + float(self.config.retry_for)
        if todo:
            refused.update(await self._isolate(lines, todo, deadline, first=True))
        if not refused:
            return
        self.rejected += len(refused)
        n = len(batch.samples)
        reasons = list(dict.fromkeys(refused.values()))
        msg = f"InfluxDB refused {len(refused)} of {len(lines)} lines: " + "; ".join(_short(r) for r in reasons[:3])
        if len(reasons) > 3:
            msg += f" (and {len(reasons) - 3} other reasons)"
        if n == 0:  # a gaps-only batch: the Sender logs it
            raise Permanent(msg)
        rejected = sorted(i for i in refused if i < n)
        raise Partial(msg, [i for i in range(n) if i not in refused], rejected)

    async def _isolate(
        self, lines: list[Line | None], idx: list[int], deadline: float, *, first: bool = False
    ) -> dict[int, str]:
        """Write these lines; return the ones the server refused, with its reason.

        A 400 names the lines that did not parse; a "partial write" says only how many points it
        dropped (dropped=N) and the first reason. When that does not tell which, the lines are
        written again in parts: what was written is rewritten unchanged (same series, same
        timestamp), so narrowing down costs requests, never data. A field type conflict names the
        measurement, field and type: those lines are tried on their own first."""
        resp = await self._post(self.body(lines, idx), deadline, count_payload=first)
        if resp.is_success:
            return {}
        msg, influx = error_text(resp)
        code = resp.status_code
        if code not in (400, 413) or (code == 400 and not influx):
            raise Permanent(f"batch refused: HTTP {code} {resp.reason_phrase}: {_short(msg)}")
        texts = {i: t.text for i in idx if (t := lines[i]) is not None}
        named = {i: msg_part for i in idx if (msg_part := _parse_failure(msg, texts[i])) is not None}
        partial = msg.startswith("partial write")
        m = _DROPPED.search(msg)
        dropped = int(m.group(1)) if m else None
        if code == 400 and named and (not partial or dropped == 0):
            # the server wrote every other line (partial) or none parsed at all (not partial)
            return named if partial else {i: named.get(i, msg) for i in idx}
        if code == 400 and partial and dropped == len(idx):
            return dict.fromkeys(idx, msg)
        if len(idx) == 1:
            return {idx[0]: msg if code == 400 else "the line alone is larger than the server accepts (HTTP 413)"}
        if code == 400 and (c := _CONFLICT.search(msg)) is not None:
            field, meas, ftype = c.groups()
            suspects = [i for i in idx if _has_field(lines[i], meas, field, ftype)]
            if 0 < len(suspects) < len(idx):
                self.log.info("uplink %s: %s; retrying the other lines alone", self.config.name, _short(msg))
                rest = [i for i in idx if i not in set(suspects)]
                return await self._isolate(lines, suspects, deadline) | await self._isolate(lines, rest, deadline)
        half = len(idx) // 2
        self.log.info("uplink %s: %s; narrowing down %d lines", self.config.name, _short(msg), len(idx))
        return await self._isolate(lines, idx[:half], deadline) | await self._isolate(lines, idx[half:], deadline)

    async def _post(self, body: bytes, deadline: float, *, count_payload: bool) -> httpx.Response:
        """POST until an answer that is no reason to retry: 2xx, 400 or 413. Retries in place
        (connection errors, 5xx, 401/403/404) until `deadline`, then raises Transient."""
        client = self._client
        if client is None:
            raise Transient("not connected")
        c = self.config
        if count_payload:
            self.payload_bytes += len(body)
        else:
            self.narrowing += 1
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=0.5, cap=30.0)
        last: str | None = None
        while True:
            self.requests += 1
            try:
                resp = await client.post(c.write_url(), params=self._params, content=body)
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                err = classify(exc)
                if isinstance(err, Permanent):
                    raise err from exc
            else:
                if resp.is_success or resp.status_code in (400, 413):
                    return resp
                err = _status_error(resp, c.write_url())
                if isinstance(err, Permanent):
                    raise err
                if resp.status_code in _AUTH_STATUSES:
                    self.auth_failures += 1
            if str(err) != last:
                level = self.log.error if str(err).startswith("endpoint unusable") else self.log.warning
                level("uplink %s: %s; retrying", c.name, err, extra={"uplink": c.name})
                last = str(err)
            delay = backoff.next_delay()
            if loop.time() + delay > deadline:
                raise err
            await asyncio.sleep(delay)
            self.retries += 1


def _parse_failure(msg: str, line: str) -> str | None:
    """The server's reason when its message says this line did not parse."""
    head = f"unable to parse '{line}': "
    at = msg.find(head)
    if at < 0:
        return None
    rest = msg[at + len(head) :]
    reason = rest.split("\nunable to parse '", 1)[0]
    reason = _DROPPED.sub("", reason).strip()
    return f"unable to parse: {reason}"


def _has_field(line: Line | None, meas: str, field: str, ftype: str) -> bool:
    if line is None or line.measurement != meas:
        return False
    if field in (FIELD_STATUS, FIELD_SCORE):
        return ftype == "integer"
    return line.field == field and line.ftype == ftype


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
