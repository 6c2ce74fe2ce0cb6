"""A real HTTP/1.1 endpoint on 127.0.0.1 for the http uplink tests.

It behaves like a careful ERP integration (stores each batch once per Idempotency-Key) and can be
scripted to misbehave on purpose: fail with 5xx, answer late, rate-limit with Retry-After, reject
with a 4xx body, or hang up without answering. Every request is recorded with its server-side
arrival time, so tests check timing on the server's clock rather than the client's speed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import zstandard

from edged.protocols.payload import decode_columns


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    status: int = 200
    body: bytes | None = None  # None: a small JSON acknowledgement for 2xx, empty otherwise
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (after storing, when the batch is stored)
    store: bool | None = None  # keep the batch; None: only when the status is 2xx
    hangup: bool = False  # close the connection without any answer


@dataclass
class Request:
    at: float  # time.monotonic() at arrival
    key: str | None
    headers: dict[str, str]  # lower-cased names
    raw: bytes  # the body as sent (possibly gzip)
    doc: dict[str, Any] | None
    reply: Reply
    duplicate: bool  # the key had already been stored


Policy = Callable[[dict[str, Any] | None, str | None], Reply | None]


class HttpPeer:
    """A threaded server; `script` replies are used first, then `policy`, then a plain 200."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.script: deque[Reply] = deque()
        self.policy: Policy | None = None
        self.requests: list[Request] = []
        self.stored: dict[str, dict[str, Any]] = {}  # Idempotency-Key -> first stored document
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()  # open keep-alive connections, cut by stop()
        self.in_progress = 0  # requests being answered now
        self.peak_concurrent = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/ingest"

    def __enter__(self) -> HttpPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        peer = self

        class Handler(_Handler):
            server_peer = peer

        server = _Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, like a crashed or rebooted endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            conns, self.connections = self.connections, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ what the tests read

    def seqs(self) -> list[int]:
        """Sample seqs over the stored batches (one copy per key): a repeat is a real duplicate."""
        with self.lock:
            return [s["seq"] for d in self.stored.values() for s in d["samples"]]

    def docs(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.stored.values())

    def arrivals(self, key: str) -> list[float]:
        with self.lock:
            return [r.at for r in self.requests if r.key == key]

    def _decide(self, doc: dict[str, Any] | None, key: str | None) -> tuple[Reply, bool]:
        with self.lock:
            if self.script:
                reply = self.script.popleft()
            else:
                reply = (self.policy(doc, key) if self.policy else None) or Reply()
            store = reply.store if reply.store is not None else 200 <= reply.status < 300 and not reply.hangup
            duplicate = key is not None and key in self.stored
            if store and doc is not None and key is not None and not duplicate:
                self.stored[key] = doc
            return reply, duplicate


def _decode(raw: bytes, headers: dict[str, str]) -> Any:
    """The body as a document, by its Content-Encoding and Content-Type: each decompression is the
    library's own, not edged's; a columns body goes through the reference decoder (docs/payload.md),
    whose round trip the payload tests check against the encoder."""
    coding = headers.get("content-encoding")
    if coding == "gzip":
        raw = gzip.decompress(raw)
    elif coding == "deflate":
        raw = zlib.decompress(raw)
    elif coding == "zstd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if headers.get("content-type", "").startswith("application/vnd.edged.columns+json"):
        doc = decode_columns(raw)  # samples as rows: [tag, ts_ns, value, status, score, unit, seq]
        doc["samples"] = [dict(zip(_ROW, row, strict=True)) for row in doc["samples"]]
        return doc
    return json.loads(raw)


_ROW = ("tag", "ts_ns", "value", "status", "score", "unit", "seq")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True  # restart on the same port right after stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout, hangup tests) is expected here, not a failure


class _Handler(BaseHTTPRequestHandler):
    server_peer: HttpPeer
    protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint would
    disable_nagle_algorithm = True  # otherwise ~40 ms per request (Nagle + delayed ACK)

    def setup(self) -> None:
        super().setup()
        with self.server_peer.lock:
            self.server_peer.connections.add(self.connection)

    def finish(self) -> None:
        with self.server_peer.lock:
            self.server_peer.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        peer = self.server_peer
        with peer.lock:
            peer.in_progress += 1
            peer.peak_concurrent = max(peer.peak_concurrent, peer.in_progress)
        try:
            self._post(peer)
        finally:
            with peer.lock:
                peer.in_progress -= 1

    def _post(self, peer: HttpPeer) -> None:
        at = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        doc: dict[str, Any] | None
        try:
            doc = _decode(raw, headers)
        except (OSError, ValueError, zlib.error):
            doc = None
        key = headers.get("idempotency-key")
        reply, duplicate = peer._decide(doc, key)
        with peer.lock:
            peer.requests.append(Request(at, key, headers, raw, doc, reply, duplicate))
        if reply.delay:
            time.sleep(reply.delay)
        if reply.hangup:
            self.close_connection = True
            return
        body = reply.body
        if body is None:
            body = json.dumps({"duplicate": duplicate}).encode() if 200 <= reply.status < 300 else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        for k, v in reply.headers.items():
            if k != "Content-Type":
                self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


# ----------------------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return c, k

    def issue(
        cn: str, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey | None, extras: Iterator[Any]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        for ext, critical in extras:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer or key, hashes.SHA256()), key

    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca, ca_key = issue(
        f"{name} CA", ca_name, None,
        iter([(x509.BasicConstraints(ca=True, path_length=None), True),
              (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)]),
    )  # fmt: skip
    leaf = x509.BasicConstraints(ca=False, path_length=None)
    server, server_key = issue(
        "127.0.0.1", ca_name, ca_key,
        iter([(leaf, True), (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
              (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)]),
    )  # fmt: skip
    client, client_key = issue(
        "edged-gateway", ca_name, ca_key,
        iter([(leaf, True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]),
    )  # fmt: skip
    ca_path, _ = write("ca", ca, ca_key)
    sc, sk = write("server", server, server_key)
    cc, ck = write("client", client, client_key)
    return Pki(ca_path, sc, sk, cc, ck)
