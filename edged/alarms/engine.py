"""The alarm layer: fed the samples about to be stored (measured and computed, after their own
processing), it returns the alarm events to store beside them, in the same list and so the same
transaction. Acknowledge and shelve arrive through the command gate (`command`). The engine's
clock is injected; the state machine itself is pure (edged.alarms.state).

Durability: an event is a stored sample (edged.alarms.model), so it is delivered, acknowledged,
replayed and counted in gap records like any sample. At start `recover` rebuilds every alarm's
state and the event number from the newest stored events; a non-normal alarm's state is stored
again (`refresh`) well within the retention, so trimming never loses it.

Flood protection: at most `flood_limit` process events (active, cleared) per second per device are
stored one by one; the state of the others still changes, and one `flood` event per device and
second stores how many were summarised and the state each such alarm was left in (recovery reads
it too). Operator actions (ack, shelve) are never summarised: each went through the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edged.alarms.config import FLOOD, AlarmsConfig, AlarmTag, flood_path
from edged.alarms.model import AlarmEvent, from_sample, to_sample
from edged.alarms.state import (
    BadQuality,
    Change,
    Detector,
    Deviation,
    Discrete,
    Limit,
    Machine,
    Rate,
    State,
)
from edged.model import Sample, Value

if TYPE_CHECKING:
    from buffer.store import Store

log = logging.getLogger("edged.alarms")
NS = 1_000_000_000


class Refused(Exception):
    """An alarm command that cannot be carried out: (gate code, reason)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def detector(cfg: AlarmTag) -> Detector | None:
    if cfg.type in ("hi", "hihi", "lo", "lolo"):
        assert cfg.limit is not None
        return Limit(cfg.limit, cfg.deadband, cfg.type in ("hi", "hihi"))
    if cfg.type == "deviation":
        assert cfg.limit is not None
        return Deviation(cfg.limit, cfg.deadband)
    if cfg.type == "rate":
        assert cfg.limit is not None
        return Rate(cfg.limit, cfg.deadband, float(cfg.per))
    if cfg.type == "bad_quality":
        return BadQuality()
    if cfg.type == "discrete":
        return Discrete(cfg.value)
    return None  # drift: raised by the compute engine's event hook


@dataclass(slots=True)
class Alarm:
    cfg: AlarmTag
    path: str
    device: str
    detector: Detector | None
    machine: Machine
    shelved_until: int | None = None
    value: Value = None
    stored_ns: int = 0  # when (clock) its state was last stored, for the refresh
    since_ns: int = 0  # when its state last changed (active, cleared, ack): the web UI's "since"

    @property
    def state(self) -> State:
        return self.machine.state


@dataclass(slots=True)
class _Flood:
    second: int = -1
    count: int = 0
    suppressed: int = 0
    states: dict[str, str] = field(default_factory=dict)
    ts_ns: int = 0


