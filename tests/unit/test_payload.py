"""Batch payloads (edged.protocols.payload): the columns encoding decodes, with the reference decoder,
to exactly the rows every batch carries, under each compression; the rows encoding is what the MQTT
uplink publishes; golden bytes keep the documented format from drifting."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import math
import sys
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.model import Batch, Gap, Sample, Status
from edged.plugin import PluginContext
from edged.protocols import payload
from edged.protocols.payload import COMPRESSIONS, Encoder, check_compression, decode_columns, decompress, encode

I64 = st.integers(-(2**63), 2**63 - 1)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    I64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
UNITS = st.one_of(st.none(), st.sampled_from(["bar", "degC", "m3/h"]), st.text(max_size=6))
TAGS = st.one_of(st.sampled_from(["boiler/p", "boiler/t", "press/run", "a"]), st.text(min_size=1, max_size=10))


@st.composite
def batches(draw: st.DrawFn, values: st.SearchStrategy[Any] = VALUES) -> Batch:
    n = draw(st.integers(0, 40))
    constant = draw(st.booleans())  # many real tags keep one status/score/unit for a whole batch
    samples = []
    for _ in range(n):
        samples.append(
            Sample(
                draw(TAGS),
                draw(I64),  # any order, any jump: deltas wrap at 64 bits and must come back exact
                draw(values),
                0 if constant else draw(st.integers(0, 2**32 - 1)),
                100 if constant else draw(st.integers(0, 100)),
                "bar" if constant else draw(UNITS),
                None,
            )
        )
    if draw(st.booleans()):  # as read from the buffer: ascending seqs
        first = draw(st.integers(0, 2**62))
        steps = draw(st.lists(st.integers(1, 2**20), min_size=n, max_size=n))
        seqs: list[int | None] = []
        for step in steps:
            first += step
            seqs.append(first)
    else:  # anything a Batch may hold: unordered, repeated, missing
        seqs = draw(st.lists(st.one_of(st.none(), I64), min_size=n, max_size=n))
    samples = [msgspec.structs.replace(s, seq=q) for s, q in zip(samples, seqs, strict=True)]
    gaps = draw(st.lists(st.builds(Gap, I64, I64, I64, I64, st.integers(0, 2**40)), max_size=3))
    return Batch(draw(st.text(max_size=20)), draw(I64), draw(I64), draw(st.booleans()), samples, gaps)


def rows_doc(batch: Batch) -> Any:
    return msgspec.json.decode(encode(batch, encoding="rows", compression="none"))


def exactly(a: Any, b: Any) -> None:
    """Equal and of the same types all the way down (1 == 1.0 == True would hide a lost type)."""
    assert a == b
    assert repr(a) == repr(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from(COMPRESSIONS))
def test_columns_decode_to_the_rows(batch: Batch, compression: payload.Compression) -> None:
    data = encode(batch, encoding="columns", compression=compression)
    got = decode_columns(data)
    exactly(got, rows_doc(batch))
    want = [[s.tag, s.ts_ns, s.value, s.status, s.score, s.unit, s.seq] for s in batch.samples]
    exactly(got["samples"], want)
    exactly(got["gaps"], [msgspec.structs.asdict(g) for g in batch.gaps])


@settings(max_examples=100, deadline=None)
@given(batches(values=st.floats()))
def test_non_finite_floats_are_null_as_in_the_rows(batch: Batch) -> None:
    got = decode_columns(encode(batch, encoding="columns", compression="none"))
    exactly(got, rows_doc(batch))
    for row, s in zip(got["samples"], batch.samples, strict=True):
        assert row[2] == (s.value if math.isfinite(s.value) else None)  # type: ignore[arg-type]


def test_compressions_are_what_they_say() -> None:
    batch = small_batch()
    plain = encode(batch, encoding="columns", compression="none")
    assert gzip.decompress(encode(batch, encoding="columns", compression="gzip")) == plain
    assert zlib.decompress(encode(batch, encoding="columns", compression="zlib")) == plain
    import zstandard

    zst = encode(batch, encoding="columns", compression="zstd")
    assert zstandard.ZstdDecompressor().decompress(zst) == plain
    for c in COMPRESSIONS:
        assert decompress(encode(batch, encoding="rows", compression=c)) == encode(
            batch, encoding="rows", compression="none"
        )
    # deterministic: a batch sent again is the same bytes (gzip writes no time stamp)
    assert encode(batch, encoding="rows", compression="gzip") == encode(batch, encoding="rows", compression="gzip")


UNCERTAIN_RANGE = Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED


def small_batch() -> Batch:
    t = 1_795_510_686_000_000_000
    return Batch(
        "plant1-gw1",
        1041,
        1046,
        False,
        [
            Sample("boiler/steam_pressure", t, 12.431, Status.GOOD, 100, "bar", 1041),
            Sample("boiler/pump_running", t, True, Status.GOOD, 100, None, 1042),
            Sample("boiler/steam_pressure", t + 1_000_212_345, 12.437, Status.GOOD, 100, "bar", 1043),
            Sample("boiler/pump_running", t + 1_000_212_345, True, Status.GOOD, 100, None, 1044),
            Sample("boiler/steam_pressure", t + 2_000_425_000, 17.2, UNCERTAIN_RANGE, 40, "bar", 1045),
            Sample("boiler/pump_running", t + 2_000_425_000, None, Status.BAD_NO_COMMUNICATION, 0, None, 1046),
        ],
    )  # fmt: skip


# docs/payload.md shows this document: change both, and the version, or neither
GOLDEN = (
    b'{"encoding":"columns","version":1,"gateway":"plant1-gw1","lo_seq":1041,"hi_seq":1046,"historical":false,'
    b'"tags":[{"tag":"boiler/steam_pressure","unit":"bar","ts":[1795510686000000000,1000212345,1000212655],'
    b'"seq":[1041,2,2],"values":[12.431,12.437,17.2],"status":[0,0,1083441152],"score":[100,100,40]},'
    b'{"tag":"boiler/pump_running","unit":null,"ts":[1795510686000000000,1000212345,1000212655],'
    b'"seq":[1042,2,2],"values":[true,true,null],"status":[0,0,2150694912],"score":[100,100,0]}],"gaps":[]}'
)


def test_golden_columns_bytes() -> None:
    assert encode(small_batch(), encoding="columns", compression="none") == GOLDEN


def test_golden_gaps_and_order() -> None:
    """A gaps-only batch keeps its gaps as in rows; rows out of seq order carry `order`."""
    gaps = Batch("g", 5, 9, True, [], [Gap(5, 9, 100, 200, 5)])
    assert encode(gaps, encoding="columns", compression="none") == (
        b'{"encoding":"columns","version":1,"gateway":"g","lo_seq":5,"hi_seq":9,"historical":true,"tags":[],'
        b'"gaps":[{"lo_seq":5,"hi_seq":9,"lo_ts_ns":100,"hi_ts_ns":200,"count":5}]}'
    )
    unordered = Batch("g", 0, 0, False, [Sample("a", 3, 1, seq=7), Sample("b", 2, 2.5), Sample("a", 1, "x", seq=4)])
    assert encode(unordered, encoding="columns", compression="none") == (
        b'{"encoding":"columns","version":1,"gateway":"g","lo_seq":0,"hi_seq":0,"historical":false,"tags":['
        b'{"tag":"a","unit":null,"ts":[3,-2],"seq":[7,-3],"values":[1,"x"],"status":0,"score":100},'
        b'{"tag":"b","unit":null,"ts":[2],"seq":[null],"values":[2.5],"status":0,"score":100}],'
        b'"gaps":[],"order":[0,1,0]}'
    )
    exactly(decode_columns(encode(unordered, encoding="columns", compression="zstd")), rows_doc(unordered))


def mqtt_uplink(compression: str) -> Any:
    from uplink.mqtt import Config, Uplink

    config = Config(name="cloud", type="mqtt", compression=compression)  # type: ignore[arg-type]
    return Uplink(config, PluginContext("plant1-gw1", Path("."), logging.getLogger("test.payload")))


@settings(max_examples=100, deadline=None)
@given(batches())
def test_rows_are_what_the_mqtt_uplink_publishes(batch: Batch) -> None:
    assert encode(batch, encoding="rows", compression="none") == mqtt_uplink("none").encode(batch)


@pytest.mark.parametrize("compression", ["gzip", "zlib"])
def test_compressed_rows_carry_the_mqtt_json(compression: str) -> None:
    batch = small_batch()
    theirs = mqtt_uplink(compression).encode(batch)
    ours = encode(batch, encoding="rows", compression=compression)  # type: ignore[arg-type]
    assert decompress(ours) == decompress(theirs) == mqtt_uplink("none").encode(batch)
    assert ours[:2] == theirs[:2]  # the same container (gzip magic / zlib header)


def test_rows_are_the_documented_rows() -> None:
    doc = rows_doc(small_batch())
    assert doc["samples"][0] == ["boiler/steam_pressure", 1_795_510_686_000_000_000, 12.431, 0, 100, "bar", 1041]


def test_what_to_advertise() -> None:
    enc = Encoder(encoding="columns", compression="zstd")
    assert (enc.content_type, enc.content_encoding) == ("application/vnd.edged.columns+json", "zstd")
    rows = Encoder()
    assert (rows.content_type, rows.content_encoding) == ("application/json", None)
    assert Encoder(encoding="rows", compression="zlib").content_encoding == "deflate"  # HTTP's name for zlib


def test_missing_zstandard_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    check_compression("zstd")  # installed here
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'edged\[zstd\]'"):
        check_compression("zstd")
    with pytest.raises(ValueError, match="zstandard"):
        Encoder(encoding="columns", compression="zstd")
    check_compression("gzip")
    with pytest.raises(ValueError, match="expected one of"):
        check_compression("brotli")


def test_decoder_refuses_what_is_not_columns() -> None:
    with pytest.raises(ValueError, match="not an edged columns payload"):
        decode_columns(encode(small_batch(), encoding="rows", compression="gzip"))
    with pytest.raises(ValueError, match="unknown encoding"):
        Encoder(encoding="parquet")  # type: ignore[arg-type]


def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "payload.py"
    spec = importlib.util.spec_from_file_location("bench_payload", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_plant_fits_the_budget() -> None:
    """The issue's target: <= 5 bytes per sample with columns + zstd for the 500-tag bench plant at 3
    decimals (batches of 5000). Sizes, not timing: the plant is seeded, so this is deterministic."""
    bench = _bench()
    group = bench.batches(bench.plant(500, 20, 3), 5000)
    enc = Encoder(encoding="columns", compression="zstd")
    per_sample = sum(len(enc.encode(b)) for b in group) / (5000 * len(group))
    assert per_sample <= 5.0
    rows = Encoder(encoding="rows", compression="zstd")
    assert sum(len(rows.encode(b)) for b in group) / (5000 * len(group)) > 2 * per_sample
    for b in group:
        exactly(decode_columns(enc.encode(b)), rows_doc(b))


def test_the_decoder_in_the_doc_decodes() -> None:
    """docs/payload.md's decoder (for people writing one in another language) is run, not just read."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "payload.md").read_text()
    code = text.split("### A decoder", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(code, scope)
    for batch in (small_batch(), Batch("g", 0, 0, False, [Sample("a", 3, 1, seq=7), Sample("b", -(2**63), 2.5)])):
        doc = msgspec.json.decode(encode(batch, encoding="columns", compression="none"))
        exactly(scope["decode_columns"](doc), rows_doc(batch))

    def example(after: str) -> bytes:
        block = text.split(after, 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
        return "".join(block.split()).encode()

    assert example("### Worked example") == encode(small_batch(), encoding="rows", compression="none")
    assert example("The same batch as columns") == GOLDEN
