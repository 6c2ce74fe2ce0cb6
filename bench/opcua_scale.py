"""OPC UA server uplink at scale: N tags updating at 1 Hz, K asyncua clients subscribed to all.

    PYTHONPATH=$PWD .venv/bin/python bench/opcua_scale.py [--tags 10000] [--clients 1] [--seconds 20]

Prints: time to start the server and the longest the event loop was blocked meanwhile; then, over
the measured window, data-change notifications produced (tags x clients per second), sent by the
server (counted in asyncua's subscriptions) and received by the clients, the server's CPU (share
of one core) and RSS, how long each 1 Hz round of `Uplink.send` took and the loop's worst lag.

The clients run in another process (`--client`, started by this script) so their decoding is not
the server's CPU; on a 2-core box they still compete for the second core. The samples go straight
into `Uplink.send` in batches of 1000 (as the Sender hands them), no buffer or driver involved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine

GATEWAY = "bench"
NAMESPACE = f"urn:edged:{GATEWAY}"
PER_DEVICE = 100
BATCH = 1000


def paths(tags: int) -> list[str]:
    return [f"dev{i // PER_DEVICE:03d}/t{i % PER_DEVICE:03d}" for i in range(tags)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class GcPauses:
    """The longest garbage collection (the standard address space is ~10^5 objects: a full
    collection walks them all)."""

    def __init__(self) -> None:
        import gc

        self.worst = 0.0
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.worst = max(self.worst, time.perf_counter() - self._t)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


class Lag:
    """The event loop's lateness: a 10 ms ticker records how late it wakes up."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


# ----------------------------------------------------------------------------------------- client side


async def client_main(endpoint: str, tags: int, clients: int, seconds: float) -> None:
    from asyncua import Client, ua

    counts = [0] * clients

    class Handler:
        def __init__(self, i: int) -> None:
            self.i = i

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            counts[self.i] += 1

    logging.basicConfig(level=logging.CRITICAL)  # a lost client says so in its result, not in tracebacks
    async with contextlib.AsyncExitStack() as stack:
        for i in range(clients):
            c = Client(endpoint, timeout=120, watchdog_intervall=600)  # a slow server is measured, not dropped
            await stack.enter_async_context(c)
            ns = await c.get_namespace_index(NAMESPACE)
            nodes = [c.get_node(ua.NodeId(p, ns)) for p in paths(tags)]
            sub = await c.create_subscription(1000, Handler(i))
            for start in range(0, len(nodes), 5000):
                await sub.subscribe_data_change(nodes[start : start + 5000])
        await asyncio.sleep(3)  # the initial values arrive
        print("ready", flush=True)
        before, t0 = sum(counts), time.monotonic()
        await asyncio.sleep(seconds)
        received, elapsed = sum(counts) - before, time.monotonic() - t0
    print(json.dumps({"received": received, "seconds": elapsed}), flush=True)


# ----------------------------------------------------------------------------------------- server side


def config(tmp: Path, tags: int, endpoint: str) -> Any:
    from edged import config as edged_config

    names = paths(tags)
    devices: dict[str, list[dict[str, Any]]] = {}
    for p in names:
        dev, name = p.split("/")
        devices.setdefault(dev, []).append({"name": name, "unit": "bar", "low": 0, "high": 100})
    return edged_config.parse(
        {
            "gateway": {"id": GATEWAY, "data_dir": str(tmp)},
            "devices": [{"name": d, "type": "sim", "tags": t} for d, t in devices.items()],
            "uplinks": [
                {
                    "name": "scada",
                    "type": "opcua",
                    "endpoint": endpoint,
                    "security_policies": ["None"],
                    "allow_anonymous": True,
                }
            ],
        }
    )


class SentCounter:
    """Data changes the server put into PublishResults (all subscriptions)."""

    def __init__(self) -> None:
        from asyncua.server.internal_subscription import InternalSubscription

        self.count = 0
        original = InternalSubscription._pop_triggered_datachanges
        counter = self

        def counting(sub: Any, result: Any) -> None:
            original(sub, result)
            for notif in result.NotificationMessage.NotificationData:
                counter.count += len(getattr(notif, "MonitoredItems", ()))

        InternalSubscription._pop_triggered_datachanges = counting  # type: ignore[method-assign]


