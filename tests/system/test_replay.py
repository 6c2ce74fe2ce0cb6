"""`edged replay` (standalone and beside a running daemon) and `edged export`, against real peers."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer import Store
from edged import cli
from edged.errors import ConfigError
from edged.model import Sample, Status
from edged.replay import parse_time
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

NS = 1_000_000_000
T0 = 1_790_000_000 * NS  # 2026-09-21


def fill(db: Path, n: int = 1000, uplink: str = "archive") -> tuple[int, int]:
    """A buffer with n samples at 1 s spacing from T0, all acknowledged by `uplink`."""
    with Store(db) as s:
        lo, hi = s.append([Sample(f"dev/t{i % 4}", T0 + i * NS, float(i), Status.GOOD, 100, "bar") for i in range(n)])
        s.register_uplink(uplink)
        s.ack(uplink, lo, hi, sent=n)
    return lo, hi


def write_config(tmp_path: Path, uplinks: str) -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(f'[gateway]\nid = "gw-r"\ndata_dir = "{tmp_path / "data"}"\n{uplinks}')
    return p


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / NS))


def test_parse_time() -> None:
    now = 2_000_000_000 * NS
    assert parse_time("now", now_ns=now) == now
    assert parse_time("-2h", now_ns=now) == now - 7200 * NS
    assert parse_time("90m ago", now_ns=now) == now - 5400 * NS
    assert parse_time("2026-11-24T06:00:00Z") == 1_795_500_000 * NS
    assert parse_time("2026-11-24T06:00:00+01:00") == parse_time("2026-11-24T05:00:00Z")
    with pytest.raises(ConfigError, match="invalid time 'yesterday-ish'"):
        parse_time("yesterday-ish")


def test_replay_standalone_to_file_uplink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, '[[uplinks]]\nname = "archive"\ntype = "file"\npath = "replayed.jsonl"\n')
    lo, _ = fill(tmp_path / "data" / "buffer.db")
    since, until = iso(T0 + 100 * NS), iso(T0 + 200 * NS)
    assert cli.main(["replay", "-c", str(cfg), "-u", "archive", "--since", since, "--until", until, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "100 stored samples, 0 of them not yet delivered" in out
    assert not (tmp_path / "data" / "replayed.jsonl").exists(), "dry run sends nothing"
    assert cli.main(["replay", "-c", str(cfg), "-u", "archive", "--since", since, "--until", until]) == 0
    assert "done: 100 samples sent" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "data" / "replayed.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(lo + 100, lo + 200))
    assert all(r["historical"] for r in rows)
    with Store(tmp_path / "data" / "buffer.db") as s:
        assert s.unacked("archive", s.head) == [], "cursor intact after the replay"


def test_replay_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, '[[uplinks]]\nname = "archive"\ntype = "file"\n')
    fill(tmp_path / "data" / "buffer.db")
    assert cli.main(["replay", "-c", str(cfg), "-u", "cloud", "--since=-1h"]) == 2
    assert "no uplink named 'cloud' in the config (have: archive)" in capsys.readouterr().err
    assert cli.main(["replay", "-c", str(cfg), "-u", "archive", "--since", "soonish"]) == 2
    assert "invalid time 'soonish'" in capsys.readouterr().err


def test_replay_beside_running_daemon_over_mqtt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The daemon keeps its cursor; the CLI only re-opens the range and the daemon re-sends it."""
    import paho.mqtt.client as paho

    got: list[tuple[str, int]] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="replay-test")
    sub.on_connect = lambda c, *_: c.subscribe("edged/#", qos=1)
    sub.on_message = lambda _c, _u, m: got.extend((m.topic, s[6]) for s in json.loads(m.payload)["samples"])
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    cfg = write_config(
        tmp_path,
        '[[devices]]\nname = "line"\ntype = "sim"\ninterval = "50ms"\n'
        '[[devices.tags]]\nname = "a"\nsignal = "counter"\n'
        f'[[uplinks]]\nname = "broker"\ntype = "mqtt"\nport = {mosquitto.port}\n',
    )
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(got) >= 40, 30, "40 live samples at the subscriber")
        first_live = sorted(s for _, s in got)[:20]
        lo, hi = first_live[0], first_live[-1]
        before = len(got)  # what came before the replay (the first samples may have been backlog at connect)
        out = subprocess.run(
            [sys.executable, "-m", "edged", "replay", "-c", str(cfg), "-u", "broker",
             "--from-seq", str(lo), "--to-seq", str(hi), "--timeout", "20"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "the daemon (pid" in out.stdout and "done: 20 samples re-sent by the daemon" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        sub.loop_stop()
    replayed = sorted(s for topic, s in got[before:] if topic.endswith("historical"))
    assert replayed == list(range(lo, hi + 1))


def test_export_csv_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path / "buffer.db", n=50)
    out = tmp_path / "x.csv"
    args = ["export", "--data-dir", str(tmp_path), "--since", iso(T0 + 10 * NS), "--until", iso(T0 + 20 * NS)]
    assert cli.main([*args, "--tags", "dev/t1", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [float(r["value"]) for r in rows] == [13.0, 17.0]
    assert rows[0]["quality"] == "Good" and rows[0]["unit"] == "bar" and rows[0]["timestamp_utc"].endswith("Z")
    assert cli.main([*args, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["ts_ns"] == T0 + 10 * NS


@pytest.mark.parametrize("on_reject", ["skip", "halt"])
def test_replay_standalone_handles_refusals_as_the_daemon_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], on_reject: str
) -> None:
    """Without a daemon, replay delivers through the daemon's Sender: a batch the peer refuses
    (Permanent) is skipped and counted, or halts the replay with the range still owed; a partial
    acceptance counts only what was accepted."""
    from peers.http_server import HttpPeer, Reply

    with HttpPeer() as peer:
        peer.script.extend([Reply(400, b"schema mismatch"), Reply(200, b'{"rejected": [0, 1]}')])
        cfg = write_config(
            tmp_path,
            f'[[uplinks]]\nname = "erp"\ntype = "http"\nurl = "{peer.url}"\nbatch_size = 100\n'
            f'on_reject = "{on_reject}"\n',
        )
        db = tmp_path / "data" / "buffer.db"
        lo, hi = fill(db, n=300, uplink="erp")
        with Store(db) as s:
            s.unack("erp", lo, hi)  # owed again, as after an outage
        code = cli.main(["replay", "-c", str(cfg), "-u", "erp", "--from-seq", str(lo), "--to-seq", str(hi)])
        out, err = capsys.readouterr()
        with Store(db) as s:
            owed = s.unacked("erp", s.head)
            (status,) = [u for u in s.status().uplinks if u.name == "erp"]
        if on_reject == "skip":
            assert code == 0, out + err
            assert "done: 198 samples sent" in out and "102 samples refused by the peer" in out
            assert owed == []
            assert sorted(peer.seqs()) == list(range(lo + 100, hi + 1)), "the partial batch is stored whole"
            assert status.sent == 300 + 198, "only accepted samples count as sent"
        else:
            assert code == 1, out + err
            assert "on_reject = 'halt'" in err and "stays owed" in err
            assert owed == [(lo, hi)], "a halted replay acknowledges nothing it did not deliver"
            assert peer.seqs() == []
