"""Malformed configs through the real CLI: `check-config` and `run` share one validation, so every bad
config exits 2 from both with `file: key: reason` and nothing started, and every config that passes
`check-config` runs. Also, against the running daemon: control characters in what strangers send are
escaped in the log, and the files under the data directory are 0640/0600 even with umask 0."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from buffer import Store
from edged.config import NOTHING_TO_DO
from peers.waiting import wait_until

GOOD = """
[gateway]
id = "gw-bad"
data_dir = "{data}"
{gateway}
[buffer]
flush_interval = "50ms"
{buffer}
[[devices]]
name = "line1"
type = "sim"
interval = "50ms"
[[devices.tags]]
name = "c0"
signal = "counter"

[[uplinks]]
name = "archive"
type = "file"
{uplinks}
"""


def cfg_text(tmp: Path, *, gateway: str = "", buffer: str = "", uplinks: str = "") -> str:
    return GOOD.format(data=tmp / "data", gateway=gateway, buffer=buffer, uplinks=uplinks)


def mqtt_with(secret: str) -> str:
    return f'\n[[uplinks]]\nname = "m"\ntype = "mqtt"\nhost = "127.0.0.1"\nusername = "u"\npassword = {secret}\n'


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "fifo")
    return tmp / "fifo"


@dataclass(frozen=True)
class Bad:
    """`make` writes what the case needs under tmp and returns the config text (or a path to use
    as the config file itself); `key` None: a problem of the whole file."""

    id: str
    make: Callable[[Path], str | Path]
    key: str | None
    reason: str
    env: dict[str, str] | None = None


DEEP_LINE = f"line {len(GOOD.splitlines()) + 3}"  # of `x = ` in _deep's config


def _deep(open_: str, close: str, n: int) -> Callable[[Path], str]:
    return lambda t: cfg_text(t) + f"\n[commands]\nx = {open_ * n}1{close * n}\n"


def _big_secret(t: Path) -> str:
    (t / "big").write_bytes(b"x" * (65 * 1024))
    return cfg_text(t, uplinks=mqtt_with('{ file = "big" }'))


def _computed(body: str) -> str:
    return f'\n[[computed]]\nname = "calc"\n[[computed.tags]]\nname = "x"\n{body}\n'


def _file_as_data_dir(t: Path) -> str:
    (t / "data").write_text("not a directory")
    return cfg_text(t)


def _dir_as_buffer(t: Path) -> str:
    (t / "data" / "buffer.db").mkdir(parents=True)
    return cfg_text(t)


BAD = [
    Bad("retention-9..9d", lambda t: cfg_text(t, buffer=f'retention = "{"9" * 400}d"'), "buffer.retention",
        "is too long: at most 36500d"),
    Bad("retention-1e6d", lambda t: cfg_text(t, buffer='retention = "1000000d"'), "buffer.retention", "too long"),
    Bad("max_bytes-9..9", lambda t: cfg_text(t, buffer=f'max_bytes = "{"9" * 400}"'), "buffer.max_bytes",
        "too large: at most 1PiB"),
    Bad("max_bytes-9..9GiB", lambda t: cfg_text(t, buffer=f'max_bytes = "{"9" * 30}GiB"'), "buffer.max_bytes",
        "too large"),
    Bad("max_bytes-int-overflow", lambda t: cfg_text(t, buffer=f"max_bytes = {'9' * 30}"), "buffer.max_bytes",
        "integer out of range (64-bit)"),
    Bad("int-5000-digits", lambda t: cfg_text(t, buffer=f"flush_rows = {'9' * 5000}"), None,
        "a number has more than 4300 digits"),
    Bad("batch_size-overflow", lambda t: cfg_text(t, uplinks=f"batch_size = {'9' * 25}"), "uplinks[0].batch_size",
        "integer out of range"),
    Bad("metrics-port-65536", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1:65536"'),
        "gateway.metrics_listen", "port 65536 is outside 1-65535"),
    Bad("metrics-port-99999", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1:99999"'),
        "gateway.metrics_listen", "outside 1-65535"),
    Bad("metrics-port-0", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1:0"'),
        "gateway.metrics_listen", "outside 1-65535"),
    Bad("metrics-no-port", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1"'),
        "gateway.metrics_listen", "expected host:port"),
    Bad("metrics-port-name", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1:http"'),
        "gateway.metrics_listen", "expected host:port"),
    Bad("metrics-empty-port", lambda t: cfg_text(t, gateway='metrics_listen = "127.0.0.1:"'),
        "gateway.metrics_listen", "expected host:port"),
    Bad("metrics-hostname", lambda t: cfg_text(t, gateway='metrics_listen = "gateway.example:9337"'),
        "gateway.metrics_listen", "is not an IP address"),
    Bad("metrics-bare-ipv6", lambda t: cfg_text(t, gateway='metrics_listen = "::1:9337"'),
        "gateway.metrics_listen", "expected host:port"),
    Bad("metrics-not-a-string", lambda t: cfg_text(t, gateway="metrics_listen = 9337"),
        "gateway.metrics_listen", "expected a string host:port"),
    Bad("trim_interval-0s", lambda t: cfg_text(t, buffer='trim_interval = "0s"'), "buffer",
        "trim_interval must be between 1s and 1h"),
    Bad("trim_interval-1ms", lambda t: cfg_text(t, buffer='trim_interval = "1ms"'), "buffer", "trim_interval"),
    Bad("flush_interval-0s", lambda t: cfg_text(t).replace('"50ms"\n', '"0s"\n', 1), "buffer", "flush_interval"),
    Bad("nested-arrays-2000", _deep("[", "]", 2000), DEEP_LINE, "nested more than 32 levels deep"),
    Bad("nested-tables-2000", _deep("{a=", "}", 2000), DEEP_LINE, "nested more than 32 levels deep"),
    Bad("nested-arrays-100", _deep("[", "]", 100), "commands.x" + "[0]" * 31, "nested more than 32 levels deep"),
    Bad("secret-fifo", lambda t: (_fifo(t), cfg_text(t, uplinks=mqtt_with('{ file = "fifo" }')))[1],
        "uplinks[1] (m).password", "is a FIFO, not a regular file"),
    Bad("secret-dev-zero", lambda t: cfg_text(t, uplinks=mqtt_with('{ file = "/dev/zero" }')),
        "uplinks[1] (m).password", "/dev/zero: it is a device, not a regular file"),
    Bad("secret-directory", lambda t: cfg_text(t, uplinks=mqtt_with('{ file = "/" }')),
        "uplinks[1] (m).password", "is a directory"),
    Bad("secret-too-big", _big_secret, "uplinks[1] (m).password", "big: it is larger than 65536 bytes"),
    Bad("secret-missing", lambda t: cfg_text(t, uplinks=mqtt_with('{ file = "nope" }')),
        "uplinks[1] (m).password", "No such file or directory"),
    Bad("credential-traversal", lambda t: cfg_text(t, uplinks=mqtt_with('{ credential = "../../etc/passwd" }')),
        "uplinks[1] (m).password", "invalid credential name '../../etc/passwd'", env={"CREDENTIALS_DIRECTORY": "/tmp"}),
    Bad("credential-dotdot", lambda t: cfg_text(t, uplinks=mqtt_with('{ credential = ".." }')),
        "uplinks[1] (m).password", "invalid credential name", env={"CREDENTIALS_DIRECTORY": "/tmp"}),
    Bad("credential-no-dir", lambda t: cfg_text(t, uplinks=mqtt_with('{ credential = "pw" }')),
        "uplinks[1] (m).password", "CREDENTIALS_DIRECTORY is not set"),
    Bad("secret-unknown-source", lambda t: cfg_text(t, uplinks=mqtt_with('{ vault = "x" }')),
        "uplinks[1] (m).password", "unknown secret source `vault`"),
    Bad("http-url-credentials",
        lambda t: cfg_text(t, uplinks='\n[[uplinks]]\nname = "erp"\ntype = "http"\nurl = "https://u:hunter2@erp.example/in"\n'),
        "uplinks[1] (erp)", "url must not contain credentials"),
    Bad("empty-file", lambda t: "", None, NOTHING_TO_DO),
    Bad("comments-only", lambda t: "# nothing yet\n", None, NOTHING_TO_DO),
    Bad("gateway-only", lambda t: f'[gateway]\ndata_dir = "{t / "data"}"\n', None, NOTHING_TO_DO),
    Bad("config-is-dev-zero", lambda t: Path("/dev/zero"), None,
        "cannot read config: it is a device, not a regular file"),
    Bad("config-is-fifo", _fifo, None, "is a FIFO, not a regular file"),
    Bad("config-is-directory", lambda t: t, None, "cannot read config"),
    Bad("config-missing", lambda t: t / "nope.toml", None, "cannot read config: No such file or directory"),
    Bad("not-utf8", lambda t: cfg_text(t) + '\n# caf\xe9\n', None, "not UTF-8 text"),
    Bad("toml-syntax", lambda t: "[gateway\nid = 1\n", None, "TOML syntax error"),
    Bad("data_dir-is-a-file", _file_as_data_dir, "gateway.data_dir", "exists but is not a directory"),
    Bad("buffer-is-a-directory", _dir_as_buffer, "buffer.path", "exists but is not a file"),
    Bad("gateway-id-too-long", lambda t: cfg_text(t).replace('"gw-bad"', '"' + "g" * 200 + '"'), "gateway",
        "invalid gateway id"),
    Bad("unknown-top-level", lambda t: cfg_text(t) + "\n[bogus]\n", None, "unknown top-level key `bogus`"),
    Bad("computed-syntax", lambda t: cfg_text(t) + _computed('expr = "{line1/c0} * (2 +"'),
        "computed[0] (calc).tags[0] (x).expr", "column 18: expected a value, found the end of the expression"),
    Bad("computed-unknown-tag", lambda t: cfg_text(t) + _computed('expr = "{line1/c0} - {line1/c9}"'),
        "computed[0] (calc).tags[0] (x).expr", "column 14: unknown tag 'line1/c9'"),
    Bad("computed-unknown-input", lambda t: cfg_text(t) + _computed('expr = "a + b"\ninputs = { a = "line1/c0" }'),
        "computed[0] (calc).tags[0] (x).expr", "column 5: unknown input 'b' (inputs: a)"),
    Bad("computed-units", lambda t: cfg_text(t) + _computed('function = "totalizer"\ninput = "line1/c0"'),
        "computed[0] (calc).tags[0] (x)", "totalizer needs units on its input and itself"),
]  # fmt: skip


def edged(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"} | (env or {})
    try:
        return subprocess.run(
            [sys.executable, "-m", "edged", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
        )
    except subprocess.TimeoutExpired as exc:  # a hang is the failure, not the test's timeout
        raise AssertionError(f"edged {' '.join(args)[:80]} hung for {timeout:.0f}s") from exc


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_config_exits_2_from_check_config_and_run(tmp_path: Path, case: Bad) -> None:
    made = case.make(tmp_path)
    if isinstance(made, Path):
        path = made
    else:
        path = tmp_path / "edged.toml"
        path.write_bytes(made.encode("utf-8", "surrogateescape") if case.id != "not-utf8" else made.encode("latin-1"))
    where = f"{path}: {case.key}: " if case.key else f"{path}: "
    for args in (("check-config", str(path)), ("run", "--config", str(path))):
        out = edged(*args, env=case.env)
        assert out.returncode == 2, f"{args[0]}: rc {out.returncode}\n{out.stderr[-2000:]}"
        first = out.stderr.strip().splitlines()[-1]
        assert first.startswith(f"edged: config error: {where}"), first[:500]
        assert case.reason in first, first[:500]
        assert "Traceback" not in out.stderr and "hunter2" not in out.stderr, out.stderr[-2000:]
        assert len(first) < 400, "a long value is shortened in the message"
    if case.id not in ("data_dir-is-a-file", "buffer-is-a-directory"):
        assert not (tmp_path / "data").exists(), "a bad config must not start anything"


# ----------------------------------------------------------------------------------------- good edge cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_until_status(cfg: Path, data: Path, *, env: dict[str, str] | None = None, umask: int | None = None) -> str:
    """`edged run` this config until it wrote status.json, then SIGTERM: must exit 0; its stderr."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )
    try:
        wait_until(lambda: proc.poll() is not None or (data / "status.json").exists(), 60, "status.json")
        assert proc.poll() is None, f"edged run exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
        wait_until(lambda: (data / "samples.jsonl").stat().st_size > 0, 60, "samples delivered to the file uplink")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return err


