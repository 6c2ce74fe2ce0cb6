"""The web UI's pure parts: trend downsampling keeps spikes, scrypt hashes, the login throttle."""

from __future__ import annotations

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
