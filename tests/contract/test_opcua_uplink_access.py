"""Access to the OPC UA server uplink, against real asyncua clients and a raw OPC UA TCP client:
the trust list on every endpoint, unoffered security policies answered and closed, throttled
password guessing, and audited writes while commands are disabled."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyBasic256Sha256,
    SecurityPolicyNone,
)
from asyncua.ua.uaerrors import UaStatusCodeError

sys.path.insert(0, str(Path(__file__).parents[1]))

from buffer import Store
from edged import config as edged_config
from edged.commands import AuditTrail, CommandGate
from edged.plugin import PluginContext
from edged.protocols.opcua.certs import create_client_certificate
from peers.opcua_server import free_port
from uplink.opcua import Config, Uplink
from uplink.opcua.access import Throttle

module_loop = pytest.mark.asyncio(loop_scope="module")

GATEWAY = "gw1"
USER, PASSWORD = "scada", "pw-1"
APP_URI = "urn:scada:test"
BAD_SECURITY_POLICY_REJECTED = 0x80550000  # OPC UA Part 6 / Part 4 StatusCode
BAD_SECURITY_MODE_REJECTED = 0x80540000
BAD_CERTIFICATE_UNTRUSTED = 0x801A0000
BAD_USER_ACCESS_DENIED = 0x801F0000
BAD_NOT_WRITABLE = 0x803B0000
BAD_INVALID_TIMESTAMP = 0x80230000
UNKNOWN_POLICY = "http://opcfoundation.org/UA/SecurityPolicy#NoSuchPolicy"


def parse(tmp: Path, uplink: dict[str, Any], commands: dict[str, Any] | None = None) -> edged_config.Config:
    raw: dict[str, Any] = {
        "gateway": {"id": GATEWAY, "data_dir": str(tmp)},
        "devices": [
            {
                "name": "press",
                "type": "modbus",
                "host": "127.0.0.1",
                "port": 1,
                "tags": [{"name": "setpoint", "address": 0, "type": "float32", "writable": True}],
            }
        ],
        "uplinks": [{"name": "scada", "type": "opcua", "users": {USER: PASSWORD}, **uplink}],
    }
    if commands is not None:
        raw["commands"] = commands
    return edged_config.parse(raw)


class Certs:
    def __init__(self, tmp: Path) -> None:
        self.trusted = create_client_certificate(tmp / "trusted.der", tmp / "trusted.pem", APP_URI)
        self.stranger = create_client_certificate(tmp / "stranger.der", tmp / "stranger.pem", APP_URI)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pki(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return await asyncio.to_thread(Certs, tmp_path_factory.mktemp("pki"))


async def start(tmp: Path, uplink: dict[str, Any], extra: dict[str, Any] | None = None) -> tuple[Uplink, Any]:
    """An entered uplink and the context manager to leave it with."""
    cfg = parse(tmp, {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/edged/", **uplink})
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    ctx = PluginContext(GATEWAY, tmp, logging.getLogger("edged.uplink.scada"), config=cfg, **(extra or {}))
    up = Uplink(up_cfg, ctx)
    return await up.__aenter__(), up


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trusting(tmp_path_factory: pytest.TempPathFactory, pki: Certs) -> AsyncIterator[Uplink]:
    """Every endpoint kind offered, the trust list set: only the trusted certificate gets a session."""
    tmp = tmp_path_factory.mktemp("trusting")
    up, cm = await start(
        tmp,
        {
            "security_policies": ["None", "Basic256Sha256"],
            "security_modes": ["Sign", "SignAndEncrypt"],
            "trusted_client_certificates": [str(pki.trusted.cert_path)],
        },
    )
    yield up
    await cm.__aexit__(None, None, None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Uplink]:
    """Basic256Sha256 SignAndEncrypt only, any client certificate, quick login lockouts."""
    tmp = tmp_path_factory.mktemp("strict")
    up, cm = await start(tmp, {"security_policies": ["Basic256Sha256"], "login_attempts": 3, "login_backoff": 1.0})
    yield up
    await cm.__aexit__(None, None, None)


async def secure_client(
    up: Uplink,
    cert: Any,
    *,
    policy: Any = SecurityPolicyBasic256Sha256,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
    password: str = PASSWORD,
) -> Client:
    c = Client(up.config.endpoint, timeout=5)
    c.application_uri = APP_URI
    c.set_user(USER)
    c.set_password(password)
    server_cert = up.ctx.data_dir / "opcua" / "scada" / "server_cert.der"
    await c.set_security(
        policy, str(cert.cert_path), str(cert.key_path), server_certificate=str(server_cert), mode=mode
    )
    return c


async def session_status(c: Client) -> int:
    """0 when a session opens (and can read), else the StatusCode it was refused with."""
    try:
        async with c:
            await c.nodes.server.read_browse_name()
    except UaStatusCodeError as exc:
        return int(exc.code)
    return 0


# ----------------------------------------------------------------------------------------- trust list


@module_loop
async def test_the_trust_list_binds_on_every_endpoint(trusting: Uplink, pki: Certs) -> None:
    none = Client(trusting.config.endpoint, timeout=5)
    none.set_user(USER)
    none.set_password(PASSWORD)
    assert await session_status(none) == BAD_SECURITY_MODE_REJECTED  # None, no certificate: refused
    with_cert = Client(trusting.config.endpoint, timeout=5)
    with_cert.application_uri = APP_URI
    with_cert.set_user(USER)
    with_cert.set_password(PASSWORD)
    await with_cert.set_security(
        SecurityPolicyNone, str(pki.trusted.cert_path), str(pki.trusted.key_path), mode=ua.MessageSecurityMode.None_
    )
    assert await session_status(with_cert) == BAD_SECURITY_MODE_REJECTED  # unproven on None, even a trusted one
    for mode in (ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt):
        stranger = await secure_client(trusting, pki.stranger, mode=mode)
        assert await session_status(stranger) == BAD_CERTIFICATE_UNTRUSTED, mode
        assert await session_status(await secure_client(trusting, pki.trusted, mode=mode)) == 0, mode
    assert trusting.counters()["sessions_refused"] >= 4


@module_loop
async def test_an_empty_trust_list_beyond_loopback_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse(tmp_path, {"endpoint": f"opc.tcp://0.0.0.0:{free_port()}/edged/", "security_policies": ["None"]})
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)
    caplog.set_level(logging.WARNING, logger="edged.uplink.open")
    async with Uplink(up_cfg, PluginContext(GATEWAY, tmp_path, logging.getLogger("edged.uplink.open"))):
        pass
    assert "trusts every client certificate" in caplog.text


# ----------------------------------------------------------------------------------------- policy rejection


def tcp_string(s: str | None) -> bytes:
    if s is None:
        return struct.pack("<i", -1)
    b = s.encode()
    return struct.pack("<i", len(b)) + b


def hello(url: str) -> bytes:
    """OPC UA Part 6 7.1.2.3 Hello: version, buffer sizes, max message size, max chunks, URL."""
    body = struct.pack("<IIIII", 0, 65536, 65536, 0, 0) + tcp_string(url)
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def open_secure_channel(policy_uri: str) -> bytes:
    """Part 6 6.7.2: OPN, SecureChannelId 0, asymmetric security header (policy URI, no
    certificate, no thumbprint), sequence header, then an OpenSecureChannelRequest."""
    security = tcp_string(policy_uri) + struct.pack("<ii", -1, -1)
    sequence = struct.pack("<II", 1, 1)
    request = (
        b"\x01\x00" + struct.pack("<H", 446)  # NodeId OpenSecureChannelRequest_Encoding_DefaultBinary
        + b"\x00\x00" + struct.pack("<q", 0) + struct.pack("<I", 1)  # RequestHeader: null token, time, handle
        + struct.pack("<I", 0) + tcp_string(None) + struct.pack("<I", 10000) + b"\x00\x00\x00"  # .., no ext.
        + struct.pack("<II", 0, 0)  # ClientProtocolVersion, RequestType Issue
        + struct.pack("<I", 1) + struct.pack("<i", -1) + struct.pack("<I", 3600000)  # mode None, nonce, lifetime
    )  # fmt: skip
    body = struct.pack("<I", 0) + security + sequence + request
    return b"OPNF" + struct.pack("<I", 8 + len(body)) + body


async def raw_exchange(endpoint: str, policy_uri: str, *, until_eof: bool = True) -> bytes:
    """What the server sends back: until it closes the connection, or its first two messages."""
    host, port = endpoint.removeprefix("opc.tcp://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(hello(endpoint) + open_secure_channel(policy_uri))
        await writer.drain()
        async with asyncio.timeout(15):  # a server that keeps the socket open fails here
            if until_eof:
                return await reader.read(-1)  # until EOF: the server closed the connection
            data = b""
            while len(messages(data, partial=True)) < 2:
                data += await reader.read(65536)
            return data
    finally:
        writer.close()


def messages(data: bytes, partial: bool = False) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        size = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else len(data) + 1
        if partial and size > len(data):
            break
        out.append((data[:4], data[8:size]))
        data = data[size:]
    return out


@module_loop
async def test_an_unknown_policy_gets_bad_security_policy_rejected_and_a_closed_socket(
    strict: Uplink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = strict.counters()["channels_rejected"]
    for _ in range(3):
        data = await raw_exchange(strict.config.endpoint, UNKNOWN_POLICY)
        (ack, _), (kind, err) = messages(data)
        assert ack == b"ACKF"
        # Golden bytes (Part 6 7.1.2.5): "ERRF", size, Error = 0x80550000 little-endian, Reason.
        assert kind == b"ERRF"
        assert data.endswith(b"ERRF" + struct.pack("<I", 8 + len(err)) + err)
        assert err[:4] == b"\x00\x00\x55\x80"
        assert struct.unpack_from("<I", err)[0] == BAD_SECURITY_POLICY_REJECTED
        reason_len = struct.unpack_from("<i", err, 4)[0]
        assert UNKNOWN_POLICY in err[8 : 8 + reason_len].decode()
    assert strict.counters()["channels_rejected"] == before + 3
    # The same bytes with the None policy (asyncua's discovery fallback) open a channel: the
    # request is well formed, it was the policy that was refused.
    (ack, _), (kind, _) = messages(await raw_exchange(strict.config.endpoint, SecurityPolicyNone.URI, until_eof=False))
    assert (ack, kind) == (b"ACKF", b"OPNF")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # no traceback, no error
    assert caplog.text.count("refused a secure channel") == 1  # once, not per attempt


async def open_channel(c: Client) -> None:
    async with asyncio.timeout(30):
        await c.connect_socket()
        await c.send_hello()
        await c.open_secure_channel()


@module_loop
async def test_asyncua_clients_asking_for_what_is_not_offered_are_refused(strict: Uplink, pki: Certs) -> None:
    c = await secure_client(strict, pki.stranger, policy=SecurityPolicyAes128Sha256RsaOaep)
    with pytest.raises(UaStatusCodeError) as exc:
        await open_channel(c)
    assert exc.value.code == BAD_SECURITY_POLICY_REJECTED
    c.disconnect_socket()
    c = await secure_client(strict, pki.stranger, mode=ua.MessageSecurityMode.Sign)  # only SignAndEncrypt offered
    with pytest.raises(UaStatusCodeError) as exc:
        await open_channel(c)
    assert exc.value.code == BAD_SECURITY_MODE_REJECTED
    c.disconnect_socket()


@module_loop
async def test_no_session_on_the_none_channel_a_server_does_not_offer(
    strict: Uplink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncua falls back to a None channel for discovery; a client ignoring the endpoints it was
    offered must not get a session there (nor have its password checked)."""
    endpoints = await Client(strict.config.endpoint, timeout=5).connect_and_get_server_endpoints()  # over None
    assert {e.SecurityPolicyUri for e in endpoints} == {SecurityPolicyBasic256Sha256.URI}
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, mode, uri: eps[0]))
    c = Client(strict.config.endpoint, timeout=5)
    c.set_user(USER)
    c.set_password(PASSWORD)
    failed = strict.counters()["logins_failed"]
    assert await session_status(c) == BAD_SECURITY_POLICY_REJECTED
    assert strict.counters()["logins_failed"] == failed


