"""The alarm state machine of ISA-18.2 / IEC 62682, pure: no clock, no I/O, times are arguments.

Two layers, so each can be checked on its own:

- the *condition*: a detector turns each sample into raw-active / raw-inactive / unknown (with its
  deadband as hysteresis), and the on-delay / off-delay debounce turns the raw condition into the
  alarm's `active` flag: a change takes effect only once the raw condition held for the whole
  delay (by source time, or by the clock in `tick` while no newer sample contradicts it);
- the *annunciation*: (active, acknowledged) -> one of four states, changed only along
  `TRANSITIONS`. Shelving and out-of-service are suppression, orthogonal to the four states: a
  shelved alarm goes on changing state (its history stays true), it is only not annunciated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from edged.model import Severity, Value, severity


class State(StrEnum):
    NORMAL = "normal"  # inactive, acknowledged
    UNACK = "unack"  # active, unacknowledged
    ACKED = "acked"  # active, acknowledged
    RTN_UNACK = "rtn_unack"  # returned to normal, unacknowledged

    @property
    def active(self) -> bool:
        return self in (State.UNACK, State.ACKED)

    @property
    def acked(self) -> bool:
        return self in (State.NORMAL, State.ACKED)


# (state, what happened) -> new state. Anything not listed cannot happen.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.NORMAL, "active"): State.UNACK,
    (State.UNACK, "cleared"): State.RTN_UNACK,
    (State.UNACK, "ack"): State.ACKED,
    (State.ACKED, "cleared"): State.NORMAL,
    (State.RTN_UNACK, "active"): State.UNACK,
    (State.RTN_UNACK, "ack"): State.NORMAL,
}


def state_of(active: bool, acked: bool) -> State:
    if active:
        return State.ACKED if acked else State.UNACK
    return State.NORMAL if acked else State.RTN_UNACK


# ----------------------------------------------------------------------------------------- detectors


class Detector:
    """Raw condition of one alarm from one sample: True (alarm), False (no alarm), None (unknown:
    the previous raw condition holds). `active` is the alarm's debounced state: the deadband
    (hysteresis) applies on the way back from an active alarm, so while an on-delay runs every
    sample is beyond the limit itself, and while an off-delay runs every one is past the deadband."""

    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        raise NotImplementedError


def _number(value: Value, status: int) -> float | None:
    """A usable number: a Bad sample, a non-number or NaN is unknown (the limit alarms hold: a
    failed transmitter is the bad-quality alarm's business, not a cleared HI)."""
    if severity(status) == Severity.BAD or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Limit(Detector):
    """HI/HIHI (`high`): alarm above `limit`, back to normal at or below `limit - deadband`;
    LO/LOLO: alarm below `limit`, normal at or above `limit + deadband`."""

    def __init__(self, limit: float, deadband: float, high: bool) -> None:
        self.limit, self.deadband, self.high = limit, deadband, high

    def judge(self, x: float, active: bool) -> bool:
        if self.high:
            return x > self.limit - self.deadband if active else x > self.limit
        return x < self.limit + self.deadband if active else x < self.limit

    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        x = _number(value, status)
        return None if x is None else self.judge(x, active)


class Deviation(Limit):
    """|value - setpoint| above `limit` (normal at or below limit - deadband); the setpoint is
    another tag's newest usable value (`setpoint_seen`)."""

    def __init__(self, limit: float, deadband: float) -> None:
        super().__init__(limit, deadband, True)
        self.setpoint: float | None = None
        self.pv: float | None = None

    def setpoint_seen(self, value: Value, status: int, active: bool) -> bool | None:
        self.setpoint = _number(value, status)
        return self._judge(active)

    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        self.pv = _number(value, status)
        return self._judge(active)

    def _judge(self, active: bool) -> bool | None:
        if self.pv is None or self.setpoint is None:
            return None
        return self.judge(abs(self.pv - self.setpoint), active)


class Rate(Limit):
    """|change per `per_s` seconds| between consecutive usable samples above `limit`."""

    def __init__(self, limit: float, deadband: float, per_s: float) -> None:
        super().__init__(limit, deadband, True)
        self.per_s = per_s
        self.last: tuple[int, float] | None = None

    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        x = _number(value, status)
        if x is None:
            return None
        if self.last is not None and ts_ns <= self.last[0]:
            return None  # out of time order: ignored
        last, self.last = self.last, (ts_ns, x)
        if last is None:
            return None
        rate = abs(x - last[1]) / ((ts_ns - last[0]) / 1e9) * self.per_s
        return self.judge(rate, active)


class BadQuality(Detector):
    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        return severity(status) == Severity.BAD


class Discrete(Detector):
    """A boolean or state tag: alarm while the value is `alarm_value` (a Bad sample is unknown)."""

    def __init__(self, alarm_value: bool | int | str) -> None:
        self.alarm_value = alarm_value

    def see(self, value: Value, status: int, ts_ns: int, active: bool) -> bool | None:
        if severity(status) == Severity.BAD or value is None:
            return None
        a = self.alarm_value
        if isinstance(a, bool) or isinstance(value, bool):
            return type(value) is type(a) and value == a
        return bool(value == a)


# ----------------------------------------------------------------------------------------- one alarm


@dataclass(frozen=True, slots=True)
class Change:
    """One transition: `what` is active | cleared | ack; `before` -> `after` along TRANSITIONS."""

    what: str
    ts_ns: int
    before: State
    after: State


class Machine:
    """One alarm's debounce and annunciation. `observe` takes the raw condition of a sample,
    `tick` completes a delay by the clock, `ack` acknowledges. Each returns the Changes it made."""

    def __init__(self, on_delay_ns: int = 0, off_delay_ns: int = 0, state: State = State.NORMAL) -> None:
        self.on_delay_ns = on_delay_ns
        self.off_delay_ns = off_delay_ns
        self.state = state
        self.pending: tuple[bool, int] | None = None  # (raw condition, since) while a delay runs

    @property
    def active(self) -> bool:
        return self.state.active

    def observe(self, raw: bool | None, ts_ns: int) -> list[Change]:
        if raw is None:
            return []
        if raw == self.active:
            self.pending = None  # the condition came back before its delay ran out
            return []
        if self.pending is None or self.pending[0] != raw:
            self.pending = (raw, ts_ns)
        return self._due(ts_ns)

    def tick(self, now_ns: int) -> list[Change]:
        """The raw condition held since `pending` and nothing newer said otherwise: by `now_ns`
        its delay may have run out."""
        return self._due(now_ns) if self.pending is not None else []

    def _due(self, now_ns: int) -> list[Change]:
        assert self.pending is not None
        raw, since = self.pending
        delay = self.on_delay_ns if raw else self.off_delay_ns
        if now_ns - since < delay:
            return []
        self.pending = None
        return [self._go("active" if raw else "cleared", since + delay)]

    def ack(self, ts_ns: int) -> Change | None:
        """None when there is nothing to acknowledge (normal, or active and acknowledged)."""
        if self.state.acked:
            return None
        return self._go("ack", ts_ns)

    def _go(self, what: str, ts_ns: int) -> Change:
        before = self.state
        after = TRANSITIONS[(before, what)]  # a KeyError here is a bug: an impossible transition
        self.state = after
        return Change(what, ts_ns, before, after)
