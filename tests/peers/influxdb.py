"""A real InfluxDB 1.x server (Debian's `influxd`) on 127.0.0.1 for the influxdb uplink tests.

Started with a generated config: every listener on 127.0.0.1 (HTTP on a free port, the backup RPC
on another), data, meta and WAL in a temporary directory, usage reporting and the `_internal`
monitor database off. `query` reads back with InfluxQL through the same HTTP API, with the
standard library only (no influx client library), so the test reads what the server stored.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InfluxError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Influxd:
    """One influxd process on a fixed port, so the uplink reconnects to the same address after a
    restart. `auth = True` turns on authentication (create the first admin with `create_admin`)."""

    def __init__(self, workdir: Path, port: int | None = None, *, auth: bool = False) -> None:
        exe = shutil.which("influxd") or "/usr/bin/influxd"
        if not Path(exe).exists():
            raise RuntimeError("influxd is not installed (apt-get install influxdb)")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "influxdb.conf"
        self.admin: tuple[str, str] | None = None  # credentials `query` uses once auth is on
        d = workdir
        self.conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{d}/meta"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            "[subscriber]\n  enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
            "[shard-precreation]\n  enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  auth-enabled = {str(auth).lower()}\n'
            "  log-enabled = false\n  pprof-enabled = false\n"
            '[logging]\n  level = "warn"\n  suppress-logo = true\n'
        )
        self.log = workdir / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Influxd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-config", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as r:
                    if r.status == 204:
                        return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"influxd exited: {self.log.read_text()[-2000:]}") from None
            time.sleep(0.05)
        raise RuntimeError("influxd did not start answering /ping")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ----------------------------------------------------------------------------- InfluxQL

    def query(self, q: str, db: str | None = None, *, auth: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """The `series` of the first statement's result ([] when it has none); raises InfluxError
        for an HTTP error or a statement error."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        req = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST")
        creds = auth or self.admin
        if creds is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(creds).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise InfluxError(exc.code, exc.read().decode(errors="replace")) from None
        result = doc["results"][0]
        if "error" in result:
            raise InfluxError(200, result["error"])
        return list(result.get("series", []))

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Every row of every series, as dicts of column -> value plus the series' tags."""
        out = []
        for s in self.query(q, db):
            for values in s["values"]:
                out.append({**s.get("tags", {}), **dict(zip(s["columns"], values, strict=True)), "_name": s["name"]})
        return out

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def create_admin(self, user: str, password: str) -> None:
        """The first user, allowed without credentials while there is none; `query` then uses it."""
        self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.admin = (user, password)
