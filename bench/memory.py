"""Peak RSS of the daemon with many tags (default 2,000 sim tags at 1 Hz into a file uplink).

    .venv/bin/python bench/memory.py [--tags 2000] [--seconds 30]

Starts `edged run` as its own process and reads VmHWM/VmRSS from /proc: the figure includes the
interpreter, msgspec, SQLite's page cache and the file uplink. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine


def proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=2000)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        per = args.tags // args.devices
        parts = [f'[gateway]\nid = "mem"\ndata_dir = "{tmp / "data"}"\n']
        for dev in range(args.devices):
            parts.append(f'[[devices]]\nname = "d{dev}"\ntype = "sim"\ninterval = "1s"\nseed = {dev}\n')
            for t in range(per):
                sig = ("sine", "random_walk", "noisy", "counter")[t % 4]
                parts.append(
                    f'[[devices.tags]]\nname = "t{t}"\nsignal = "{sig}"\nunit = "bar"\nlow = -10.0\nhigh = 10.0\n'
                )
        parts.append('[[uplinks]]\nname = "archive"\ntype = "file"\nfsync = false\n')
        cfg = tmp / "edged.toml"
        cfg.write_text("".join(parts))
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            start_rss = proc_kb(proc.pid, "VmRSS")
            time.sleep(max(0.0, args.seconds - 3))
            hwm, rss = proc_kb(proc.pid, "VmHWM"), proc_kb(proc.pid, "VmRSS")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        lines = sum(1 for _ in (tmp / "data" / "samples.jsonl").open())
    print(
        f"{args.tags:,} tags on {args.devices} sim devices at 1 Hz for {args.seconds:.0f}s: {lines:,} samples delivered"
    )
    print(
        f"RSS after 3 s {start_rss / 1024:.1f} MiB, at the end {rss / 1024:.1f} MiB, peak (VmHWM) {hwm / 1024:.1f} MiB"
    )


if __name__ == "__main__":
    main()
