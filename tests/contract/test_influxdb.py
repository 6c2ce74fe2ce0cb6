"""InfluxDB uplink against a real InfluxDB 1.x (Debian's influxd), read back with InfluxQL."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buffer import Buffer
from edged.config import Secret, parse
from edged.delivery import Sender
from edged.errors import ConfigError, Partial, Permanent, Transient
from edged.model import Batch, Gap, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.delivery import sender_running
from peers.http_server import HttpPeer, Reply
from peers.influxdb import Influxd
from peers.waiting import eventually
from uplink.influxdb import Config, Uplink
from uplink.influxdb.lineproto import Line

GW = "gw-test"
DB = "plant"
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    with Influxd(tmp_path_factory.mktemp("influxd")) as s:
        yield s


@pytest.fixture
def db(server: Influxd, request: pytest.FixtureRequest) -> str:
    """A fresh database per test, on the module's server."""
    name = "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:60]
    server.query(f'DROP DATABASE "{name}"')
    server.create_database(name)
    return name


def cfg(url: str, database: str, **kw: Any) -> Config:
    kw.setdefault("timeout", 2.0)
    return Config(name="influx", type="influxdb", url=url, database=database, **kw)


def ctx(gateway: str = GW) -> PluginContext:
    return PluginContext(gateway, Path("."), logging.getLogger("test.influxdb"))


def points(server: Influxd, database: str, measurement: str = "/.*/") -> list[dict[str, Any]]:
    return server.rows(f"SELECT * FROM {measurement} GROUP BY *", database)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, c: Config) -> AsyncIterator[tuple[Buffer, Sender]]:
    async with sender_running(
        tmp_path, c, lambda: Uplink(c, ctx()), gateway=GW, backoff=Backoff(initial=0.1, cap=0.3)
    ) as running:
        yield running


# ----------------------------------------------------------------------------------------- mapping


async def test_types_status_score_and_tags(server: Influxd, db: str) -> None:
    """Each kind of value keeps its type (numbers in `value`, booleans and strings in fields of their
    own), a None or NaN value leaves the point with its status and score only."""
    c = cfg(server.url, db, extra_tags={"site": "plant 1"}, integers="integer")
    samples = [  # the integer in a measurement of its own: a field has one type per measurement
        Sample("boiler/p", T0 + 1, 12.5, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 55, "bar", 1),
        Sample("meter/count", T0 + 2, 7, Status.GOOD, 100, None, 2),
        Sample("boiler/run", T0 + 3, True, Status.GOOD, 100, None, 3),
        Sample("boiler/mode", T0 + 4, 'auto "B", 2\\3', Status.GOOD, 90, None, 4),
        Sample("boiler/lost", T0 + 5, None, Status.BAD_NO_COMMUNICATION, 0, None, 5),
        Sample("boiler/nan", T0 + 6, float("nan"), Status.BAD_SENSOR_FAILURE, 0, None, 6),
    ]
    async with Uplink(c, ctx()) as up:
        await up.send(Batch(GW, 1, 6, False, samples))
    got = {r["tag"]: r for r in points(server, db)}
    assert set(got) == {"p", "count", "run", "mode", "lost", "nan"}
    for r in got.values():
        assert r["_name"] == ("meter" if r["tag"] == "count" else "boiler")
        assert r["gateway"] == GW and r["site"] == "plant 1"
    assert got["p"]["time"] == T0 + 1 and got["p"]["value"] == 12.5
    assert got["p"]["status"] == Status.UNCERTAIN_SENSOR_NOT_ACCURATE and got["p"]["score"] == 55
    assert got["count"]["value"] == 7
    assert got["run"]["value_bool"] is True and got["run"]["value"] is None
    assert got["mode"]["value_str"] == 'auto "B", 2\\3'
    assert got["lost"]["value"] is None and got["lost"]["status"] == Status.BAD_NO_COMMUNICATION
    assert got["nan"]["value"] is None and got["nan"]["status"] == Status.BAD_SENSOR_FAILURE
    types = {s["name"]: dict(s["values"]) for s in server.query("SHOW FIELD KEYS", db)}
    assert types["boiler"] == {
        "score": "integer", "status": "integer", "value": "float", "value_bool": "boolean", "value_str": "string"
    }  # fmt: skip
    assert types["meter"]["value"] == "integer"