# ----------------------------------------------------------------------------------------- login throttling


@module_loop
async def test_wrong_passwords_lock_the_client_and_user_out_for_a_while(strict: Uplink, pki: Certs) -> None:
    start_counts = strict.counters()
    for _ in range(3):  # login_attempts
        assert await session_status(await secure_client(strict, pki.stranger, password="guess")) == (
            BAD_USER_ACCESS_DENIED
        )
    counts = strict.counters()
    assert counts["logins_failed"] == start_counts["logins_failed"] + 3
    # Locked: even the right password is refused, without being checked.
    assert await session_status(await secure_client(strict, pki.stranger)) == BAD_USER_ACCESS_DENIED
    assert strict.counters()["logins_throttled"] == counts["logins_throttled"] + 1
    assert strict.counters()["logins_failed"] == counts["logins_failed"]

    for _ in range(300):  # login_backoff is 1 s: then the right password opens again
        if await session_status(await secure_client(strict, pki.stranger)) == 0:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the right password stayed refused long after the backoff")
    assert strict.counters()["logins_failed"] == counts["logins_failed"]


def test_throttle_backoff_doubles_is_capped_per_pair_and_bounded() -> None:
    now = [0.0]
    t = Throttle(3, 10.0, clock=lambda: now[0])
    a, b = ("10.0.0.1", "op"), ("10.0.0.2", "op")
    assert [t.failed(a) for _ in range(3)] == [0.0, 0.0, 10.0]
    assert t.locked_for(a) == 10.0 and t.locked_for(b) == 0.0  # another client is not locked out
    now[0] = 10.0
    assert t.locked_for(a) == 0.0
    assert t.failed(a) == 20.0  # the next wrong one locks again, twice as long
    assert max(t.failed(a) for _ in range(20)) == 900.0
    t.succeeded(a)
    assert t.locked_for(a) == 0.0 and t.failed(a) == 0.0
    for i in range(20_000):
        t.failed((f"10.1.{i // 256}.{i % 256}", "x"))
    assert len(t._pairs) <= 10_000


