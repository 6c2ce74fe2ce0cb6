"""Samples per second through `TagProcessor.process`, and the median/MAD options for the spike check.
Prints figures; asserts nothing.

    .venv/bin/python bench/quality.py [--samples 200000]

Profiles: plain tags (range check only), every check on (unit conversion, calibration table, range,
rate, flat line, spike over 31 samples, staleness, calibration due), and spike detection alone.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import random
import statistics
import time
import timeit
from collections import deque
from collections.abc import Callable
from typing import Any

from machine import machine

from drivers.sim import Config as SimConfig
from drivers.sim import SimTag
from edged.config import Duration, QualityConfig, TableCalibration
from edged.model import Sample, Status
from edged.quality import TagProcessor

N_TAGS = 100
BATCH = 100  # one poll of 100 tags


def device(**tag_fields: Any) -> SimConfig:
    return SimConfig(name="bench", type="sim", tags=[SimTag(name=f"t{i}", **tag_fields) for i in range(N_TAGS)])


PROFILES: dict[str, Callable[[], SimConfig]] = {
    "plain (range only)": lambda: device(unit="bar", low=0.0, high=1000.0),
    "spike only (window 31)": lambda: device(quality=QualityConfig(spike_mad=6.0, spike_window=31)),
    "every check on": lambda: device(
        unit="bar",
        source_unit="psi",
        low=0.0,
        high=1000.0,
        calibration=TableCalibration(raw=[0.0, 10.0, 20.0, 40.0, 80.0], actual=[0.0, 10.1, 20.3, 40.2, 80.0]),
        calibration_due=datetime.date(2100, 1, 1),
        quality=QualityConfig(
            max_rate=1e6,
            flatline=Duration(3600.0),
            flatline_tolerance=1e-9,
            spike_mad=6.0,
            spike_window=31,
            stale_after=Duration(60.0),
        ),
    ),
    "every check on, spline table": lambda: device(
        unit="bar",
        source_unit="psi",
        low=0.0,
        high=1000.0,
        calibration=TableCalibration(
            raw=[0.0, 10.0, 20.0, 40.0, 80.0], actual=[0.0, 10.1, 20.3, 40.2, 80.0], method="spline"
        ),
        quality=QualityConfig(max_rate=1e6, flatline=Duration(3600.0), spike_mad=6.0, stale_after=Duration(60.0)),
    ),
}


def batches(n_samples: int) -> list[list[Sample]]:
    rng = random.Random(1)
    t0 = time.time_ns()
    out = []
    for b in range(n_samples // BATCH):
        ts = t0 + b * 10_000_000
        out.append([Sample(f"bench/t{i}", ts, 50.0 + rng.gauss(0.0, 1.0), Status.GOOD, 100) for i in range(BATCH)])
    return out


def run_profile(make: Callable[[], SimConfig], data: list[list[Sample]]) -> float:
    proc = TagProcessor(make(), clock=lambda: data[0][0].ts_ns)
    t = time.perf_counter()
    n = 0
    for batch in data:
        n += len(proc.process(batch))
    took = time.perf_counter() - t
    assert n == sum(map(len, data))
    return n / took


def median_options(window: int = 31) -> None:
    rng = random.Random(2)
    win = deque((rng.gauss(0, 1) for _ in range(window)), maxlen=window)
    ranked = sorted(win)
    h = window // 2

    def stats_median() -> float:
        m = statistics.median(win)
        return statistics.median([abs(v - m) for v in win])

    def sorted_twice() -> float:
        s = sorted(win)
        m = s[h]
        return sorted([abs(v - m) for v in s])[h]

    def numpy_median() -> float:
        import numpy as np

        a = np.fromiter(win, float, window)
        m = np.median(a)
        return float(np.median(np.abs(a - m)))

    def kept_sorted_bisect() -> float:  # what edged.quality does: window kept sorted, MAD test by counting
        x = rng.gauss(0, 1)
        del ranked[bisect.bisect_left(ranked, win[0])]
        bisect.insort(ranked, x)
        m = ranked[h]
        r = 0.5
        inside = bisect.bisect_left(ranked, m + r) - bisect.bisect_right(ranked, m - r)
        # undo, to keep the window identical between calls
        del ranked[bisect.bisect_left(ranked, x)]
        bisect.insort(ranked, win[0])
        return float(inside)

    print(f"\nmedian + MAD over a {window}-sample window (us per sample):")
    for f in (stats_median, sorted_twice, numpy_median, kept_sorted_bisect):
        n = 20_000 if f is not numpy_median else 2_000
        print(f"  {f.__name__:<22} {timeit.timeit(f, number=n) / n * 1e6:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"{N_TAGS} tags, batches of {BATCH}, {args.samples} samples per profile, best of 3\n")
    data = batches(args.samples)
    for name, make in PROFILES.items():
        best = max(run_profile(make, data) for _ in range(3))
        print(f"  {name:<30} {best:>10,.0f} samples/s  ({1e6 / best:.2f} us/sample)")
    median_options()


if __name__ == "__main__":
    main()
