"""Computed tags on their own, with an injected clock and hand-computed expected values: the
grammar and its error columns, unit handling, every window function (stepped, linear, Bad
stretches, coverage, aligned windows), the totalizer (units, time base, gap, rollover, reset,
recovery from a real buffer), rate, EMA, voting with drift, and the quality rules."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.store import Store
from edged.commands import AuditTrail, Command, CommandGate, Result
from edged.compute.engine import Engine
from edged.compute.functions import Point, aggregate
from edged.compute.parse import ExprError, check_tag_path, parse
from edged.compute.plan import build
from edged.config import Config
from edged.config import parse as parse_config
from edged.errors import ConfigError
from edged.model import Sample, Status

NS = 1_000_000_000
T0 = 1_790_000_000 * NS  # a multiple of 10 s: aligned windows start here

PLANT = """
[gateway]
id = "gw"
data_dir = "/tmp/unused"
[[devices]]
name = "p"
type = "sim"
tags = [
  { name = "a", unit = "bar" }, { name = "b", unit = "kPa" }, { name = "c", unit = "bar" },
  { name = "flow", unit = "m3/h" }, { name = "mass", unit = "t/h" }, { name = "raw" }, { name = "x" },
]
"""


def load(computed: str, extra: str = "") -> Config:
    return parse_config(tomllib.loads(PLANT + extra + '\n[[computed]]\nname = "k"\n' + computed), file="t.toml")


def engine(computed: str, clock: list[int] | None = None) -> Engine:
    cfg = load(computed)
    now = clock if clock is not None else [T0]
    return Engine(build(cfg.devices, cfg.computed), clock=lambda: now[0])


def s(tag: str, t: float, value: Any, status: int = Status.GOOD, score: int = 100) -> Sample:
    return Sample(f"p/{tag}", T0 + round(t * NS), value, status, score)


def only(out: list[Sample], tag: str) -> list[Sample]:
    return [x for x in out if x.tag == f"k/{tag}"]


def last(out: list[Sample], tag: str) -> Sample:
    found = only(out, tag)
    assert found, f"no k/{tag} in {out}"
    return found[-1]


def tag(name: str, body: str) -> str:
    return f'[[computed.tags]]\nname = "{name}"\n{body}\n'


# ----------------------------------------------------------------------------------------- grammar


def _resolve(name: str, pos: int, braced: bool) -> str:
    if braced:
        return check_tag_path(name, pos)
    if name not in ("a", "b"):
        raise ExprError(pos, f"unknown input {name!r}")
    return f"p/{name}"


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("a + ", 5, "expected a value"),
        ("a + * b", 5, "found '*'"),
        ("(a + b", 7, "to close the '(' at column 1"),
        ("a < b < 3", 7, "cannot be chained"),
        ("foo(a)", 1, "unknown function 'foo'"),
        ("a + zz", 5, "unknown input 'zz'"),
        ("a + {nodevice}", 5, "write the full path"),
        ("a + {p/b", 5, "'{' is not closed"),
        ("min(a)", 1, "min() takes 2 to 16 arguments"),
        ("a b", 3, "unexpected 'b'"),
        ("a $ b", 3, "unexpected character '$'"),
        ("sqrt", 1, "is a function"),
        ("max(a, b", 9, "expected ',' or ')'"),
        ("", 1, "empty expression"),
        ("(" * 70 + "a" + ")" * 70, 65, "nested more than 64"),
    ],
)
def test_syntax_errors_name_the_column(text: str, column: int, words: str) -> None:
    with pytest.raises(ExprError) as err:
        parse(text, _resolve)
    assert err.value.pos + 1 == column, str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("expr", "a", "b", "want"),
    [
        ("a + 2 * 3", 1.0, 0.0, 7.0),
        ("-a ^ 2", 3.0, 0.0, -9.0),
        ("a + 2 ^ 3 ^ 2", 0.0, 0.0, 512.0),
        ("if(a > b, a, b)", 3.0, 4.0, 4.0),
        ("a > 1 and not (b > 1) || false", 2.0, 0.0, True),
        ("abs(a - b) + sqrt(b) + max(a, b, 10)", 1.0, 4.0, 3.0 + 2.0 + 10.0),
        ("exp(0) + log(1) + pow(a, 2) + a % 2", 3.0, 0.0, 1.0 + 0.0 + 9.0 + 1.0),
        ("min(a, b) == 1 and a != b", 1.0, 2.0, True),
        ("a * 0 + 1.5e1 + .5", 0.0, 0.0, 15.5),
    ],
)
def test_expressions_evaluate(expr: str, a: float, b: float, want: object) -> None:
    e = engine(tag("r", f'expr = "{expr}"\ninputs = {{ a = "p/raw", b = "p/x" }}'))
    out = last(e.feed([s("raw", 0, a), s("x", 0, b)]), "r")
    assert out.value == want and out.status == Status.GOOD


def test_units_convert_between_inputs_and_into_the_tag_unit() -> None:
    # a (bar) - b (kPa): b converted to bar; the result (bar) converted to the tag's kPa
    e = engine(tag("dp", 'unit = "kPa"\nexpr = "{p/a} - {p/b}"'))
    out = last(e.feed([s("a", 0, 2.0), s("b", 0, 50.0)]), "dp")
    assert out.value == pytest.approx(150.0) and out.unit == "kPa"
    # a bare number takes the unit it meets: 1 here is 1 bar
    e = engine(tag("hi", 'expr = "{p/a} - 1 > {p/b}"'))
    assert last(e.feed([s("a", 0, 1.4), s("b", 0, 50.0)]), "hi").value is False


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('expr = "{p/a} + {p/flow}"', "expr", "column 7: cannot add or subtract bar and m ** 3 / h"),
        ('expr = "exp({p/a})"', "expr", "exp() needs a plain number, not bar"),
        ('unit = "m3"\nexpr = "{p/a} * 2"', "expr", "not convertible to unit 'm3'"),
        ('expr = "{p/a} + {p/nope}"', "expr", "column 9: unknown tag 'p/nope'"),
        ('expr = "a + * 2"\ninputs = { a = "p/a" }', "expr", "column 5: expected a value, found '*' in 'a + * 2'"),
        ('expr = "q + 1"\ninputs = { a = "p/a" }', "expr", "column 1: unknown input 'q' (inputs: a)"),
        ('expr = "a"\ninputs = { a = "p/zz" }', "inputs.a", "unknown tag 'p/zz'"),
        ('expr = "a"\ninputs = { min = "p/a" }', "inputs.min", "cannot be an input name"),
        ('function = "average"\ninput = "p/a"', None, "needs a window"),
        ('function = "average"\ninput = "p/zz"\nwindow = "1m"', "input", "unknown tag 'p/zz'"),
        ('function = "median"\ninputs = ["p/a", "p/c"]', None, "median takes 3 to 15 inputs"),
        ('function = "totalizer"\ninput = "p/raw"', None, "needs units on its input and itself"),
        ('unit = "m3"\nfunction = "totalizer"\ninput = "p/mass"', None, "not convertible to unit 'm3'"),
        ('unit = "m3"\nfunction = "totalizer"\ninput = "p/flow"\ntime_base = "1h"', "time_base", "already say"),
        ('expr = "{p/a}"\nwindow = "1m"', None, "window does not apply to an expr"),
        ('expr = "{k/r}"', "expr", "cannot read itself"),
        ('expr = "1 + 2"', "expr", "reads no tag"),
        ('expr = "{p/a}"\nsource_unit = "psi"\nunit = "bar"', None, "no source_unit or calibration"),
    ],
)
def test_bad_computed_tags_are_config_errors_naming_the_key(body: str, key: str | None, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tag("r", body))
    where = "computed[0] (k).tags[0]" + (f" (r).{key}" if key else "")  # alone: the struct's own check
    assert err.value.path is not None and err.value.path.startswith(where), str(err.value)
    assert words in str(err.value), str(err.value)


def test_a_cycle_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cycle: k/u -> k/v -> k/u"):
        load(tag("u", 'expr = "{k/v} + 1"') + tag("v", 'expr = "{k/u} * 2"'))


# ----------------------------------------------------------------------------------------- windows


def pts(*items: tuple[float, float | None]) -> list[Point]:
    return [
        Point(T0 + round(t * NS), v, Status.GOOD if v is not None else Status.BAD_NO_COMMUNICATION, 100)
        for t, v in items
    ]


def agg(kind: str, points: list[Point], start: float, end: float, *, linear: bool = False, cov: float = 100.0,
        closed: bool = True) -> tuple[float | None, int]:  # fmt: skip
    a = aggregate(kind, points, T0 + round(start * NS), T0 + round(end * NS), linear=linear, min_coverage=cov,
                  closed=closed)  # fmt: skip
    return a.value, a.status


STEPS = pts((0, 10.0), (4, 20.0), (10, 30.0))  # window [0, 10]: 10 for 4 s, 20 for 6 s, then 30


@pytest.mark.parametrize(
    ("kind", "points", "want"),
    [
        ("average", STEPS, (10 * 4 + 20 * 6) / 10),  # 16
        ("minimum", STEPS, 10.0),
        ("maximum", STEPS, 30.0),
        ("sum", STEPS, 60.0),
        ("count", STEPS, 3.0),
        ("first", STEPS, 10.0),
        ("last", STEPS, 30.0),
        ("stddev", STEPS, 10.0),  # sample stddev of 10, 20, 30
        # a value in effect before the window counts for min/max/first/avg, not for count/sum/stddev
        ("minimum", pts((-5, 50.0), (2, 10.0), (10, 30.0)), 10.0),
        ("maximum", pts((-5, 50.0), (2, 10.0), (10, 30.0)), 50.0),
        ("first", pts((-5, 50.0), (2, 10.0), (10, 30.0)), 50.0),
        ("average", pts((-5, 50.0), (2, 10.0), (10, 30.0)), (50 * 2 + 10 * 8) / 10),  # 18
        ("count", pts((-5, 50.0), (2, 10.0), (10, 30.0)), 2.0),
        ("sum", pts((-5, 50.0), (2, 10.0), (10, 30.0)), 40.0),
        ("stddev", pts((-5, 50.0), (2, 10.0), (10, 30.0)), math.sqrt(200.0)),  # 10, 30 around 20
    ],
)
def test_window_functions_by_hand(kind: str, points: list[Point], want: float) -> None:
    value, status = agg(kind, points, 0, 10)
    assert value == pytest.approx(want) and status == Status.GOOD


def test_time_weighted_average_interpolated() -> None:
    # trapezoids: (10+20)/2*4 + (20+30)/2*6 = 60 + 150 = 210 over 10 s
    assert agg("average", STEPS, 0, 10, linear=True) == (pytest.approx(21.0), Status.GOOD)
    # clipped at the window start: the line from (-10, 0) to (10, 20) is 10 at 0; (10+20)/2*10 / 10
    assert agg("average", pts((-10, 0.0), (10, 20.0)), 0, 10, linear=True)[0] == pytest.approx(15.0)


def test_a_bad_interval_is_excluded_and_coverage_decides_the_status() -> None:
    points = pts((0, 10.0), (4, None), (6, 20.0), (10, 30.0))  # Bad from 4 s to 6 s
    value, status = agg("average", points, 0, 10)
    assert value == pytest.approx((10 * 4 + 20 * 4) / 8)  # 15, over the 8 s it saw
    assert status == Status.UNCERTAIN_DATA_SUB_NORMAL  # 80 % < 100 %
    assert agg("average", points, 0, 10, cov=80.0) == (pytest.approx(15.0), Status.GOOD)
    assert agg("count", points, 0, 10, cov=80.0)[0] == 3.0  # the Bad sample is not counted
    assert agg("average", pts((0, None)), 0, 10) == (None, Status.BAD_NO_DATA)
    assert agg("stddev", pts((0, 5.0)), 0, 10) == (None, Status.BAD_NO_DATA)  # one value has no spread


def test_uncertain_input_makes_the_window_uncertain() -> None:
    points = [Point(T0, 10.0, Status.UNCERTAIN_LAST_USABLE_VALUE, 40), Point(T0 + 10 * NS, 10.0, Status.GOOD, 100)]
    a = aggregate("average", points, T0, T0 + 10 * NS, linear=False, min_coverage=100, closed=True)
    assert (a.value, a.status, a.score) == (10.0, Status.UNCERTAIN_LAST_USABLE_VALUE, 40)


def test_sliding_average_in_the_engine() -> None:
    e = engine(tag("avg", 'unit = "bar"\nfunction = "average"\ninput = "p/a"\nwindow = "10s"'))
    first = last(e.feed([s("a", 0, 10.0)]), "avg")
    assert first.value is None and first.status == Status.BAD_NO_DATA  # saw no time yet
    partial = last(e.feed([s("a", 4, 20.0)]), "avg")  # [-6, 4]: 10 for 4 s = 40 % of the window
    assert partial.value == pytest.approx(10.0) and partial.status == Status.UNCERTAIN_DATA_SUB_NORMAL
    full = last(e.feed([s("a", 10, 30.0)]), "avg")
    assert full.value == pytest.approx(16.0) and full.status == Status.GOOD and full.ts_ns == T0 + 10 * NS
    later = last(e.feed([s("a", 12, 30.0)]), "avg")  # [2, 12]: 10*2 + 20*6 + 30*2
    assert later.value == pytest.approx((20 + 120 + 60) / 10)


def test_aligned_windows_close_on_input_and_by_the_clock() -> None:
    clock = [T0]
    e = engine(tag("avg", 'function = "average"\ninput = "p/a"\nwindow = "10s"\naligned = true'), clock)
    assert only(e.feed([s("a", 0, 10.0), s("a", 4, 20.0)]), "avg") == []
    closed = only(e.feed([s("a", 12, 30.0)]), "avg")
    assert [(x.ts_ns, x.value, x.status) for x in closed] == [(T0, pytest.approx(16.0), Status.GOOD)]
    clock[0] = T0 + 21 * NS  # [10, 20) ended 1 s ago: within the grace period
    assert e.tick() == []
    clock[0] = T0 + 22 * NS
    ticked = only(e.tick(), "avg")  # 20 held 10..12, 30 from 12: (40 + 240) / 10
    assert [(x.ts_ns, x.value) for x in ticked] == [(T0 + 10 * NS, pytest.approx(28.0))]


def test_window_converts_units() -> None:
    e = engine(tag("m", 'unit = "kPa"\nfunction = "maximum"\ninput = "p/a"\nwindow = "10s"'))
    assert last(e.feed([s("a", 0, 1.5)]), "m").value == pytest.approx(150.0)


# ----------------------------------------------------------------------------------------- totalizer

TOTAL = tag("total", 'unit = "m3"\nfunction = "totalizer"\ninput = "p/flow"\nmax_gap = "15s"')


def test_totalizer_integrates_with_units_and_stops_at_a_gap() -> None:
    e = engine(TOTAL)
    outs = [last(e.feed([s("flow", t, 36.0)]), "total") for t in (0, 10, 20)]
    assert [o.value for o in outs] == [0.0, pytest.approx(0.1), pytest.approx(0.2)]  # 36 m3/h = 0.01 m3/s
    assert all(o.status == Status.GOOD for o in outs)
    gap = last(e.feed([s("flow", 50, 36.0)]), "total")  # 30 s of silence > max_gap: not integrated
    assert gap.value == pytest.approx(0.2) and gap.status == Status.UNCERTAIN_DATA_SUB_NORMAL
    more = last(e.feed([s("flow", 60, 72.0)]), "total")  # stepped: 36 m3/h held from 50 to 60
    assert more.value == pytest.approx(0.3) and more.status == Status.UNCERTAIN_DATA_SUB_NORMAL


def test_totalizer_excludes_a_bad_stretch_and_converts_mass() -> None:
    e = engine(tag("kg", 'unit = "kg"\nfunction = "totalizer"\ninput = "p/mass"'))
    e.feed([s("mass", 0, 3.6)])  # 3.6 t/h = 1 kg/s
    e.feed([s("mass", 10, None, Status.BAD_NO_COMMUNICATION)])  # 0..10 integrated: 10 kg
    bad = last(e.feed([s("mass", 20, 3.6)]), "kg")  # 10..20 was Bad: left out
    assert bad.value == pytest.approx(10.0) and bad.status == Status.UNCERTAIN_DATA_SUB_NORMAL


def test_totalizer_time_base_linear_and_rollover() -> None:
    e = engine(tag("n", 'function = "totalizer"\ninput = "p/raw"\ntime_base = "1m"\ninterpolation = "linear"'))
    e.feed([s("raw", 0, 100.0)])
    assert last(e.feed([s("raw", 30, 140.0)]), "n").value == pytest.approx(60.0)  # mean 120/min for 0.5 min
    e = engine(tag("r", 'unit = "m3"\nfunction = "totalizer"\ninput = "p/flow"\nrollover = 0.25'))
    for t in (0, 10, 20, 30):
        out = last(e.feed([s("flow", t, 36.0)]), "r")
    assert out.value == pytest.approx(0.05)  # 0.3 wrapped at 0.25


def test_totalizer_reset_is_stored_and_integration_continues_from_it() -> None:
    clock = [T0]
    stored: list[Sample] = []
    e = engine(TOTAL, clock)
    e.sink = stored.extend
    e.feed([s("flow", 0, 36.0)])
    e.feed([s("flow", 10, 36.0)])
    clock[0] = T0 + 15 * NS
    reset = e.reset("k/total", 0)
    assert (reset.value, reset.ts_ns, reset.status) == (0.0, T0 + 15 * NS, Status.GOOD)
    assert [x.value for x in stored] == [0.0]
    assert last(e.feed([s("flow", 20, 36.0)]), "total").value == pytest.approx(0.05)  # only 15..20


def test_totalizer_recovers_from_the_buffer_without_loss_or_double_count(tmp_path: Path) -> None:
    """The total's deadband holds some totals back and the last batch's total never reached the
    buffer (as after a SIGKILL between the two): the restart integrates exactly the stored inputs."""
    body = 'unit = "m3"\nfunction = "totalizer"\ninput = "p/flow"\ndeadband = 0.25\nheartbeat = "1h"'
    with Store(tmp_path / "b.db") as store:
        e = engine(tag("total", body))
        for t in range(0, 101, 10):  # 36 m3/h: +0.1 m3 per 10 s
            batch = [s("flow", t, 36.0)]
            computed = e.feed(batch)
            store.append(batch + (computed if t < 100 else []))  # the last total is lost
        stored = [x.value for x in store.samples_of("k/total", after_seq=0)]
        assert stored == [0.0, pytest.approx(0.3), pytest.approx(0.6), pytest.approx(0.9)]  # the deadband's
        again = engine(tag("total", body))
        assert again.recover(store) == 1
        assert only(again.feed([s("flow", 110, 36.0)]), "total") == []  # 1.1: inside the deadband from 0.9
        out = last(again.feed([s("flow", 120, 36.0)]), "total")
    assert out.value == pytest.approx(1.2) and out.status == Status.GOOD  # 120 s of 0.01 m3/s, once


def test_a_new_totalizer_counts_from_its_first_input_not_the_stored_history(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append([s("flow", 0, 36.0), s("flow", 10, 36.0)])
        e = engine(TOTAL)
        assert e.recover(store) == 0
        assert last(e.feed([s("flow", 20, 36.0)]), "total").value == 0.0
        assert last(e.feed([s("flow", 30, 36.0)]), "total").value == pytest.approx(0.1)


async def test_reset_goes_through_the_command_gate_and_is_audited(tmp_path: Path) -> None:
    extra = '[commands]\nenabled = true\ntags = [{ tag = "k/total", sources = ["cli"], allowed = [0] }]\n'
    cfg = load(TOTAL, extra)
    clock = [T0]
    e = Engine(build(cfg.devices, cfg.computed), clock=lambda: clock[0])
    stored: list[Sample] = []
    e.sink = stored.extend
    with Store(tmp_path / "b.db") as store:
        for t in (0, 10):
            batch = [s("flow", t, 36.0)]
            store.append(batch + e.feed(batch))

        async def writer(device: str) -> Any:
            return e.writer(device)

        gate = CommandGate(cfg, AuditTrail.for_store(store), writer, clock=lambda: clock[0])
        refused = await gate.submit(Command("c1", "cli", "ops", "k/total", 5, T0))
        ok = await gate.submit(Command("c2", "cli", "ops", "k/total", 0, T0))
        rows = store.audit_rows()
    assert refused.result == Result.REJECTED and refused.code == "not_allowed"
    assert ok.result == Result.ACCEPTED and ok.readback == 0.0 and ok.old == pytest.approx(0.1)
    assert [x.value for x in stored] == [0.0]
    assert [(r.tag, r.result) for r in rows] == [("k/total", "rejected"), ("k/total", "accepted")]


def test_only_a_totalizer_can_be_listed_for_commands() -> None:
    extra = '[commands]\nenabled = true\ntags = [{ tag = "k/r", sources = ["cli"] }]\n'
    with pytest.raises(ConfigError, match="only a totalizer can"):
        load(tag("r", 'expr = "{p/a}"'), extra)


def test_gate_refuses_a_totalizer_write_that_is_not_a_number() -> None:
    e = engine(TOTAL)
    with pytest.raises(Exception, match="finite number"):
        asyncio.run(e.writer("k").write("total", "zero"))  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------- streams


def test_rate_in_the_units_of_the_tag() -> None:
    e = engine(tag("dpdt", 'unit = "bar/min"\nfunction = "rate"\ninput = "p/a"'))
    assert only(e.feed([s("a", 0, 1.0)]), "dpdt") == []  # one point has no slope
    out = last(e.feed([s("a", 2, 2.0)]), "dpdt")
    assert out.value == pytest.approx(30.0) and out.ts_ns == T0 + 2 * NS  # 0.5 bar/s
    bad = last(e.feed([s("a", 3, None, Status.BAD_SENSOR_FAILURE)]), "dpdt")
    assert bad.value is None and bad.status == Status.BAD_SENSOR_FAILURE


def test_ema_with_a_time_constant() -> None:
    e = engine(tag("f", 'function = "ema"\ninput = "p/raw"\ntime_constant = "10s"'))
    assert last(e.feed([s("raw", 0, 0.0)]), "f").value == 0.0
    assert last(e.feed([s("raw", 10, 10.0)]), "f").value == pytest.approx(10 * (1 - math.exp(-1)))


def test_difference_converts_units() -> None:
    e = engine(tag("d", 'unit = "kPa"\nfunction = "difference"\ninputs = ["p/a", "p/b"]'))
    assert last(e.feed([s("a", 0, 3.0), s("b", 0, 100.0)]), "d").value == pytest.approx(200.0)


VOTE = 'function = "median"\ninputs = ["p/a", "p/b", "p/c"]\nmax_deviation = 1.0\ndeviation_delay = "5s"\nunit = "bar"'


def test_two_out_of_three_voting() -> None:
    e = engine(tag("t", VOTE))
    good = last(e.feed([s("a", 0, 10.0), s("b", 0, 1020.0), s("c", 0, 10.4)]), "t")  # b in kPa: 10.2 bar
    assert good.value == pytest.approx(10.2) and good.status == Status.GOOD
    one_bad = last(e.feed([s("b", 1, None, Status.BAD_SENSOR_FAILURE)]), "t")
    assert one_bad.value == pytest.approx(10.2) and one_bad.status == Status.GOOD  # mean of 10.0 and 10.4
    two_bad = last(e.feed([s("c", 2, None, Status.BAD_SENSOR_FAILURE)]), "t")
    assert two_bad.value == 10.0 and two_bad.status == Status.UNCERTAIN_SUB_NORMAL
    none = last(e.feed([s("a", 3, None, Status.BAD_NO_COMMUNICATION)]), "t")
    assert none.value is None and none.status == Status.BAD_NO_COMMUNICATION


def test_drift_between_redundant_transmitters_turns_the_result_uncertain_after_the_delay() -> None:
    events: list[tuple[str, bool, int]] = []
    cfg = load(tag("t", VOTE))
    e = Engine(build(cfg.devices, cfg.computed), on_event=lambda tag, kind, on, ts, why: events.append((kind, on, ts)))
    e.feed([s("a", 0, 10.0), s("b", 0, 1000.0), s("c", 0, 12.0)])  # 2 bar apart from 0 s
    assert last(e.feed([s("c", 4, 12.0)]), "t").status == Status.GOOD  # not yet 5 s
    drift = last(e.feed([s("c", 5, 12.0)]), "t")
    assert drift.value == pytest.approx(10.0) and drift.status == Status.UNCERTAIN_SENSOR_NOT_ACCURATE
    back = last(e.feed([s("c", 6, 10.5)]), "t")
    assert back.status == Status.GOOD
    assert events == [("drift", True, T0 + 5 * NS), ("drift", False, T0 + 6 * NS)]
    assert e.counters()["drift_raised"] == 1 and e.counters()["drift_cleared"] == 1


def test_mean_of_the_good_ones() -> None:
    e = engine(tag("m", 'function = "mean"\ninputs = ["p/a", "p/c", "p/x"]\nmin_good = 2'))
    out = last(e.feed([s("a", 0, 10.0), s("c", 0, 12.0), s("x", 0, None, Status.BAD)]), "m")
    assert out.value == pytest.approx(11.0) and out.status == Status.GOOD
    out = last(e.feed([s("c", 1, None, Status.BAD)]), "m")
    assert out.value == 10.0 and out.status == Status.UNCERTAIN_SUB_NORMAL


# ----------------------------------------------------------------------------------------- quality


def test_quality_worst_status_min_score_newest_timestamp() -> None:
    e = engine(tag("r", 'expr = "{p/a} + {p/c}"'))
    out = last(e.feed([s("a", 0, 1.0, score=90), s("c", 3, 2.0, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 50)]), "r")
    assert (out.value, out.status, out.score, out.ts_ns) == (3.0, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 50, T0 + 3 * NS)
    out = last(e.feed([s("a", 4, None, Status.BAD_NO_COMMUNICATION)]), "r")
    assert (out.value, out.status, out.score) == (None, Status.BAD_NO_COMMUNICATION, 0)


def test_missing_stale_and_failing_inputs() -> None:
    e = engine(tag("r", 'expr = "{p/a} / {p/c}"\ninput_max_age = "5s"'))
    assert last(e.feed([s("a", 0, 1.0)]), "r").status == Status.BAD_WAITING_FOR_INITIAL_DATA
    assert last(e.feed([s("c", 1, 2.0)]), "r").value == 0.5
    stale = last(e.feed([s("c", 10, 4.0)]), "r")  # a is 10 s older than c
    assert stale.value == 0.25 and stale.status == Status.UNCERTAIN_LAST_USABLE_VALUE
    zero = last(e.feed([s("a", 11, 1.0), s("c", 11, 0.0)]), "r")
    assert zero.value is None and zero.status == Status.BAD_AGGREGATE_INVALID_INPUTS


def test_results_go_through_range_and_deadband_like_measured_tags() -> None:
    e = engine(tag("r", 'expr = "{p/raw} * 2"\nhigh = 10.0\ndeadband = 1.0'))
    assert last(e.feed([s("raw", 0, 1.0)]), "r").value == 2.0
    assert only(e.feed([s("raw", 1, 1.2)]), "r") == []  # 2.4: inside the deadband, not stored
    over = last(e.feed([s("raw", 2, 6.0)]), "r")
    assert over.value == 12.0 and over.status == Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED


def test_chained_computed_tags_see_this_rounds_values() -> None:
    e = engine(tag("b2", 'expr = "{k/a2} + 1"') + tag("a2", 'expr = "{p/raw} * 10"'))
    out = e.feed([s("raw", 0, 2.0)])
    assert [(x.tag, x.value) for x in out] == [("k/a2", 20.0), ("k/b2", 21.0)]


async def test_edged_write_without_a_daemon_stores_the_reset_the_daemon_resumes_from(tmp_path: Path) -> None:
    from edged.commands import write_standalone

    extra = '[commands]\nenabled = true\ntags = [{ tag = "k/total", sources = ["cli"] }]\n'
    cfg = load(TOTAL, extra)
    with Store(tmp_path / "b.db") as store:
        e = Engine(build(cfg.devices, cfg.computed), clock=lambda: T0)
        for t in (0, 10):
            batch = [s("flow", t, 36.0)]
            store.append(batch + e.feed(batch))
        result = await write_standalone(cfg, store, Command("c1", "cli", "ops", "k/total", 0, time.time_ns()))
        assert result.result == Result.ACCEPTED, result
        reset = store.newest_of("k/total")
        assert reset is not None and reset.value == 0.0 and reset.ts_ns > T0 + 10 * NS
        again = Engine(build(cfg.devices, cfg.computed), clock=lambda: T0)
        assert again.recover(store) == 1
        later = reset.ts_ns + 5 * NS
        out = last(again.feed([Sample("p/flow", later, 36.0, Status.GOOD, 100)]), "total")
        rows = store.audit_rows()
    assert out.value == pytest.approx(0.05)  # counted from the reset only: 5 s at 0.01 m3/s
    assert [(r.tag, r.result, r.user) for r in rows] == [("k/total", "accepted", "ops")]


_PIECES = ["a", "b", "{p/a}", "{p/", "}", "{", "1", "2.5", ".5", "1e400", "e", "(", ")", ",", "+", "-", "*", "/",
           "%", "^", "**", "<", "<=", "==", "!=", "!", "&&", "||", "and", "or", "not", "true", "false", "if", "min",
           "max", "sqrt", "log", "pow", "abs", " ", "$", "é", "\n"]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30), st.floats(allow_nan=True), st.floats(-1e6, 1e6))
def test_any_expression_text_parses_or_is_an_expr_error(pieces: list[str], x: float, y: float) -> None:
    """The grammar's only refusal is ExprError (with a column inside the text), and what it accepts
    evaluates or fails with an arithmetic/value error that the engine turns into a Bad result."""
    text = "".join(pieces)
    try:
        tree = parse(text, _resolve)
    except ExprError as exc:
        pos = exc.pos
        assert 0 <= pos <= len(text)  # every refusal names a column inside the text
        return
    from edged.compute.parse import compile_expr

    fn = compile_expr(tree, {}, None, None)
    with contextlib.suppress(ArithmeticError, ValueError, TypeError):
        fn.fn([x, y, x])


def test_a_silent_totalizer_is_stored_again_so_retention_never_trims_it_away() -> None:
    clock = [T0]
    cfg = load(TOTAL)
    e = Engine(build(cfg.devices, cfg.computed), clock=lambda: clock[0], refresh_s=600)
    e.feed([s("flow", 0, 36.0)])
    e.feed([s("flow", 10, 36.0)])
    clock[0] = T0 + 599 * NS  # the gateway clock: both totals were stored at T0
    assert e.tick() == []
    clock[0] = T0 + 600 * NS  # 600 s since the last stored total, the input silent since
    again = e.tick()
    assert [(x.tag, x.ts_ns, x.value) for x in again] == [("k/total", T0 + 10 * NS, pytest.approx(0.1))]
    assert e.tick() == []  # once per refresh period