async def test_measurement_template_and_fixed_device_tag(server: Influxd, db: str) -> None:
    c = cfg(server.url, db, measurement="edged_{gateway}", tag_key="point")
    async with Uplink(c, ctx()) as up:
        await up.send(Batch(GW, 1, 1, False, [Sample("boiler/p", T0, 1.0, seq=1)]))
    (r,) = points(server, db)
    assert r["_name"] == f"edged_{GW}" and r["device"] == "boiler" and r["point"] == "p"
    assert r["value"] == 1.0


async def test_gap_records_go_to_their_own_measurement(server: Influxd, db: str) -> None:
    async with Uplink(cfg(server.url, db), ctx()) as up:
        await up.send(Batch(GW, 10, 20, True, [], [Gap(10, 20, T0, T0 + 10**9, 11), Gap(30, 31, T0, T0, 2)]))
        await up.send(Batch(GW, 10, 20, True, [], [Gap(10, 20, T0, T0 + 10**9, 11)]))  # replayed: same point
    rows = points(server, db, "edged_gaps")
    assert sorted((r["lo_seq"], r["hi_seq"], r["count"], r["time"], r["gateway"]) for r in rows) == [
        ("10", 20, 11, T0, GW), ("30", 31, 2, T0, GW)
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------- delivery


async def produce(buf: Buffer, n_tags: int, rate_hz: float, seconds: float) -> int:
    """Values count up per tag; every fifth reading of a tag is Uncertain with a lower score."""
    produced, i = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.time_ns()
        buf.put(
            [
                Sample(f"dev{k % 2}/t{k}", now + k, float(i), Status.UNCERTAIN if i % 5 == 0 else Status.GOOD,
                       60 if i % 5 == 0 else 100)
                for k in range(n_tags)
            ]
        )  # fmt: skip
        produced += n_tags
        i += 1
        await asyncio.sleep(1 / rate_hz)
    await buf.flush()
    return produced


def stored(server: Influxd, database: str) -> list[dict[str, Any]]:
    return server.rows('SELECT "value", "status", "score" FROM "dev0", "dev1" GROUP BY *', database)


async def test_outage_and_replay_store_every_sample_exactly_once(tmp_path: Path, server: Influxd, db: str) -> None:
    """influxd is stopped mid-stream and started again: every sample is there once, with its value,
    status and score; resending acknowledged batches (a lost answer) adds nothing."""
    c = cfg(server.url, db, batch_size=40, retry_for=0.5, max_inflight=4)
    async with running(tmp_path, c) as (buf, sender):
        produced = await produce(buf, 6, 50, 0.5)
        await eventually(lambda: not buf.store.unacked("influx", buf.head), 20, "the live batches")
        server.stop()
        produced += await produce(buf, 6, 50, 1.0)
        await eventually(lambda: sender.stats.errors >= 1, 10, "the Sender notices the outage")
        server.start()
        await eventually(lambda: not buf.store.unacked("influx", buf.head), 30, "the backlog replayed")
        samples, _ = await buf.call(buf.store.read, 1, buf.head, 1_000_000)
        assert sender.stats.sent_historical > 0, "the outage was replayed as historical batches"
        assert sender.stats.rejected == 0
        assert sender.tally.totals()["payload_bytes"] > 0
    assert len(samples) == produced
    expected = sorted((s.tag.split("/")[0], s.tag.split("/")[1], s.ts_ns, s.value, s.status, s.score) for s in samples)
    rows = stored(server, db)
    got = sorted((r["_name"], r["tag"], r["time"], r["value"], r["status"], r["score"]) for r in rows)
    assert got == expected, "every sample once, with its value, status and score"
    assert {r["gateway"] for r in rows} == {GW}

    # a replay of everything (answers lost, or `edged replay`): the same points, rewritten
    async with Uplink(c, ctx()) as up:
        for k in range(0, len(samples), 500):
            await up.send(Batch(GW, 1, 1, True, samples[k : k + 500]))
    again = stored(server, db)
    assert sorted((r["_name"], r["tag"], r["time"], r["value"], r["status"], r["score"]) for r in again) == expected


async def test_type_conflict_is_partial_and_the_stream_goes_on(tmp_path: Path, server: Influxd, db: str) -> None:
    """With integers = "integer", a tag whose value turns from int to float conflicts with the field's
    type in that measurement: that line is rejected (counted), the others are stored, nothing sticks."""
    c = cfg(server.url, db, integers="integer")
    async with running(tmp_path, c) as (buf, sender):
        buf.put([Sample("dev/a", T0 + i, i) for i in range(3)] + [Sample("dev/b", T0, 1)])
        await buf.flush()
        await eventually(lambda: sender.stats.batches >= 1, 10, "the first batch")
        buf.put([Sample("dev/a", T0 + 10, 3), Sample("dev/a", T0 + 11, 4.5), Sample("dev/b", T0 + 12, 2.5),
                 Sample("dev/c", T0 + 13, 5), Sample("other/x", T0 + 14, 1.5)])  # fmt: skip
        await buf.flush()
        await eventually(lambda: not buf.store.unacked("influx", buf.head), 10, "the second batch")
        assert sender.stats.rejected == 2
        assert sender.tally.totals()["rejected"] == 2
        buf.put([Sample("dev/a", T0 + 20, 6)])
        await buf.flush()
        await eventually(lambda: not buf.store.unacked("influx", buf.head), 10, "the stream goes on")
        assert sender.stats.rejected == 2
    got = sorted((r["_name"], r["tag"], r["time"], r["value"]) for r in points(server, db))
    assert got == [
        ("dev", "a", T0, 0), ("dev", "a", T0 + 1, 1), ("dev", "a", T0 + 2, 2), ("dev", "a", T0 + 10, 3),
        ("dev", "a", T0 + 20, 6), ("dev", "b", T0, 1), ("dev", "c", T0 + 13, 5), ("other", "x", T0 + 14, 1.5),
    ]  # fmt: skip


async def test_conflict_names_the_rejected_lines(server: Influxd, db: str) -> None:
    """A conflict with the field's existing type names measurement, field and type: those lines
    are tried alone (all dropped), the others again (written), two requests more and no bisection."""
    c = cfg(server.url, db, integers="integer")
    batch = Batch(GW, 1, 6, False, [Sample("dev/a", T0 + i, i if i % 3 else i + 0.5) for i in range(6)])
    async with Uplink(c, ctx()) as up:
        await up.send(Batch(GW, 1, 1, False, [Sample("dev/b", T0, 0.25)]))  # the field is float now
        with pytest.raises(Partial) as info:
            await up.send(batch)
        assert info.value.rejected == [1, 2, 4, 5] and info.value.accepted == [0, 3]
        assert 'field type conflict: input field "value" on measurement "dev" is type integer' in str(info.value)
        assert up.narrowing == 2

        # a conflict inside one batch on a new measurement: InfluxDB refuses it whole, unnamed; halves
        mixed = Batch(GW, 1, 6, False, [Sample("new/a", T0 + i, i if i % 3 else i + 0.5) for i in range(6)])
        with pytest.raises(Partial) as info:
            await up.send(mixed)
        assert info.value.accepted == [0, 3], "the first line's type (float) won the measurement"
        assert up.narrowing < 2 + 2 * 6
    assert sorted((r["_name"], r["value"]) for r in points(server, db)) == [
        ("dev", 0.25), ("dev", 0.5), ("dev", 3.5), ("new", 0.5), ("new", 3.5)
    ]  # fmt: skip


async def test_points_outside_the_retention_policy_are_found_by_narrowing(server: Influxd, db: str) -> None:
    """ "points beyond retention policy dropped=N" names no line: resending parts finds them."""
    server.query(f'CREATE RETENTION POLICY "short" ON "{db}" DURATION 1h REPLICATION 1')
    now = time.time_ns()
    old = {3, 4, 9, 17}
    samples = [Sample(f"dev/t{i % 4}", (now - 3 * 3600 * 10**9 if i in old else now) + i, float(i)) for i in range(20)]
    async with Uplink(cfg(server.url, db, retention_policy="short"), ctx()) as up:
        with pytest.raises(Partial) as info:
            await up.send(Batch(GW, 1, 20, True, samples))
        assert info.value.rejected == sorted(old)
        assert "retention policy" in str(info.value)
        assert 0 < up.narrowing < 40
    rows = server.rows('SELECT * FROM "short"."dev" GROUP BY *', db)
    assert sorted(r["value"] for r in rows) == [float(i) for i in range(20) if i not in old]


class BrokenLine(Uplink):
    """One line the server cannot parse, as an encoder bug would make: the server's message names it."""

    def encode(self, batch: Batch) -> tuple[list[Line | None], dict[int, str]]:
        lines, refused = super().encode(batch)
        line = lines[1]
        assert line is not None
        lines[1] = line._replace(text=line.text.replace("value=1.0", "value=1.0.0"))
        return lines, refused


async def test_a_line_that_does_not_parse_is_named_by_the_server(server: Influxd, db: str) -> None:
    async with BrokenLine(cfg(server.url, db), ctx()) as up:
        with pytest.raises(Partial) as info:
            await up.send(Batch(GW, 1, 3, False, [Sample(f"dev/t{i}", T0, float(i)) for i in range(3)]))
        assert info.value.rejected == [1] and info.value.accepted == [0, 2]
        assert "unable to parse: invalid number" in str(info.value)
        assert up.narrowing == 0, "the message named the line"
    assert sorted(r["value"] for r in points(server, db)) == [0.0, 2.0]


async def test_unrepresentable_samples_are_rejected_without_sending(server: Influxd, db: str) -> None:
    samples = [Sample("dev/ok", T0, 1.0), Sample("dev/bad\nname", T0, 2.0), Sample("dev/big", T0, 2**70),
               Sample("dev/late", 2**63 - 1, 3.0)]  # fmt: skip
    async with Uplink(cfg(server.url, db, integers="integer"), ctx()) as up:
        with pytest.raises(Partial) as info:
            await up.send(Batch(GW, 1, 4, False, samples))
        assert info.value.rejected == [1, 2, 3]
        msg = str(info.value)
        assert "contains a newline" in msg and "outside int64" in msg and "outside InfluxDB's range" in msg
    assert [r["tag"] for r in points(server, db)] == ["ok"]


# ----------------------------------------------------------------------------------------- errors


async def test_missing_database_is_an_unusable_endpoint(server: Influxd) -> None:
    async with Uplink(cfg(server.url, "nope", retry_for=0.0), ctx()) as up:
        with pytest.raises(Transient, match=r"endpoint unusable: HTTP 404.*database not found.*data is kept"):
            await up.send(Batch(GW, 1, 1, False, [Sample("dev/a", T0, 1.0)]))


async def test_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """401 (no or wrong credentials) and 403 (no WRITE privilege) are kept and retried, logged as an
    unusable endpoint and counted as auth_failures; the right credentials write."""
    batch = Batch(GW, 1, 1, False, [Sample("dev/a", T0, 1.0)])
    with Influxd(tmp_path, auth=True) as s:
        s.create_admin("admin", "adm1n")
        s.create_database(DB)
        s.query("CREATE USER reader WITH PASSWORD 'r3ad'")
        s.query(f'GRANT READ ON "{DB}" TO reader')
        for user, password, code in [(None, None, 401), ("admin", "wrong", 401), ("reader", "r3ad", 403)]:
            c = cfg(s.url, DB, retry_for=0.0, username=user, password=Secret(password) if password else None)
            async with Uplink(c, ctx()) as up:
                with pytest.raises(Transient, match=rf"endpoint unusable: HTTP {code}.*WRITE privilege"):
                    await up.send(batch)
                assert up.counters()["auth_failures"] == 1
        assert "adm1n" not in caplog.text and "r3ad" not in caplog.text
        assert "endpoint unusable" in caplog.text

        # through the Sender: kept while the password is wrong, delivered once it is fixed
        wrong = cfg(s.url, DB, username="admin", password=Secret("wrong"), retry_for=0.2)
        good = cfg(s.url, DB, username="admin", password=Secret("adm1n"))
        use = [wrong]
        async with sender_running(
            tmp_path, wrong, lambda: Uplink(use[0], ctx()), gateway=GW, backoff=Backoff(initial=0.1, cap=0.3)
        ) as (buf, sender):
            buf.put([Sample("dev/a", T0 + i, float(i)) for i in range(5)])
            await buf.flush()
            await eventually(lambda: sender.stats.errors >= 3, 10, "repeated refusals")
            assert "endpoint unusable" in (sender.stats.last_error or "")
            assert sender.tally.totals()["auth_failures"] >= 3
            assert buf.store.unacked("influx", buf.head), "the data is kept"
            use[0] = good
            await eventually(lambda: not buf.store.unacked("influx", buf.head), 10, "delivery once fixed")
            assert sender.stats.rejected == 0
        assert len(s.rows("SELECT * FROM dev", DB)) == 5


async def test_server_errors_and_timeouts_are_transient() -> None:
    batch = Batch(GW, 1, 1, False, [Sample("dev/a", T0, 1.0)])
    with HttpPeer() as peer:
        url = f"http://127.0.0.1:{peer.port}"
        async with Uplink(cfg(url, DB, retry_for=0.0), ctx()) as up:
            peer.script.append(Reply(503, b'{"error":"engine: cache maximum memory size exceeded"}'))
            with pytest.raises(Transient, match=r"503.*cache maximum memory"):
                await up.send(batch)
            peer.script.append(Reply(200, delay=2.5))
            with pytest.raises(Transient, match="no answer within the timeout"):
                await up.send(batch)
            peer.script.append(Reply(400, b"<html>bad request</html>"))  # a proxy, not InfluxDB
            with pytest.raises(Permanent, match=r"HTTP 400.*bad request"):
                await up.send(batch)
            peer.script.append(Reply(415, b"gzip?"))
            with pytest.raises(Permanent, match="415"):
                await up.send(batch)
        # retried in place within retry_for: the 503 is followed by success
        async with Uplink(cfg(url, DB, retry_for=10.0), ctx()) as up:
            peer.script.append(Reply(503))
            await up.send(batch)
            assert up.retries == 1
        r = peer.requests[-1]
        assert r.headers["content-encoding"] == "gzip"
        assert gzip.decompress(r.raw) == (
            b"dev,gateway=gw-test,tag=a value=1.0,score=100i,status=0i 1700000000000000000\n"
        )
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with Uplink(cfg(f"http://127.0.0.1:{port}", DB, retry_for=0.0), ctx()) as up:
        with pytest.raises(Transient, match="ConnectError"):
            await up.send(batch)


# ----------------------------------------------------------------------------------------- escaping

RESERVED = {"gateway", "tag", "time", "_field", "_measurement", "value", "value_bool", "value_str", "status", "score"}
names = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=12).filter(
    lambda s: not s.endswith("\\")
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    device=names.filter(lambda s: s[0] not in "#\t\0" and "/" not in s),
    tag=names,
    gateway=names,
    extra=st.dictionaries(names.filter(lambda s: s not in RESERVED), names, max_size=2),
    text=st.text(st.characters(codec="utf-8"), max_size=30),
)
@example(device="wea ther,x=y", tag='\ttab, \\,="q"', gateway="g\x00w", extra={"k ey=": "v,al ue"}, text='a\nb "c" \\')
@example(device="a\\b", tag=" lead", gateway="x\\,y", extra={"\\k": "\\ v"}, text="\\")
def test_escaping_round_trips(server: Influxd, device: str, tag: str, gateway: str, extra: dict[str, str],
                              text: str) -> None:  # fmt: skip
    """Names and strings with spaces, commas, equals signs, quotes, backslashes, tabs and NUL come
    back from InfluxQL exactly as they were (a newline or a trailing backslash cannot be written)."""
    db = "escaping"
    server.query(f'DROP DATABASE "{db}"')
    server.create_database(db)
    c = Config(name="influx", type="influxdb", url=server.url, database=db, extra_tags=extra, timeout=5.0)

    async def write() -> None:
        async with Uplink(c, ctx(gateway)) as up:
            await up.send(Batch(gateway, 1, 2, False, [Sample(f"{device}/{tag}", T0, text, Status.GOOD, 77, None, 1)]))

    asyncio.run(write())
    (r,) = server.rows("SELECT * FROM /.*/ GROUP BY *", db)
    assert r["_name"] == device
    assert r["tag"] == tag and r["gateway"] == gateway
    assert {k: r[k] for k in extra} == extra
    assert r["value_str"] == text and r["score"] == 77 and r["time"] == T0


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"url": "http://u:p@h:8086"}, "must not contain credentials"),
        ({"url": "ftp://h"}, "must be http://"),
        ({"url": "http://h:8086/?db=x"}, "no query"),
        ({"database": ""}, "database must be"),
        ({"retention_policy": ""}, "retention_policy cannot be empty"),
        ({"username": "u"}, "go together"),
        ({"measurement": "{site}"}, "unknown placeholder {site}"),
        ({"measurement": "#x"}, "starts with '#'"),
        ({"measurement": "x\\"}, "ends with a backslash"),
        ({"gaps_measurement": "{device}"}, "unknown placeholder {device}"),
        ({"tag_key": "time"}, "reserved"),
        ({"extra_tags": {"gateway": "x"}}, "reserved"),
        ({"extra_tags": {"site": ""}}, "is empty"),
        ({"extra_tags": {"tag": "x"}}, "is the tag_key"),
        ({"integers": "double"}, "integers"),
        ({"compression": "zstd"}, "compression"),
        ({"ca_file": "/x"}, "not https"),
    ],
)
def test_bad_config_is_refused_with_the_reason(entry: dict[str, Any], reason: str) -> None:
    doc = {"gateway": {"id": "g"}, "uplinks": [{"name": "i", "type": "influxdb", "database": "plant", **entry}]}
    with pytest.raises(ConfigError, match=reason):
        parse(doc)
