"""Per-tag quality checks applied to every sample before it is stored.

The driver reports what it knows (the device answered, the value decoded); this stage adds what
the configuration knows (engineering range, deadband). State per tag is O(1) and bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edged.config import DeviceBase
from edged.model import Sample, Severity, Status, severity

SCORE_UNCERTAIN = 60


@dataclass(slots=True)
class _Rule:
    low: float | None
    high: float | None
    deadband: float
    heartbeat_ns: int | None
    last_value: float | int | bool | str | None = None
    last_status: int | None = None
    last_ts: int = 0


def _outside(rule: _Rule, value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return (rule.low is not None and value < rule.low) or (rule.high is not None and value > rule.high)


class TagProcessor:
    """Range and NaN checks plus deadband/heartbeat filtering for one device's tags."""

    def __init__(self, device: DeviceBase) -> None:
        self._rules = {
            device.tag_path(t): _Rule(
                t.low, t.high, t.deadband, int(t.heartbeat * 1e9) if t.heartbeat is not None else None
            )
            for t in device.tags
        }

    def process(self, samples: list[Sample]) -> list[Sample]:
        out: list[Sample] = []
        rules = self._rules
        for s in samples:
            rule = rules.get(s.tag)
            value, status, score = s.value, s.status, s.score
            if isinstance(value, float) and not math.isfinite(value):
                value, status, score = None, Status.BAD_SENSOR_FAILURE, 0  # NaN/inf is never Good
            elif rule is not None and _outside(rule, value):
                if severity(status) == Severity.GOOD:
                    status = Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
                score = min(score, SCORE_UNCERTAIN - 20)
            if severity(status) == Severity.BAD:
                score = 0
            elif severity(status) == Severity.UNCERTAIN:
                score = min(score, SCORE_UNCERTAIN)
            if rule is not None:
                if self._suppressed(rule, s.ts_ns, value, status):
                    continue
                rule.last_value, rule.last_status, rule.last_ts = value, status, s.ts_ns
            if value is s.value and status == s.status and score == s.score:
                out.append(s)
            else:
                out.append(Sample(s.tag, s.ts_ns, value, status, score, s.unit, s.seq))
        return out

    @staticmethod
    def _suppressed(rule: _Rule, ts: int, value: object, status: int) -> bool:
        """Inside the deadband, same status, and the heartbeat not yet due: nothing new to store."""
        if rule.deadband <= 0 or rule.last_status != status:
            return False
        last = rule.last_value
        if not isinstance(value, (int, float)) or not isinstance(last, (int, float)):
            return False
        if abs(value - last) >= rule.deadband:
            return False
        return rule.heartbeat_ns is None or ts - rule.last_ts < rule.heartbeat_ns