async def server_main(args: argparse.Namespace) -> None:
    import tempfile

    from edged.model import Batch, Sample, Status
    from edged.plugin import PluginContext
    from uplink.opcua import Config, Uplink

    print(f"machine: {machine()}")
    print(f"{args.tags} tags on {max(1, args.tags // PER_DEVICE)} devices, {args.clients} client(s), {args.seconds} s")
    logging.basicConfig(level=logging.WARNING)
    sent = SentCounter()
    lag = Lag()
    gcs = GcPauses()
    with tempfile.TemporaryDirectory() as tmpdir:
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
        cfg = config(Path(tmpdir), args.tags, endpoint)
        up_cfg = cfg.uplinks[0]
        assert isinstance(up_cfg, Config)
        ctx = PluginContext(GATEWAY, Path(tmpdir), logging.getLogger("edged.uplink.scada"), config=cfg)
        async with asyncio.TaskGroup() as tg:
            probe = tg.create_task(lag.run(), name="lag")
            await asyncio.sleep(0.05)
            lag.take()
            gcs.take()
            t0 = time.perf_counter()
            up = Uplink(up_cfg, ctx)
            await up.__aenter__()
            start_s, start_lag = time.perf_counter() - t0, lag.take()
            print(
                f"server start: {start_s:.2f} s, event loop blocked at most {start_lag * 1000:.0f} ms meanwhile"
                f" (longest GC pause {gcs.take() * 1000:.0f} ms)"
            )
            print(f"RSS after start: {rss_mib():.0f} MiB")
            try:
                await measure(args, up, endpoint, sent, lag, Batch, Sample, Status)
                print(f"longest GC pause after start: {gcs.take() * 1000:.0f} ms")
            finally:
                await up.__aexit__(None, None, None)
                probe.cancel()


async def measure(
    args: argparse.Namespace, up: Any, endpoint: str, sent: SentCounter, lag: Lag, Batch: Any, Sample: Any, Status: Any
) -> None:
    names = paths(args.tags)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", endpoint, str(args.tags), str(args.clients), str(args.seconds),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert proc.stdout is not None
    tick = 0
    sends: list[float] = []
    ready = asyncio.Event()
    state: dict[str, Any] = {}

    async def read_client() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode().strip()
            if text == "ready":
                if args.profile:
                    state["profile"] = cProfile.Profile()
                    state["profile"].enable()
                state["cpu0"] = resource.getrusage(resource.RUSAGE_SELF)
                state["t0"], state["sent0"], state["tick0"] = time.monotonic(), sent.count, tick
                sends.clear()
                lag.take()
                ready.set()
            elif text.startswith("{"):
                if args.profile:
                    state["profile"].disable()
                state["cpu1"] = resource.getrusage(resource.RUSAGE_SELF)
                state["t1"], state["sent1"], state["tick1"] = time.monotonic(), sent.count, tick
                state["client"] = json.loads(text)
                state["lag"] = lag.take()

    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(read_client(), name="client-reader")
        next_at = time.monotonic()
        while not reader.done():
            now_ns = time.time_ns()
            t = time.perf_counter()
            samples = [Sample(p, now_ns, float(i % 97) + tick * 0.001, Status.GOOD, 100) for i, p in enumerate(names)]
            for start in range(0, len(samples), BATCH):
                await up.send(Batch(GATEWAY, 1, BATCH, False, samples[start : start + BATCH]))
                await asyncio.sleep(0)  # the Sender awaits the buffer between batches
            if ready.is_set():
                sends.append(time.perf_counter() - t)
            tick += 1
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await proc.wait()
    if "client" not in state:
        print("the client process gave no result")
        return
    window = state["t1"] - state["t0"]
    cpu = sum(getattr(state["cpu1"], f) - getattr(state["cpu0"], f) for f in ("ru_utime", "ru_stime"))
    produced = (state["tick1"] - state["tick0"]) * args.tags * args.clients / window
    sent_rate = (state["sent1"] - state["sent0"]) / window
    received = state["client"]["received"] / state["client"]["seconds"]
    sends.sort()
    print(f"window: {window:.1f} s, {state['tick1'] - state['tick0']} rounds of {args.tags} samples")
    print(f"notifications/s produced {produced:,.0f}, sent by the server {sent_rate:,.0f}, received {received:,.0f}")
    print(f"  delivered / produced: {received / produced:.2f}" if produced else "")
    print(f"server CPU: {cpu / window * 100:.0f} % of one core; RSS {rss_mib():.0f} MiB")
    if sent_rate:
        per = cpu / window / sent_rate * 1e6
        print(f"  {per:.0f} us of server CPU per notification sent: one core serves ~{1e6 / per:,.0f}/s")
    if sends:
        print(
            f"Uplink.send per 1 Hz round: median {sends[len(sends) // 2] * 1000:.0f} ms, max {sends[-1] * 1000:.0f} ms"
        )
    print(f"event loop worst lag in the window: {state['lag'] * 1000:.0f} ms")
    if args.profile:
        pstats.Stats(state["profile"]).sort_stats("tottime").print_stats(25)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        endpoint, tags, clients, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        asyncio.run(client_main(endpoint, tags, clients, seconds))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tags", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--profile", action="store_true", help="cProfile the server over the window (slows it down)")
    asyncio.run(server_main(p.parse_args()))


if __name__ == "__main__":
    main()
