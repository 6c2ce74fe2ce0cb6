"""Bytes per sample on the wire, and encode/decode throughput, for every payload encoding and compression
(edged.protocols.payload). Prints figures; asserts nothing.

    PYTHONPATH=$PWD .venv/bin/python bench/payload.py [--tags 500] [--seconds 120] [--decimals 3]

The plant: `--tags` tags on devices of 50, polled at 1 Hz, each device stamping its poll with the
gateway clock in ns (a few ms of scheduling jitter, as the sim driver does), seqs assigned in arrival
order as the buffer does. Signals as the sim driver makes them (sine, ramp, random walk, step, stuck,
noise, counter, bool), floats rounded to `--decimals` (the tag's `decimals` setting), a rare
Uncertain sample. Batches of 1000 and 5000 samples, as an uplink's `batch_size`.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine

from edged.model import Batch, Sample, Status, Value
from edged.protocols.payload import COMPRESSIONS, ENCODINGS, Encoder, decode_columns, decompress

SIGNALS = ("sine", "ramp", "random_walk", "step", "stuck", "noisy", "counter", "bool")
UNITS = {"sine": "bar", "ramp": "m3/h", "random_walk": "degC", "step": "%", "stuck": "bar", "noisy": "kW"}
S = 1_000_000_000


def plant(n_tags: int, seconds: int, decimals: int | None, seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    tags = []
    for i in range(n_tags):
        signal = SIGNALS[i % len(SIGNALS)]
        tags.append(
            {
                "name": f"line{i // 50}/{signal}_{i:03d}",
                "signal": signal,
                "unit": UNITS.get(signal),
                "offset": rng.uniform(-50.0, 500.0),
                "amplitude": rng.uniform(0.5, 50.0),
                "period": rng.choice((30.0, 60.0, 300.0, 3600.0)),
                "state": 0.0,
            }
        )
    devices = [tags[k : k + 50] for k in range(0, n_tags, 50)]
    t0 = 1_795_510_686 * S
    seq = 1_795_510_686_670_234
    out: list[Sample] = []
    for second in range(seconds):
        order = list(range(len(devices)))
        rng.shuffle(order)
        for d in order:
            ts = t0 + second * S + d * 7_000_000 + rng.randrange(3_000_000)  # poll time + jitter, ns
            t = ts / S
            for tag in devices[d]:
                value = _value(tag, t, rng)
                if isinstance(value, float) and decimals is not None:
                    value = round(value, decimals)
                status, score = Status.GOOD, 100
                if rng.random() < 0.001:
                    status, score = Status.UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, 40
                out.append(Sample(tag["name"], ts, value, status, score, tag["unit"], seq))
                seq += 1
    return out


def _value(tag: dict[str, object], t: float, rng: random.Random) -> Value:
    offset, amplitude, period = float(tag["offset"]), float(tag["amplitude"]), float(tag["period"])
    phase = (t % period) / period
    match tag["signal"]:
        case "sine":
            return offset + amplitude * math.sin(2 * math.pi * phase) + rng.gauss(0.0, amplitude * 0.002)
        case "ramp":
            return offset + amplitude * phase
        case "random_walk":
            tag["state"] = float(tag["state"]) + rng.gauss(0.0, amplitude * 0.01)
            return offset + float(tag["state"])
        case "step":
            return offset + (amplitude if phase >= 0.5 else 0.0)
        case "stuck":
            return offset
        case "noisy":
            return offset + rng.gauss(0.0, amplitude * 0.05)
        case "counter":
            tag["state"] = float(tag["state"]) + 1
            return int(tag["state"])
        case _:
            return phase >= 0.5


def batches(samples: list[Sample], size: int) -> list[Batch]:
    out = []
    for k in range(0, len(samples) - size + 1, size):
        part = samples[k : k + size]
        assert part[0].seq is not None and part[-1].seq is not None
        out.append(Batch("plant1-gw1", part[0].seq, part[-1].seq, False, part))
    return out


def timed(fn: Callable[[Any], object], items: list[Any], repeat: int = 3) -> float:
    """Best of `repeat` runs of `fn` over every item, seconds."""
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--decimals", type=int, default=3, help="round floats to this many decimals; -1: no rounding")
    args = ap.parse_args()
    decimals = None if args.decimals < 0 else args.decimals
    print(machine())
    samples = plant(args.tags, args.seconds, decimals)
    print(f"{args.tags} tags, 1 Hz, {args.seconds} s: {len(samples):,} samples, floats at {decimals} decimals\n")
    import msgspec

    rows_decoder = msgspec.json.Decoder()
    for size in (1000, 5000):
        group = batches(samples, size)
        n = len(group) * size
        print(f"batch_size {size} ({len(group)} batches)")
        print(f"  {'encoding':<9} {'compression':<11} {'B/sample':>9} {'encode':>13} {'decode':>13}")
        for encoding in ENCODINGS:
            for compression in COMPRESSIONS:
                enc = Encoder(encoding=encoding, compression=compression)
                payloads = [enc.encode(b) for b in group]
                per = sum(map(len, payloads)) / n
                t_enc = timed(enc.encode, group)
                if encoding == "columns":
                    t_dec, how = timed(decode_columns, payloads), "decode_columns"
                else:
                    t_dec, how = timed(lambda x: rows_decoder.decode(decompress(x)), payloads), "msgspec"
                print(
                    f"  {encoding:<9} {compression:<11} {per:9.2f} {n / t_enc / 1e3:8.0f}k/s   "
                    f"{n / t_dec / 1e3:8.0f}k/s ({how})"
                )
        print()
    sizes = [len(Encoder(encoding="columns", compression="zstd").encode(b)) / 5000 for b in batches(samples, 5000)]
    mean, lo, hi = statistics.mean(sizes), min(sizes), max(sizes)
    print(f"columns + zstd, batch 5000: {mean:.2f} B/sample per batch (min {lo:.2f}, max {hi:.2f})")


if __name__ == "__main__":
    main()
