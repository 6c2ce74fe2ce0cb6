"""A TCP proxy on 127.0.0.1 adding one-way delay and optionally a byte-rate cap per direction: a WAN
or cellular link where netem is not available (and the loopback qdisc is shared, so never touched).

In a test: `async with WanProxy(target_port, delay_s=0.03) as proxy:` and connect to `proxy.port`.
As a process (bench/wan.py runs it in its own so it does not share the measured process's CPU):
    python tests/peers/wanproxy.py LISTEN_PORT TARGET_PORT --delay-ms 50 [--mbit 10] [--stats FILE]
With --stats it rewrites FILE every 0.5 s: "<unix time> <bytes client->server> <bytes server->client>".
Order is preserved and latency does not serialise (a pipelined sender gains); the queue in front of
the rate cap is unbounded, like a deep buffer in a cellular modem, so what a sender keeps in flight
beyond bandwidth x delay shows up as latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class WanProxy:
    def __init__(self, target: int, *, delay_s: float, rate_bps: float = 0.0, port: int = 0) -> None:
        self.target, self.delay, self.rate, self.port = target, delay_s, rate_bps, port
        self.forwarded = [0, 0]  # bytes: client->server, server->client
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_connections()
        await self._server.wait_closed()
        if self._handlers:  # they end once their connections are closed
            await asyncio.wait(self._handlers, timeout=5)

    def drop_connections(self) -> None:
        """Cut every proxied connection at once (both sides see it closed)."""
        for w in list(self._conns):
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, up_w}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_w, 0), name="wanproxy-up")
                tg.create_task(self._pump(up_r, writer, 1), name="wanproxy-down")
        except* (OSError, ConnectionError):
            pass
        finally:
            self._conns -= {writer, up_w}
            for w in (writer, up_w):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: int) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def feed() -> None:
            try:
                while data := await reader.read(65536):
                    queue.put_nowait((time.monotonic() + self.delay, data))
            finally:
                queue.put_nowait((0.0, b""))

        async def drain() -> None:
            free_at = time.monotonic()
            while True:
                due, data = await queue.get()
                if not data:
                    break
                if self.rate:
                    free_at = max(free_at, time.monotonic()) + len(data) / self.rate
                    due = max(due, free_at)
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.forwarded[way] += len(data)
            writer.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed(), name="wanproxy-feed")
            tg.create_task(drain(), name="wanproxy-drain")


def _write_stats(path: str, forwarded: list[int]) -> None:
    Path(path + ".tmp").write_text(f"{time.time()} {forwarded[0]} {forwarded[1]}\n")
    os.replace(path + ".tmp", path)


async def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("listen", type=int)
    ap.add_argument("target", type=int)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--mbit", type=float, default=0.0)
    ap.add_argument("--stats", default=None)
    a = ap.parse_args()
    async with WanProxy(a.target, delay_s=a.delay_ms / 1000, rate_bps=a.mbit * 1e6 / 8, port=a.listen) as proxy:
        while True:
            await asyncio.sleep(0.5)
            if a.stats:
                await asyncio.to_thread(_write_stats, a.stats, proxy.forwarded)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
