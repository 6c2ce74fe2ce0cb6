"""Computed tags: evaluations per second of 1,000 computed tags over a 2,000-tag plant (engine
alone, injected clock), and the CPU a real `edged run` of a 2,000-tag sim plant spends with and
without them. Prints figures; asserts nothing.

    .venv/bin/python bench/compute.py [--rounds 300] [--seconds 20]

The 1,000 computed tags are a plant-like mix: 400 expressions, 100 differences, 150 sliding
1-minute averages, 50 aligned 1-minute maxima, 100 totalizers, 100 2oo3 votes with the drift
check, 50 rates, 50 EMAs. Inputs are polled at 1 Hz, 2,000 tags per round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine

from edged.compute.engine import Engine
from edged.compute.plan import build
from edged.config import load
from edged.model import Sample

N_DEVICES, N_PER_DEVICE = 20, 100  # 2,000 plant tags
NS = 1_000_000_000


def plant(data: Path, interval: str) -> str:
    out = [f'[gateway]\nid = "bench"\ndata_dir = "{data}"\n[buffer]\nretention = "1h"\n']
    for d in range(N_DEVICES):
        out.append(f'[[devices]]\nname = "d{d}"\ntype = "sim"\ninterval = "{interval}"\nseed = {d}\n')
        for t in range(N_PER_DEVICE):
            out.append(f'[[devices.tags]]\nname = "t{t}"\nsignal = "noisy"\noffset = 50.0\namplitude = 5.0\n'
                       f'unit = "{"t/h" if t % 10 == 0 else "bar"}"\n')  # fmt: skip
    return "".join(out)


def computed() -> str:
    out = ['[[computed]]\nname = "c"\n']

    def tag(name: str, body: str) -> None:
        out.append(f'[[computed.tags]]\nname = "{name}"\n{body}\n')

    def src(i: int, t: int = 1) -> str:
        return f"d{i % N_DEVICES}/t{1 + (t + i // N_DEVICES) % 9}"  # a bar tag (t1..t9)

    for i in range(400):
        tag(f"e{i}", f'expr = "if({{{src(i)}}} > 50, {{{src(i)}}} * 1.02 - {{{src(i + 1)}}}, abs({{{src(i + 2)}}}))"\n'
                     'unit = "bar"')  # fmt: skip
    for i in range(100):
        tag(f"d{i}", f'function = "difference"\ninputs = ["{src(i)}", "{src(i + 3)}"]\nunit = "kPa"')
    for i in range(150):
        tag(f"a{i}", f'function = "average"\ninput = "{src(i)}"\nwindow = "1m"')
    for i in range(50):
        tag(f"m{i}", f'function = "maximum"\ninput = "{src(i)}"\nwindow = "1m"\naligned = true')
    for i in range(100):
        tag(f"tot{i}", f'function = "totalizer"\ninput = "d{i % N_DEVICES}/t0"\nunit = "t"\nmax_gap = "1m"')
    for i in range(100):
        three = ", ".join(f'"{src(i, t)}"' for t in (1, 4, 7))
        tag(f"v{i}", f'function = "median"\ninputs = [{three}]\nmax_deviation = 30.0\ndeviation_delay = "10s"')
    for i in range(50):
        tag(f"r{i}", f'function = "rate"\ninput = "{src(i)}"\nunit = "bar/min"')
    for i in range(50):
        tag(f"f{i}", f'function = "ema"\ninput = "{src(i)}"\ntime_constant = "30s"')
    return "".join(out)


def engine_rate(tmp: Path, rounds: int) -> None:
    cfg_path = tmp / "engine.toml"
    cfg_path.write_text(plant(tmp / "e", "1s") + computed())
    cfg = load(cfg_path)
    plans = build(cfg.devices, cfg.computed)
    clock = [1_790_000_000 * NS]
    eng = Engine(plans, clock=lambda: clock[0])
    tags = [d.tag_path(t) for d in cfg.devices for t in d.tags]
    import random

    rng = random.Random(1)
    batches = []
    for r in range(rounds):
        ts = clock[0] + r * NS
        batches.append([Sample(tag, ts, 50.0 + rng.gauss(0, 5), 0, 100, None) for tag in tags])
    t0 = time.perf_counter()
    produced = 0
    for batch in batches:
        clock[0] = batch[0].ts_ns
        produced += len(eng.feed(batch))
        produced += len(eng.tick(clock[0]))
    dt = time.perf_counter() - t0
    evals = eng.evaluations
    print(f"engine: {len(plans)} computed tags over {len(tags)} inputs, {rounds} rounds of 1 s (source time)")
    print(f"  {evals / dt:,.0f} evaluations/s, {rounds / dt:,.1f} rounds/s, {dt / rounds * 1e3:.2f} ms per round "
          f"({produced} samples to store)")  # fmt: skip
    print(f"  -> at 1 Hz polling: {dt / rounds * 100:.1f} % of one core for the 1,000 computed tags")


def cpu_of_run(cfg: Path, seconds: float) -> float:
    """CPU seconds per wall second of `edged run` on this config (after a 3 s warm-up, via rusage)."""
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3.0)
        stat0 = _proc_cpu(proc.pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        stat1 = _proc_cpu(proc.pid)
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    return (stat1 - stat0) / wall


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--skip-daemon", action="store_true")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        engine_rate(tmp, args.rounds)
        if args.skip_daemon:
            return
        results = {}
        for label, extra in (("plant only", ""), ("plant + 1,000 computed", computed())):
            cfg = tmp / f"{len(results)}.toml"
            cfg.write_text(plant(tmp / f"data{len(results)}", "1s") + extra)
            results[label] = cpu_of_run(cfg, args.seconds)
            print(f"edged run, 2,000 sim tags at 1 Hz, {label}: {results[label] * 100:.1f} % of one core")
        base, with_c = results.values()
        print(f"  added by the computed tags: {(with_c - base) * 100:.1f} % of one core")


if __name__ == "__main__":
    main()
