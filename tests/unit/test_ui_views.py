"""The web UI's pure parts: trend downsampling keeps spikes, scrypt hashes, the login throttle."""

from __future__ import annotations

from typing import Any

import pytest

from edged.config import ConfigError, parse
from edged.model import Sample, Status
from edged.ui.auth import Throttle, hash_password, verify_password
from edged.ui.views import downsample

S = 1_000_000_000


def test_downsample_keeps_a_one_sample_spike_and_the_worst_quality() -> None:
    samples = [Sample("d/t", i * S, 10.0, Status.GOOD, 100) for i in range(3600)]
    samples[1234] = Sample("d/t", 1234 * S, 95.0, Status.UNCERTAIN_SENSOR_NOT_ACCURATE, 40)
    points = downsample(samples, 0, 3600 * S, buckets=60)
    assert len(points) == 60
    spiky = [p for p in points if p[2] == 95.0]
    assert len(spiky) == 1 and spiky[0][1] == 10.0 and spiky[0][4] == 1.0  # min kept too; Uncertain
    assert all(p[1] == p[2] == 10.0 and p[4] == 0.0 for p in points if p is not spiky[0])
    assert points[0][0] == 0.0 and points[1][0] == 60_000.0  # bucket start, ms


def test_downsample_skips_text_and_nan_and_counts_bools() -> None:
    samples = [Sample("d/t", 0, "auto"), Sample("d/t", 1, float("nan")), Sample("d/t", 2, True)]
    assert downsample(samples, 0, 10, buckets=1) == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_scrypt_hash_round_trip_and_config() -> None:
    h = hash_password("correct horse", n=2**14)
    assert verify_password("correct horse", h) and not verify_password("wrong", h)
    assert h.startswith("scrypt$16384$8$1$") and "correct" not in h
    dev = [{"name": "a", "type": "sim", "tags": [{"name": "x"}]}]
    cfg = parse({"devices": dev, "ui": {"users": {"op": {"password_hash": h, "role": "operator"}}}})
    assert cfg.ui.users["op"].role == "operator"
    with pytest.raises(ConfigError, match=r"ui: users\.op\.password_hash must be a scrypt hash"):
        parse({"devices": dev, "ui": {"users": {"op": {"password_hash": "plain-text"}}}})
    with pytest.raises(ConfigError, match=r"ui\.listen: .*beyond loopback"):
        parse({"devices": dev, "ui": {"listen": "0.0.0.0:8080"}})
    assert not parse({"devices": dev, "ui": {"listen": "0.0.0.0:8080", "allow_insecure": True}}).ui.loopback


def test_throttle_locks_after_the_free_attempts() -> None:
    t = Throttle(free=3)
    for _ in range(3):
        assert t.wait_s("user:a") <= 0
        t.failed("user:a")
    assert t.wait_s("user:a") <= 0  # the third failure is still free
    t.failed("user:a")
    assert t.wait_s("user:a") > 1.0 and t.wait_s("user:b") <= 0
    t.succeeded("user:a")
    assert t.wait_s("user:a") <= 0


def test_alarm_list_puts_what_needs_the_operator_first_and_counts_annunciated_ones() -> None:
    from types import SimpleNamespace

    from edged.alarms.engine import AlarmEngine
    from edged.ui.views import alarm_count_fields, alarm_counts, alarm_list, shelve_choices

    dev = [{"name": "d", "type": "sim", "tags": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}]
    alarms = {"sources": ["ui"], "max_shelve": "2h", "tags": [
        {"tag": "d/a", "type": "hi", "limit": 1.0, "priority": "low"},
        {"tag": "d/b", "type": "hi", "limit": 1.0, "priority": "urgent"},
        {"tag": "d/c", "type": "hi", "limit": 1.0, "priority": "high"}]}  # fmt: skip
    cfg = parse({"devices": dev, "alarms": alarms})
    engine = AlarmEngine(cfg.alarms, clock=lambda: 10 * S)
    engine.feed([Sample("d/a", 1 * S, 5.0), Sample("d/b", 1 * S, 0.0), Sample("d/c", 2 * S, 5.0)])
    engine.command("d/c#alarm/hi", "ack", None, user="op", source="ui")
    daemon: Any = SimpleNamespace(alarms=engine)
    order = [(r["path"], r["state"]) for r in alarm_list(daemon)]
    assert order == [("d/a#alarm/hi", "unack"), ("d/c#alarm/hi", "acked"), ("d/b#alarm/hi", "normal")]
    assert alarm_list(daemon)[0]["since_ns"] == 1 * S and alarm_list(daemon)[1]["since_ns"] == 10 * S  # the ack
    assert alarm_counts(daemon) == {"configured": 3, "active": 2, "unacknowledged": 1, "shelved": 0,
                                    "out_of_service": 0}  # fmt: skip
    engine.command("d/a#alarm/hi", "shelve", 600.0, user="op", source="ui")
    assert [r["path"] for r in alarm_list(daemon)][-1] == "d/a#alarm/hi"  # shelved: last
    assert alarm_count_fields(daemon)["alarms-unacked"] == ("0", "good")  # a shelved alarm is not annunciated
    assert shelve_choices(7200.0) == ["15m", "1h", "2h"] and shelve_choices(8 * 3600.0)[-1] == "8h"
    assert alarm_counts(SimpleNamespace(alarms=None))["configured"] == 0  # type: ignore[arg-type]
