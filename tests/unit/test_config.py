"""Config validation: every error names the file, the key path and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edged import cli
from edged.config import ByteSize, Duration, Secret, load, parse
from edged.errors import ConfigError

BASE = """
[gateway]
id = "gw1"
data_dir = "data"

[[devices]]
name = "boiler"
type = "sim"
interval = "500ms"
[[devices.tags]]
name = "pressure"
unit = "bar"

[[uplinks]]
name = "archive"
type = "file"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("1h30m", 5400), ("24h", 86400), ("7d", 604800), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "5 parsecs", "1h-30m", "s", "1.s", "ms5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("value", "n"), [(1024, 1024), ("1GiB", 1024**3), ("500MB", 500_000_000), ("64k", 64_000), ("2 mib", 2 * 1024**2)]
)
def test_sizes(value: str | int, n: int) -> None:
    assert ByteSize.parse(value) == n


def test_valid_config_resolves_paths(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE))
    assert cfg.gateway.id == "gw1"
    assert cfg.data_dir == (tmp_path / "data").resolve()
    assert cfg.buffer_path == (tmp_path / "data" / "buffer.db").resolve()
    assert float(cfg.devices[0].interval) == 0.5
    assert cfg.devices[0].tag_path(cfg.devices[0].tags[0]) == "boiler/pressure"
    assert float(cfg.buffer.retention) == 86400


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda t: t.replace('interval = "500ms"', "interval = 5"), "devices[0] (boiler).interval", "needs a unit"),
        (
            lambda t: t.replace('interval = "500ms"', 'interval = "5 parsecs"'),
            "devices[0] (boiler).interval",
            "invalid duration",
        ),
        (
            lambda t: t.replace('unit = "bar"', 'unit = "bar"\ncolour = "red"'),
            "devices[0] (boiler).tags[0]",
            "unknown key `colour`",
        ),
        (
            lambda t: t.replace('type = "sim"', 'type = "nosuchdriver"'),
            "devices[0] (boiler).type",
            "unknown driver type 'nosuchdriver'",
        ),
        (
            lambda t: t.replace('name = "pressure"', 'name = "pres sure"'),
            "devices[0] (boiler).tags[0]",
            "invalid tag name",
        ),
        (lambda t: t + '\n[buffer]\nretention = "0s"\n', "buffer", "retention must be positive"),
        (lambda t: t + '\n[buffer]\nmax_bytes = "12 parsecs"\n', "buffer.max_bytes", "invalid size"),
        (
            lambda t: t + '\n[[uplinks]]\nname = "archive"\ntype = "file"\n',
            "uplinks[1] (archive).name",
            "duplicate name",
        ),
        (
            lambda t: t + '\n[[uplinks]]\nname = "x"\ntype = "file"\nbatch_size = "big"\n',
            "uplinks[1] (x).batch_size",
            "Expected `int`, got `str`",
        ),
        (lambda t: t + "\n[bogus]\n", None, "unknown top-level key `bogus`"),
        (lambda t: t.replace('type = "sim"\n', ""), "devices[0] (boiler)", "missing required key `type`"),
    ],
)
def test_errors_name_file_path_and_reason(tmp_path: Path, mutate, path: str | None, reason: str) -> None:  # type: ignore[no-untyped-def]
    p = write(tmp_path, mutate(BASE))
    with pytest.raises(ConfigError) as info:
        load(p)
    msg = str(info.value)
    assert msg.startswith(str(p)), msg
    if path:
        assert f": {path}:" in msg, msg
    assert reason in msg, msg


def test_duplicate_tags_across_entries_are_rejected(tmp_path: Path) -> None:
    text = BASE + '\n[[devices.tags]]\nname = "pressure"\n'
    with pytest.raises(ConfigError, match=r"devices\[0\] \(boiler\)\.tags\[1\]\.name: duplicate tag 'boiler/pressure'"):
        load(write(tmp_path, text))


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load(write(tmp_path, "[gateway\nid = 1"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.toml")


def test_secrets_from_env_file_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt").write_text("from-cred")
    monkeypatch.setenv("MQTT_PW", "from-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = BASE.replace('type = "file"', 'type = "mqtt"\npassword = { env = "MQTT_PW" }')
    cfg = load(write(tmp_path, text))
    pw = cfg.uplinks[0].password
    assert isinstance(pw, Secret)
    assert pw.reveal() == "from-env"
    assert "from-env" not in repr(cfg) and "from-env" not in str(pw)
    cfg = load(write(tmp_path, BASE.replace('type = "file"', 'type = "mqtt"\npassword = { file = "pw" }')))
    assert cfg.uplinks[0].password.reveal() == "from-file"
    cfg = load(write(tmp_path, BASE.replace('type = "file"', 'type = "mqtt"\npassword = { credential = "mqtt" }')))
    assert cfg.uplinks[0].password.reveal() == "from-cred"
    with pytest.raises(ConfigError, match=r"uplinks\[0\] \(archive\)\.password: environment variable NOPE is not set"):
        load(write(tmp_path, BASE.replace('type = "file"', 'type = "mqtt"\npassword = { env = "NOPE" }')))


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, BASE)
    assert cli.main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace('interval = "500ms"', 'interval = "soon"'))
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: devices[0] (boiler).interval: invalid duration 'soon'" in err


def test_check_config_never_prints_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, BASE.replace('type = "file"', 'type = "mqtt"\npassword = "hunter2"'))
    os.chmod(p, 0o644)
    assert cli.main(["check-config", str(p)]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err


def test_embedded_demo_config_is_valid(tmp_path: Path) -> None:
    cfg = cli.demo_config(tmp_path / "demo")
    assert cfg.devices and cfg.uplinks
    assert cfg.data_dir == (tmp_path / "demo").resolve()


def test_every_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped example loads, given the secrets it names (env variables, systemd credentials)."""
    root = Path(__file__).parents[2]
    for cred in ("mqtt-password", "http-token", "opcua-password"):
        (tmp_path / cred).write_text("s3cret")
    (tmp_path / "command-key").write_text("0123456789abcdef0123456789abcdef")  # signing keys: 16 bytes or more
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    for var in ("EDGED_OPCUA_PASSWORD", "EDGED_SCADA_PASSWORD", "EDGED_MQTT_PASSWORD", "EDGED_HTTP_TOKEN"):
        monkeypatch.setenv(var, "s3cret")
    examples = sorted(root.glob("examples/**/*.toml"))
    assert len(examples) >= 3
    for p in examples:
        cfg = load(p)
        assert cfg.devices, p


def test_parse_rejects_non_table_entries() -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\]: must be a table"):
        parse({"devices": [1]})
