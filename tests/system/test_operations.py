"""Running operations on the daemon process: SIGHUP reload, metrics and health over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from peers.mosquitto import free_port
from peers.waiting import wait_until

BASE = """
[gateway]
id = "gw-ops"
data_dir = "{data}"
metrics_listen = "127.0.0.1:{port}"

[buffer]
flush_interval = "50ms"

[[devices]]
name = "steady"
type = "sim"
interval = "100ms"
[[devices.tags]]
name = "a"
signal = "counter"

[[devices]]
name = "tuned"
type = "sim"
interval = "{tuned_interval}"
[[devices.tags]]
name = "b"
signal = "counter"
{extra}
[[uplinks]]
name = "archive"
type = "file"
"""


def write(p: Path, port: int, *, tuned_interval: str = "100ms", extra: str = "") -> None:
    p.write_text(BASE.format(data=p.parent / "data", port=port, tuned_interval=tuned_interval, extra=extra))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def status(data: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((data / "status.json").read_text())


def test_sighup_reload_restarts_only_what_changed(tmp_path: Path) -> None:
    cfg, port, data = tmp_path / "edged.toml", free_port(), tmp_path / "data"
    write(cfg, port)
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=log.open("wb"))
    try:
        wait_until(lambda: status(data)["devices"]["tuned"]["samples"] > 30, 15, "both devices running a while")
        steady_connects = status(data)["devices"]["steady"]["connects"]
        # 1. an invalid file is rejected and the running config stays in force
        cfg.write_text(cfg.read_text().replace('interval = "100ms"', 'interval = "often"', 1))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in log.read_text(), 10, "rejection logged")
        assert "devices[0] (steady).interval: invalid duration 'often'" in log.read_text()
        assert proc.poll() is None
        # 2. one device changed, one added: only those restart
        extra = '\n[[devices]]\nname = "added"\ntype = "sim"\ninterval = "100ms"\n[[devices.tags]]\nname = "c"\n'
        write(cfg, port, tuned_interval="200ms", extra=extra)
        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: status(data)["reloads"] == 1 and status(data)["devices"]["added"]["samples"] > 0, 10, "reload"
        )
        st = status(data)
        assert st["devices"]["steady"]["connects"] == steady_connects, "unchanged device kept running"
        assert "config reloaded: restarted added, tuned" in log.read_text()
        assert st["devices"]["tuned"]["samples"] < 30, "the changed device started over"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_metrics_and_health_endpoints(tmp_path: Path) -> None:
    cfg, port, data = tmp_path / "edged.toml", free_port(), tmp_path / "data"
    write(cfg, port)
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/health")[0] == 200, 15, "health endpoint")
        wait_until(lambda: status(data)["uplinks"]["archive"]["sent_live"] > 5, 10, "samples delivered")
        code, body = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        for needle in (
            'edged_device_samples_total{device="steady"}',
            'edged_device_up{device="tuned"} 1.0',
            "edged_buffer_stored_samples_total",
            'edged_uplink_sent_samples_total{stream="live",uplink="archive"}',
            'edged_uplink_connected{uplink="archive"} 1.0',
            'edged_uplink_backlog_samples{uplink="archive"}',
            "edged_event_loop_lag_seconds",
            "# TYPE edged_commands_total counter",
        ):
            assert needle in body, needle
        code, body = get(f"http://127.0.0.1:{port}/health")
        doc = json.loads(body)
        assert code == 200 and doc["healthy"] is True and doc["devices"]["steady"] == "running"
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
        out = subprocess.run(
            [sys.executable, "-m", "edged", "status", "-c", str(cfg)], capture_output=True, text=True, check=True
        )
        assert "uplink   archive" in out.stdout and "daemon   pid" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
