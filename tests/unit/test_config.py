"""Config validation: every error names the file, the key path and the reason."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import pytest

from edged import cli, files, logs
from edged.config import (
    NOTHING_TO_DO,
    SECRET_FILE_MAX,
    ByteSize,
    Duration,
    Secret,
    inline_secrets,
    load,
    parse,
    parse_listen,
)
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


# ----------------------------------------------------------------------------------------- bounds and shapes


@pytest.mark.parametrize("text", ["9" * 400 + "d", "36501d", "1e3s", "\u0661s"])  # ARABIC-INDIC DIGIT ONE
def test_durations_out_of_bounds_or_not_ascii_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"too long|invalid duration"):
        Duration.parse(text)


def test_longest_duration_and_largest_size_fit_64_bit_nanoseconds_and_bytes() -> None:
    assert int(Duration.parse("36500d") * 1e9) < 2**63
    assert ByteSize.parse("1PiB") == 1024**5
    for value in ("9" * 400, "2PiB", 1024**5 + 1, "9" * 30 + "GiB"):
        with pytest.raises(ValueError, match="too large"):
            ByteSize.parse(value)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9337", ("127.0.0.1", 9337)), (":9337", ("127.0.0.1", 9337)), ("[::1]:1", ("::1", 1)),
     ("0.0.0.0:65535", ("0.0.0.0", 65535)), ("localhost:80", ("localhost", 80))],
)  # fmt: skip
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:0", "h:x", "::1:80", "[127.0.0.1]:80",
               "gw.example:80", "127.0.0.1:9337 ", "[::1:80"],
)  # fmt: skip
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(listen))):
        parse_listen(listen)


def test_integers_beyond_64_bit_and_deep_nesting_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: buffer\.flush_rows: integer out of range \(64-bit\)$"):
        parse({"buffer": {"flush_rows": 2**64}})
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"^<config>: gateway\.x(\[0\]){31}: nested more than 32 levels deep$"):
        parse({"gateway": {"x": deep}})


def test_toml_nested_beyond_the_parsers_recursion_limit(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "\n[commands]\nx = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n")
    line = len(BASE.splitlines()) + 3
    with pytest.raises(ConfigError, match=rf": line {line}: arrays or tables nested more than 32 levels deep$"):
        load(p)


def test_empty_config_is_refused_with_the_demo_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'edged.toml'}: {NOTHING_TO_DO}")):
        load(write(tmp_path, "[gateway]\nid = 'gw1'\n"))
    cfg = load(write(tmp_path, BASE.split("[[uplinks]]")[0]))  # devices only: a local buffer, valid
    assert cfg.devices and not cfg.uplinks


# ----------------------------------------------------------------------------------------- secrets


def test_secret_files_are_read_only_when_regular_and_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * (SECRET_FILE_MAX + 1))
    (tmp_path / "ok").write_bytes(b"x" * (SECRET_FILE_MAX - 1) + b"\n")
    cases = {"fifo": "is a FIFO, not a regular file", "/dev/zero": "is a device", "big": "larger than 65536 bytes",
             ".": "is a directory"}  # fmt: skip
    for ref, reason in cases.items():
        text = BASE.replace('type = "file"', f'type = "mqtt"\npassword = {{ file = "{ref}" }}')
        with pytest.raises(
            ConfigError, match=rf"uplinks\[0\] \(archive\)\.password: cannot read secret file .*{reason}"
        ):
            load(write(tmp_path, text))
    text = BASE.replace('type = "file"', 'type = "mqtt"\npassword = { file = "ok" }')
    assert load(write(tmp_path, text)).uplinks[0].password.reveal() == "x" * (SECRET_FILE_MAX - 1)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    (tmp_path / "creds").mkdir()
    for name in ("../ok", "..", ".", "a/b", "/etc/passwd"):
        text = BASE.replace('type = "file"', f'type = "mqtt"\npassword = {{ credential = "{name}" }}')
        with pytest.raises(ConfigError, match="invalid credential name"):
            load(write(tmp_path, text))


def test_inline_secret_warning_covers_every_secret_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", "t")
    uplinks = """
[[uplinks]]
name = "erp"
type = "http"
url = "https://erp.example/in"
bearer_token = "inline-token"
headers = { "X-Api-Key" = "inline-key", "X-Other" = { env = "TOKEN" } }

[[uplinks]]
name = "scada"
type = "opcua"
users = { operator = "inline-pw", viewer = { env = "TOKEN" } }
"""
    p = write(tmp_path, BASE + uplinks)
    cfg = load(p)
    assert inline_secrets(cfg) == [
        "uplinks[1] (erp).bearer_token", "uplinks[1] (erp).headers.X-Api-Key", "uplinks[2] (scada).users.operator",
    ]  # fmt: skip
    p.chmod(0o644)
    cli._load(str(p))
    assert "world-readable and holds an inline secret at uplinks[1] (erp).bearer_token, " in caplog.text
    assert "inline-token" not in caplog.text and "inline-pw" not in caplog.text
    caplog.clear()
    p.chmod(0o640)
    cli._load(str(p))
    assert "world-readable" not in caplog.text


@pytest.mark.parametrize("url", ["http://u:hunter2@erp.example/in", "https://token@erp.example/", "http://:pw@h/"])
def test_http_url_with_credentials_is_refused_without_showing_them(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"uplinks": [{"name": "erp", "type": "http", "url": url}]})
    assert "url must not contain credentials: use username and password, or bearer_token" in str(info.value)
    assert "hunter2" not in str(info.value) and "pw@" not in str(info.value)


# ----------------------------------------------------------------------------------------- logs and umask


def test_text_log_escapes_control_characters_everywhere() -> None:
    fmt = logs.TextFormatter()
    rec = logging.LogRecord("edged.x", logging.WARNING, __file__, 1, "user %s: %r", ("a\nb\x1b[2J", "c\rd"), None)
    rec.tag = "t\x00\u2028"
    line = fmt.format(rec)
    assert "\n" not in line and "\x1b" not in line and "\r" not in line and "\x00" not in line
    assert "user a\\nb\\x1b[2J: 'c\\rd' [tag=t\\x00\\u2028]" in line
    try:
        raise ValueError("x\n2026-01-01T00:00:00.000Z info    edged: FAKE")
    except ValueError:
        rec.exc_info = sys.exc_info()
    tail = fmt.format(rec).splitlines()[1:]
    assert tail and all(t.startswith("  ") for t in tail), "traceback lines are indented: no fake record"


def test_umask_is_tightened_never_loosened(monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o077)
    try:
        assert files.restrict_umask({}) == 0o077
        os.umask(0)
        assert files.restrict_umask({}) == 0o027
        assert files.restrict_umask({"EDGED_UMASK": "0077"}) == 0o077
        with pytest.raises(ConfigError, match="EDGED_UMASK"):
            files.restrict_umask({"EDGED_UMASK": "rw-"})
    finally:
        os.umask(old)
