"""HTTP uplink + live-first delivery against a real local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from buffer import Buffer
from edged.config import BufferConfig, Secret, parse
from edged.delivery import Sender
from edged.errors import ConfigError, Partial, Permanent, Transient
from edged.model import Batch, Gap, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.delivery import sender_running
from peers.http_server import HttpPeer, Reply, make_pki
from peers.waiting import eventually
from uplink.http import Config as HttpConfig
from uplink.http import Uplink as HttpUplink

GW = "gw-test"


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with HttpPeer() as p:
        yield p


def http_config(url: str, **kw: Any) -> HttpConfig:
    kw.setdefault("timeout", 2.0)
    return HttpConfig(name="erp", type="http", url=url, **kw)


def ctx() -> PluginContext:
    return PluginContext(GW, Path("."), logging.getLogger("test.http"))


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cfg: HttpConfig) -> AsyncIterator[tuple[Buffer, Sender]]:
    async with sender_running(
        tmp_path, cfg, lambda: HttpUplink(cfg, ctx()), gateway=GW, backoff=Backoff(initial=0.1, cap=0.3)
    ) as running:
        yield running


async def produce(buf: Buffer, n_tags: int, rate_hz: float, seconds: float) -> int:
    """Each tag's value counts up, so order and completeness can be checked per tag."""
    produced, i = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        buf.put([Sample(f"dev/t{k}", time.time_ns(), i, Status.GOOD, 100) for k in range(n_tags)])
        produced += n_tags
        i += 1
        await asyncio.sleep(1 / rate_hz)
    await buf.flush()
    return produced


def check_order(docs: list[dict[str, Any]], historical: bool) -> None:
    """Within one stream, each tag's values arrive in increasing order."""
    last: dict[str, int] = {}
    for d in sorted((d for d in docs if d["historical"] is historical), key=lambda d: d["lo_seq"]):
        for s in d["samples"]:
            assert s["value"] > last.get(s["tag"], -1), f"{s['tag']} went {last.get(s['tag'])} -> {s['value']}"
            last[s["tag"]] = s["value"]


def rel(buf: Buffer, seqs: list[int]) -> list[int]:
    """Seqs counted from 1 (a new buffer starts its seqs at the current time in microseconds)."""
    first = buf.store.first_seq()
    assert first is not None
    return sorted(s - first + 1 for s in seqs)


def all_delivered(buf: Buffer, peer: HttpPeer) -> bool:
    return len(peer.seqs()) >= buf.stored and not buf.store.unacked("erp", buf.head)


# ----------------------------------------------------------------------------------------- delivery


async def test_every_sample_arrives_exactly_once_through_failures(tmp_path: Path, peer: HttpPeer) -> None:
    """5xx, answers later than the client waits, hang-ups after storing, 429: each seq stored once."""
    faults = {
        2: Reply(500, b"database busy"),
        5: Reply(200, delay=0.5),  # stored, but the client gave up after 0.25 s
        8: Reply(hangup=True, store=True),  # stored, then the connection drops
        11: Reply(503),
        14: Reply(429, headers={"Retry-After": "1"}),
        17: Reply(hangup=True),  # dropped before storing
    }
    n = [0]

    def flaky(doc: dict[str, Any] | None, key: str | None) -> Reply | None:
        n[0] += 1
        return faults.get(n[0])

    peer.policy = flaky
    cfg = http_config(peer.url, timeout=0.25, batch_size=40, retry_for=60.0)
    async with running(tmp_path, cfg) as (buf, sender):
        produced = await produce(buf, 10, 50, 1.5)
        await eventually(lambda: all_delivered(buf, peer), 30, "all samples stored by the server")
        assert n[0] > max(faults), "every fault was served"
        seqs = rel(buf, peer.seqs())
    assert buf.stored == produced
    assert seqs == list(range(1, produced + 1)), "each sample stored exactly once after dedupe by key"
    assert any(r.duplicate for r in peer.requests), "a retried batch was recognised by its key"
    keys = [r.key for r in peer.requests]
    assert len(keys) > len(set(keys)), "retries reuse the same Idempotency-Key"
    assert sender.stats.rejected == 0
    check_order(peer.docs(), historical=False)
    check_order(peer.docs(), historical=True)