def _good_extremes(t: Path) -> str:
    port = free_port()
    return cfg_text(
        t,
        gateway=f'metrics_listen = ":{port}"',
        buffer='retention = "36500d"\nmax_bytes = "1PiB"\ntrim_interval = "1h"\nflush_rows = 1000000',
    )


def _good_secrets(t: Path) -> str:
    (t / "pw").write_text("from-file\n")
    (t / "pw").chmod(0o600)
    (t / "creds").mkdir()
    (t / "creds" / "mqtt.pw").write_text("from-cred")
    # the broker is not there: the uplink retries in the background, the daemon runs
    return cfg_text(t, uplinks=mqtt_with('{ file = "pw" }') + mqtt_with('{ credential = "mqtt.pw" }').replace(
        'name = "m"', 'name = "m2"'))  # fmt: skip


GOOD_CASES: list[tuple[str, Callable[[Path], str], dict[str, str]]] = [
    ("largest-values-and-empty-metrics-host", _good_extremes, {}),
    ("metrics-localhost", lambda t: cfg_text(t, gateway=f'metrics_listen = "localhost:{free_port()}"'), {}),
    ("secrets-from-file-and-credential", _good_secrets, {"CREDENTIALS_DIRECTORY": "creds"}),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("name", "make", "env"), GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_good_edge_case_passes_check_config_and_runs(
    tmp_path: Path, name: str, make: Callable[[Path], str], env: dict[str, str]
) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(make(tmp_path))
    env = {k: str(tmp_path / v) for k, v in env.items()}
    out = edged("check-config", str(cfg), env=env)
    assert out.returncode == 0, out.stderr
    run_until_status(cfg, tmp_path / "data", env=env)


# ----------------------------------------------------------------------------------------- logs and file modes


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.timeout(180)
def test_files_are_0640_and_log_lines_cannot_be_forged_with_umask_0(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(cfg_text(tmp_path))
    fake = "2026-01-01T00:00:00.000Z info edged: FAKE all tags"  # short: the gate clips long users in logs
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: os.umask(0),  # as a careless service manager would start it
    )
    try:
        wait_until(lambda: proc.poll() is not None or (data / "status.json").exists(), 60, "status.json")
        assert proc.poll() is None, "the daemon exited"
        # commands are disabled: the daemon refuses, and logs who asked for what
        w = edged("write", "line1/c0\x1b[2J", "5", "--config", str(cfg), "--user", f"ops\n{fake}\r\x07", timeout=90)
        assert "refused" in w.stdout or w.returncode == 1, w.stdout + w.stderr
        files = {p: _mode(p) for p in (data / "buffer.db", data / "buffer.db-wal", data / "buffer.db-shm",
                                       data / "status.json", data / "samples.jsonl")}  # fmt: skip
        dir_mode = _mode(data)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    for p, mode in files.items():
        assert mode & 0o027 == 0, f"{p.name} is {mode:o}"
    assert _mode(data / "status.json") & 0o027 == 0, "status.json rewritten at stop keeps its mode"
    assert dir_mode & 0o027 == 0, f"data dir is {dir_mode:o}"
    lines = err.splitlines()
    assert not any(line.startswith(fake[:24]) for line in lines), err[-3000:]
    logged = [line for line in lines if "FAKE all tags" in line]
    assert len(logged) == 1, err[-3000:]
    assert "ops\\n2026-01-01T00:00:00.000Z info" in logged[0] and "\\r\\x07" in logged[0]
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    assert "c0\\x1b[2J" in logged[0]


def test_new_buffer_and_opcua_key_modes_ignore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with Store(tmp_path / "b" / "buffer.db") as store:
            store.db.execute("CREATE TABLE IF NOT EXISTS t(x)")
            modes = {p.name: _mode(p) for p in (tmp_path / "b").iterdir()}
    finally:
        os.umask(old)
    assert modes["buffer.db"] == 0o640 and modes["buffer.db-wal"] == 0o640, modes
    out = edged("opcua-cert", "--data-dir", str(tmp_path / "d"), "--hostname", "gw", umask=0)
    assert out.returncode == 0, out.stderr
    assert _mode(tmp_path / "d" / "opcua" / "client_key.pem") == 0o600
    assert _mode(tmp_path / "d" / "opcua" / "client_cert.der") == 0o640
