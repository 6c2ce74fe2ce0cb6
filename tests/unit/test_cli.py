"""CLI commands that need no peer: health, opcua-cert, check-config output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from edged import cli


def status_file(d: Path, **over: object) -> None:
    doc = {"pid": os.getpid(), "updated_ns": time.time_ns(), "stopped": False, "buffer": {"alarm": None},
           "devices": {"a": {"state": "running"}, "b": {"state": "backoff"}}}  # fmt: skip
    doc.update(over)
    (d / "status.json").write_text(json.dumps(doc))


def test_health(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "--data-dir", str(tmp_path)]) == 1
    assert "the daemon has not run here" in capsys.readouterr().err
    status_file(tmp_path)
    assert cli.main(["health", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and "devices not running (not a health failure): b" in out
    status_file(tmp_path, updated_ns=time.time_ns() - 120 * 10**9)
    assert cli.main(["health", "--data-dir", str(tmp_path)]) == 1
    assert "status is 120s old" in capsys.readouterr().err
    status_file(tmp_path, buffer={"alarm": "buffer write failed: disk full"})
    assert cli.main(["health", "--data-dir", str(tmp_path), "-q"]) == 1
    assert "disk full" in capsys.readouterr().err
    status_file(tmp_path, stopped=True)
    assert cli.main(["health", "--data-dir", str(tmp_path)]) == 1


def test_opcua_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["opcua-cert", "--data-dir", str(tmp_path), "--hostname", "gw1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "urn:edged:gw1:opcua-client" in out and "thumbprint" in out
    key = tmp_path / "opcua" / "client_key.pem"
    assert (tmp_path / "opcua" / "client_cert.der").stat().st_size > 0
    assert key.stat().st_mode & 0o077 == 0, "the key is private"
    assert cli.main(args) == 1, "never replaces an existing key silently"
    assert "--overwrite" in capsys.readouterr().err


def test_check_config_lists_commands_and_warns_only_on_inline_secrets(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PW", "x")
    base = (
        f'[gateway]\ndata_dir = "{tmp_path}"\n[[devices]]\nname = "d"\ntype = "sim"\n[[devices.tags]]\nname = "a"\n'
        '[[uplinks]]\nname = "m"\ntype = "mqtt"\npassword = {PW}\n'
    )
    p = tmp_path / "edged.toml"
    p.write_text(base.replace("{PW}", '{ env = "PW" }'))
    p.chmod(0o644)
    assert cli.main(["check-config", str(p)]) == 0
    assert "commands disabled: every write is refused" in capsys.readouterr().out
    cli._load(str(p))
    assert "world-readable" not in caplog.text, "a reference to a secret is not a secret"
    p.write_text(base.replace("{PW}", '"hunter2"'))
    cli._load(str(p))
    assert "world-readable and holds an inline secret" in caplog.text
