"""Fuzzing the parsers and encoders with hypothesis: no input raises anything but our own errors."""

from __future__ import annotations

import gzip
import logging
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer import Store
from edged.config import ByteSize, Duration, load, parse
from edged.errors import ConfigError
from edged.model import Batch, Gap, Sample
from edged.plugin import PluginContext

KEYS = ["gateway", "buffer", "devices", "uplinks", "id", "data_dir", "name", "type", "tags", "interval", "retention",
        "max_bytes", "signal", "host", "port", "password", "topic", "batch_size", "low", "high", "deadband", "sim",
        "mqtt", "file", "unit", "enabled", "qos", "flush_interval", "env", "file", "credential", "x"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["sim", "mqtt", "file", "1s", "24h", "-1s", "1GiB", "boiler", "a/b", "", "500ms"]),
)  # fmt: skip
toml_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), toml_like, max_size=5))
def test_config_parse_raises_only_config_errors(doc: dict[str, Any]) -> None:
    try:
        parse(doc, file="fuzz.toml", base_dir=Path(tempfile.gettempdir()))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml")  # noqa: PT017 - any input, so no pytest.raises


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_config_load_of_arbitrary_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "edged.toml"
        p.write_bytes(text.encode("utf-8", "replace"))
        try:
            load(p)
        except ConfigError as exc:
            assert str(exc).startswith(str(p))  # noqa: PT017 - any input, so no pytest.raises


@given(st.text(max_size=20))
def test_duration_and_size_parsers(text: str) -> None:
    for fn in (Duration.parse, ByteSize.parse):
        try:
            v = fn(text)
            assert v >= 0
        except ValueError:
            pass


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)  # fmt: skip
samples = st.builds(
    Sample,
    tag=st.from_regex(r"[a-z][a-z0-9_/]{0,20}", fullmatch=True),
    ts_ns=st.integers(0, 2**62),
    value=values,
    status=st.integers(0, 2**32 - 1),
    score=st.integers(0, 100),
    unit=st.one_of(st.none(), st.sampled_from(["bar", "degC", "%", "m3/h"])),
    seq=st.integers(1, 2**53),
)
batches = st.builds(
    Batch,
    gateway=st.just("gw"),
    lo_seq=st.integers(1, 2**40),
    hi_seq=st.integers(1, 2**40),
    historical=st.booleans(),
    samples=st.lists(samples, max_size=20),
    gaps=st.lists(
        st.builds(Gap, st.integers(0, 99), st.integers(0, 99), st.integers(), st.integers(), st.integers(0)), max_size=2
    ),
)


@pytest.mark.parametrize("compression", ["none", "gzip", "zlib"])
@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_mqtt_payload_round_trip(compression: str, batch: Batch) -> None:
    from uplink.mqtt import Config, Uplink

    up = Uplink(
        Config(name="m", type="mqtt", compression=compression),  # type: ignore[arg-type]
        PluginContext("gw", Path("."), logging.getLogger("fuzz")),
    )
    data = up.encode(batch)
    raw = gzip.decompress(data) if compression == "gzip" else zlib.decompress(data) if compression == "zlib" else data
    assert msgspec.json.decode(raw, type=Batch) == batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(samples, min_size=1, max_size=50).map(lambda b: [*b, *[msgspec.structs.replace(s, value=True) for s in b]])
)
def test_store_round_trip(tmp_path: Path, batch: list[Sample]) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as d, Store(Path(d) / "b.db") as store:
        lo, hi = store.append(batch)
        got, _ = store.read(lo, hi, len(batch))
        # the buffer keeps one unit per tag (the latest written), everything else exactly
        assert [(s.tag, s.ts_ns, s.value, s.status, s.score) for s in got] == [
            (s.tag, s.ts_ns, s.value, s.status, s.score) for s in batch
        ]
        assert [type(s.value) for s in got] == [type(s.value) for s in batch]


@pytest.mark.parametrize("compression", ["none", "gzip"])
@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_http_payload_round_trip(compression: str, batch: Batch) -> None:
    from uplink.http import Config, Uplink, WireBatch

    up = Uplink(
        Config(name="h", type="http", url="http://127.0.0.1:1/ingest", compression=compression),  # type: ignore[arg-type]
        PluginContext("gw", Path("."), logging.getLogger("fuzz")),
    )
    data = up.encode(batch)
    doc = msgspec.json.decode(gzip.decompress(data) if compression == "gzip" else data, type=WireBatch)
    assert (doc.gateway, doc.lo_seq, doc.hi_seq, doc.historical) == (batch.gateway, batch.lo_seq, batch.hi_seq,
                                                                       batch.historical)  # fmt: skip
    assert [(w.tag, w.ts_ns, w.value, w.status, w.score, w.unit, w.seq) for w in doc.samples] == [
        (s.tag, s.ts_ns, s.value, s.status, s.score, s.unit, s.seq) for s in batch.samples
    ]
    assert [(g.lo_seq, g.hi_seq, g.count) for g in doc.gaps] == [(g.lo_seq, g.hi_seq, g.count) for g in batch.gaps]
