"""A buffer, its writer and one uplink's Sender running in a TaskGroup: the harness the uplink
contract tests share, so each tests its plugin against the real delivery path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from buffer import Buffer
from edged.config import BufferConfig, UplinkBase
from edged.delivery import Sender, UplinkFactory
from edged.plugin import Backoff


@contextlib.asynccontextmanager
async def sender_running(
    tmp_path: Path, cfg: UplinkBase, factory: UplinkFactory, *, gateway: str, backoff: Backoff
) -> AsyncIterator[tuple[Buffer, Sender]]:
    buf = Buffer(tmp_path / "buffer.db", BufferConfig(flush_interval=0.02))  # type: ignore[arg-type]
    async with buf:
        sender = Sender(buf, cfg, factory, gateway_id=gateway, log=logging.getLogger("test"), backoff=backoff)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(buf.run_writer(), name="writer"), tg.create_task(sender.run(), name="sender")]
            try:
                yield buf, sender
            finally:
                for t in tasks:
                    t.cancel()
