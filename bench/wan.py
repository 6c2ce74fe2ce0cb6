"""Delivery over an emulated WAN link: backlog drain rate and live latency per RTT and bandwidth.

    PYTHONPATH=$PWD .venv/bin/python bench/wan.py [--rtt 0,50,100,300] [--mbit 1,10,50]
        [--batch-size 5000] [--encoding columns] [--compression zstd] [--inflight 16] [--uplink mqtt]
        [--samples 300000] [--cap 45] [--quick]

Each cell: a buffer prefilled with a backlog (500 tags, values at 3 decimals, 24 h old) while live
data keeps coming at 500 samples/s; the real Sender and MQTT uplink send it through
tests/peers/wanproxy.py (a TCP proxy in its own process adding RTT/2 each way and a byte rate per
direction behind an unbounded queue, counting the bytes it forwards) to a mosquitto on 127.0.0.1; a
subscriber in another process, attached to mosquitto directly (the consumer's side of the WAN), measures live latency
(sample timestamp -> arrival) and counts what arrived. With --uplink http the real HTTP uplink POSTs
through the proxy to tests/peers/http_server.py, run in that other process. --batch-size,
--encoding, --compression, --inflight (max_inflight; 1 is stop-and-wait) and --uplink take comma
lists too; the matrix is their product with --rtt and --mbit.

A cell stops when the backlog is acknowledged (PUBACK) or after --cap seconds; a capped cell's rate is
what was drained in that time, and the 24 h figure is extrapolated from it (marked "capped").
Link capacity in samples/s = link bytes/s / the bytes per sample measured on the wire (uplink
direction, MQTT or HTTP framing and every live and historical batch included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine

from buffer import Buffer
from edged.config import BufferConfig
from edged.delivery import Sender
from edged.model import Batch, Sample, Status
from edged.plugin import Backoff, PluginContext
from peers.mosquitto import Mosquitto, free_port
from uplink.http import Config as HttpConfig
from uplink.http import Uplink as HttpUplink
from uplink.mqtt import Config as MqttConfig
from uplink.mqtt import Uplink as MqttUplink

PROXY = Path(os.environ.get("WANPROXY", Path(__file__).resolve().parents[1] / "tests/peers/wanproxy.py"))
TARGET = 43_200_000  # 24 h x 500 tags x 1 Hz
TAGS = 500
NAMES = [f"dev{k // 50}/tag{k}" for k in range(TAGS)]


def value(i: int) -> float:
    """A plant-like reading with 3 decimals (50.000 .. 149.999), so the JSON is as long as real data."""
    return round(50.0 + (i * 7919 % 100_000) / 1000, 3)


@dataclass
class Cell:
    rtt_ms: float
    mbit: float
    batch: int
    compression: str
    uplink: str = "mqtt"
    encoding: str = "rows"
    inflight: int = 16


@dataclass
class Result:
    cell: Cell
    backlog: int
    drained: int
    drain_s: float
    capped: bool
    wire_bytes: int  # uplink direction, the whole cell
    attempted: int  # samples handed to the uplink
    sub: dict[str, float]


@dataclass
class Sent:
    samples: int = 0  # handed to the uplink: each is on the wire once, acknowledged or not
    first_live: int | None = None  # lo_seq of the first live batch: the Sender's live position + 1


class Counting:
    """Put before a real uplink class: counts the samples it writes, so bytes on the wire / sample
    is exact, and notes where the live stream starts."""

    sent: Sent

    async def send(self, batch: Batch) -> None:
        self.sent.samples += len(batch.samples)
        if not batch.historical and self.sent.first_live is None:
            self.sent.first_live = batch.lo_seq
        await super().send(batch)  # type: ignore[misc]


class CountingMqtt(Counting, MqttUplink):
    pass


class CountingHttp(Counting, HttpUplink):
    pass


def make_uplink(
    cell: Cell, name: str, port: int, ctx: PluginContext, sent: Sent
) -> tuple[MqttConfig | HttpConfig, Callable[[], Counting]]:
    """The config and uplink factory for the Sender: the real plugin, pointed at the proxy."""
    cfg: MqttConfig | HttpConfig
    if cell.uplink == "http":
        cfg = HttpConfig(name=name, type="http", url=f"http://127.0.0.1:{port}/ingest", batch_size=cell.batch,
                         compression=cell.compression, encoding=cell.encoding,
                         max_inflight=cell.inflight)  # type: ignore[arg-type]  # fmt: skip
        cls: type[CountingMqtt | CountingHttp] = CountingHttp
    else:
        cfg = MqttConfig(name=name, type="mqtt", port=port, batch_size=cell.batch, compression=cell.compression,
                         encoding=cell.encoding, max_inflight=cell.inflight,
                         topic="wan/{uplink}/{kind}")  # type: ignore[arg-type]  # fmt: skip
        cls = CountingMqtt

    def factory() -> Counting:
        up = cls(cfg, ctx)  # type: ignore[arg-type]
        up.sent = sent
        return up

    return cfg, factory


def proxy_bytes(stats: Path) -> tuple[float, int]:
    """(the proxy's clock, bytes it forwarded client -> server) from its --stats file."""
    try:
        t, up, _down = stats.read_text().split()
    except (OSError, ValueError):
        return 0.0, 0
    return float(t), int(up)


async def settled_bytes(stats: Path, quiet_s: float) -> int:
    """The proxy's byte count once it stopped changing (its queue drained after the sender stopped)."""
    await asyncio.sleep(quiet_s)
    last = (-1.0, -1)
    for _ in range(40):
        now = proxy_bytes(stats)
        if now[1] == last[1] and now[0] != last[0]:
            return now[1]
        last = now
        await asyncio.sleep(0.3)
    return last[1]


async def start_proxy(tmp: Path, target: int, cell: Cell) -> tuple[asyncio.subprocess.Process, int, Path]:
    port, stats = free_port(), tmp / "wan.stats"
    args = [sys.executable, str(PROXY), str(port), str(target), "--delay-ms", str(cell.rtt_ms / 2),
            "--mbit", str(cell.mbit), "--stats", str(stats)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None:
                err = await proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(f"wanproxy exited: {err.decode()}") from None
            await asyncio.sleep(0.05)
            continue
        w.close()  # the proxy opens (and closes) one connection to the peer for it: harmless
        return proc, port, stats
    raise RuntimeError("wanproxy did not start listening")


async def fill(buf: Buffer, n: int) -> None:
    t0 = time.time_ns() - 86_400 * 10**9
    for start in range(0, n, 10_000):
        buf.put([Sample(NAMES[i % TAGS], t0 + i // TAGS * 10**9, value(i), Status.GOOD, 100, "bar")
                 for i in range(start, min(start + 10_000, n))])  # fmt: skip
        await buf.flush()


async def run_cell(root: Path, idx: int, cell: Cell, broker: Mosquitto, n: int, cap_s: float, live_rate: int) -> Result:
    tmp = root / f"cell{idx}"
    tmp.mkdir()
    name = f"c{idx}"
    buf = Buffer(tmp / "buffer.db", BufferConfig())  # the daemon's flush interval (100 ms)
    async with buf:
        await fill(buf, n)
        head0 = buf.head
        sub = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--subscriber", cell.uplink, str(broker.port), f"wan/{name}/#", cell.compression,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert sub.stdin is not None and sub.stdout is not None
        proxy = None
        try:
            # "ready PORT": subscribed to mosquitto, or the HTTP peer listening there
            peer_port = int((await sub.stdout.readline()).split()[1])
            proxy, port, stats = await start_proxy(tmp, peer_port, cell)
            ctx = PluginContext("bench", tmp, logging.getLogger("bench"))
            sent = Sent()
            cfg, factory = make_uplink(cell, name, port, ctx, sent)
            sender = Sender(buf, cfg, factory, gateway_id="bench",  # type: ignore[arg-type]
                            log=logging.getLogger("bench"), backoff=Backoff(0.1, 1.0))  # fmt: skip
            per_tick = live_rate // 10
            produced, last_ts = 0, 0
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(buf.run_writer(), name="writer")
                task = tg.create_task(sender.run(), name="sender")
                loop = asyncio.get_running_loop()
                tick = loop.time()
                t_conn: float | None = None
                owed = n + 10**9  # until the first live batch says where the live stream starts
                while True:
                    # live data: 500 tags at 1 Hz, a tenth of them every 100 ms, as drivers poll
                    last_ts = time.time_ns()
                    buf.put([Sample(NAMES[(produced + k) % TAGS], last_ts, value(produced + k), Status.GOOD, 100,
                                    "bar") for k in range(per_tick)])  # fmt: skip
                    produced += per_tick
                    if t_conn is None and sender.stats.connects:
                        t_conn, t0_ns = loop.time(), time.time_ns()
                    if sent.first_live is not None:
                        # what was committed before the connect is backlog too: the Sender's live
                        # position is the buffer head at connect
                        owed = sent.first_live - 1 - (head0 - n)
                    if sender.stats.sent_historical >= owed or (t_conn is not None and loop.time() - t_conn >= cap_s):
                        break
                    tick += 0.1
                    await asyncio.sleep(max(0.0, tick - loop.time()))
                assert t_conn is not None
                drain_s, t1_ns = loop.time() - t_conn, time.time_ns()
                drained, capped = sender.stats.sent_historical, sender.stats.sent_historical < owed
                # the sender keeps going until the subscriber has the last live sample (all of them,
                # live batches go out in order), so the latency covers every sample of the drain
                sub.stdin.write(f"{t0_ns} {t1_ns} {last_ts} {drained}\n".encode())
                await sub.stdin.drain()
                report = json.loads(await sub.stdout.readline())
                task.cancel()
                writer.cancel()
            wire = await settled_bytes(stats, cell.rtt_ms / 1000 + 0.6)
        finally:
            with contextlib.suppress(ProcessLookupError):
                sub.kill()
            await sub.wait()
            if proxy is not None:
                proxy.terminate()
                await proxy.wait()
    return Result(cell, owed, drained, drain_s, capped, wire, sent.samples, report)


def subscriber(kind: str, port: int, topic: str, compression: str) -> None:
    """In its own process: live latency (sample ts -> arrival here) and counts, live and historical.
    MQTT: subscribed to mosquitto directly (the consumer's side of the WAN). HTTP: the endpoint
    (tests/peers/http_server.py), a sample's arrival being when its request body was read.

    Reads one line "T0_NS T1_NS LAST_TS HIST" from stdin: waits (up to 30 s) for the live sample
    stamped LAST_TS and for HIST historical samples, then prints the live latency percentiles of the
    samples stamped in T0..T1 (the drain) as one JSON line.
    """
    import msgspec
    import paho.mqtt.client as paho

    dec = msgspec.json.Decoder()
    from edged.protocols.payload import decode_columns, decompress

    def samples_of(payload: bytes) -> list[list[Any]]:
        data = decompress(payload)
        doc = decode_columns(data) if data[:40].find(b'"columns"') >= 0 else dec.decode(data)
        return doc["samples"]  # type: ignore[no-any-return]

    live: list[tuple[int, int]] = []  # (sample ts, arrival), ns
    hist, newest = [0], [0]
    ready = threading.Event()

    def arrived(is_live: bool, ts: list[int]) -> None:
        now = time.time_ns()
        if is_live:
            live.extend((t, now) for t in ts)
            newest[0] = max(newest[0], ts[-1]) if ts else newest[0]
        else:
            hist[0] += len(ts)

    if kind == "http":
        from peers.http_server import HttpPeer, Reply

        def on_post(doc: dict[str, Any] | None, _key: str | None) -> Reply:
            if doc is not None:
                arrived(not doc["historical"], [s["ts_ns"] for s in doc["samples"]])
            return Reply(store=False)  # acknowledged; not kept, the counts are enough

        peer = HttpPeer()
        peer.policy = on_post
        peer.start()
        print(f"ready {peer.port}", flush=True)
    else:

        def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
            samples = samples_of(msg.payload)
            if not msg.topic.endswith("/gap"):
                arrived(msg.topic.endswith("/live"), [s[1] for s in samples])

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"wan-sub-{os.getpid()}")
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        ready.wait(10)
        print(f"ready {port}", flush=True)
    t0, t1, last_ts, n_hist = (int(x) for x in sys.stdin.readline().split())
    deadline = time.monotonic() + 30
    while (newest[0] < last_ts or hist[0] < n_hist) and time.monotonic() < deadline:
        time.sleep(0.05)
    lat = sorted((arr - ts) / 1e6 for ts, arr in live if t0 <= ts <= t1)
    out: dict[str, float] = {"live": len(live), "hist": hist[0], "window": len(lat)}
    if lat:
        out |= {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max_ms": lat[-1]}
    print(json.dumps(out), flush=True)


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "never"
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def print_header() -> None:
    print(f"{'up':>4} {'RTT':>5} {'Mbit/s':>6} {'batch':>6} {'enc':>7} {'comp':>5} {'infl':>4} {'B/smp':>6} "
          f"{'cap smp/s':>9} "
          f"{'drain smp/s':>11} {'%cap':>5} {'link%':>5} {'live p50':>8} {'p99':>7} {'24h/500 tags':>12} "
          f"{'cell':>5} note")  # fmt: skip


def print_row(r: Result, live_rate: int) -> None:
    c = r.cell
    bps = r.wire_bytes / r.attempted if r.attempted else float("nan")
    link = c.mbit * 1e6 / 8
    cap = link / bps
    rate = r.drained / r.drain_s
    busy = (rate + live_rate) * bps / link  # what the uplink direction carried, live included
    p50, p99 = r.sub.get("p50_ms", float("nan")), r.sub.get("p99_ms", float("nan"))
    notes = []
    if r.capped:
        notes.append(f"capped: {r.drained:,}/{r.backlog:,} in {r.drain_s:.0f}s")
    if r.sub.get("hist", 0) < r.drained:
        notes.append(f"subscriber got {r.sub.get('hist', 0):,.0f} historical of {r.drained:,} acked")
    print(f"{c.uplink:>4} {c.rtt_ms:>5.0f} {c.mbit:>6g} {c.batch:>6} {c.encoding:>7} {c.compression:>5} "
          f"{c.inflight:>4} {bps:>6.1f} {cap:>9,.0f} "
          f"{rate:>11,.0f} {rate / cap * 100:>4.0f}% {busy * 100:>4.0f}% {p50:>6.0f}ms {p99:>5.0f}ms "
          f"{fmt_duration(TARGET / rate if rate else math.inf):>12} {r.drain_s:>4.0f}s {'; '.join(notes)}",
          flush=True)  # fmt: skip


async def run(args: argparse.Namespace, cells: list[Cell]) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "broker").mkdir()
        broker = Mosquitto(root / "broker")
        broker.start()
        try:
            print_header()
            for i, cell in enumerate(cells):
                r = await run_cell(root, i, cell, broker, args.samples, args.cap, args.live_rate)
                print_row(r, args.live_rate)
        finally:
            broker.stop()


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=floats, default=[0, 50, 100, 300], help="ms, comma list")
    ap.add_argument("--mbit", type=floats, default=[1, 10, 50], help="Mbit/s each way, comma list")
    ap.add_argument("--batch-size", type=lambda s: [int(x) for x in s.split(",")], default=[5000])
    ap.add_argument("--encoding", type=lambda s: s.split(","), default=["columns"], help="rows, columns")
    ap.add_argument("--compression", type=lambda s: s.split(","), default=["zstd"], help="none, gzip, zlib, zstd")
    ap.add_argument("--inflight", type=lambda s: [int(x) for x in s.split(",")], default=[16], help="max_inflight")
    ap.add_argument("--uplink", type=lambda s: s.split(","), default=["mqtt"], help="mqtt, http (comma list)")
    ap.add_argument("--samples", type=int, default=300_000, help="backlog per cell")
    ap.add_argument("--cap", type=float, default=45.0, help="seconds: stop a cell then, extrapolate")
    ap.add_argument("--live-rate", type=int, default=500, help="live samples/s (500 tags at 1 Hz)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 cells, 30k samples, 10 s cap")
    args = ap.parse_args()
    if args.quick:
        args.rtt, args.mbit, args.samples, args.cap = [0, 100], [10], 30_000, 10.0
    logging.basicConfig(level=logging.ERROR)
    if not PROXY.exists():
        sys.exit(f"{PROXY} not found (set WANPROXY to the proxy script)")
    cells = [Cell(r, m, b, c, u, e, w) for u in args.uplink for e in args.encoding for c in args.compression
             for w in args.inflight for b in args.batch_size for m in args.mbit for r in args.rtt]  # fmt: skip
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"backlog {args.samples:,} samples per cell ({TAGS} tags, 3 decimals, 24 h old), live {args.live_rate}"
          f" samples/s, MQTT QoS 1 (or HTTP POST) through wanproxy (RTT/2 each way, rate per direction),"
          f" cap {args.cap:.0f} s/cell; live latency = sample ts -> subscriber, over the drain")  # fmt: skip
    asyncio.run(run(args, cells))


if __name__ == "__main__":
    main()
