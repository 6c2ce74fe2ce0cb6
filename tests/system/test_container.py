"""The container image and install.sh, built and run for real; and the compose example's config.

No Docker engine runs here, so the image is built the way CI can: as root, `buildah bud` with the
vfs storage driver and chroot isolation, from a Debian base made by debootstrap and imported under
the name the Dockerfile uses. Opt-in (it takes minutes): EDGED_CONTAINER_TEST=1. Needs root and
the Debian packages buildah and debootstrap. The base root file system is cached in
/var/tmp/edged-ci-base (or $EDGED_CI_BASE_DIR): delete it to refresh. Images live in a throwaway
storage directory under /var/tmp, removed afterwards.
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import edged
from edged import cli, config
from peers.mosquitto import Mosquitto
from peers.waiting import wait_until

# The module fixture builds the image (minutes on a loaded 2-core box): its setup counts toward
# the first test's timeout.
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # what `FROM debian:bookworm-slim` resolves to
IMAGE = "localhost/edged:ci-test"
BASE_CACHE = Path(os.environ.get("EDGED_CI_BASE_DIR", "/var/tmp/edged-ci-base"))
BUILD_CA = "/etc/edged-build-ca.pem"
EDGED_UID = 10001


def _skip_reason() -> str | None:
    if os.environ.get("EDGED_CONTAINER_TEST") != "1":
        return "opt-in: set EDGED_CONTAINER_TEST=1 to build the image with buildah (a few minutes)"
    if os.geteuid() != 0:
        return "needs root: buildah with the vfs storage driver and chroot isolation"
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install buildah debootstrap)"
    return None


SKIP = _skip_reason()
container = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


# ----------------------------------------------------------------------------------------- helpers


class Buildah:
    """buildah on a private storage directory, so tests neither see nor leave images elsewhere."""

    def __init__(self, storage: Path) -> None:
        self.base = [
            "buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs",
        ]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args[:3])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return out

    def container(self, image: str) -> str:
        """A working container of `image`: with vfs each costs a full copy, so tests share one."""
        return self("from", "--pull=never", image).stdout.strip().splitlines()[-1]

    def run(
        self, ctr: str, *cmd: str, volumes: tuple[str, ...] = (), timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in `ctr` as its image's USER, in its WORKDIR, with its ENV."""
        mounts = [a for v in volumes for a in ("-v", v)]
        return self("run", "--isolation", "chroot", *mounts, ctr, "--", *cmd, timeout=timeout, check=False)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line format), for debootstrap."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#")
            if "bookworm" in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", listing.read_text(), re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def base_rootfs_tarball() -> Path:
    """A minbase Debian bookworm as a tar, made once (about 30 s) and reused across runs."""
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    tarball = BASE_CACHE / "bookworm-minbase.tar"
    with (BASE_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two CI runs on one machine build it once
        if tarball.exists():
            return tarball
        rootfs = BASE_CACHE / "rootfs.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        out = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, f"debootstrap failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        partial = BASE_CACHE / "bookworm-minbase.tar.partial"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    return tarball


def pip_cert() -> str | None:
    """The CA bundle pip is configured with here (global.cert, or PIP_CERT), if any."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    found = dict(re.findall(r"^(\S+?)='(.*)'$", out.stdout, re.M))
    cert = found.get("global.cert") or found.get(":env:.cert") or os.environ.get("PIP_CERT")
    return cert if cert and Path(cert).is_file() else None


def pip_mounts(workdir: Path) -> tuple[str, ...]:
    """This machine's pip configuration for pip inside the build, read-only.

    The CA bundle goes to a path of its own and pip.conf is rewritten to point there: mounted at
    its real path (/etc/ssl/certs/ca-certificates.crt) it makes the ca-certificates package fail
    to install in the image (update-ca-certificates cannot replace a bind-mounted file: EBUSY).
    """
    mounts: list[str] = []
    cert = pip_cert()
    conf = configparser.ConfigParser()
    if Path("/etc/pip.conf").is_file():
        conf.read("/etc/pip.conf")
    if cert:
        if not conf.has_section("global"):
            conf.add_section("global")
        conf.set("global", "cert", BUILD_CA)
        mounts.append(f"{cert}:{BUILD_CA}:ro")
    if conf.sections():
        pip_conf = workdir / "pip.conf"
        with pip_conf.open("w") as fh:
            conf.write(fh)
        mounts.append(f"{pip_conf}:/etc/pip.conf:ro")
    if Path("/etc/xdg/pip").is_dir():
        mounts.append("/etc/xdg/pip:/etc/xdg/pip:ro")
    return tuple(mounts)


@dataclass
class Built:
    buildah: Buildah
    build_seconds: float
    log: str
    pip_mounts: tuple[str, ...]
    ctr: str  # one container of the image, for commands that change nothing in it

    def run(self, *cmd: str, volumes: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.buildah.run(self.ctr, *cmd, volumes=volumes, timeout=timeout)

    def config(self) -> dict[str, object]:
        doc = json.loads(self.buildah("inspect", "--type", "image", IMAGE).stdout)
        cfg: dict[str, object] = doc["Docker"]["config"]
        return cfg


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    storage = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="edged-ci-containers-"))
    b = Buildah(storage)
    try:
        tarball = base_rootfs_tarball()
        ctr = b("from", "scratch").stdout.strip()
        b("add", ctr, str(tarball), "/")  # a tar is unpacked
        b("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "bash", ctr)
        b("commit", "--quiet", "--rm", ctr, BASE_IMAGE)
        mounts = pip_mounts(storage)
        t0 = time.monotonic()
        out = b(
            "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",  # docker format keeps HEALTHCHECK
            *[a for m in mounts for a in ("-v", m)],
            "-t", IMAGE, "-f", str(REPO / "Dockerfile"), str(REPO),
            timeout=1800, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - t0
        log = out.stdout + out.stderr
        (storage.parent / "edged-ci-last-build.log").write_text(log)
        assert out.returncode == 0, f"image build failed after {seconds:.0f}s:\n{log[-4000:]}"
        print(f"\nimage build: {seconds:.0f}s (full log: /var/tmp/edged-ci-last-build.log)")
        yield Built(b, seconds, log, mounts, b.container(IMAGE))
    finally:
        b("rm", "--all", check=False)
        b("rmi", "--all", "--force", check=False)
        shutil.rmtree(storage, ignore_errors=True)


# ----------------------------------------------------------------------------------------- the image


@container
def test_build_log_is_clean(built: Built) -> None:
    assert "dpkg: error" not in built.log and "Errors were encountered" not in built.log
    assert re.search(r"Successfully installed .*\bedged-" + re.escape(edged.__version__), built.log)


@container
def test_image_runs_edged_version(built: Built) -> None:
    out = built.run("edged", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"edged {edged.__version__}"


@container
def test_image_metadata_user_and_layout(built: Built) -> None:
    cfg = built.config()
    assert cfg["User"] == "edged", "the bare name, so the runtime adds the supplementary group dialout"
    assert cfg["Entrypoint"] == ["edged"]
    assert cfg["Cmd"] == ["run", "--config", cli.DEFAULT_CONFIG]
    assert config.GatewayConfig().data_dir in cfg["Volumes"]  # type: ignore[operator]
    assert cfg["Healthcheck"]["Test"][0] == "CMD"  # type: ignore[index]
    script = "id -un; id -nG; stat -c '%n %U:%G %a' /var/lib/edged /etc/edged; test ! -e /src && echo no-src"
    out = built.run("sh", "-c", script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "edged" and "dialout" in lines[1].split()
    assert "/var/lib/edged edged:edged 750" in lines and "/etc/edged root:edged 750" in lines
    assert "no-src" in lines, "the build context must stay in the build stage"


@container
def test_demo_runs_and_the_healthcheck_follows_it(built: Built, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, EDGED_UID, EDGED_UID)  # as for a bind mount in production
    test = built.config()["Healthcheck"]["Test"]  # type: ignore[index]
    health = shlex.join(test[1:])
    script = f"""
        edged run --demo & pid=$!
        i=0; while [ ! -s /var/lib/edged/demo/status.json ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        sleep 3
        {health}; echo "healthy-while-running=$?"
        kill -TERM $pid; wait $pid; echo "exit=$?"
        {health} 2>/dev/null; echo "healthy-after-stop=$?"
    """
    out = built.run("sh", "-c", script, volumes=(f"{data}:/var/lib/edged",), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "healthy-while-running=0" in out.stdout, out.stdout + out.stderr
    assert "exit=0" in out.stdout and "healthy-after-stop=1" in out.stdout, out.stdout + out.stderr
    assert "embedded demo plant" in out.stderr and "edged stopped" in out.stderr
    lines = (data / "demo" / "samples.jsonl").read_text().splitlines()
    assert len(lines) >= 4
    assert json.loads(lines[0])["gateway"] == "demo-gateway"


@container
def test_missing_config_exits_2_with_a_clear_message(built: Built) -> None:
    out = built.run("edged", "run", "--config", cli.DEFAULT_CONFIG)
    assert out.returncode == cli.EXIT_CONFIG
    assert f"{cli.DEFAULT_CONFIG}: cannot read config" in out.stderr


@container
def test_compose_example_config_is_valid_in_the_image(built: Built) -> None:
    example = REPO / "examples" / "docker" / "edged.toml"
    # not at the default path: the container is shared, and a mount point left there would give
    # test_missing_config_exits_2 an (empty, valid) config
    target = "/etc/edged/compose-example.toml"
    out = built.run("edged", "check-config", target, volumes=(f"{example}:{target}:ro",))
    assert out.returncode == 0, out.stderr
    assert "uplink broker (mqtt)" in out.stdout


# ----------------------------------------------------------------------------------------- install.sh


@container
def test_install_script_in_a_clean_debian(built: Built) -> None:
    """install.sh for real, twice, in a bare Debian without systemd: the useradd/install -d
    fallbacks, the venv, the unit, the config (kept on the second run), the plugin examples."""
    b = built.buildah
    ctr = b.container(BASE_IMAGE)

    def sh(script: str, *mounts: str) -> subprocess.CompletedProcess[str]:
        return b.run(ctr, "sh", "-c", script, volumes=mounts)

    try:
        out = sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -qq -y python3 python3-venv")
        assert out.returncode == 0, out.stderr[-2000:]
        src = f"{REPO}:/src:ro"
        first = sh("bash /src/systemd/install.sh --extras mqtt", src, *built.pip_mounts)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "useradd --system" in first.stdout and "skipped systemctl daemon-reload" in first.stdout
        assert "/etc/edged/edged.toml: ok" in first.stdout, "validated as user edged"
        sh("echo '# local edit' >> /etc/edged/edged.toml")
        second = sh("bash /src/systemd/install.sh --extras mqtt", src, *built.pip_mounts)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "keeping the existing /etc/edged/edged.toml" in second.stdout
        assert "reusing /opt/edged/venv" in second.stdout and "useradd" not in second.stdout
        check = sh(
            "id -nG edged; stat -c '%U:%G %a' /etc/edged/edged.toml; tail -1 /etc/edged/edged.toml;"
            "/opt/edged/venv/bin/edged --version; /opt/edged/venv/bin/python -c 'import aiomqtt';"
            "ls /opt/edged/share/examples; test -f /etc/systemd/system/edged.service && echo unit-installed"
        )
        assert check.returncode == 0, check.stderr
        lines = check.stdout.splitlines()
        assert "dialout" in lines[0].split() and lines[1] == "root:edged 640" and lines[2] == "# local edit"
        assert f"edged {edged.__version__}" in lines and "unit-installed" in lines
        assert "drivers-modbus.toml" in lines and "drivers-sim.toml" in lines
    finally:
        b("rm", ctr, check=False)


# ----------------------------------------------------------------------------------------- compose example (always)


def test_compose_example_matches_the_image_and_its_config() -> None:
    """The compose file mounts the example config where the image reads it, keeps the data
    directory on a volume, and the config's broker host is the compose service."""
    compose = (REPO / "examples" / "compose.yaml").read_text()
    assert f"./docker/edged.toml:{cli.DEFAULT_CONFIG}:ro" in compose
    assert f"edged-data:{config.GatewayConfig().data_dir}" in compose
    assert (REPO / "examples" / "docker" / "mosquitto.conf").exists()
    raw = tomllib.loads((REPO / "examples" / "docker" / "edged.toml").read_text())
    (uplink,) = raw["uplinks"]
    assert re.search(rf"^  {re.escape(uplink['host'])}:$", compose, re.M), "the broker host is a compose service"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'VOLUME ["{config.GatewayConfig().data_dir}"]' in dockerfile
    assert f'CMD ["run", "--config", "{cli.DEFAULT_CONFIG}"]' in dockerfile


def test_compose_example_config_delivers_to_a_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """examples/docker/edged.toml as the compose stack runs it, with the broker's address and the
    data directory pointed at this test's: samples reach mosquitto."""
    text = (REPO / "examples" / "docker" / "edged.toml").read_text()
    for old, new in (
        ('data_dir = "/var/lib/edged"', f'data_dir = "{tmp_path / "data"}"'),
        ('host = "mosquitto"', 'host = "127.0.0.1"'),
        ("port = 1883", f"port = {mosquitto.port}"),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    cfg = tmp_path / "edged.toml"
    cfg.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    status = tmp_path / "data" / "status.json"

    def delivered() -> bool:
        try:
            return int(json.loads(status.read_text())["uplinks"]["broker"]["sent_live"]) > 0
        except (OSError, ValueError, KeyError):
            return False

    try:
        wait_until(delivered, 30, "a batch acknowledged by mosquitto")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
