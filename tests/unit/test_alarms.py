"""Process alarms on their own, with an injected clock: the ISA-18.2 state machine never makes an
impossible transition, deadband and delays hold (hypothesis against a reference of the inputs),
each alarm type, flood protection, recovery from a real buffer, acknowledge and shelve through the
command gate (audited), and the config errors."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.store import Store
from edged.alarms.config import is_alarm_path
from edged.alarms.engine import AlarmEngine, Refused
from edged.alarms.model import from_sample, parse_action
from edged.alarms.state import TRANSITIONS, Limit, Machine, State
from edged.commands import AuditTrail, Command, CommandGate, Result
from edged.config import Config
from edged.config import parse as parse_config
from edged.errors import ConfigError
from edged.model import Sample, Status

NS = 1_000_000_000
MS = 1_000_000
T0 = 1_790_000_000 * NS

PLANT = """
[gateway]
id = "gw"
data_dir = "/tmp/unused"
[[devices]]
name = "p"
type = "sim"
tags = [{ name = "t", unit = "degC" }, { name = "sp", unit = "degC" }, { name = "run" }, { name = "u" }]
"""


def load(alarms: str, extra: str = "") -> Config:
    return parse_config(tomllib.loads(PLANT + extra + "\n" + alarms), file="t.toml")


def engine(alarms: str, clock: list[int]) -> AlarmEngine:
    return AlarmEngine(load(alarms).alarms, clock=lambda: clock[0])


def s(tag: str, t: float, value: Any, status: int = Status.GOOD) -> Sample:
    return Sample(f"p/{tag}", T0 + round(t * NS), value, status, 100)


def events(samples: list[Sample]) -> list[tuple[str, str, str]]:
    out = []
    for x in samples:
        ev = from_sample(x)
        assert ev is not None and is_alarm_path(x.tag)
        out.append((x.tag, ev.event, ev.state))
    return out


# ----------------------------------------------------------------------------------------- the machine

step = st.one_of(
    st.tuples(st.just("sample"), st.integers(0, 5000), st.floats(80, 120, allow_nan=False)),
    st.tuples(st.just("bad"), st.integers(0, 5000), st.just(0.0)),
    st.tuples(st.just("tick"), st.integers(0, 5000), st.just(0.0)),
    st.tuples(st.just("ack"), st.integers(0, 5000), st.just(0.0)),
)


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(step, max_size=60),
    limit=st.floats(90, 110),
    deadband=st.floats(0, 5),
    on_ms=st.integers(0, 3000),
    off_ms=st.integers(0, 3000),
    high=st.booleans(),
)
def test_machine_transitions_deadband_and_delays(
    steps: list[tuple[str, int, float]], limit: float, deadband: float, on_ms: int, off_ms: int, high: bool
) -> None:
    det = Limit(limit, deadband, high)
    m = Machine(on_ms * MS, off_ms * MS)
    now = 0
    seen: list[tuple[int, float]] = []  # (ts, value) of every usable sample

    def beyond(x: float) -> bool:  # alarm side of the limit itself
        return x > limit if high else x < limit

    def back(x: float) -> bool:  # normal side of the deadband
        return x <= limit - deadband if high else x >= limit + deadband

    for kind, dt_ms, value in steps:
        now += max(dt_ms, 1 if kind in ("sample", "bad") else 0) * MS  # one sample per instant
        before = m.state
        if kind == "sample":
            seen.append((now, value))
            changes = m.observe(det.see(value, Status.GOOD, now, m.active), now)
        elif kind == "bad":
            changes = m.observe(det.see(None, Status.BAD_SENSOR_FAILURE, now, m.active), now)
        elif kind == "tick":
            changes = m.tick(now)
        else:
            c = m.ack(now)
            changes = [c] if c is not None else []
            assert (c is None) == before.acked  # only an unacknowledged state can be acknowledged
        for c in changes:
            # never an impossible transition
            assert TRANSITIONS[(c.before, c.what)] == c.after
            assert c.ts_ns <= now
            if c.what in ("active", "cleared"):
                delay = on_ms * MS if c.what == "active" else off_ms * MS
                since = c.ts_ns - delay
                window = [v for t, v in seen if since <= t <= c.ts_ns]
                assert any(t == since for t, _ in seen), "a delay starts at a sample"
                ok = beyond if c.what == "active" else back
                assert all(ok(v) for v in window), (c, window)  # the condition held for the whole delay
        if changes:
            assert changes[0].before == before
            assert changes[-1].after == m.state
        else:
            assert m.state == before
        assert m.state.active == m.active
    # liveness: once the delays have run out, the state follows the last usable value
    last = [v for _, v in seen]
    m.tick(now + 3001 * MS)
    if last and beyond(last[-1]):
        assert m.active
    if last and back(last[-1]):
        assert not m.active


def test_states_by_hand() -> None:
    m = Machine()
    assert [c.after for c in m.observe(True, 1)] == [State.UNACK]
    assert m.ack(2) is not None and m.state == State.ACKED
    assert m.ack(3) is None  # nothing to acknowledge
    assert [c.after for c in m.observe(False, 4)] == [State.NORMAL]
    m.observe(True, 5)
    assert [c.after for c in m.observe(False, 6)] == [State.RTN_UNACK]
    assert [c.after for c in m.observe(True, 7)] == [State.UNACK]  # back before it was acknowledged
    m.observe(False, 8)
    assert m.ack(9) is not None and m.state == State.NORMAL


# ----------------------------------------------------------------------------------------- the engine


def test_limit_alarm_deadband_on_delay_and_tick() -> None:
    clock = [T0]
    e = engine(
        '[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nlimit = 100.0\ndeadband = 2.0\non_delay = "5s"\n'
        'priority = "high"\nmessage = "too hot"',
        clock,
    )
    assert e.feed([s("t", 0, 101.0)]) == []  # the on-delay runs
    clock[0] = T0 + 3 * NS
    assert e.tick() == []
    clock[0] = T0 + 6 * NS
    out = e.tick()  # no new sample (deadband): the clock completes the delay
    assert events(out) == [("p/t#alarm/hi", "active", "unack")]
    assert out[0].ts_ns == T0 + 5 * NS  # stamped when it took effect
    ev = from_sample(out[0])
    assert ev is not None and ev.priority == 700 and ev.message == "too hot" and ev.limit == 100.0
    assert e.feed([s("t", 7, 99.0)]) == []  # inside the deadband: still active
    assert events(e.feed([s("t", 8, 97.9)])) == [("p/t#alarm/hi", "cleared", "rtn_unack")]
    assert e.summary()["unacknowledged"] == 1 and e.summary()["active"] == 0


def test_each_type() -> None:
    clock = [T0]
    e = engine(
        """