async def test_retry_after_is_honoured_in_place(tmp_path: Path, peer: HttpPeer) -> None:
    replies = iter(
        [
            lambda: Reply(429, b"slow down", headers={"Retry-After": "1"}),
            lambda: Reply(503, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)}),
        ]
    )
    peer.policy = lambda doc, key: next(replies, lambda: None)()
    cfg = http_config(peer.url, retry_for=30.0)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k) for k in range(5)])
        await eventually(lambda: len(peer.seqs()) == 5, 15, "the batch")
        first = buf.store.first_seq() or 0
    (key,) = {r.key for r in peer.requests}
    assert key == f"{GW}-{first}-{first + 4}"
    t = peer.arrivals(key)
    assert len(t) == 3
    assert t[1] - t[0] >= 1.0, "retried no earlier than Retry-After: 1"
    assert t[2] - t[1] >= 1.0, "an HTTP-date Retry-After (2 s ahead, whole seconds) waits at least 1 s"
    assert sender.stats.errors == 0 and sender.stats.connects == 1, "retried in place, not reconnected"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 7\t", 7.0),
        ("0", 0.0),
        ("99999999999999999999", 3600.0),  # capped at an hour
        ("²", None),  # str.isdigit() says yes, float() raised ValueError
        ("١٢", None),  # Arabic-Indic digits: not delay-seconds
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
        ("Wed, 21 Oct 2015 07:28:00 +9999", None),  # offset beyond a day
        ("Wed, 21 Oct 2015 07:28:00 \uff27\uff2d\uff34", None),  # fullwidth "GMT"
    ],
)
def test_retry_after_parsing_is_strict_and_bounded(value: str, expected: float | None) -> None:
    from uplink.http import _retry_after

    resp = httpx.Response(503, headers=[(b"Retry-After", value.encode())])
    assert _retry_after(resp, time.time()) == expected


async def test_garbled_retry_after_keeps_the_data(tmp_path: Path, peer: HttpPeer) -> None:
    """A 503 whose Retry-After is no number (Unicode digits) is retried with the normal backoff,
    past the Sender's poison limit, and delivered once the endpoint recovers: nothing skipped."""
    garbled = ["²", "١٢٠٠", "²", "١٢٠٠", "²"]  # more refusals than POISON_TRIES
    peer.script.extend(Reply(503, b"maintenance", headers={"Retry-After": v}) for v in garbled)
    cfg = http_config(peer.url, retry_for=0.2)  # each refusal goes back to the Sender
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k) for k in range(5)])
        await buf.flush()
        await eventually(lambda: all_delivered(buf, peer), 30, "delivery after the endpoint recovers")
        assert rel(buf, peer.seqs()) == [1, 2, 3, 4, 5]
    assert [r.reply.status for r in peer.requests] == [503] * len(garbled) + [200]
    assert sender.stats.rejected == 0, "nothing skipped as a poisoned batch"
    assert "ValueError" not in (sender.stats.last_error or "")
    assert sender.stats.errors >= len(garbled)


async def test_error_body_in_a_charset_that_is_no_text_codec_keeps_the_data(
    tmp_path: Path, peer: HttpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's `.text` raises for charset=rot13/base64/idna; the excerpt for the log must not."""
    charsets = ["rot13", "base64", "idna", "undefined"]  # more refusals than POISON_TRIES
    peer.script.extend(
        Reply(503, b"down for maintenance", headers={"Content-Type": f"text/plain; charset={cs}"}) for cs in charsets
    )
    cfg = http_config(peer.url, retry_for=0.2)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k) for k in range(4)])
        await buf.flush()
        await eventually(lambda: all_delivered(buf, peer), 30, "delivery after the endpoint recovers")
        assert rel(buf, peer.seqs()) == [1, 2, 3, 4]
    assert sender.stats.rejected == 0, "nothing skipped as a poisoned batch"
    assert "down for maintenance" in caplog.text, "the body is still logged"
    assert "failed unexpectedly" not in caplog.text


