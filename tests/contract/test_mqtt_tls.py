"""MQTT and Sparkplug uplinks over TLS against a real mosquitto: server verification, client certificates,
passwords. Both connect through edged.protocols.mqtt, so both must classify failures the same way."""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edged.config import Secret
from edged.errors import Permanent, Transient
from edged.model import Batch, Sample
from edged.plugin import PluginContext
from peers.mosquitto import Mosquitto
from peers.waiting import eventually
from uplink import sparkplug
from uplink.mqtt import Config, Uplink
from uplink.sparkplug import sparkplug_b_pb2 as pb

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make test certificates")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and a foreign CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=edged test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "gw-tls")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", "-extfile", "san.cnf", cwd=d)  # fmt: skip
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Mosquitto:
    broker = Mosquitto(tmp_path)
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw", "right"], check=True, capture_output=True)
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous false\npassword_file {pw}\n"
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


def uplink(port: int, pki: Path, **kw: object) -> Uplink:
    base: dict[str, object] = dict(
        name="tls", type="mqtt", host="127.0.0.1", port=port, tls=True, ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"), username="gw",
        password=Secret("right"), timeout=3.0,
    )  # fmt: skip
    base.update(kw)
    return Uplink(Config(**base), PluginContext("gw-tls", Path("."), logging.getLogger("test.tls")))  # type: ignore[arg-type]


async def test_tls_with_client_certificate_and_password(tls_broker: Mosquitto, pki: Path) -> None:
    async with uplink(tls_broker.port, pki) as up:
        await up.send(Batch("gw-tls", 1, 1, False, [Sample("a/b", 1, 1.0, seq=1)]))


async def test_untrusted_server_certificate_is_permanent(tls_broker: Mosquitto, pki: Path) -> None:
    with pytest.raises(Permanent, match="certificate"):
        async with uplink(tls_broker.port, pki, ca_file=str(pki / "other-ca.pem")):
            pass


async def test_wrong_password_is_permanent(tls_broker: Mosquitto, pki: Path) -> None:
    with pytest.raises(Permanent, match="refused"):
        async with uplink(tls_broker.port, pki, password=Secret("wrong")):
            pass


async def test_missing_client_certificate_is_refused(tls_broker: Mosquitto, pki: Path) -> None:
    with pytest.raises((Permanent, Transient)):
        async with uplink(tls_broker.port, pki, cert_file=None, key_file=None):
            pass


async def test_skip_verify_connects_with_a_warning(
    tls_broker: Mosquitto, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with uplink(tls_broker.port, pki, ca_file=str(pki / "other-ca.pem"), tls_insecure_skip_verify=True):
        pass
    assert "TLS certificate verification is OFF" in caplog.text


# ----------------------------------------------------------------------------------------- Sparkplug


def sparkplug_uplink(port: int, pki: Path, data_dir: Path, **kw: object) -> sparkplug.Uplink:
    base: dict[str, object] = dict(
        name="sp-tls", type="sparkplug", group_id="plant", host="127.0.0.1", port=port, tls=True,
        ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"),
        username="gw", password=Secret("right"), timeout=3.0,
    )  # fmt: skip
    base.update(kw)
    config = sparkplug.Config(**base)  # type: ignore[arg-type]
    return sparkplug.Uplink(config, PluginContext("gw-tls", data_dir, logging.getLogger("test.tls")))


def either(kind: str, port: int, pki: Path, data_dir: Path, **kw: object) -> Any:
    return uplink(port, pki, **kw) if kind == "mqtt" else sparkplug_uplink(port, pki, data_dir, **kw)


async def test_sparkplug_over_tls_births_with_client_certificate_and_password(
    tls_broker: Mosquitto, pki: Path, tmp_path: Path
) -> None:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    seen: list[tuple[str, pb.Payload]] = []
    subscribed = asyncio.Event()

    async def host() -> None:
        async with aiomqtt.Client(
            "127.0.0.1", tls_broker.port, username="gw", password="right", tls_context=ctx, identifier="host"
        ) as client:
            await client.subscribe("spBv1.0/#", qos=1)
            subscribed.set()
            async for msg in client.messages:
                seen.append((str(msg.topic), pb.Payload.FromString(bytes(msg.payload))))  # type: ignore[arg-type]

    def topics() -> list[str]:
        return [t for t, _ in seen]

    async with asyncio.TaskGroup() as tg:
        listener = tg.create_task(host(), name="test:host")
        await eventually(subscribed.is_set, 15, "the TLS subscriber")
        async with sparkplug_uplink(tls_broker.port, pki, tmp_path) as up:
            await up.send(Batch("gw-tls", 1, 1, False, [Sample("boiler/temp", 1, 21.5, seq=1)]))
            await eventually(lambda: "spBv1.0/plant/DDATA/gw-tls/boiler" in topics(), 15, "the DDATA over TLS")
        await eventually(lambda: "spBv1.0/plant/NDEATH/gw-tls" in topics(), 15, "the NDEATH over TLS")
        listener.cancel()
    births = [p for t, p in seen if t == "spBv1.0/plant/NBIRTH/gw-tls"]
    assert births and all(p.seq == 0 for p in births), "each birth starts at seq 0"
    assert "spBv1.0/plant/DBIRTH/gw-tls/boiler" in topics(), "the new device was born before its data"


@pytest.mark.parametrize("kind", ["mqtt", "sparkplug"])
async def test_an_untrusted_broker_certificate_is_permanent_for_both_uplinks(
    kind: str, tls_broker: Mosquitto, pki: Path, tmp_path: Path
) -> None:
    """Retrying cannot fix a certificate no trusted CA signed: the Sender must not retry it on the
    short backoff as if the broker were down."""
    with pytest.raises(Permanent, match="TLS certificate rejected") as caught:
        async with either(kind, tls_broker.port, pki, tmp_path, ca_file=str(pki / "other-ca.pem")):
            pass
    assert "certificate verify failed" in str(caught.value)


@pytest.mark.parametrize("kind", ["mqtt", "sparkplug"])
async def test_a_wrong_password_is_permanent_for_both_uplinks(
    kind: str, tls_broker: Mosquitto, pki: Path, tmp_path: Path
) -> None:
    with pytest.raises(Permanent, match="refused the connection"):
        async with either(kind, tls_broker.port, pki, tmp_path, password=Secret("wrong")):
            pass


@pytest.mark.parametrize("kind", ["mqtt", "sparkplug"])
async def test_a_broker_that_is_not_there_is_transient_for_both_uplinks(
    kind: str, tls_broker: Mosquitto, pki: Path, tmp_path: Path
) -> None:
    tls_broker.stop()
    with pytest.raises(Transient, match="cannot connect"):
        async with either(kind, tls_broker.port, pki, tmp_path):
            pass