[[alarms.tags]]
tag = "p/t"
type = "lolo"
limit = 10.0
[[alarms.tags]]
tag = "p/t"
type = "deviation"
setpoint = "p/sp"
limit = 5.0
[[alarms.tags]]
tag = "p/t"
type = "rate"
limit = 1.0
per = "1m"
[[alarms.tags]]
tag = "p/t"
type = "bad_quality"
[[alarms.tags]]
tag = "p/run"
type = "discrete"
value = false
[[alarms.tags]]
tag = "p/u"
type = "hi"
limit = 1.0
out_of_service = true
""",
        clock,
    )
    assert e.feed([s("sp", 0, 50.0), s("t", 0, 50.0)]) == []
    assert events(e.feed([s("sp", 1, 56.0)])) == [("p/t#alarm/deviation", "active", "unack")]
    # 50 -> 52 in 60 s is 2 per minute: above 1/min
    got = events(e.feed([s("t", 61, 52.0)]))
    assert ("p/t#alarm/rate", "active", "unack") in got and ("p/t#alarm/deviation", "cleared", "rtn_unack") in got
    assert events(e.feed([s("t", 62, None, Status.BAD_SENSOR_FAILURE)])) == [
        ("p/t#alarm/bad_quality", "active", "unack")
    ]  # the limit alarms hold on a Bad sample
    assert set(events(e.feed([s("t", 63, 9.0)]))) == {
        ("p/t#alarm/lolo", "active", "unack"),
        ("p/t#alarm/bad_quality", "cleared", "rtn_unack"),
        ("p/t#alarm/deviation", "active", "unack"),  # 9 against the setpoint 56
    }
    assert events(e.feed([s("run", 64, False)])) == [("p/run#alarm/discrete", "active", "unack")]
    assert e.feed([s("u", 65, 5.0)]) == []  # out of service: never evaluated
    assert e.summary()["out_of_service"] == 1


def test_flood_summarised_and_counted() -> None:
    clock = [T0]
    tags = "\n".join(f'[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nname = "h{i}"\nlimit = {i}.0' for i in range(10))
    e = engine("[alarms]\nflood_limit = 3\n" + tags, clock)
    out = e.feed([s("t", 0, 100.0)])  # ten alarms at once
    assert len(out) == 3
    assert e.counts["suppressed"] == 7
    clock[0] = T0 + NS
    flood = e.tick()
    assert len(flood) == 1 and flood[0].tag == "p/#alarm/flood"
    ev = from_sample(flood[0])
    assert ev is not None and ev.event == "flood" and ev.suppressed == 7 and len(ev.states) == 7
    assert set(ev.states.values()) == {"unack"}
    assert e.summary()["unacknowledged"] == 10  # the state of every alarm changed all the same


def test_recovery_from_a_real_buffer(tmp_path: Path) -> None:
    clock = [T0]
    tags = "\n".join(f'[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nname = "h{i}"\nlimit = {i}.0' for i in range(5))
    cfg = "[alarms]\nflood_limit = 2\n" + tags
    e = engine(cfg, clock)
    with Store(tmp_path / "b.db") as store:
        store.append(e.feed([s("t", 0, 100.0)]))
        _, _, ack = e.command("p/t#alarm/h0", "ack", None, user="op", source="cli")
        store.append([ack])
        clock[0] = T0 + NS
        store.append(e.tick())  # the flood summary of the three suppressed
        nums = [from_sample(x).n for x in store.read(0, 2**62, 100)[0]]  # type: ignore[union-attr]
        assert nums == list(range(nums[0], nums[0] + len(nums)))  # the own sequence has no holes
        again = engine(cfg, clock)
        assert again.recover(store) == 5
        assert again.alarms["p/t#alarm/h0"].state == State.ACKED
        assert all(again.alarms[f"p/t#alarm/h{i}"].state == State.UNACK for i in range(1, 5))
        ev = from_sample(again.feed([s("t", 2, -100.0)])[0])
        assert ev is not None and ev.n == nums[-1] + 1  # numbering resumes after the newest stored


def test_shelve_expires_and_refresh(tmp_path: Path) -> None:
    clock = [T0]
    e = AlarmEngine(load('[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nlimit = 1.0').alarms, clock=lambda: clock[0],
                    refresh_s=60)  # fmt: skip
    e.feed([s("t", 0, 5.0)])
    before, after, _ = e.command("p/t#alarm/hi", "shelve", 30.0, user="op", source="cli")
    assert (before, after) == ("unack", "unack shelved")
    assert e.summary()["shelved"] == 1
    clock[0] = T0 + 31 * NS
    assert events(e.tick()) == [("p/t#alarm/hi", "unshelved", "unack")]
    clock[0] = T0 + 92 * NS
    assert events(e.tick()) == [("p/t#alarm/hi", "refresh", "unack")]  # a non-normal state is stored again
    with pytest.raises(Refused):
        e.command("p/t#alarm/hi", "unshelve", None, user="op", source="cli")


def test_parse_action() -> None:
    assert parse_action("ack", 3600) == ("ack", None)
    assert parse_action("shelve 30m", 3600) == ("shelve", 1800.0)
    assert parse_action("shelve", 3600) == ("shelve", 3600.0)
    assert isinstance(parse_action("shelve 2h", 3600), str)
    assert isinstance(parse_action(1, 3600), str)


# ----------------------------------------------------------------------------------------- the gate


def test_ack_and_shelve_through_the_gate_audited(tmp_path: Path) -> None:
    cfg = load('[commands]\nenabled = true\n[alarms]\nsources = ["cli"]\n[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\n'
               'limit = 1.0')  # fmt: skip
    clock = [T0]
    e = AlarmEngine(cfg.alarms, clock=lambda: clock[0])
    e.feed([s("t", 0, 5.0)])
    stored: list[Sample] = []

    async def handler(path: str, action: str, secs: float | None, user: str | None, source: str) -> tuple[str, str]:
        before, after, ev = e.command(path, action, secs, user=user, source=source)
        stored.append(ev)
        return before, after

    async def main(store: Store) -> list[Any]:
        gate = CommandGate(cfg, AuditTrail.for_store(store), _none, clock=lambda: clock[0], alarms=handler)
        out = []
        for i, (src, value) in enumerate([("cli", "ack"), ("cli", "ack"), ("mqtt-x", "ack"), ("cli", "shelve 1h"),
                                          ("cli", "dance")]):  # fmt: skip
            cmd = Command(f"c{i}", src, "op", "p/t#alarm/hi", value, clock[0])
            out.append(await gate.submit(cmd))
        out.append(await gate.submit(Command("c9", "cli", "op", "p/t#alarm/nope", "ack", clock[0])))
        return out

    with Store(tmp_path / "b.db") as store:
        results = asyncio.run(main(store))
        rows = store.audit_rows()
    assert [(r.result, r.code) for r in results] == [
        (Result.ACCEPTED, "ok"),
        (Result.REJECTED, "not_allowed"),  # nothing to acknowledge any more
        (Result.REJECTED, "unauthorised"),
        (Result.ACCEPTED, "ok"),
        (Result.REJECTED, "type"),
        (Result.REJECTED, "unknown_tag"),
    ]
    assert results[0].old == "unack" and results[0].readback == "acked"
    assert [from_sample(x).event for x in stored] == ["ack", "shelved"]  # type: ignore[union-attr]
    assert len(rows) == 6 and rows[0].tag == "p/t#alarm/hi" and rows[0].result == "accepted"


async def _none(device: str) -> None:
    return None


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("alarms", "needle"),
    [
        ('[[alarms.tags]]\ntag = "p/nope"\ntype = "hi"\nlimit = 1.0', "unknown tag 'p/nope'"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "hi"', "needs a finite limit"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "deviation"\nlimit = 1.0', "needs setpoint"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "discrete"\nlimit = 1.0', "limit does not apply"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nlimit = 1.0\n' * 2, "a second alarm named 'hi'"),
        ('[alarms]\nsources = ["scada"]', "unknown source 'scada'"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "hi"\nlimit = 1.0\npriority = 5000', "priority"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "drift"', "computed median or mean"),
        ('[[alarms.tags]]\ntag = "p/t"\ntype = "bad_quality"\ndeadband = 1.0', "deadband applies"),
    ],
)
def test_config_errors(alarms: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(alarms)
    assert needle in str(err.value) and "alarms" in str(err.value)