async def test_retry_after_beyond_retry_for_goes_back_to_the_sender(tmp_path: Path, peer: HttpPeer) -> None:
    """A Retry-After longer than retry_for is raised as RetryAfter: the Sender waits that long (not its
    own short backoff) and then resends the same window under the same key."""
    peer.script.append(Reply(503, headers={"Retry-After": "2"}))
    cfg = http_config(peer.url, retry_for=0.5)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k) for k in range(3)])
        await buf.flush()
        await eventually(lambda: all_delivered(buf, peer), 20, "delivery after the wait")
        assert sender.stats.errors == 1 and sender.stats.connects == 2
        assert (sender.stats.last_error or "").startswith("RetryAfter:")
    (key,) = {r.key for r in peer.requests}
    t = peer.arrivals(key)
    assert len(t) == 2
    assert t[1] - t[0] >= 1.9, "the Sender waited for Retry-After (its own backoff is at most 0.3 s)"


@pytest.mark.parametrize("on_reject", ["skip", "halt"])
async def test_rejected_batch_skip_or_halt(
    tmp_path: Path, peer: HttpPeer, on_reject: str, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = [True]

    def refuse_poison(doc: dict[str, Any] | None, key: str | None) -> Reply | None:
        if poisoned[0] and doc and any(s["tag"] == "dev/poison" for s in doc["samples"]):
            return Reply(422, b'{"error": "unknown tag dev/poison"}')
        return None

    peer.policy = refuse_poison
    cfg = http_config(peer.url, on_reject=on_reject)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample("dev/a", time.time_ns(), i) for i in range(3)])
        await eventually(lambda: len(peer.seqs()) == 3, 5, "first batch")
        buf.put([Sample("dev/poison", time.time_ns(), 1), Sample("dev/a", time.time_ns(), 3)])
        await buf.flush()
        await eventually(lambda: len([r for r in peer.requests if r.reply.status == 422]) >= 1, 5, "the refusal")
        buf.put([Sample("dev/a", time.time_ns(), i) for i in range(4, 7)])
        await buf.flush()
        if on_reject == "skip":
            await eventually(lambda: len(peer.seqs()) == 6 and not buf.store.unacked("erp", buf.head), 5, "the rest")
            assert sender.stats.rejected == 2
            assert rel(buf, peer.seqs()) == [1, 2, 3, 6, 7, 8], "the refused window is skipped, nothing else"
        else:
            await asyncio.sleep(1.0)
            assert rel(buf, peer.seqs()) == [1, 2, 3], "halted: nothing after the refused batch"
            assert buf.store.unacked("erp", buf.head), "the refused batch is still owed"
            assert sender.stats.errors >= 1 and sender.stats.rejected == 0
            poisoned[0] = False  # the receiver is fixed
            await eventually(lambda: all_delivered(buf, peer), 10, "delivery after the fix")
            assert rel(buf, peer.seqs()) == list(range(1, 9))
    assert "unknown tag dev/poison" in caplog.text, "the response body is logged"
    assert "422" in caplog.text


async def test_endpoint_down_then_back(tmp_path: Path, peer: HttpPeer) -> None:
    """Connection refused past retry_for: the batch goes back to the Sender, which reconnects later."""
    cfg = http_config(peer.url, retry_for=0.3, batch_size=50)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample("dev/a", time.time_ns(), i) for i in range(10)])
        await eventually(lambda: len(peer.seqs()) == 10, 5, "first batch")
        peer.stop()
        produced = 10 + await produce(buf, 5, 50, 1.0)
        await eventually(lambda: sender.stats.errors >= 1, 5, "the Sender notices the outage")
        assert "ConnectError" in (sender.stats.last_error or "")
        peer.start()
        await eventually(lambda: all_delivered(buf, peer), 15, "catch-up")
        assert rel(buf, peer.seqs()) == list(range(1, produced + 1))
    assert any(d["historical"] for d in peer.docs()), "the outage was replayed as historical"
    check_order(peer.docs(), historical=False)
    check_order(peer.docs(), historical=True)


