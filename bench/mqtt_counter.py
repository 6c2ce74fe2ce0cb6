"""A separate-process MQTT subscriber for the benches: counts samples and measures latency.

    python bench/mqtt_counter.py PORT EXPECTED TIMEOUT_S

Prints one JSON line when it has received EXPECTED samples (or timed out): count, first/last arrival
(monotonic clock, comparable across processes on Linux), and latency percentiles from the samples'
own timestamps. Running it in its own process keeps its decoding off the daemon's core.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import msgspec
import paho.mqtt.client as paho


def main() -> None:
    port, expected, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    dec = msgspec.json.Decoder()
    state = {"count": 0, "first": None, "last": None}
    lat: list[float] = []
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        now_ns = time.time_ns()
        samples = dec.decode(msg.payload)["samples"]
        if state["first"] is None:
            state["first"] = time.monotonic()
        state["last"] = time.monotonic()
        state["count"] += len(samples)  # type: ignore[operator]
        lat.extend((now_ns - s[1]) / 1e6 for s in samples[:: max(1, len(samples) // 10)])
        if state["count"] >= expected:  # type: ignore[operator]
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-counter")
    client.on_connect = lambda c, *_: c.subscribe("edged/#", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    done.wait(timeout)
    client.loop_stop()
    lat.sort()
    out = dict(state)
    if lat:
        out |= {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "max_ms": lat[-1]}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