# ----------------------------------------------------------------------------------------- writes


async def write_status(c: Client, value: ua.DataValue) -> int:
    ns = await c.get_namespace_index(f"urn:edged:{GATEWAY}")
    node = await c.nodes.objects.get_child([f"{ns}:{GATEWAY}", f"{ns}:press", f"{ns}:setpoint"])
    try:
        await node.write_value(value)
    except UaStatusCodeError as exc:
        return int(exc.code)
    return 0


@module_loop
async def test_writes_while_commands_are_disabled_are_audited(tmp_path: Path) -> None:
    cmds = {"enabled": False, "tags": [{"tag": "press/setpoint", "sources": ["scada"], "min": 0, "max": 10}]}
    cfg = parse(
        tmp_path,
        {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/edged/", "security_policies": ["None"]},
        cmds,
    )
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)

    async def no_driver(name: str) -> None:
        return None

    with Store(tmp_path / "buffer.db") as store:
        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver)
        ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("t"), config=cfg, commands=gate)
        async with Uplink(up_cfg, ctx):
            c = Client(up_cfg.endpoint, timeout=5)
            c.set_user(USER)
            c.set_password(PASSWORD)
            async with c:
                assert await write_status(c, ua.DataValue(ua.Variant(5.0, ua.VariantType.Double))) == (
                    BAD_USER_ACCESS_DENIED  # not in command_users
                )
                far = ua.DataValue(ua.Variant(5.0, ua.VariantType.Double), SourceTimestamp=dt.datetime(9999, 1, 1))
                assert await write_status(c, far) == BAD_INVALID_TIMESTAMP  # not BadInternalError
        rows = store.audit_rows()
    assert [(r.user, r.tag, r.result, r.code) for r in rows] == [
        (USER, "press/setpoint", "rejected", "unauthorised"),
        (USER, "press/setpoint", "rejected", "stale"),
    ]
    assert rows[1].cmd_ts_ns is None and "9999" in (rows[1].reason or "")


