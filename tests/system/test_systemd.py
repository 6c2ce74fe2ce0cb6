"""The systemd integration, checked without a running systemd: the notify protocol against a socket
the test binds, the unit through `systemd-analyze verify` and `security`, the sandbox's seccomp
rules against what the daemon really calls, the sysusers/tmpfiles snippets in a scratch root, and
install.sh in dry-run mode."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged import cli, config
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edged.service"
INSTALL = REPO / "systemd" / "install.sh"
INSTALLED_EDGED = "/opt/edged/venv/bin/edged"
WATCHDOG_USEC = 2_000_000

CONFIG = """
[gateway]
id = "gw-notify"
data_dir = "{data}"

[buffer]
flush_interval = "50ms"

[[devices]]
name = "line1"
type = "sim"
interval = "100ms"

[[devices.tags]]
name = "pressure"
signal = "sine"

[[devices.tags]]
name = "starts"
signal = "counter"

[[uplinks]]
name = "local-file"
type = "file"
path = "samples.jsonl"
{extra}
"""

MQTT_UPLINK = """
[[uplinks]]
name = "broker"
type = "mqtt"
host = "localhost"
port = {port}
"""


def write_config(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(CONFIG.format(data=tmp_path / "data", extra=extra))
    return p


def daemon_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without anything systemd may have set for it."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.pop("JOURNAL_STREAM", None)  # logs to stderr, where the test reads them
    return {**env, **extra}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install systemd)")
    return path


# ----------------------------------------------------------------------------------------- notify protocol


class NotifyListener:
    """The service manager's end of sd_notify(3): an AF_UNIX datagram socket, by path or abstract.
    A thread timestamps each datagram on arrival, so gaps between pings are measured, not queued."""

    def __init__(self, tmp_path: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edged-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.malformed: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            lines = data.decode(errors="replace").split("\n")
            with self._lock:
                if all("=" in line for line in lines):
                    self.messages.append((now, dict(line.split("=", 1) for line in lines)))
                else:
                    self.malformed.append(data)

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        """The first datagram carrying `key` (READY, WATCHDOG, STOPPING, ...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for _, m in self.messages:
                    if key in m:
                        return m
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout}s; got {[m for _, m in self.messages]}")

    def times(self, key: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield lst
    lst.close()


def test_notify_ready_watchdog_stopping(tmp_path: Path, listener: NotifyListener) -> None:
    cfg = write_config(tmp_path)
    log = tmp_path / "daemon.log"
    env = daemon_env(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "--config", str(cfg)], env=env, stderr=err, cwd=tmp_path
        )
    try:
        ready = listener.wait_for("READY", timeout=30)
        assert ready["READY"] == "1"
        assert "STATUS" in ready and "1 devices" in ready["STATUS"], ready
        # The buffer is open and the tasks run: samples reach the file uplink without further notice.
        samples = tmp_path / "data" / "samples.jsonl"
        wait_until(lambda: samples.exists() and samples.stat().st_size > 0, 15, "samples after READY=1")
        t_ready = listener.times("READY")[0]
        time.sleep(3.2)  # the listener thread timestamps the pings meanwhile
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", timeout=15)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t_stopping = listener.times("STOPPING")[0]
    pings = [t for t in listener.times("WATCHDOG") if t_ready < t < t_stopping]
    assert not listener.malformed, listener.malformed
    assert all(m["WATCHDOG"] == "1" for _, m in listener.messages if "WATCHDOG" in m)
    assert len(pings) >= 2, f"WATCHDOG=1 pings after READY: {len(pings)}"
    # systemd kills the service when a ping is late by WATCHDOG_USEC: every gap must stay under it.
    gaps = [b - a for a, b in zip([t_ready, *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog gaps {[round(g, 2) for g in gaps]}"
    assert "READY" in listener.messages[0][1], "nothing before READY=1"
    assert "edged stopped" in log.read_text()


def test_no_watchdog_pings_for_another_pid(tmp_path: Path) -> None:
    """WATCHDOG_PID names the process systemd watches; a child that inherits the variables stays quiet."""
    lst = NotifyListener(tmp_path, abstract=False)
    cfg = write_config(tmp_path)
    env = daemon_env(NOTIFY_SOCKET=lst.address, WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        env=env,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        lst.wait_for("READY", timeout=30)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        lst.wait_for("STOPPING", timeout=15)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lst.close()
    assert lst.times("WATCHDOG") == []


# ----------------------------------------------------------------------------------------- the unit file


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> values in file order (systemd keys repeat, so configparser does not fit)."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_matches_the_code() -> None:
    """The unit and the CLI agree on paths, and the daemon pings well inside WatchdogSec."""
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{INSTALLED_EDGED} run --config {cli.DEFAULT_CONFIG}"]
    assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert s["ExecReload"][0] == f"{INSTALLED_EDGED} check-config --quiet {cli.DEFAULT_CONFIG}"
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == [str(cli.EXIT_CONFIG)]
    assert float(s["WatchdogSec"][0]) / 2 >= 1.0, "the daemon pings every min(WatchdogSec/2, 1 s)"
    assert s["User"] == ["edged"] and s["SupplementaryGroups"] == ["dialout"]
    data_dir = config.GatewayConfig().data_dir
    assert f"/var/lib/{s['StateDirectory'][0]}" == data_dir
    assert f"/etc/{s['ConfigurationDirectory'][0]}" == str(Path(cli.DEFAULT_CONFIG).parent)
    assert s["DevicePolicy"] == ["closed"]
    assert s["DeviceAllow"] == ["char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"]
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]


def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` is clean. It checks that ExecStart= exists, so the copy under test
    points at this checkout's `edged` instead of /opt/edged/venv; nothing else changes."""
    analyze = tool("systemd-analyze")
    edged_exe = Path(sys.executable).with_name("edged")
    if not edged_exe.exists():
        pytest.skip(f"no edged console script beside {sys.executable} (pip install -e . into this venv)")
    text = UNIT.read_text()
    rewritten = text.replace(INSTALLED_EDGED, str(edged_exe))
    changed = [b for a, b in zip(text.splitlines(), rewritten.splitlines(), strict=True) if a != b]
    assert changed and all(line.startswith(("ExecStart=", "ExecReload=")) for line in changed)
    unit = tmp_path / "edged.service"
    unit.write_text(rewritten)
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "edged.service" in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


def test_unit_security_exposure_at_most_2() -> None:
    analyze = tool("systemd-analyze")
    out = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edged\.service: (\d+(?:\.\d+)?)", out.stdout)
    assert m, out.stdout + out.stderr
    exposure = float(m.group(1))
    open_items = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= 2.0, f"exposure {exposure}; not hardened: {', '.join(open_items)}"


# ----------------------------------------------------------------------------------------- the sandbox, at run time
# systemd is not PID 1 here, but the unit's seccomp rules are plain BPF, so they are emulated: the
# test builds the unit's SystemCallFilter= (names expanded by `systemd-analyze syscall-filter`,
# numbers from the kernel headers) plus MemoryDenyWriteExecute= (seccomp-util.c:
# mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC),
# all refused with EPERM as SystemCallErrorNumber=EPERM says, and runs the daemon under it.

UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")

# System calls the daemon attempts that the unit refuses, and why that is harmless; the test runs
# the daemon with them refused, so the claim is checked, not assumed.
KNOWN_REFUSALS = {
    "mbind": "OpenBLAS (numpy/scipy) asks for NUMA-local buffers and ignores the answer",
    "fchown": "SQLite gives new -wal/-shm files the database's owner, only when running as root",
}
# Files under /proc beyond the process's own that something reads: ProcSubset=pid hides them.
KNOWN_PROC_READS = {
    "/proc/stat": "prometheus_client's import-time ProcessCollector (boot time) for its global registry, "
    "which edged does not serve; it disables itself quietly",
}

LAUNCHER = r"""
import ctypes, importlib, mmap, os, runpy, sys

code = open(sys.argv[1], "rb").read()
buf = ctypes.create_string_buffer(code, len(code))

class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

libc = ctypes.CDLL(None, use_errno=True)
fprog = SockFprog(len(code) // 8, ctypes.addressof(buf))
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS, SECCOMP
    sys.exit(f"cannot install the seccomp filter: errno {ctypes.get_errno()}")
for probe in (
    lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),  # W^X
    lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0)),  # @resources
):
    try:
        probe()
        sys.exit("the seccomp filter is not in force")
    except PermissionError:
        pass

mods = [m for m in sys.argv[2].split(",") if m]
for name in mods:
    importlib.import_module(name)
if "numpy" in mods:
    import numpy
    numpy.linalg.solve(numpy.eye(64) * 2.0, numpy.ones(64))
if "scipy.signal" in mods:
    import scipy.signal
    scipy.signal.lfilter(*scipy.signal.butter(2, 0.1), [1.0] * 64)
if "cryptography" in mods:  # asyncua's Basic256Sha256 and certificate handling
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
    rsa.generate_private_key(65537, 2048).sign(b"x", padding.PKCS1v15(), hashes.SHA256())
sys.argv = ["edged", *sys.argv[3:]]
runpy.run_module("edged", run_name="__main__", alter_sys=True)
"""

# Third-party libraries edged's extras bring; every plugin package in the tree is added to them.
OPTIONAL_LIBS = [
    "numpy", "scipy.signal", "scipy.interpolate", "pint", "cryptography", "asyncua", "pymodbus.client",
    "serial", "aiomqtt", "httpx", "google.protobuf", "prometheus_client", "hart_protocol", "systemd.journal",
]  # fmt: skip


def syscall_groups(analyze: str) -> dict[str, set[str]]:
    """`systemd-analyze syscall-filter` as group -> system calls, nested groups expanded."""
    text = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True, check=True).stdout
    raw: dict[str, list[str]] = {}
    group = ""
    for line in text.splitlines():
        if line.startswith("@"):
            group = line.strip()
            raw[group] = []
        elif line.startswith("    ") and not line.strip().startswith("#") and group:
            raw[group].append(line.strip())

    def expand(name: str) -> set[str]:
        out: set[str] = set()
        for item in raw.get(name, []):
            out |= expand(item) if item.startswith("@") else {item}
        return out

    return {g: expand(g) for g in raw}


def unit_allowed_syscalls(analyze: str) -> set[str]:
    """The unit's SystemCallFilter= lines applied in order: an allow list, then ~removals."""
    groups = syscall_groups(analyze)
    allowed: set[str] = set()
    for value in unit_settings()["SystemCallFilter"]:
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= groups[item] if item.startswith("@") else {item}
        allowed = allowed - names if value.startswith("~") else allowed | names
    return allowed


def seccomp_program(allowed: set[int]) -> bytes:
    """Classic BPF: foreign arch -> EPERM; the W^X rules; then allowed numbers -> ALLOW, else EPERM."""
    ld, ja, jeq, and_, ret = 0x20, 0x05, 0x15, 0x54, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    arg2 = 32  # offsetof(struct seccomp_data, args[2]); the flags are in its low word
    wx_rules = [(9, 0x6, 0x6), (10, 0x4, 0x4), (329, 0x4, 0x4), (30, 0o100000, 0o100000)]  # nr, mask, refused
    n = len(wx_rules)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, eperm), (ld, 0, 0, 0)]  # x86_64 only
    dispatch = len(prog)
    block_len = 6
    chain = dispatch + n + 1 + block_len * n
    for i, (nr, _, _) in enumerate(wx_rules):
        prog.append((jeq, (dispatch + n + 1 + block_len * i) - (dispatch + i) - 1, 0, nr))
    prog.append((ja, 0, 0, block_len * n))  # not a W^X-relevant call: straight to the allow list
    for i, (_, mask, refused) in enumerate(wx_rules):
        ja_at = dispatch + n + 1 + block_len * i + 5
        prog += [(ld, 0, 0, arg2), (and_, 0, 0, mask), (jeq, 0, 1, refused), (ret, 0, 0, eperm)]
        prog += [(ld, 0, 0, 0), (ja, 0, 0, chain - ja_at - 1)]
    assert len(prog) == chain
    for nr in sorted(allowed):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, allow)]
    prog.append((ret, 0, 0, eperm))
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def importable_modules() -> list[str]:
    """What imports here without the filter; under it, each must still import (a library that
    needs an executable stack or JIT-compiles would fail there)."""
    plugins = [
        f"{kind}.{p.name}" for kind in ("drivers", "uplink") for p in sorted((REPO / kind).iterdir())
        if (p / "__init__.py").exists()
    ]  # fmt: skip
    probe = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    try: importlib.import_module(m); print(m)\n"
        "    except Exception: pass"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *OPTIONAL_LIBS, *plugins], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    return out.stdout.split()


def test_daemon_runs_inside_the_units_sandbox(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The daemon (sim device, file and MQTT uplinks, every optional library imported and used)
    starts, delivers and stops cleanly under the unit's seccomp rules; with strace installed, every
    system call it attempts is one the unit allows or a documented harmless refusal, and it reads
    nothing in /proc that ProcSubset=pid hides."""
    analyze = tool("systemd-analyze")
    if platform.machine() != "x86_64" or not UNISTD_64.exists():
        pytest.skip(f"the filter is built for x86_64 from {UNISTD_64} (apt-get install linux-libc-dev)")
    numbers = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", UNISTD_64.read_text())}
    allowed = unit_allowed_syscalls(analyze)
    assert {"read", "openat", "connect", "fdatasync"} <= allowed and "mbind" not in allowed
    program = tmp_path / "filter.bpf"
    program.write_bytes(seccomp_program({numbers[name] for name in allowed if name in numbers}))
    mods = importable_modules()
    assert "numpy" in mods and "uplink.mqtt" in mods, mods

    strace = shutil.which("strace")
    summary = tmp_path / "strace.txt"
    wrapper = [strace, "-f", "-qq", "-C", "-s", "64", "-o", str(summary)] if strace else []
    cfg = write_config(tmp_path, MQTT_UPLINK.format(port=mosquitto.port))
    cmd = [*wrapper, sys.executable, "-c", LAUNCHER, str(program), ",".join(mods), "run", "--config", str(cfg)]
    log = tmp_path / "daemon.log"
    status = tmp_path / "data" / "status.json"
    samples = tmp_path / "data" / "samples.jsonl"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stderr=err, stdout=subprocess.DEVNULL, env=daemon_env(), cwd=tmp_path)
    try:
        wait_until(lambda: proc.poll() is not None or (samples.exists() and status.exists()), 90, "samples")
        assert proc.poll() is None, log.read_text()
        wait_until(lambda: json.loads(status.read_text())["uplinks"]["broker"]["sent_live"] > 0, 30, "MQTT delivery")
        os.kill(int(json.loads(status.read_text())["pid"]), signal.SIGTERM)  # python, not strace
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0 and "edged stopped" in text and "Traceback" not in text, text
    if not strace:
        pytest.skip("the daemon ran under the filter; strace is not installed to list its system calls")
    used, proc_reads = set(), set()
    for line in summary.read_text().splitlines():
        parts = line.split()
        if parts and re.fullmatch(r"\d+\.\d+", parts[0]) and parts[-1] != "total":  # the -C summary table
            used.add(parts[-1])
        elif m := re.search(r'"(/proc/[^"/]+(?:/[^"]*)?)".*\) = \d', line):  # a /proc path, call succeeded
            first = m.group(1).split("/")[2]
            if first not in ("self", "thread-self") and not first.isdigit():
                proc_reads.add(m.group(1))
    assert {"execve", "openat", "connect", "fdatasync"} <= used, sorted(used)
    refused = used - allowed - {"setpriority"}  # the launcher's own probe that the filter is in force
    assert refused <= KNOWN_REFUSALS.keys(), f"the unit refuses (EPERM) {sorted(refused - KNOWN_REFUSALS.keys())}"
    hidden = proc_reads - KNOWN_PROC_READS.keys()
    assert not hidden, f"ProcSubset=pid hides what the daemon read: {sorted(hidden)}"


# ----------------------------------------------------------------------------------------- install


def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to chown in the scratch root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for cmd in (
        [sysusers, f"--root={root}", str(REPO / "systemd" / "sysusers-edged.conf")],
        [tmpfiles, f"--root={root}", "--create", str(REPO / "systemd" / "tmpfiles-edged.conf")],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    edged = users["edged"]
    assert int(edged[2]) < 1000 and edged[5] == "/var/lib/edged" and edged[6] == "/usr/sbin/nologin"
    assert "edged" in groups["dialout"][3].split(",")
    uid, gid = int(edged[2]), int(groups["edged"][2])
    expect = {
        "etc/edged": (0o750, 0, gid),
        "etc/edged/credentials": (0o700, 0, 0),
        "var/lib/edged": (0o750, uid, gid),
        "var/log/edged": (0o750, uid, gid),
    }
    for rel, (mode, owner, group) in expect.items():
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, owner, group), rel


def test_example_config_validates() -> None:
    cfg = config.load(REPO / "systemd" / "edged.toml")
    assert str(cfg.data_dir) == "/var/lib/edged" and cfg.devices and not cfg.uplinks


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "edged"
    watched = [Path("/etc/systemd/system/edged.service"), Path("/etc/edged"), Path("/etc/sysusers.d/edged.conf")]
    before = [p.exists() for p in watched]
    out = run_install("--dry-run", "--prefix", str(prefix), "--extras", "mqtt,modbus")
    assert out.returncode == 0, out.stdout + out.stderr
    steps = [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]
    text = "\n".join(steps)
    assert re.search(r"^(systemd-sysusers|useradd) ", text, re.M), text
    assert f"-m venv {prefix}/venv" in text
    assert f"{prefix}/venv/bin/pip install" in text and "mqtt\\,modbus" in text
    assert "/etc/systemd/system/edged.service" in text
    if not Path(cli.DEFAULT_CONFIG).exists():
        assert f"install -m 0640 -o root -g edged {REPO}/systemd/edged.toml {cli.DEFAULT_CONFIG}" in text
    assert "systemctl daemon-reload" in text or "skipped systemctl daemon-reload" in out.stdout
    assert "dry run: nothing was changed" in out.stdout and "systemctl enable --now edged" in out.stdout
    assert not (tmp_path / "opt").exists()
    assert [p.exists() for p in watched] == before


def test_install_rejects_bad_usage() -> None:
    out = run_install("--frobnicate")
    assert out.returncode != 0 and "unknown option: --frobnicate" in out.stderr
    out = run_install("--dry-run", "--prefix", "relative/dir")
    assert out.returncode != 0 and "--prefix must be an absolute path" in out.stderr
    out = run_install("--dry-run", "--source", "/nonexistent/edged.whl")
    assert out.returncode != 0 and "no such file or directory" in out.stderr
    assert run_install("--help").returncode == 0
    runuser = shutil.which("runuser")
    if os.geteuid() == 0 and runuser:  # the script on stdin: nobody may not read the checkout
        out = subprocess.run(
            [runuser, "-u", "nobody", "--", "bash", "-s"],
            input=INSTALL.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert out.returncode != 0 and "run as root" in out.stderr, out.stderr


def test_install_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    out = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
