"""Process alarms in a real `edged run` through a real mosquitto: events on `{kind} = alarm`, acknowledge
through `edged ack` and shelve through the MQTT command path (both through the gate, both audited),
events stored while the broker is down and across a SIGKILL replayed as historical, the alarm
state and the event numbering resumed from the buffer; and the steam-header example's alarms."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from buffer import Store
from edged.alarms.config import is_alarm_path
from edged.alarms.model import from_sample
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

GW = "gw-alarms"
PATH = "plant/level#alarm/hi"

CONFIG = """
[gateway]
id = "gw-alarms"
data_dir = "{data}"

[buffer]
flush_interval = "50ms"

[[devices]]
name = "plant"
type = "sim"
interval = "100ms"
[[devices.tags]]
name = "level"
signal = "step"          # 10 for 1 s, then 20 for 1 s
offset = 10.0
amplitude = 10.0
period = "2s"
unit = "%"

[[uplinks]]
name = "site"
type = "mqtt"
host = "127.0.0.1"
port = {port}
timeout = "2s"
commands = true

[commands]
enabled = true
[commands.sources.site]
require_signature = false

[alarms]
sources = ["cli", "site"]

[[alarms.tags]]
tag = "plant/level"
type = "hi"
limit = 15.0
deadband = 1.0
priority = "high"
message = "level high"
"""


class Subscriber:
    """paho in its own thread, persistent session: every alarm event and command reply."""

    def __init__(self, port: int) -> None:
        self.alarms: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="alarm-sub", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe("edged/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            if msg.topic == f"edged/{GW}/alarm":
                assert all(not is_alarm_path(r[0]) for r in doc.get("samples", []))
                self.alarms.extend(doc["alarms"])
            elif msg.topic.startswith(f"edged/{GW}/cmd/reply"):
                self.replies.append(doc)
            else:
                assert not any(is_alarm_path(r[0]) for r in doc.get("samples", [])), "alarms only on {kind}=alarm"

    def events(self, what: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.alarms if what is None or a["event"] == what]

    def publish(self, topic: str, doc: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=90)


def stored_events(db: Path) -> list[tuple[int, Any]]:
    """(seq, event) of every stored alarm event, oldest first."""
    try:
        with Store(db, create=False, readonly=True) as store:
            return [(s.seq or 0, from_sample(s)) for s in store.samples_of(PATH, after_seq=0)]
    except Exception:  # not created yet
        return []


@pytest.mark.timeout(150)
def test_alarm_events_ack_shelve_outage_and_sigkill(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", port=mosquitto.port))
    db = tmp_path / "data" / "buffer.db"
    log = tmp_path / "daemon.log"
    sub = Subscriber(mosquitto.port)
    proc = start(cfg, log)
    try:
        wait_until(lambda: sub.events("active") and sub.events("cleared"), 60, "live alarm events at the subscriber")
        first = sub.events("active")[0]
        assert first["path"] == PATH and first["historical"] is False and first["priority"] == 700
        assert first["message"] == "level high" and first["value"] == 20.0 and first["limit"] == 15.0
        # acknowledge through `edged ack` (the daemon runs: via its inbox, through the gate)
        wait_until(lambda: sub.events()[-1]["state"] in ("unack", "rtn_unack"), 30, "an unacknowledged state")
        out = edged("ack", PATH, "--config", str(cfg), "--user", "op1")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: sub.events("ack"), 30, "the ack event")
        ack = sub.events("ack")[0]
        assert ack["user"] == "op1" and ack["source"] == "cli" and ack["acked"] is True
        # shelve through the MQTT command path
        cmd = {"id": "shelve-1", "tag": PATH, "value": "shelve 10m", "ts": int(time.time() * 1000), "user": "op2"}
        sub.publish(f"edged/{GW}/cmd", cmd)
        wait_until(lambda: sub.replies, 30, "the command's reply")
        assert sub.replies[0]["result"] == "accepted", sub.replies
        wait_until(lambda: sub.events("shelved"), 30, "the shelved event")
        shelved = sub.events("shelved")[0]
        assert shelved["source"] == "site" and shelved["user"] == "op2" and shelved["shelved_until_ns"] > time.time_ns()
        # outage: events go on being stored while the broker is down ...
        mosquitto.stop()
        before = len(stored_events(db))
        wait_until(lambda: len(stored_events(db)) >= before + 4, 30, "alarm events stored during the outage")
        # ... and a SIGKILL: nothing the buffer committed is lost
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        during = stored_events(db)[before:]
        delivered = {a["seq"] for a in sub.events()}
        owed = [seq for seq, _ in during if seq not in delivered]
        assert len(owed) >= 3
        mosquitto.start()
        proc = start(cfg, log)
        wait_until(lambda: set(owed) <= {a["seq"] for a in sub.events()}, 60, "the outage's events replayed")
        replayed = [a for a in sub.events() if a["seq"] in set(owed)]
        assert all(a["historical"] is True for a in replayed), "replayed after the outage: historical"
        wait_until(lambda: any(not a["historical"] and a["seq"] > max(owed) for a in sub.events()), 30,
                   "live events after the restart")  # fmt: skip
        listed = edged("alarms", "--config", str(cfg), "--all")
        assert listed.returncode == 0 and PATH in listed.stdout and "shelved until" in listed.stdout, listed.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        sub.close()
    text = log.read_text()
    assert "alarms: 1, 1 resumed their state from the buffer" in text, text[-3000:]
    events = stored_events(db)
    numbers = [ev.n for _, ev in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "the alarm event numbers have no holes"
    kinds = [ev.event for _, ev in events]
    for (_, a), (_, b) in itertools.pairwise(events):  # each event follows from the state before it
        if b.event == "active":
            assert a.state in ("normal", "rtn_unack") and b.state == "unack"
        elif b.event == "cleared":
            assert a.state in ("unack", "acked") and b.state in ("rtn_unack", "normal")
    assert kinds.count("ack") == 1 and kinds.count("shelved") == 1
    assert all(ev.shelved_until_ns for _, ev in events[kinds.index("shelved") :]), "the shelve survived the SIGKILL"
    with Store(db, create=False, readonly=True) as store:
        rows = store.audit_rows()
    assert [(r.tag, r.source, r.user, r.value, r.result) for r in rows] == [
        (PATH, "cli", "op1", "ack", "accepted"),
        (PATH, "site", "op2", "shelve 10m", "accepted"),
    ]