@module_loop
async def test_a_command_user_write_while_disabled_is_audited_as_disabled(tmp_path: Path) -> None:
    cmds = {"enabled": False, "tags": [{"tag": "press/setpoint", "sources": ["scada"]}]}
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edged/"
    cfg = parse(tmp_path, {"endpoint": endpoint, "security_policies": ["None"], "command_users": [USER]}, cmds)
    up_cfg = cfg.uplinks[0]
    assert isinstance(up_cfg, Config)

    async def no_driver(name: str) -> None:
        return None

    with Store(tmp_path / "buffer.db") as store:
        gate = CommandGate(cfg, AuditTrail.for_store(store), no_driver)
        ctx = PluginContext(GATEWAY, tmp_path, logging.getLogger("t"), config=cfg, commands=gate)
        async with Uplink(up_cfg, ctx):
            c = Client(endpoint, timeout=5)
            c.set_user(USER)
            c.set_password(PASSWORD)
            async with c:
                status = await write_status(c, ua.DataValue(ua.Variant(5.0, ua.VariantType.Double)))
        rows = store.audit_rows()
    assert status == BAD_NOT_WRITABLE
    assert [(r.user, r.result, r.code) for r in rows] == [(USER, "rejected", "disabled")]
    assert time.time_ns() - rows[0].received_ns < 600 * 10**9
