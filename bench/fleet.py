"""A fleet of gateways into one NATS JetStream cluster: prints figures, asserts nothing.

A three-node nats-server cluster with JetStream on 127.0.0.1 (tests/peers/nats_cluster.py) holds one
stream EDGED (subjects edged.*.*, replicas 3, file storage). N simulated gateways, each a real buffer
(its own SQLite file), Sender and nats uplink, run in a few worker processes (one event loop each).

- live: every gateway puts `--rate` samples/s for `--seconds`; the figures are the aggregate samples/s
  acknowledged by the stream and the PubAck latency (send to PubAck, window queueing included).
- backlog: every gateway starts with `--backlog` samples owed and drains it as fast as it can: the
  aggregate samples/s into the stream, the PubAck latency under saturation.

For each phase, the CPU seconds of the worker processes and of the three servers are printed: on a
small machine that says what limits it (the senders' Python, or the servers' replication).

Run: .venv/bin/python bench/fleet.py [--gateways 20] [--workers 2] [--rate 1000] [--backlog 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from buffer import Buffer  # noqa: E402
from edged.config import BufferConfig  # noqa: E402
from edged.delivery import Sender  # noqa: E402
from edged.model import Batch, Sample, Status  # noqa: E402
from edged.plugin import Backoff, PluginContext  # noqa: E402
from peers.nats_cluster import NatsCluster  # noqa: E402
from uplink.nats import Config, Uplink  # noqa: E402

STREAM = "EDGED"
TAGS = 100


class TimedUplink(Uplink):
    """The nats uplink, timing each send from the call to its PubAck."""

    latencies: list[float]

    async def send(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        await super().send(batch)
        self.latencies.append(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ worker


async def gateway(
    name: str, workdir: Path, args: argparse.Namespace, go: asyncio.Event, out: dict[str, Any], lat: list[float]
) -> None:
    cfg = Config(
        name="fleet", type="nats", servers=args.servers.split(","), stream=STREAM, batch_size=args.batch_size,
        encoding=args.encoding, compression=args.compression, max_inflight=args.inflight,
    )  # type: ignore[arg-type]  # fmt: skip
    ctx = PluginContext(name, workdir, logging.getLogger("fleet"))

    def factory() -> TimedUplink:
        up = TimedUplink(cfg, ctx)
        up.latencies = lat
        return up

    async with Buffer(workdir / f"{name}.db", BufferConfig(flush_interval=0.05)) as buf:  # type: ignore[arg-type]
        if args.phase == "backlog":
            t0 = time.time_ns() - 3600 * 10**9
            for lo in range(0, args.backlog, 10_000):
                n = min(10_000, args.backlog - lo)
                buf.put(
                    [Sample(f"dev/t{k % TAGS}", t0 + (lo + k) * 10**6, float(k), Status.GOOD, 100) for k in range(n)]
                )
                await buf.flush()
        await go.wait()
        sender = Sender(buf, cfg, factory, gateway_id=name, log=logging.getLogger("fleet"), backoff=Backoff(0.2, 2.0))
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(buf.run_writer(), name=f"writer:{name}")
            run = tg.create_task(sender.run(), name=f"sender:{name}")
            if args.phase == "live":
                end = time.monotonic() + args.seconds
                tick = TAGS / args.rate
                i = 0
                while time.monotonic() < end:
                    buf.put([Sample(f"dev/t{k}", time.time_ns(), float(i), Status.GOOD, 100) for k in range(TAGS)])
                    i += 1
                    await asyncio.sleep(tick)
            await buf.flush()
            deadline = time.monotonic() + 120
            while await buf.call(buf.store.unacked, "fleet", buf.head, limit=1):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            out[name] = {"done": time.time(), "samples": sender.stats.sent_live + sender.stats.sent_historical,
                         "batches": sender.stats.batches, "errors": sender.stats.errors}  # fmt: skip
            run.cancel()
            writer.cancel()


async def worker(args: argparse.Namespace) -> None:
    names = [f"gw{i:03d}" for i in range(args.first, args.first + args.count)]
    workdir = Path(args.workdir)
    go = asyncio.Event()
    out: dict[str, Any] = {}
    lat: list[float] = []
    loop = asyncio.get_running_loop()

    async def wait_go() -> None:
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        go.set()

    async with asyncio.TaskGroup() as tg:
        for n in names:
            tg.create_task(gateway(n, workdir, args, go, out, lat), name=f"gateway:{n}")
        await wait_go()
        cpu0 = time.process_time()  # after the backlog fill: only the delivery is counted
    cpu = time.process_time() - cpu0
    print(json.dumps({"gateways": out, "latencies": lat, "cpu": cpu}), flush=True)


# ------------------------------------------------------------------------------------------ parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def create_stream(cluster: NatsCluster) -> None:
    await cluster.wait_ready()
    body = {"name": STREAM, "subjects": ["edged.*.*"], "num_replicas": 3, "storage": "file",
            "duplicate_window": 3600 * 10**9}  # fmt: skip
    doc = await cluster.wait_api(f"STREAM.CREATE.{STREAM}", body)
    if "error" in doc and doc["error"].get("err_code") != 10058:  # 10058: exists already
        raise RuntimeError(f"stream create: {doc['error']}")
    await cluster.leader(STREAM)


def run_phase(args: argparse.Namespace, cluster: NatsCluster, workdir: Path, phase: str) -> dict[str, Any]:
    per = [args.gateways // args.workers + (1 if i < args.gateways % args.workers else 0) for i in range(args.workers)]
    procs, first = [], 0
    (workdir / phase).mkdir(exist_ok=True)
    for count in per:
        cmd = [sys.executable, __file__, "--worker", "--phase", phase, "--first", str(first), "--count", str(count),
               "--workdir", str(workdir / phase), "--servers", ",".join(cluster.urls)]  # fmt: skip
        for key in ("rate", "seconds", "backlog", "batch_size", "encoding", "compression", "inflight"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        first += count
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker failed to start")
    servers = [n.proc.pid for n in cluster.nodes if n.proc]
    cpu0 = sum(cpu_seconds(p) for p in servers)
    t0 = time.time()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    cpu1 = sum(cpu_seconds(p) for p in servers)
    workers = sum(r["cpu"] for r in results)
    gws = {k: v for r in results for k, v in r["gateways"].items()}
    lat = [x for r in results for x in r["latencies"]]
    end = max(g["done"] for g in gws.values())
    samples = sum(g["samples"] for g in gws.values())
    return {"phase": phase, "seconds": end - t0, "samples": samples, "rate": samples / (end - t0),
            "batches": sum(g["batches"] for g in gws.values()), "errors": sum(g["errors"] for g in gws.values()),
            "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000,
            "cpu_servers": cpu1 - cpu0, "cpu_workers": workers}  # fmt: skip


async def stream_state(cluster: NatsCluster) -> dict[str, Any]:
    return dict((await cluster.stream_info(STREAM))["state"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1000.0, help="samples/s per gateway in the live phase")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backlog", type=int, default=20_000, help="samples owed per gateway in the backlog phase")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--encoding", default="columns")
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--phases", default="live,backlog")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--servers", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.python_version()}, nats-server 3 nodes, R3 file")
    print(f"# {args.gateways} gateways in {args.workers} processes, batch_size {args.batch_size}, "
          f"{args.encoding}+{args.compression}, max_inflight {args.inflight}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = NatsCluster(workdir / "nats", size=3)
        cluster.start()
        try:
            asyncio.run(create_stream(cluster))
            for phase in args.phases.split(","):
                before = asyncio.run(stream_state(cluster))
                r = run_phase(args, cluster, workdir, phase)
                after = asyncio.run(stream_state(cluster))
                msgs = after["messages"] - before["messages"]
                offered = f", offered {args.gateways * args.rate:.0f}/s" if phase == "live" else ""
                print(f"{phase}: {r['samples']} samples in {r['seconds']:.1f} s = {r['rate']:,.0f} samples/s at the "
                      f"stream{offered}; {msgs} messages stored for {r['batches']} PubAcks, {r['errors']} errors; "
                      f"PubAck p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; CPU servers "
                      f"{r['cpu_servers']:.1f} s, workers {r['cpu_workers']:.1f} s")  # fmt: skip
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
