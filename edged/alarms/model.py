"""An alarm event as stored and delivered: a `Sample` on the alarm's path (`<tag>#alarm/<name>`)
whose value is the event as JSON text. Stored in the samples table like any sample, so the buffer's
guarantees (seq, acknowledgements, gap records, replay, `edged replay`) apply unchanged; uplinks
recognise the path (`is_alarm_path`) and publish the decoded event their own way."""

from __future__ import annotations

import re

import msgspec

from edged.alarms.config import split_path
from edged.model import Sample, Status, Value

EVENTS = ("active", "cleared", "ack", "shelved", "unshelved", "refresh", "flood")


class AlarmEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One alarm event. `n` is the alarm event number: the gateway's own sequence of alarm events,
    one higher for every event stored, so a receiver sees a missing one (the buffer seq of the
    sample carrying it is the delivery sequence, shared with the samples)."""

    n: int
    event: str  # one of EVENTS
    tag: str  # the tag (a flood summary: the device)
    alarm: str  # the alarm's name ("flood" for a summary)
    type: str  # hi | hihi | lo | lolo | deviation | rate | bad_quality | discrete | drift | flood
    state: str  # normal | unack | acked | rtn_unack (edged.alarms.state.State)
    active: bool = False
    acked: bool = True
    shelved_until_ns: int | None = None  # shelved until then (None: not shelved)
    priority: int = 500  # severity 1..1000 (low 250, medium 500, high 700, urgent 900)
    message: str = ""
    value: Value = None  # the tag's value that made the change
    limit: float | None = None
    user: str | None = None  # ack / shelve: who, as the command gate recorded it
    source: str | None = None  # ack / shelve: the command source ("cli", an uplink); "expiry"
    suppressed: int = 0  # flood: events not stored individually in the last second
    states: dict[str, str] = {}  # flood: alarm path -> its state after the suppressed events


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(AlarmEvent)


def to_sample(path: str, ts_ns: int, event: AlarmEvent) -> Sample:
    return Sample(path, ts_ns, _enc.encode(event).decode(), Status.GOOD, 100, None)


def from_sample(s: Sample) -> AlarmEvent | None:
    """The event a stored alarm sample carries; None for anything else (never raises)."""
    if not isinstance(s.value, str):
        return None
    try:
        return _dec.decode(s.value)
    except msgspec.DecodeError:
        return None


def event_dict(s: Sample, *, historical: bool = False) -> dict[str, object]:
    """An alarm sample as uplinks publish it: the event's fields, the path, time, seq and whether
    it is replayed (historical). A sample that is not an event yields its raw value."""
    ev = from_sample(s)
    doc: dict[str, object] = msgspec.structs.asdict(ev) if ev is not None else {"raw": s.value}
    if ev is not None and ev.event != "flood":
        del doc["suppressed"], doc["states"]
    tag, name = split_path(s.tag)
    doc.setdefault("tag", tag)
    doc.setdefault("alarm", name)
    doc.update(path=s.tag, ts_ns=s.ts_ns, seq=s.seq, historical=historical)
    return doc


_SHELVE = re.compile(r"^shelve(?:[\s:]+(?P<d>\S+))?$")


def parse_action(value: Value, max_shelve_s: float) -> tuple[str, float | None] | str:
    """A command's value on an alarm path: "ack", "unshelve" or "shelve <duration>" (default and
    at most `max_shelve`). Returns (action, seconds) or why it is refused."""
    from edged.config import Duration

    if not isinstance(value, str):
        return f'{value!r} is not an alarm action: "ack", "shelve 1h" or "unshelve"'
    text = value.strip().lower()
    if text in ("ack", "acknowledge"):
        return ("ack", None)
    if text == "unshelve":
        return ("unshelve", None)
    m = _SHELVE.match(text)
    if m is None:
        return f'{value!r} is not an alarm action: "ack", "shelve 1h" or "unshelve"'
    if m.group("d") is None:
        return ("shelve", max_shelve_s)
    try:
        seconds = float(Duration.parse(m.group("d")))
    except ValueError as exc:
        return f"shelve duration: {exc}"
    if not 0 < seconds <= max_shelve_s:
        return f"a shelve lasts more than 0s and at most max_shelve ({max_shelve_s:g}s), not {seconds:g}s"
    return ("shelve", seconds)
