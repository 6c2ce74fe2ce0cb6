"""The web UI under TLS (`[ui] tls_cert/tls_key`), against `edged run` as a process: it serves
HTTPS with the configured certificate, its session cookies carry Secure, and plain HTTP gets no
HTTP answer on that port. Certificates from tests/peers/http_server.py's make_pki (cryptography).
"""

from __future__ import annotations

import http.client
import http.cookies
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from edged.ui.auth import hash_password
from peers.http_server import make_pki
from peers.mosquitto import free_port
from peers.waiting import wait_until

CONFIG = """
[gateway]
id = "tls-test"
data_dir = "{data}"

[[devices]]
name = "plant"
type = "sim"
interval = "500ms"

[[devices.tags]]
name = "level"

[ui]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
users.op = {{ password_hash = "{op_hash}", role = "operator" }}
"""


def https(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)


def cookies_of(resp: http.client.HTTPResponse) -> dict[str, http.cookies.Morsel[str]]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in resp.headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return dict(jar)


def answers_https(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        c = https(port, ctx)
        c.request("GET", "/health")
        ok = c.getresponse().status in (200, 503)
        c.close()
        return ok
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_ui_serves_https_with_secure_cookies_and_no_plain_http(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    cfg = tmp_path / "edged.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", port=port, cert=pki.server_cert, key=pki.server_key,
                                 op_hash=hash_password("op-secret", n=2**14)))  # fmt: skip
    cfg.chmod(0o600)
    log = (tmp_path / "edged.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))  # verifies the chain and 127.0.0.1
        wait_until(lambda: answers_https(port, ctx), 30, "the UI over HTTPS")
        # the page, over TLS with the configured certificate
        c = https(port, ctx)
        c.request("GET", "/")
        resp = c.getresponse()
        assert resp.status == 200 and "tls-test" in resp.read().decode()
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        served = sock.getpeercert(binary_form=True)
        assert served is not None and ssl.DER_cert_to_PEM_cert(served).strip() == pki.server_cert.read_text().strip()
        c.close()
        # the login form's cookie and then the session cookie: Secure, HttpOnly, SameSite=Strict
        c = https(port, ctx)
        c.request("GET", "/login")
        resp = c.getresponse()
        page = resp.read().decode()
        login_cookie = cookies_of(resp)["edged_login"]
        assert login_cookie["secure"] and login_cookie["httponly"] and login_cookie["samesite"] == "Strict"
        token = page.split('name="csrf" value="')[1].split('"')[0]
        body = urllib.parse.urlencode({"csrf": token, "user": "op", "password": "op-secret", "next": "/"})
        c.request("POST", "/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                          "Cookie": f"edged_login={login_cookie.value}"})  # fmt: skip
        resp = c.getresponse()
        resp.read()
        assert resp.status == 303, resp.status
        session = cookies_of(resp)["edged_session"]
        assert session.value and session["secure"] and session["httponly"] and session["samesite"] == "Strict"
        raw = [h for h in resp.headers.get_all("Set-Cookie") or [] if h.startswith("edged_session=")]
        assert len(raw) == 1 and "; Secure" in raw[0]  # the header itself, not only the parser's view
        c.close()
        # plain HTTP on the same port: no HTTP answer at all (the TLS server drops the connection)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert not got.startswith(b"HTTP/"), got[:200]
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        plain.request("GET", "/")  # sent before the server reads it: the refusal is on the answer
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.getresponse()
        plain.close()
        assert "web UI on https://127.0.0.1:" in (tmp_path / "edged.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
