"""Computed tags in a real daemon: stored in the buffer and delivered through a real mosquitto like
measured tags; a totalizer that survives SIGKILLs of `edged run` neither losing nor double counting;
the steam-header example accepted by check-config, run, and its totalizer reset through `edged write`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from buffer import Store
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

ROOT = Path(__file__).parents[2]

CONFIG = """
[gateway]
id = "gw-compute"
data_dir = "{data}"

[buffer]
flush_interval = "50ms"

[[devices]]
name = "plant"
type = "sim"
interval = "{interval}"
[[devices.tags]]
name = "flow"
signal = "stuck"
offset = 36.0
unit = "m3/h"
[[devices.tags]]
name = "p1"
signal = "ramp"
offset = 10.0
amplitude = 1.0
period = "7s"
unit = "bar"
[[devices.tags]]
name = "p2"
signal = "stuck"
offset = 500.0
unit = "kPa"

[[computed]]
name = "calc"
[[computed.tags]]
name = "dp"
expr = "{{plant/p1}} - {{plant/p2}}"
unit = "bar"
[[computed.tags]]
name = "total"
function = "totalizer"
input = "plant/flow"
unit = "m3"
max_gap = "1h"
[[computed.tags]]
name = "p1_max"
function = "maximum"
input = "plant/p1"
window = "2s"
{uplink}
"""

MQTT = """
[[uplinks]]
name = "broker"
type = "mqtt"
host = "127.0.0.1"
port = {port}
timeout = "2s"
"""


def write_config(tmp_path: Path, *, interval: str = "50ms", uplink: str = "") -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(CONFIG.format(data=tmp_path / "data", interval=interval, uplink=uplink))
    return p


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def stored(db: Path, tag: str) -> list[tuple[int, object, int, int]]:
    """(seq, value, status, ts) of every stored sample of `tag`, oldest first."""
    with Store(db) as store:
        return [(s.seq or 0, s.value, s.status, s.ts_ns) for s in store.samples_of(tag, after_seq=0)]


def count(db: Path, tag: str) -> int:
    try:
        return len(stored(db, tag))
    except Exception:  # the buffer not created yet
        return 0


class Subscriber:
    """paho in its own thread: every sample row the broker delivers, by tag."""

    def __init__(self, port: int) -> None:
        self.rows: list[list[object]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="compute-sub")
        self.client.on_connect = lambda c, *_: c.subscribe("edged/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            self.rows.extend(doc.get("samples", []))

    def of(self, tag: str) -> list[list[object]]:
        with self.lock:
            return [r for r in self.rows if r[0] == tag]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.timeout(120)
def test_computed_tags_are_stored_and_delivered_like_measured_ones(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path, uplink=MQTT.format(port=mosquitto.port))
    db = tmp_path / "data" / "buffer.db"
    sub = Subscriber(mosquitto.port)
    proc = start(cfg, tmp_path / "daemon.log")
    try:
        wait_until(lambda: all(len(sub.of(f"calc/{t}")) >= 5 for t in ("dp", "total", "p1_max")), 60,
                   "computed samples at the subscriber")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        sub.close()
    with Store(db) as store:
        samples = store.read(store.first_seq() or 0, store.head, 1_000_000)[0]
        units = {s.tag: s.unit for s in samples}
    p1 = {s.ts_ns: s.value for s in samples if s.tag == "plant/p1"}
    dps = [s for s in samples if s.tag == "calc/dp"]
    assert dps and units["calc/dp"] == "bar" and units["calc/total"] == "m3"
    for s in dps:  # independent of the engine: p1 (bar) - 500 kPa, at p1's timestamp
        assert isinstance(s.value, float) and s.value == pytest.approx(p1[s.ts_ns] - 5.0), s
    # delivered exactly like measured samples: same row layout, the buffer's seq, the stored value
    by_seq = {s.seq: s for s in samples}
    for row in sub.of("calc/dp") + sub.of("calc/total"):
        kept = by_seq[row[6]]  # type: ignore[index]
        assert (row[0], row[1], row[2], row[3]) == (kept.tag, kept.ts_ns, kept.value, kept.status)


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_totalizer_neither_loses_nor_double_counts_across_sigkill(tmp_path: Path) -> None:
    """36 m3/h held constant and max_gap 1h: whatever the kills, the last total must be exactly
    0.01 m3/s times the time from the first stored flow sample to the one the total was made with."""
    cfg = write_config(tmp_path)
    db = tmp_path / "data" / "buffer.db"
    log = tmp_path / "daemon.log"
    for _ in range(2):
        proc = start(cfg, log)
        seen = count(db, "calc/total")
        wait_until(lambda seen=seen: count(db, "calc/total") >= seen + 20, 60, "totals stored")  # type: ignore[misc]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    proc = start(cfg, log)
    seen = count(db, "calc/total")
    wait_until(lambda: count(db, "calc/total") >= seen + 20, 60, "totals after the last restart")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]
    assert log.read_text().count("1 totalizers resumed from the buffer") == 2, log.read_text()[-3000:]
    flows = stored(db, "plant/flow")
    totals = stored(db, "calc/total")
    first_ts = flows[0][3]
    values = [float(v) for _, v, _, _ in totals]  # type: ignore[arg-type]
    assert values == sorted(values), "a total never goes back"
    assert all(st == 0 for _, _, st, _ in totals), "no gap beyond max_gap: every total is Good"
    flow_ts = {ts for _, _, _, ts in flows}
    for _, v, _, ts in totals:  # every stored total, before and after each kill
        assert ts in flow_ts, "a total carries the timestamp of the flow sample it integrated"
        assert v == pytest.approx(0.01 * (ts - first_ts) / 1e9, rel=1e-9, abs=1e-9)
    assert (totals[-1][3] - first_ts) / 1e9 > 2.0, "the test ran across the kills"


def _steam_config(tmp_path: Path, port: int) -> Path:
    text = (ROOT / "examples" / "steam-header.toml").read_text()
    text = text.replace('data_dir = "/var/lib/edged"', f'data_dir = "{tmp_path / "data"}"')
    text = re.sub(r"(?m)^port = 1883$", f"port = {port}", text)
    text = text.replace('interval = "1s"', 'interval = "100ms"')  # quicker, same tags
    p = tmp_path / "steam.toml"
    p.write_text(text)
    return p


def edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ})  # fmt: skip


@pytest.mark.timeout(150)
def test_steam_header_example_is_accepted_runs_and_resets_its_total(tmp_path: Path, mosquitto: Mosquitto) -> None:
    shipped = edged("check-config", str(ROOT / "examples" / "steam-header.toml"))
    assert shipped.returncode == 0, shipped.stderr
    assert "computed steam: 5 tags" in shipped.stdout
    assert "alarms: 3 (0 out of service)" in shipped.stdout  # HI, HIHI and drift on steam/temperature
    cfg = _steam_config(tmp_path, mosquitto.port)
    db = tmp_path / "data" / "buffer.db"
    sub = Subscriber(mosquitto.port)
    proc = start(cfg, tmp_path / "daemon.log")
    try:
        wanted = ("steam/mass_total", "steam/valve_dp", "steam/temperature", "steam/overpressure")
        wait_until(lambda: all(sub.of(t) for t in wanted), 60, "every computed tag at the subscriber")
        wait_until(lambda: max(float(v) for _, v, _, _ in stored(db, "steam/mass_total")) > 0.0, 30,  # type: ignore[arg-type]
                   "some steam totalized")  # fmt: skip
        out = edged("write", "steam/mass_total", "5", "--config", str(cfg), "--user", "ops")
        assert out.returncode != 0 and "not one of the allowed values" in out.stdout, out.stdout + out.stderr
        out = edged("write", "steam/mass_total", "0", "--config", str(cfg), "--user", "ops")
        assert out.returncode == 0, out.stdout + out.stderr
        listed = edged("alarms", "--config", str(cfg), "--all")
        assert listed.returncode == 0 and "3 configured, 0 active" in listed.stdout, listed.stdout + listed.stderr
        assert "steam/temperature#alarm/hihi" in listed.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        sub.close()
    totals = stored(db, "steam/mass_total")
    resets = [i for i, (_, v, _, _) in enumerate(totals) if v == 0.0 and i > 0]
    assert resets, "the reset is a stored sample"
    with Store(db) as store:
        rows = store.audit_rows()
        temps = store.samples_of("steam/temperature", after_seq=0)
    assert [(r.tag, r.result, r.user) for r in rows] == [
        ("steam/mass_total", "rejected", "ops"),
        ("steam/mass_total", "accepted", "ops"),
    ]
    assert temps and all(186.0 < float(t.value) < 190.5 for t in temps)  # type: ignore[arg-type]
    assert all(t.unit == "degC" for t in temps)