class AlarmEngine:
    def __init__(
        self,
        config: AlarmsConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        refresh_s: float = 3600.0,
    ) -> None:
        self.config = config
        self._clock = clock
        self._refresh_ns = int(refresh_s * NS)
        self.alarms: dict[str, Alarm] = {}
        self._by_tag: dict[str, list[Alarm]] = {}
        self._by_setpoint: dict[str, list[Alarm]] = {}
        for cfg in config.tags:
            delays = (int(cfg.on_delay * NS), int(cfg.off_delay * NS))
            a = Alarm(cfg, cfg.path, cfg.tag.split("/", 1)[0], detector(cfg), Machine(*delays))
            self.alarms[a.path] = a
            if cfg.out_of_service:
                continue
            self._by_tag.setdefault(cfg.tag, []).append(a)
            if cfg.setpoint is not None:
                self._by_setpoint.setdefault(cfg.setpoint, []).append(a)
        self._n: int | None = None  # the next event number; set by recover (or on first use)
        self._floods: dict[str, _Flood] = {}
        self._hooked: list[Sample] = []  # events raised by the compute engine's hook, until the next feed
        self.counts: dict[str, int] = {"events": 0, "suppressed": 0, "acks": 0, "shelves": 0}

    # ------------------------------------------------------------------ feeding

    def feed(self, samples: Iterable[Sample]) -> list[Sample]:
        """The alarm events `samples` (about to be stored) lead to."""
        out, self._hooked = self._hooked, []
        by_tag, by_sp = self._by_tag, self._by_setpoint
        for s in samples:
            found = by_tag.get(s.tag)
            if found is not None:
                for a in found:
                    if a.detector is None:
                        continue
                    a.value = s.value
                    raw = a.detector.see(s.value, s.status, s.ts_ns, a.machine.active)
                    self._changes(a, a.machine.observe(raw, s.ts_ns), out)
            sp = by_sp.get(s.tag)
            if sp is not None:
                for a in sp:
                    assert isinstance(a.detector, Deviation)
                    raw = a.detector.setpoint_seen(s.value, s.status, a.machine.active)
                    self._changes(a, a.machine.observe(raw, s.ts_ns), out)
        return out

    def hook(self, tag: str, kind: str, active: bool, ts_ns: int, detail: str) -> None:
        """The compute engine's event hook (drift of redundant transmitters): a `drift` alarm on
        the tag follows it. Its events go out with the next `feed` (the same round's samples)."""
        for a in self._by_tag.get(tag, []):
            if a.cfg.type == kind:
                a.value = detail
                self._changes(a, a.machine.observe(active, ts_ns), self._hooked)

    def tick(self, now_ns: int | None = None) -> list[Sample]:
        """Once a second: delays that ran out while no sample came, shelves that expired, flood
        summaries of the last second, and the refresh of non-normal states."""
        now = self._clock() if now_ns is None else now_ns
        out, self._hooked = self._hooked, []
        for a in self.alarms.values():
            if a.cfg.out_of_service:
                continue
            self._changes(a, a.machine.tick(now), out)
            if a.shelved_until is not None and now >= a.shelved_until:
                expired, a.shelved_until = a.shelved_until, None
                out.append(self._event(a, "unshelved", expired, source="expiry"))
            elif (a.state != State.NORMAL or a.shelved_until is not None) and now - a.stored_ns >= self._refresh_ns:
                out.append(self._event(a, "refresh", now))
        out.extend(self._summaries(now, force=False))
        return out

    def _changes(self, a: Alarm, changes: list[Change], out: list[Sample]) -> None:
        for c in changes:
            f = self._floods.get(a.device)
            if f is None:
                f = self._floods[a.device] = _Flood()
            second = self._clock() // NS
            if second != f.second:
                out.extend(self._summary(a.device, f))
                f.second, f.count = second, 0
            if f.count >= self.config.flood_limit:
                f.suppressed += 1
                f.states[a.path] = c.after.value
                f.ts_ns = max(f.ts_ns, c.ts_ns)
                a.stored_ns = self._clock()  # the flood summary stores its state
                self.counts["suppressed"] += 1
                continue
            f.count += 1
            out.append(self._event(a, c.what, c.ts_ns))

    def _summaries(self, now: int, *, force: bool) -> list[Sample]:
        out: list[Sample] = []
        second = now // NS
        for device, f in self._floods.items():
            if force or second != f.second:
                out.extend(self._summary(device, f))
        return out

    def _summary(self, device: str, f: _Flood) -> list[Sample]:
        if not f.suppressed:
            return []
        ev = AlarmEvent(n=self._next(), event=FLOOD, tag=device, alarm=FLOOD, type=FLOOD, state="normal",
                        suppressed=f.suppressed, states=dict(f.states), priority=1000,
                        message=f"alarm flood: {f.suppressed} events of {len(f.states)} alarms summarised")  # fmt: skip
        log.warning("alarms of device %s: flood, %d events summarised (flood_limit %d/s)", device, f.suppressed,
                    self.config.flood_limit, extra={"device": device})  # fmt: skip
        f.suppressed, f.states = 0, {}
        self.counts["events"] += 1
        return [to_sample(flood_path(device), f.ts_ns, ev)]

    def flush(self) -> list[Sample]:
        """Pending summaries, at a stop."""
        out, self._hooked = self._hooked, []
        return out + self._summaries(self._clock(), force=True)

    # ------------------------------------------------------------------ events

    def _next(self) -> int:
        if self._n is None:
            self._n = self._clock() // 1000  # nothing stored to continue from: above any earlier run
        n = self._n
        self._n += 1
        return n

    def _event(self, a: Alarm, what: str, ts_ns: int, *, user: str | None = None, source: str | None = None) -> Sample:
        cfg, st = a.cfg, a.state
        ev = AlarmEvent(
            n=self._next(), event=what, tag=cfg.tag, alarm=cfg.name or cfg.type, type=cfg.type, state=st.value,
            active=st.active, acked=st.acked, shelved_until_ns=a.shelved_until, priority=cfg.severity,
            message=cfg.message, value=a.value, limit=cfg.limit, user=user, source=source,
        )  # fmt: skip
        a.stored_ns = self._clock()
        if what in ("active", "cleared", "ack"):
            a.since_ns = ts_ns
        self.counts["events"] += 1
        if what in ("active", "cleared"):
            (log.warning if what == "active" else log.info)(
                "alarm %s %s: %s (value %r)", a.path, what, st.value, a.value, extra={"alarm": a.path}
            )
        return to_sample(a.path, ts_ns, ev)

    # ------------------------------------------------------------------ commands

    def command(
        self, path: str, action: str, seconds: float | None, *, user: str | None, source: str
    ) -> tuple[str, str, Sample]:
        """Acknowledge, shelve or unshelve (the gate authorised and audits it): (state before,
        state after, the event to store). Raises Refused when there is nothing to do."""
        a = self.alarms.get(path)
        if a is None:
            raise Refused("unknown_tag", f"unknown alarm {path!r}")
        if a.cfg.out_of_service:
            raise Refused("not_allowed", f"{path} is out of service (config)")
        now = self._clock()
        before = a.state.value + (" shelved" if a.shelved_until is not None else "")
        if action == "ack":
            change = a.machine.ack(now)
            if change is None:
                raise Refused("not_allowed", f"nothing to acknowledge: {path} is {a.state.value}")
            self.counts["acks"] += 1
            ev = self._event(a, "ack", now, user=user, source=source)
        elif action == "shelve":
            assert seconds is not None
            a.shelved_until = now + int(seconds * NS)
            self.counts["shelves"] += 1
            ev = self._event(a, "shelved", now, user=user, source=source)
        elif action == "unshelve":
            if a.shelved_until is None:
                raise Refused("not_allowed", f"{path} is not shelved")
            a.shelved_until = None
            ev = self._event(a, "unshelved", now, user=user, source=source)
        else:
            raise Refused("type", f"unknown alarm action {action!r}")
        after = a.state.value + (" shelved" if a.shelved_until is not None else "")
        return before, after, ev

    # ------------------------------------------------------------------ recovery

    def recover(self, store: Store) -> int:
        """Each alarm's state from the newest stored events (its own, and its device's flood
        summary when that is newer), and the event number after the highest stored. Runs on the
        buffer thread before the first feed; returns how many alarms resumed a stored state."""
        devices = sorted({a.device for a in self.alarms.values()})
        floods = {d: flood_path(d) for d in devices}
        newest = {s.tag: s for s in store.newest_of_tags([*self.alarms, *floods.values()])}
        events = {tag: ev for tag, s in newest.items() if (ev := from_sample(s)) is not None}
        top = max((ev.n for ev in events.values()), default=None)
        if top is not None:
            self._n = top + 1
        resumed = 0
        now = self._clock()
        for a in self.alarms.values():
            own = events.get(a.path)
            flood = events.get(floods[a.device])
            state: str | None = own.state if own is not None else None
            if flood is not None and a.path in flood.states and (own is None or flood.n > own.n):
                state = flood.states[a.path]
            if own is not None and own.shelved_until_ns is not None and own.shelved_until_ns > now:
                a.shelved_until = own.shelved_until_ns
            if own is not None:
                a.value = own.value
                a.since_ns = newest[a.path].ts_ns  # a refresh's time when that is the newest event
            if state is None:
                continue
            try:
                st = State(state)
            except ValueError:
                continue
            a.machine.state = st
            a.stored_ns = now
            resumed += 1
        return resumed

    # ------------------------------------------------------------------ status

    def summary(self) -> dict[str, Any]:
        """For status.json, `edged status` and /metrics."""
        active = unacked = shelved = oos = 0
        for a in self.alarms.values():
            if a.cfg.out_of_service:
                oos += 1
                continue
            shelved += a.shelved_until is not None
            active += a.state.active
            unacked += not a.state.acked
        listed = [self.describe(a) for a in self.alarms.values() if a.state != State.NORMAL or a.shelved_until]
        return {"configured": len(self.alarms), "active": active, "unacknowledged": unacked, "shelved": shelved,
                "out_of_service": oos, **self.counts, "list": listed}  # fmt: skip

    @staticmethod
    def describe(a: Alarm) -> dict[str, Any]:
        cfg = a.cfg
        return {
            "path": a.path, "state": a.state.value, "priority": cfg.severity, "message": cfg.message,
            "shelved_until_ns": a.shelved_until, "out_of_service": cfg.out_of_service, "value": a.value,
            "since_ns": a.since_ns or None,
        }  # fmt: skip
