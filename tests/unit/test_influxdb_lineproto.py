"""Line protocol encoding of the influxdb uplink: golden bytes from the InfluxDB 1.x docs' escaping
examples (an independent check: the contract test's server is the other), and hypothesis fuzzing
of the encoder and of the server-message parsing."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.model import Gap, Sample, Status
from uplink.influxdb import _parse_failure, error_text
from uplink.influxdb.lineproto import LineEncoder, Unrepresentable, escape_key, escape_measurement, string


def encoder(**kw: object) -> LineEncoder:
    args: dict[str, object] = {
        "gateway": "gw1", "measurement": "{device}", "tag_key": "tag", "extra_tags": {},
        "integers_as_float": True, "gaps_measurement": "edged_gaps",
    }  # fmt: skip
    args.update(kw)
    return LineEncoder(**args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- golden bytes
# docs.influxdata.com, InfluxDB v1 "Line protocol tutorial", Special characters, and "Line protocol
# reference", Special characters: each example's escaped element, byte for byte.


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("us,midwest", r"us\,midwest"),  # weather,location=us\,midwest temperature=82
        ("temp=rature", r"temp\=rature"),  # weather,location=us-midwest temp\=rature=82
        ("location place", r"location\ place"),  # weather,location\ place=us-midwest temperature=82
        ("tag key with sp🚀ces", r"tag\ key\ with\ sp🚀ces"),
        ('tag,value,with"commas"', r'tag\,value\,with"commas"'),
        ("field_k\\ey", "field_k\\ey"),  # a backslash is not escaped in keys
    ],
)
def test_keys_and_tag_values_escape_as_the_docs_show(raw: str, escaped: str) -> None:
    assert escape_key(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("wea,ther", r"wea\,ther"),
        ("wea ther", r"wea\ ther"),
        ("we⛅️ther", "we⛅️ther"),
        ('"measurement with quo⚡️es and emoji"', r'"measurement\ with\ quo⚡️es\ and\ emoji"'),
        ("a=b", "a=b"),  # = needs no escape in a measurement (and \= would stay in the name)
    ],
)
def test_measurements_escape_as_the_docs_show(raw: str, escaped: str) -> None:
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ('too"hot"', r'"too\"hot\""'),  # temperature="too\"hot\""
        ('string field value, only " need be esc🍭ped', r'"string field value, only \" need be esc🍭ped"'),
        ("too hot\\cold", r'"too hot\\cold"'),  # read back as: too hot\cold
        ("too hot\\\\cold", r'"too hot\\\\cold"'),  # read back as: too hot\\cold
    ],
)
def test_string_values_escape_as_the_docs_show(raw: str, quoted: str) -> None:
    assert string(raw) == quoted


def test_the_reference_example_line() -> None:
    """The reference's "Write a point with special characters", assembled from the parts."""
    line = (
        escape_measurement('"measurement with quo⚡️es and emoji"')
        + "," + escape_key("tag key with sp🚀ces") + "=" + escape_key('tag,value,with"commas"')
        + " " + escape_key("field_k\\ey") + "=" + string('string field value, only " need be esc🍭ped')
    )  # fmt: skip
    assert (
        line.encode()
        == (
            '"measurement\\ with\\ quo⚡️es\\ and\\ emoji",tag\\ key\\ with\\ sp🚀ces=tag\\,value\\,with"commas" '
            'field_k\\ey="string field value, only \\" need be esc🍭ped"'
        ).encode()
    )


