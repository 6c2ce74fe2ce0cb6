"""Contract tests of HistoryRead on the OPC UA server: a real asyncua client reads samples written
into a real buffer, against hand-computed raw values and Part 13 aggregates."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Buffer
from buffer.history import History
from edged import config as edged_config
from edged.model import Sample, Status
from edged.plugin import PluginContext
from peers.opcua_server import free_port
from uplink.opcua import Config, Uplink
from uplink.opcua.history import CALCULATED, PARTIAL

module_loop = pytest.mark.asyncio(loop_scope="module")

GATEWAY = "gw1"
USER, PASSWORD = "scada", "pw-1"
NAMESPACE = "urn:edged:gw1"
SEC = 1_000_000_000
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
T0_NS = int(T0.timestamp()) * SEC
TAG = "boiler/pressure"


def value_of(i: int) -> float:
    return float(i % 13) + 0.5


def status_of(i: int) -> int:
    return Status.BAD_COMMUNICATION_ERROR if i % 10 == 3 else Status.UNCERTAIN if i == 25 else Status.GOOD


# Every 10 s for 10 minutes, none in minute 6 (i = 36..41): 54 samples, stored in seq order with
# i = 50 arriving late (after i = 59), the other tag interleaved.
INDEXES = [i for i in range(60) if not 36 <= i <= 41]
ORDER = [i for i in INDEXES if i != 50] + [50]


def samples() -> list[Sample]:
    out = []
    for i in ORDER:
        out.append(Sample(TAG, T0_NS + i * 10 * SEC, value_of(i), status_of(i)))
        out.append(Sample("pump/speed", T0_NS + i * 10 * SEC, 1000.0 + i))
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Uplink]:
    tmp = tmp_path_factory.mktemp("history")
    cfg = edged_config.parse(
        {
            "gateway": {"id": GATEWAY, "data_dir": str(tmp)},
            "devices": [
                {"name": "boiler", "type": "sim", "tags": [{"name": "pressure", "unit": "bar"}]},
                {"name": "pump", "type": "sim", "tags": [{"name": "speed"}]},
            ],
            "uplinks": [
                {
                    "name": "scada",
                    "type": "opcua",
                    "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/edged/",
                    "security_policies": ["None"],
                    "users": {USER: PASSWORD},
                }
            ],
        }
    )
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    async with Buffer(tmp / "buffer.db", cfg.buffer) as buf:
        data = samples()
        for k in range(0, len(data), 9):  # several transactions, like the writer's flushes
            await buf.call(buf.store.append, data[k : k + 9])
        history = History(lambda: buf.store, buf.call, block_bits=3)  # many blocks from few rows
        ctx = PluginContext(GATEWAY, tmp, logging.getLogger("edged.uplink.scada"), config=cfg, history=history.read)
        async with Uplink(up_cfg, ctx) as up:
            yield up


def client(up: Uplink) -> Client:
    c = Client(up.config.endpoint, timeout=5)
    c.set_user(USER)
    c.set_password(PASSWORD)
    return c


async def tag_node(c: Client, *path: str) -> Any:
    ns = await c.get_namespace_index(NAMESPACE)
    return await c.nodes.objects.get_child([f"{ns}:{p}" for p in (GATEWAY, *path)])


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def raw(
    start: dt.datetime | None, end: dt.datetime | None, n: int = 0, bounds: bool = False
) -> ua.ReadRawModifiedDetails:
    d = ua.ReadRawModifiedDetails()
    d.IsReadModified = False
    d.StartTime = start or ua.get_win_epoch()
    d.EndTime = end or ua.get_win_epoch()
    d.NumValuesPerNode = n
    d.ReturnBounds = bounds
    return d


def expected_raw(lo_s: float, hi_s: float) -> list[tuple[dt.datetime, float | None, int]]:
    """(source time, value, status) of the stored samples with lo <= t < hi, by hand."""
    out = []
    for i in INDEXES:
        if lo_s <= i * 10 < hi_s:
            bad = status_of(i) & 0x80000000
            out.append((at(i * 10), None if bad else value_of(i), status_of(i)))
    return out


def triples(dvs: list[ua.DataValue]) -> list[tuple[dt.datetime, float | None, int]]:
    return [
        (dv.SourceTimestamp.replace(tzinfo=dt.UTC), dv.Value.Value, dv.StatusCode.value)  # type: ignore[union-attr]
        for dv in dvs
    ]


@module_loop
async def test_tag_variables_are_historizing_and_the_server_says_what_it_serves(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        assert (await node.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
        for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
            level = (await node.read_attribute(attr)).Value.Value
            assert level & ua.AccessLevel.HistoryRead.mask and level & ua.AccessLevel.CurrentRead.mask
        caps = c.get_node(ua.NodeId(ObjectIds.HistoryServerCapabilities_AccessHistoryDataCapability))
        assert await caps.read_value() is True
        assert (
            await c.get_node(ua.NodeId(ObjectIds.HistoryServerCapabilities_MaxReturnDataValues)).read_value() == 10_000
        )
        folder = c.get_node(ua.NodeId(ObjectIds.HistoryServerCapabilities_AggregateFunctions))
        names = {(await n.read_browse_name()).Name for n in await folder.get_children()}
        assert {"Average", "Minimum", "Maximum", "Count"} <= names


@module_loop
async def test_raw_read_returns_the_stored_samples_in_time_order(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        got = await node.read_raw_history(at(0), at(600), return_bounds=False)
        assert triples(got) == expected_raw(0, 600)  # i = 50, stored last, comes in its place
        part = await node.read_raw_history(at(95), at(305), return_bounds=False)
        assert triples(part) == expected_raw(95, 305)
        backwards = await node.read_raw_history(at(305), at(95), return_bounds=False)
        assert triples(backwards) == list(reversed(expected_raw(96, 306)))


@module_loop
async def test_continuation_points_page_through_the_range(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        got: list[ua.DataValue] = []
        cp = None
        calls = 0
        while True:
            res = await node.history_read(raw(at(0), at(600), 7), cp)
            res.StatusCode.check()
            assert len(res.HistoryData.DataValues) <= 7
            got.extend(res.HistoryData.DataValues)
            calls += 1
            cp = res.ContinuationPoint
            if cp is None:
                break
        assert calls == 8  # 54 values, 7 a call
        assert triples(got) == expected_raw(0, 600)
        # a point used with other details is refused
        other = await node.history_read(
            raw(at(0), at(500), 7), (await node.history_read(raw(at(0), at(600), 7))).ContinuationPoint
        )
        assert other.StatusCode.value == StatusCodes.BadContinuationPointInvalid


@module_loop
async def test_bounds_and_refusals(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        got = triples(await node.read_raw_history(at(95), at(125), return_bounds=True))
        assert got == [(at(90), value_of(9), Status.GOOD), *expected_raw(95, 125), (at(130), None, status_of(13))]
        # before the first sample: BadBoundNotFound at the start time
        early = triples(await node.read_raw_history(at(-100), at(5), return_bounds=True))
        assert early[0] == (at(-100), None, StatusCodes.BadBoundNotFound)
        modified = raw(at(0), at(600))
        modified.IsReadModified = True
        res = await node.history_read(modified)
        assert res.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported
        res = await node.history_read(raw(None, None, 5))
        assert res.StatusCode.value == StatusCodes.BadInvalidTimestampArgument
        folder = await tag_node(c, "boiler")
        res = await folder.history_read(raw(at(0), at(600)))
        assert res.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported


async def processed(
    c: Client, node: Any, aggregate: int, start: dt.datetime, end: dt.datetime, interval_ms: float
) -> list[ua.DataValue]:
    d = ua.ReadProcessedDetails()
    d.StartTime, d.EndTime, d.ProcessingInterval = start, end, interval_ms
    d.AggregateType = [ua.NodeId(aggregate)]
    out: list[ua.DataValue] = []
    cp = None
    while True:
        params = ua.HistoryReadParameters()
        params.HistoryReadDetails = d
        params.TimestampsToReturn = ua.TimestampsToReturn.Source
        params.ReleaseContinuationPoints = False  # asyncua's default is True: "release, read nothing"
        params.NodesToRead = [ua.HistoryReadValueId(NodeId=node.nodeid, ContinuationPoint=cp)]
        res = (await c.uaclient.history_read(params))[0]
        res.StatusCode.check()
        out.extend(res.HistoryData.DataValues)
        cp = res.ContinuationPoint
        if cp is None:
            return out


def by_hand(minute: int) -> tuple[list[float], int]:
    """The Good values of one minute and how many samples it has."""
    idx = [i for i in INDEXES if minute * 6 <= i < minute * 6 + 6]
    return [value_of(i) for i in idx if status_of(i) == Status.GOOD], len(idx)


@module_loop
async def test_processed_average_minimum_maximum_count_per_minute(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        results = {
            agg: await processed(c, node, agg, at(0), at(600), 60_000)
            for agg in (ObjectIds.AggregateFunction_Average, ObjectIds.AggregateFunction_Minimum,
                        ObjectIds.AggregateFunction_Maximum, ObjectIds.AggregateFunction_Count)
        }  # fmt: skip
        for agg, dvs in results.items():
            assert [dv.SourceTimestamp.replace(tzinfo=dt.UTC) for dv in dvs] == [at(60 * m) for m in range(10)]
            for m, dv in enumerate(dvs):
                good, total = by_hand(m)
                st = dv.StatusCode.value
                if total == 0:  # minute 6: no sample
                    if agg == ObjectIds.AggregateFunction_Count:
                        assert (dv.Value.Value, st) == (0.0, StatusCodes.Good | CALCULATED)
                    else:
                        assert st == StatusCodes.BadNoData and dv.Value.Value is None
                    continue
                mixed = len(good) < total  # a Bad (or the Uncertain) sample in the minute
                if agg == ObjectIds.AggregateFunction_Average:
                    assert dv.Value.Value == pytest.approx(sum(good) / len(good))
                    assert st == (StatusCodes.UncertainDataSubNormal if mixed else StatusCodes.Good) | CALCULATED
                elif agg == ObjectIds.AggregateFunction_Count:
                    assert dv.Value.Value == len(good)
                    assert st == (StatusCodes.UncertainDataSubNormal if mixed else StatusCodes.Good) | CALCULATED
                else:
                    want = min(good) if agg == ObjectIds.AggregateFunction_Minimum else max(good)
                    assert dv.Value.Value == want
                    # Uncertain when a Bad sample is in the minute, or an Uncertain one beyond the extreme:
                    # minute 4 (i = 24..29) has no Bad one, and its Uncertain 12.5 is above the Good maximum
                    bad_in = any(status_of(i) & 0x80000000 for i in INDEXES if m * 6 <= i < m * 6 + 6)
                    beyond = m == 4 and agg == ObjectIds.AggregateFunction_Maximum
                    assert st & 0xC0000000 == (0x40000000 if bad_in or beyond else 0)
                    assert st & 0xFFFF == (CALCULATED if dv.Value.Value != value_of(m * 6) else 0)


@module_loop
async def test_processed_partial_last_interval_and_pages(server: Uplink) -> None:
    async with client(server) as c:
        node = await tag_node(c, "boiler", "pressure")
        dvs = await processed(c, node, ObjectIds.AggregateFunction_Count, at(0), at(150), 60_000)
        assert [dv.Value.Value for dv in dvs] == [5.0, 6.0, 2.0]  # i = 3 and 13 are Bad; 12..14 in the last
        partial_bit = PARTIAL & ~0x400  # the bit itself, without the DataValue InfoType bit
        assert dvs[2].StatusCode.value & partial_bit and not dvs[0].StatusCode.value & partial_bit
        unsupported = ua.ReadProcessedDetails()
        unsupported.StartTime, unsupported.EndTime, unsupported.ProcessingInterval = at(0), at(60), 10_000
        unsupported.AggregateType = [ua.NodeId(ObjectIds.AggregateFunction_Interpolative)]
        params = ua.HistoryReadParameters()
        params.HistoryReadDetails = unsupported
        params.TimestampsToReturn = ua.TimestampsToReturn.Source
        params.ReleaseContinuationPoints = False
        params.NodesToRead = [ua.HistoryReadValueId(NodeId=node.nodeid)]
        res = (await c.uaclient.history_read(params))[0]
        assert res.StatusCode.value == StatusCodes.BadAggregateNotSupported