async def test_per_item_rejections_are_partial(tmp_path: Path, peer: HttpPeer) -> None:
    peer.policy = lambda doc, key: Reply(200, b'{"rejected": [0, 2], "message": "tags unknown to the ERP"}')
    async with running(tmp_path, http_config(peer.url)) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k) for k in range(5)])
        await eventually(lambda: sender.stats.batches >= 1, 5, "the batch")
    assert sender.stats.rejected == 2
    assert sender.stats.sent_live == 3


# ----------------------------------------------------------------------------------------- request format


async def test_body_headers_bearer_and_gzip(peer: HttpPeer) -> None:
    cfg = http_config(
        peer.url, compression="gzip", bearer_token=Secret("tok-123"), headers={"X-Site": Secret("plant1")}
    )
    ts = 1_700_000_000_123_456_789
    batch = Batch(
        GW, 41, 43, True,
        [Sample("boiler/p", ts, 12.5, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 55, "bar", 41),
         Sample("boiler/run", ts, True, Status.GOOD, 100, None, 43)],
    )  # fmt: skip
    async with HttpUplink(cfg, ctx()) as up:
        await up.send(batch)
        await up.send(Batch(GW, 10, 20, True, [], [Gap(10, 20, ts, ts + 10**9, 11)]))
    r, g = peer.requests
    assert r.headers["authorization"] == "Bearer tok-123"
    assert r.headers["content-encoding"] == "gzip" and r.raw[:2] == b"\x1f\x8b"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["idempotency-key"] == f"{GW}-41-43"
    assert r.headers["x-site"] == "plant1"
    assert r.headers["user-agent"].startswith("edged/")
    assert json.loads(gzip.decompress(r.raw)) == r.doc
    assert r.doc == {
        "version": 1, "gateway": GW, "lo_seq": 41, "hi_seq": 43, "historical": True,
        "samples": [
            {"tag": "boiler/p", "ts": "2023-11-14T22:13:20.123456Z", "ts_ns": ts, "value": 12.5,
             "status": Status.UNCERTAIN_SENSOR_NOT_ACCURATE, "quality": "Uncertain", "score": 55, "unit": "bar",
             "seq": 41},
            {"tag": "boiler/run", "ts": "2023-11-14T22:13:20.123456Z", "ts_ns": ts, "value": True, "status": 0,
             "quality": "Good", "score": 100, "unit": None, "seq": 43},
        ],
        "gaps": [],
    }  # fmt: skip
    assert g.headers["idempotency-key"] == f"{GW}-gaps-10-20"
    assert g.doc is not None and g.doc["samples"] == []
    assert g.doc["gaps"] == [
        {"lo_seq": 10, "hi_seq": 20, "lo_ts": "2023-11-14T22:13:20.123456Z", "hi_ts": "2023-11-14T22:13:21.123456Z",
         "lo_ts_ns": ts, "hi_ts_ns": ts + 10**9, "count": 11}
    ]  # fmt: skip


async def test_basic_auth(peer: HttpPeer) -> None:
    cfg = http_config(peer.url, username="edged", password=Secret("s3cret:x"))
    async with HttpUplink(cfg, ctx()) as up:
        await up.send(Batch(GW, 1, 1, False, [Sample("a/b", time.time_ns(), 1, seq=1)]))
    auth = peer.requests[0].headers["authorization"]
    assert auth == "Basic " + base64.b64encode(b"edged:s3cret:x").decode()


async def test_status_policy(peer: HttpPeer) -> None:
    """401 is the endpoint's problem (kept, Transient); 400 is this batch's (Permanent, with the body)."""
    batch = Batch(GW, 1, 1, False, [Sample("a/b", time.time_ns(), 1, seq=1)])
    async with HttpUplink(http_config(peer.url, retry_for=0.0), ctx()) as up:
        peer.script.append(Reply(401, b"token expired"))
        with pytest.raises(Transient, match=r"401.*token expired.*credentials"):
            await up.send(batch)
        peer.script.append(Reply(400, b'{"error": "value out of range"}'))
        with pytest.raises(Permanent, match=r'400 Bad Request.*"value out of range"'):
            await up.send(batch)
        peer.script.append(Reply(302, headers={"Location": "https://elsewhere/"}))
        with pytest.raises(Transient, match="redirects to https://elsewhere/"):
            await up.send(batch)
        peer.script.append(Reply(413))
        with pytest.raises(Permanent, match="lower batch_size"):
            await up.send(batch)
    assert peer.stored == {}


