"""Quality scoring: each check at its exact boundaries, the precedence between them, and properties
that must hold for every input (one valid status, NaN/inf never Good, score bands, bounded state)."""

from __future__ import annotations

import datetime
import math
import statistics
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sim import Config as SimConfig
from drivers.sim import SimTag
from edged.config import Duration, LinearCalibration, QualityConfig, TableCalibration, TwoPointCalibration
from edged.model import Sample, Severity, Status, severity
from edged.quality import MAD_SCALE, Check, TagProcessor, resolve

S = 1_000_000_000
T0 = 1_700_000_000 * S
UP = math.inf


class Clock:
    """The gateway clock, moved by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def processor(clock: Clock | None = None, *tags: SimTag, **fields: Any) -> TagProcessor:
    tags = tags or (SimTag(name="t", **fields),)
    return TagProcessor(SimConfig(name="d", type="sim", tags=list(tags)), clock=clock or Clock())


def one(p: TagProcessor, value: Any, ts: int = T0, status: int = Status.GOOD, score: int = 100) -> Sample:
    out = p.process([Sample("d/t", ts, value, status, score)])
    assert len(out) == 1, out
    return out[0]


def feed(p: TagProcessor, values: Sequence[float], t0: int = T0, step: int = S) -> list[Sample]:
    return [one(p, v, t0 + i * step) for i, v in enumerate(values)]


def q(**kw: Any) -> QualityConfig:
    """QualityConfig with plain seconds for the durations, as the TOML loader would produce."""
    for key in ("flatline", "stale_after"):
        if key in kw:
            kw[key] = Duration(kw[key])
    return QualityConfig(**kw)


# ------------------------------------------------------------------------------------ basics


def test_good_sample_passes_through_untouched() -> None:
    s = Sample("d/t", T0, 5.0, Status.GOOD, 100, "bar")
    assert processor(low=0.0, high=10.0).process([s])[0] is s


def test_ints_stay_ints_without_a_transform() -> None:
    out = one(processor(low=0, high=10), 7)
    assert out.value == 7 and type(out.value) is int


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_nan_inf_and_unrepresentable_numbers_are_bad_without_a_value(value: float) -> None:
    out = one(processor(), value)
    assert (out.value, out.status, out.score) == (None, Status.BAD_SENSOR_FAILURE, 0)


def test_range_limits_are_inclusive() -> None:
    p = processor(low=0.0, high=10.0)
    assert one(p, 0.0).status == Status.GOOD
    assert one(p, 10.0).status == Status.GOOD
    below = one(p, math.nextafter(0.0, -UP))
    above = one(p, math.nextafter(10.0, UP))
    for s in (below, above):
        assert (s.status, s.score) == (Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 40)


def test_driver_bad_stays_bad_and_drops_the_value() -> None:
    p = processor(low=0.0, high=10.0, quality=q(max_rate=1.0))
    for value in (5.0, 50.0, math.nan, "x", None):
        out = one(p, value, status=Status.BAD_NO_COMMUNICATION, score=77)
        assert (out.value, out.status, out.score) == (None, Status.BAD_NO_COMMUNICATION, 0)


def test_driver_uncertain_keeps_its_code_and_findings_lower_the_score() -> None:
    p = processor(low=0.0, high=10.0)
    assert (one(p, 5.0, status=Status.UNCERTAIN_SUB_NORMAL, score=90).score) == 60
    out = one(p, 11.0, status=Status.UNCERTAIN_SUB_NORMAL, score=50)
    assert (out.status, out.score) == (Status.UNCERTAIN_SUB_NORMAL, 30)


@pytest.mark.parametrize("status", [0xC0000000, 0xFFFFFFFF, -1, 1 << 40, None, "Good", 1.5])
def test_invalid_statuses_become_bad(status: Any) -> None:
    out = one(processor(), 5.0, status=status)
    assert (out.value, out.status, out.score) == (None, Status.BAD, 0)


def test_good_subcodes_are_kept_and_scores_stay_in_band() -> None:
    out = one(processor(), 5.0, status=Status.GOOD_LOCAL_OVERRIDE, score=10)
    assert (out.status, out.score) == (Status.GOOD_LOCAL_OVERRIDE, 61)


# ------------------------------------------------------------------------------------ units and calibration


def test_unit_conversion_then_calibration_and_the_unit_is_stamped() -> None:
    p = processor(source_unit="psi", unit="bar", calibration=LinearCalibration(gain=2.0, offset=1.0))
    out = one(p, 100.0)
    assert out.value == pytest.approx(100.0 * 0.0689475729317 * 2.0 + 1.0)
    assert out.unit == "bar"
    assert type(one(p, 100).value) is float


def test_degf_to_degc() -> None:
    assert one(processor(source_unit="degF", unit="degC"), 212.0).value == pytest.approx(100.0, abs=1e-12)


def test_table_edges_are_in_range_and_outside_is_extrapolated_and_uncertain() -> None:
    p = processor(calibration=TableCalibration(raw=[0.0, 10.0], actual=[0.0, 100.0]))
    assert (one(p, 0.0).status, one(p, 10.0).status) == (Status.GOOD, Status.GOOD)
    out = one(p, 11.0)
    assert (out.value, out.status, out.score) == (110.0, Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 40)
    assert one(p, math.nextafter(0.0, -UP)).status == Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED


def test_a_transform_that_overflows_is_bad() -> None:
    p = processor(calibration=LinearCalibration(gain=1e300))
    assert (one(p, 1e300).status, one(p, 1e300).value) == (Status.BAD_SENSOR_FAILURE, None)


def test_decimals_round_floats_after_calibration_and_before_the_checks() -> None:
    p = processor(decimals=3, high=10.0, calibration=LinearCalibration(gain=2.0, offset=0.0001))
    out = one(p, 1.23456)
    assert (out.value, repr(out.value)) == (2.469, "2.469")  # 2.46922 rounded, after the curve
    assert one(p, 5.0001).status == Status.GOOD  # 10.0003 -> 10.0, which the range check sees: in range
    assert one(processor(high=10.0, calibration=LinearCalibration(gain=2.0, offset=0.0001)), 5.0001).status == (
        Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
    )
    assert one(processor(decimals=0), 2.5).value == 2.0  # round half to even, as Python rounds
    plain = processor(decimals=2)
    assert repr(one(plain, 12.34567).value) == "12.35"  # an untransformed float is rounded too
    for value in (7, True, "12.34567", None):  # ints stay exact; bools, strings, None untouched
        out = one(plain, value)
        assert (out.value, type(out.value)) == (value, type(value))


def test_decimals_feed_the_deadband_the_stored_value() -> None:
    p = processor(decimals=1, deadband=0.1)
    assert one(p, 1.04).value == 1.0
    assert p.process([Sample("d/t", T0 + S, 1.06, Status.GOOD, 100)])[0].value == 1.1  # 1.1 - 1.0 >= 0.1


@pytest.mark.parametrize("decimals", [-1, 13])
def test_decimals_out_of_range_is_a_config_error(decimals: int) -> None:
    with pytest.raises(ValueError, match="decimals must be between 0 and 12"):
        SimTag(name="t", decimals=decimals)


def test_strings_on_a_converting_tag_are_a_configuration_problem() -> None:
    p = processor(source_unit="psi", unit="bar")
    out = one(p, "12.5")
    assert (out.value, out.status, out.score) == ("12.5", Status.UNCERTAIN_CONFIGURATION_ERROR, 30)
    assert one(processor(), True).status == Status.GOOD  # a plain tag takes bools as they are


# ------------------------------------------------------------------------------------ NE43


@pytest.mark.parametrize(
    ("current", "status"),
    [
        (3.6, Status.BAD_SENSOR_FAILURE),
        (math.nextafter(3.6, UP), Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        (math.nextafter(3.8, -UP), Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        (3.8, Status.GOOD),
        (12.0, Status.GOOD),
        (20.5, Status.GOOD),
        (math.nextafter(20.5, UP), Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        (math.nextafter(21.0, -UP), Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
        (21.0, Status.BAD_SENSOR_FAILURE),
        (0.0, Status.BAD_SENSOR_FAILURE),
    ],
)
def test_ne43_bands_on_the_raw_current(current: float, status: Status) -> None:
    p = processor(
        unit="bar", calibration=TwoPointCalibration(raw=[4.0, 20.0], actual=[0.0, 16.0]), quality=q(ne43=True)
    )
    out = one(p, current)
    assert out.status == status
    if severity(status) == Severity.BAD:
        assert out.value is None
    else:
        assert out.value == pytest.approx(current - 4.0) and out.unit == "bar"


# ------------------------------------------------------------------------------------ rate of change


def test_rate_limit_is_inclusive() -> None:
    p = processor(quality=q(max_rate=2.0))
    assert one(p, 0.0, T0).status == Status.GOOD  # nothing to compare with yet
    assert one(p, 2.0, T0 + S).status == Status.GOOD  # exactly 2.0 per second
    out = one(p, 4.0 + 2**-20, T0 + 2 * S)
    assert (out.status, out.score) == (Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 40)
    assert one(p, 3.0 + 2**-20, T0 + 2 * S + S // 2).status == Status.GOOD  # -1.0 in 0.5 s


def test_rate_skips_repeated_and_backward_timestamps() -> None:
    p = processor(quality=q(max_rate=1.0))
    one(p, 0.0, T0)
    assert one(p, 100.0, T0).status == Status.GOOD
    assert one(p, 100.0, T0 - S).status == Status.GOOD
    assert one(p, 1.0, T0 + S).status == Status.GOOD  # still judged against (T0, 0.0)


# ------------------------------------------------------------------------------------ flat line


def test_flatline_fires_exactly_at_the_duration() -> None:
    p = processor(quality=q(flatline=10.0, flatline_tolerance=0.125))
    assert one(p, 5.0, T0).status == Status.GOOD
    assert one(p, 5.125, T0 + 5 * S).status == Status.GOOD  # within the band
    assert one(p, 5.0, T0 + 10 * S - 1).status == Status.GOOD
    out = one(p, 5.0625, T0 + 10 * S)
    assert (out.status, out.score) == (Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 40)


def test_leaving_the_band_restarts_the_flat_period() -> None:
    p = processor(quality=q(flatline=10.0, flatline_tolerance=0.125))
    one(p, 5.0, T0)
    assert one(p, math.nextafter(5.125, UP), T0 + 9 * S).status == Status.GOOD  # band 0.125+: new period
    assert one(p, 5.125, T0 + 18 * S).status == Status.GOOD
    assert one(p, 5.125, T0 + 19 * S).status == Status.UNCERTAIN_SENSOR_NOT_ACCURATE


# ------------------------------------------------------------------------------------ spike


def spike_status(window: Sequence[float], x: float, *, k: float, floor: float = 0.0) -> int:
    p = processor(quality=q(spike_mad=k, spike_window=len(window), spike_floor=floor))
    feed(p, window)
    return one(p, x, T0 + len(window) * S).status


def test_spike_needs_a_full_window() -> None:
    p = processor(quality=q(spike_mad=3.0, spike_window=5, spike_floor=0.1))
    assert [s.status for s in feed(p, [1.0, 1.0, 1.0, 1.0, 1000.0])] == [Status.GOOD] * 5


def test_spike_floor_boundary_on_a_flat_window() -> None:
    flat = [10.0] * 5
    assert spike_status(flat, 12.0, k=4.0, floor=0.5) == Status.GOOD  # deviation 2.0 = 4 * 0.5
    assert spike_status(flat, 12.0 + 2**-40, k=4.0, floor=0.5) == Status.UNCERTAIN_SENSOR_NOT_ACCURATE
    assert spike_status(flat, 8.0 - 2**-40, k=4.0, floor=0.5) == Status.UNCERTAIN_SENSOR_NOT_ACCURATE


def test_spike_mad_boundary() -> None:
    window = [0.0, 1.0, 2.0, 3.0, 4.0]  # median 2, MAD 1
    limit = 2.0 + 4.0 * MAD_SCALE * 1.0
    assert spike_status(window, math.nextafter(limit, -UP) - 1e-12, k=4.0) == Status.GOOD
    assert spike_status(window, limit + 1e-12, k=4.0) == Status.UNCERTAIN_SENSOR_NOT_ACCURATE


def test_a_flat_window_without_floor_judges_nothing() -> None:
    assert spike_status([10.0] * 5, 1e6, k=4.0) == Status.GOOD


@settings(max_examples=150, deadline=None)
@given(
    window=st.lists(st.integers(-40, 40), min_size=5, max_size=5).map(lambda v: [x / 2 for x in v]),
    x=st.integers(-400, 400).map(lambda v: v / 4),
    k=st.sampled_from([2.0, 3.0, 4.5, 6.0]),
    floor=st.sampled_from([0.0, 0.5, 1.25]),
)
def test_spike_matches_the_textbook_median_mad(window: list[float], x: float, k: float, floor: float) -> None:
    m = statistics.median(window)
    mad = statistics.median([abs(v - m) for v in window])
    expected = abs(x - m) > k * max(MAD_SCALE * mad, floor) and (mad > 0 or floor > 0)
    got = spike_status(window, x, k=k, floor=floor) == Status.UNCERTAIN_SENSOR_NOT_ACCURATE
    assert got == expected


# ------------------------------------------------------------------------------------ staleness


def test_stale_when_the_source_timestamp_is_older_than_stale_after() -> None:
    p = processor(quality=q(stale_after=30.0))
    assert one(p, 1.0, T0 - 30 * S).status == Status.GOOD
    out = one(p, 1.0, T0 - 30 * S - 1)
    assert (out.status, out.score) == (Status.UNCERTAIN_LAST_USABLE_VALUE, 30)


def test_a_silent_tag_is_reported_once_without_a_timer() -> None:
    clock = Clock()
    p = processor(
        clock,
        SimTag(name="t", quality=q(stale_after=10.0)),
        SimTag(name="quiet", quality=q(stale_after=10.0)),
        SimTag(name="never", quality=q(stale_after=10.0)),
    )
    p.process([Sample("d/t", T0, 1.0), Sample("d/quiet", T0, 7.5, Status.GOOD, 100, "bar")])
    clock.now = T0 + 10 * S
    assert len(p.process([Sample("d/t", clock.now, 1.0)])) == 1  # exactly stale_after: not yet
    clock.now += 1
    out = p.process([Sample("d/t", clock.now, 1.0)])
    extra = {s.tag: s for s in out[1:]}
    assert extra["d/quiet"].value == 7.5 and extra["d/quiet"].ts_ns == clock.now
    assert (extra["d/quiet"].status, extra["d/quiet"].score) == (Status.UNCERTAIN_LAST_USABLE_VALUE, 30)
    assert (extra["d/never"].value, extra["d/never"].status) == (None, Status.BAD_WAITING_FOR_INITIAL_DATA)
    clock.now += 60 * S
    assert len(p.process([Sample("d/t", clock.now, 1.0)])) == 1, "reported once per silence"
    back = p.process([Sample("d/quiet", clock.now, 8.0)])
    assert back[0].status == Status.GOOD
    clock.now += 11 * S
    assert [s.tag for s in p.process([Sample("d/t", clock.now, 1.0)])] == ["d/t", "d/quiet"], "re-armed"


def test_a_silent_bad_tag_adds_nothing() -> None:
    clock = Clock()
    p = processor(clock, SimTag(name="t"), SimTag(name="gone", quality=q(stale_after=1.0)))
    p.process([Sample("d/gone", T0, None, Status.BAD_TIMEOUT, 0)])
    clock.now += 5 * S
    assert len(p.process([Sample("d/t", clock.now, 1.0)])) == 1


# ------------------------------------------------------------------------------------ calibration due


def test_calibration_due_date_is_still_valid_all_day() -> None:
    p = processor(calibration_due=datetime.date(2024, 5, 31))
    midnight = int(datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC).timestamp()) * S
    assert one(p, 1.0, midnight - 1).status == Status.GOOD
    out = one(p, 1.0, midnight)
    assert (out.status, out.score) == (Status.UNCERTAIN_SENSOR_CALIBRATION, 50)


# ------------------------------------------------------------------------------------ precedence and score


def test_findings_add_up_and_the_first_in_order_names_the_status() -> None:
    p = processor(low=0.0, high=10.0, calibration_due=datetime.date(2000, 1, 1), quality=q(stale_after=1.0))
    out = one(p, 11.0, T0)
    assert (out.status, out.score) == (Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 30)
    out = one(p, 11.0, T0 - 2 * S)
    assert (out.status, out.score) == (Status.UNCERTAIN_LAST_USABLE_VALUE, 1)
    assert one(p, math.nan, T0 - 2 * S).status == Status.BAD_SENSOR_FAILURE


def test_resolve_table() -> None:
    assert resolve(Status.GOOD, 100, []) == (Status.GOOD, 100)
    assert resolve(Status.GOOD, 100, [Check.CALIBRATION_DUE, Check.SPIKE]) == (Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 30)
    assert resolve(Status.GOOD, 100, [Check.RANGE, Check.NOT_FINITE]) == (Status.BAD_SENSOR_FAILURE, 0)
    assert resolve(Status.UNCERTAIN, 20, []) == (Status.UNCERTAIN, 20)
    assert resolve(Status.BAD_TIMEOUT, 100, [Check.RANGE]) == (Status.BAD_TIMEOUT, 0)
    order = list(Check)
    assert order[0] is Check.NOT_FINITE and order[-1] is Check.CALIBRATION_DUE


def test_every_check_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "quality.md").read_text()
    for c in Check:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{c.name}`")), None)
        assert row is not None, c.name
        assert str(c.penalty if not c.bad else "Bad") in row


# ------------------------------------------------------------------------------------ deadband, outages, bad input


def test_deadband_and_heartbeat_still_filter() -> None:
    p = processor(deadband=0.5, heartbeat=10.0)
    stored = [p.process([Sample("d/t", T0 + i * S, v)]) for i, v in enumerate([10.0, 10.4, 10.5])]
    assert [[s.value for s in batch] for batch in stored] == [[10.0], [], [10.5]]
    assert p.process([Sample("d/t", T0 + 5 * S, 10.6)]) == []
    assert [s.value for s in p.process([Sample("d/t", T0 + 12 * S, 10.6)])] == [10.6]  # heartbeat due
    assert p.process([Sample("d/t", T0 + 13 * S, 10.6, Status.UNCERTAIN)])[0].status == Status.UNCERTAIN


def test_first_value_after_an_outage_is_stored_inside_the_deadband() -> None:
    p = processor(deadband=1.0)
    one(p, 10.0)
    bad = p.outage(Status.BAD_NO_COMMUNICATION, T0 + S)
    assert [(s.tag, s.value, s.status) for s in bad] == [("d/t", None, Status.BAD_NO_COMMUNICATION)]
    assert one(p, 10.0, T0 + 2 * S).value == 10.0


def test_malformed_samples_are_bad_not_fatal() -> None:
    p = processor(low=0.0, high=10.0)
    out = p.process(
        [
            Sample("d/t", T0, b"\x01"),  # type: ignore[arg-type]
            Sample("d/t", None, 1.0),  # type: ignore[arg-type]
            Sample("d/t", T0, 2.0),
            Sample("d/other", T0, [1]),  # type: ignore[arg-type]
        ]
    )
    assert [(s.ts_ns, s.value, s.status) for s in out] == [
        (T0, None, Status.BAD_DECODING_ERROR),
        (T0, None, Status.BAD_DECODING_ERROR),
        (T0, 2.0, Status.GOOD),
        (T0, None, Status.BAD_DECODING_ERROR),
    ]
    assert p.malformed == 3


def test_unknown_tags_get_the_universal_rules_and_no_state() -> None:
    p = processor(quality=q(spike_mad=3.0, spike_window=5))
    before = p.state_size()
    out = p.process([Sample(f"d/x{i}", T0, math.nan if i % 2 else 1.0, Status.UNCERTAIN, 99) for i in range(1000)])
    assert {(s.status, s.score) for s in out} == {(Status.BAD_SENSOR_FAILURE, 0), (Status.UNCERTAIN, 60)}
    assert p.state_size() == before


# ------------------------------------------------------------------------------------ properties

ALL_ON: dict[str, Any] = dict(
    unit="bar",
    source_unit="psi",
    low=0.0,
    high=100.0,
    deadband=0.0,
    calibration=TableCalibration(raw=[0.0, 50.0, 100.0, 150.0], actual=[0.0, 51.0, 99.0, 150.0], method="spline"),
    calibration_due=datetime.date(2030, 1, 1),
    quality=QualityConfig(
        max_rate=5.0,
        flatline=Duration(30.0),
        flatline_tolerance=0.01,
        spike_mad=4.0,
        spike_window=7,
        stale_after=Duration(60.0),
    ),
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.integers(-(10**400), 10**400),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
statuses = st.one_of(st.sampled_from(list(Status)), st.integers(-(2**33), 2**34))
samples = st.lists(
    st.tuples(st.sampled_from(["d/t", "d/plain", "d/unknown"]), st.integers(-100 * S, 100 * S), values, statuses,
              st.integers(-1000, 1000)),
    max_size=60,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(batch=samples)
def test_every_input_maps_to_exactly_one_valid_status(batch: list[tuple[str, int, Any, int, int]]) -> None:
    p = processor(None, SimTag(name="t", **ALL_ON), SimTag(name="plain", low=-1.0, high=1.0))
    out = p.process([Sample(tag, T0 + dt, v, st_, sc) for tag, dt, v, st_, sc in batch])
    assert len(out) == len(batch), "no deadband and a fixed clock: one sample out per sample in"
    for (_tag, _dt, v, _st, _sc), s in zip(batch, out, strict=True):
        assert isinstance(s.status, int) and 0 <= s.status < 0xC0000000
        sev = severity(s.status)
        assert isinstance(s.score, int) and 0 <= s.score <= 100
        if sev == Severity.BAD:
            assert s.score == 0 and s.value is None
        elif sev == Severity.UNCERTAIN:
            assert 1 <= s.score <= 60
        else:
            assert 61 <= s.score <= 100
        if isinstance(v, float) and not math.isfinite(v):
            assert sev == Severity.BAD, "NaN/inf is never Good (nor Uncertain)"
        assert not (isinstance(s.value, float) and not math.isfinite(s.value))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=200))
def test_float_streams_never_report_nan_as_good(values: list[float]) -> None:
    p = processor(None, SimTag(name="t", **ALL_ON))
    for i, v in enumerate(values):
        s = one(p, v, T0 + i * S // 10)
        if not math.isfinite(v):
            assert (s.status, s.value, s.score) == (Status.BAD_SENSOR_FAILURE, None, 0)


def test_memory_is_bounded_after_10k_samples() -> None:
    p = processor(None, SimTag(name="t", **ALL_ON), SimTag(name="plain"))
    for i in range(10_000):
        p.process([Sample("d/t", T0 + i * S, float(i % 97)), Sample("d/plain", T0 + i * S, 1.0),
                   Sample(f"d/new{i}", T0 + i * S, 1.0)])  # fmt: skip
    assert p.state_size() == 2 * 7, "two copies of the spike window, nothing else grows"