def test_sample_lines() -> None:
    """The mapping README.md documents, byte for byte."""
    e = encoder(extra_tags={"site": "plant 1"}, integers_as_float=False)
    ts = 1_700_000_000_123_456_789
    st_ = Status.UNCERTAIN_SENSOR_NOT_ACCURATE
    assert e.sample(Sample("boiler/steam_pressure", ts, 12.5, st_, 55)).text == (
        "boiler,gateway=gw1,site=plant\\ 1,tag=steam_pressure value=12.5,score=55i,status=1083375616i "
        "1700000000123456789"
    )
    assert e.sample(Sample("boiler/starts", ts, 7)).text.split(" ")[2] == "value=7i,score=100i,status=0i"
    assert e.sample(Sample("boiler/run", ts, True)).text.split(" ")[2] == "value_bool=true,score=100i,status=0i"
    assert e.sample(Sample("boiler/mode", ts, 'a "b"\\')).text.split(" ", 2)[2] == (
        'value_str="a \\"b\\"\\\\",score=100i,status=0i 1700000000123456789'
    )
    bad = Status.BAD_NO_COMMUNICATION
    assert e.sample(Sample("boiler/p", ts, None, bad, 0)).text.endswith(" score=0i,status=2150694912i " + str(ts))
    assert e.sample(Sample("boiler/p", ts, math.inf, bad, 0)).field is None
    assert encoder().sample(Sample("boiler/starts", ts, 7)).text.split(" ")[1] == "value=7.0,score=100i,status=0i"
    assert encoder().sample(Sample("boiler/x", ts, 1e16)).text.split(" ")[1].startswith("value=1e+16,")
    fixed = encoder(measurement="edged").sample(Sample("boiler/p", ts, 1.0)).text
    assert fixed.startswith("edged,device=boiler,gateway=gw1,tag=p ")
    assert encoder().gap(Gap(10, 20, ts, ts + 5, 11)).text == (
        f"edged_gaps,gateway=gw1,lo_seq=10 count=11i,hi_seq=20i,hi_ts_ns={ts + 5}i {ts}"
    )


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (Sample("dev/a\nb", 0, 1.0), "newline"),
        (Sample("dev/a\\", 0, 1.0), "backslash"),
        (Sample("#dev/a", 0, 1.0), "starts with '#'"),
        (Sample("\tdev/a", 0, 1.0), "starts with '.t'"),
        (Sample("dev/a", 2**63 - 1, 1.0), "range"),
        (Sample("dev/a", 0, "\ud800"), "surrogate"),
    ],
)
def test_unrepresentable(sample: Sample, reason: str) -> None:
    with pytest.raises(Unrepresentable, match=reason):
        encoder().sample(sample)


def test_integers_beyond_int64() -> None:
    with pytest.raises(Unrepresentable, match="outside int64"):
        encoder(integers_as_float=False).sample(Sample("d/a", 0, 2**63))
    assert encoder().sample(Sample("d/a", 0, 2**63)).text.split(" ")[1].startswith("value=9.223372036854776e+18,")
    with pytest.raises(Unrepresentable, match="float's range"):
        encoder().sample(Sample("d/a", 0, 10**400))


# ----------------------------------------------------------------------------------------- fuzzing

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(tag=st.text(max_size=20), ts=st.integers(-(2**64), 2**64), value=values, status=st.integers(0, 2**32 - 1))
def test_any_sample_is_one_line_or_unrepresentable(tag: str, ts: int, value: object, status: int) -> None:
    """Outside a quoted string, a line has no newline and ends with the timestamp."""
    try:
        line = encoder(integers_as_float=False).sample(Sample(tag, ts, value, status, 50))  # type: ignore[arg-type]
    except Unrepresentable:
        return
    head = line.text if line.field != "value_str" else line.text.split('="', 1)[0]
    assert "\n" not in head
    assert line.text.endswith(f" {ts}")
    line.text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), status=st.sampled_from([400, 413, 500]), line=st.text(max_size=30))
def test_server_messages_never_raise(body: bytes, status: int, line: str) -> None:
    resp = httpx.Response(status, content=body, headers={"Content-Type": "application/json; charset=rot13"})
    msg, _ = error_text(resp)
    assert isinstance(msg, str)
    reason = _parse_failure(msg, line)
    assert reason is None or reason.startswith("unable to parse")


def test_parse_failures_are_found_by_line() -> None:
    msg = (
        "partial write: unable to parse 'm,tag=a value=bad 4': invalid boolean\n"
        "unable to parse 'm,tag=a value= 6': missing field value dropped=0"
    )
    assert _parse_failure(msg, "m,tag=a value=bad 4") == "unable to parse: invalid boolean"
    assert _parse_failure(msg, "m,tag=a value= 6") == "unable to parse: missing field value"
    assert _parse_failure(msg, "m,tag=a value=1i 3") is None