# ----------------------------------------------------------------------------------------- TLS


async def test_mutual_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    batch = Batch(GW, 1, 1, False, [Sample("a/b", time.time_ns(), 1, seq=1)])
    with HttpPeer(tls=pki.server_context()) as peer:
        good = http_config(peer.url, ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        async with HttpUplink(good, ctx()) as up:
            await up.send(batch)
        assert peer.seqs() == [1]

        no_cert = http_config(peer.url, ca_file=str(pki.ca), retry_for=0.0)
        async with HttpUplink(no_cert, ctx()) as up:
            with pytest.raises(Transient):
                await up.send(batch)

        wrong_ca = http_config(
            peer.url, ca_file=str(other.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key),
            retry_for=0.0,
        )  # fmt: skip
        async with HttpUplink(wrong_ca, ctx()) as up:
            with pytest.raises(Transient, match="certificate verification failed"):
                await up.send(batch)

        insecure = http_config(
            peer.url, tls_insecure_skip_verify=True, cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        async with HttpUplink(insecure, ctx()) as up:
            await up.send(batch)
        assert "verification is OFF" in caplog.text

    bad = http_config("https://127.0.0.1:1/x", cert_file=str(tmp_path / "nope.crt"), key_file=str(pki.client_key))
    with pytest.raises(Permanent, match="TLS setup failed"):
        await HttpUplink(bad, ctx()).__aenter__()


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, r"uplinks\[0\] \(erp\): missing required key `url`"),
        ({"url": "ftp://x/y"}, "must be http://host"),
        ({"url": "http://x:99999/"}, "invalid port"),
        ({"url": "https://x/", "bearer_token": "t", "username": "u", "password": "p"}, "either bearer_token"),
        ({"url": "https://x/", "username": "u"}, "username and password go together"),
        ({"url": "https://x/", "username": "a:b", "password": "p"}, "cannot contain ':'"),
        ({"url": "http://x/", "ca_file": "/etc/ca.pem"}, "url is not https"),
        ({"url": "https://x/", "headers": {"Idempotency-Key": "k"}}, "set by the uplink itself"),
        ({"url": "https://x/", "headers": {"bad name": "v"}}, "not a valid header name"),
        ({"url": "https://x/", "compression": "brotli"}, r"uplinks\[0\] \(erp\)\.compression"),
        ({"url": "https://x/", "timeout": "0s"}, "timeout must be"),
    ],
)
def test_config_errors_name_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"uplinks": [{"name": "erp", "type": "http", **entry}]})


def test_sample_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_ERP_TOKEN", "t")
    import tomllib

    raw = tomllib.loads((Path(__file__).parents[2] / "uplink/http/sample.toml").read_text())
    cfg = parse(raw, base_dir=Path("/tmp"))
    assert [u.type for u in cfg.uplinks] == ["http"]


async def test_window_resent_with_the_same_key_after_a_reconnect(tmp_path: Path, peer: HttpPeer) -> None:
    """The uplink gives up in place (retry_for = 0): the Sender reconnects and re-sends exactly the
    window that failed, so its Idempotency-Key still matches what the server stored."""
    n = [0]

    def once(doc: dict[str, Any] | None, key: str | None) -> Reply | None:
        n[0] += 1
        return Reply(hangup=True, store=True) if n[0] == 1 else None  # stored, but no answer

    peer.policy = once
    cfg = http_config(peer.url, batch_size=1000, retry_for=0.0)
    async with running(tmp_path, cfg) as (buf, sender):
        buf.put([Sample(f"dev/t{k}", time.time_ns(), k, Status.GOOD, 100) for k in range(5)])
        await eventually(lambda: sender.stats.errors >= 1, 10, "the failed attempt")
        buf.put([Sample("dev/late", time.time_ns(), 1, Status.GOOD, 100)])  # would widen a re-read window
        await eventually(lambda: all_delivered(buf, peer), 10, "delivery after the reconnect")
        seqs = rel(buf, peer.seqs())
    first_key = peer.requests[0].key
    assert [r.key for r in peer.requests].count(first_key) == 2, "the same window went again"
    assert any(r.duplicate for r in peer.requests if r.key == first_key)
    assert seqs == list(range(1, 7)), "each sample stored exactly once"


async def test_a_window_of_requests_in_flight_survives_an_endpoint_crash(tmp_path: Path, peer: HttpPeer) -> None:
    """Several POSTs at once (each answered after 0.1 s), the endpoint crashes mid-window and comes
    back: every sample is stored exactly once, and only windows still unanswered were re-sent."""
    pre = Buffer(tmp_path / "buffer.db", BufferConfig())
    async with pre:
        pre.put([Sample(f"dev/t{i % 10}", time.time_ns(), i // 10, Status.GOOD, 100) for i in range(6000)])
        await pre.flush()
    peer.policy = lambda doc, key: Reply(delay=0.1)
    cfg = http_config(peer.url, batch_size=100, max_inflight=6, retry_for=0.0, encoding="columns", compression="zstd")
    async with running(tmp_path, cfg) as (buf, sender):
        await eventually(lambda: sender.stats.in_flight >= 4 and len(peer.stored) >= 10, 20, "a window in flight")
        peer.stop()
        await eventually(lambda: sender.stats.errors >= 1, 10, "the crash noticed")
        peer.start()
        await eventually(lambda: all_delivered(buf, peer), 60, "everything stored after the restart")
        seqs = rel(buf, peer.seqs())
    assert peer.peak_concurrent >= 4, "requests overlapped"
    assert seqs == list(range(1, 6001)), "each sample stored exactly once after dedupe by key"
    keys = [r.key for r in peer.requests]
    repeated = {k for k in keys if keys.count(k) > 1}
    assert 0 < len(repeated) <= 6, f"only the windows in flight at the crash went again ({len(repeated)})"
    for r in peer.requests:
        assert r.headers["content-type"] == "application/vnd.edged.columns+json"
        assert r.headers["content-encoding"] == "zstd"
    check_order(peer.docs(), historical=True)


async def test_alarm_events_are_records_of_their_own(peer: HttpPeer) -> None:
    """An alarm event (edged.alarms) travels in the body's `alarms`, never as a sample; the indices
    of a partial answer still refer to `samples` (README, Alarm events)."""
    from edged.alarms.engine import AlarmEngine

    cfg_all = parse(
        {
            "gateway": {"id": GW, "data_dir": "/tmp/unused"},
            "devices": [{"name": "boiler", "type": "sim", "tags": [{"name": "p", "unit": "bar"}]}],
            "alarms": {"tags": [{"tag": "boiler/p", "type": "hi", "limit": 10.0, "message": "p high"}]},
        }
    )
    ts = 1_700_000_000_000_000_000
    hot = Sample("boiler/p", ts, 12.5, Status.GOOD, 100, "bar")
    (event,) = AlarmEngine(cfg_all.alarms, clock=lambda: ts).feed([hot])
    batch = Batch(GW, 1, 2, True, [Sample(hot.tag, ts, 12.5, 0, 100, "bar", 1),
                                   Sample(event.tag, ts, event.value, 0, 100, None, 2)])  # fmt: skip
    peer.script.append(Reply(200, b'{"rejected": [0]}', headers={"Content-Type": "application/json"}))
    async with HttpUplink(http_config(peer.url), ctx()) as up:
        with pytest.raises(Partial) as partial:
            await up.send(batch)
    assert partial.value.rejected == [0] and partial.value.accepted == [1]
    (r,) = peer.requests
    assert [s["tag"] for s in r.doc["samples"]] == ["boiler/p"]
    (alarm,) = r.doc["alarms"]
    assert alarm["path"] == "boiler/p#alarm/hi" and alarm["event"] == "active" and alarm["state"] == "unack"
    assert alarm["active"] is True and alarm["acked"] is False and alarm["message"] == "p high"
    assert alarm["seq"] == 2 and alarm["historical"] is True and alarm["value"] == 12.5 and alarm["limit"] == 10.0
