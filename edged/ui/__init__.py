"""The local web UI (`[ui]`, docs/ui.md): overview, devices, tags with trends, uplinks and the
audit trail, updated live by Server-Sent Events; /metrics and /health on the same server.

Server-rendered HTML (jinja2 templates in templates/), one small script and one stylesheet in
static/, no CDN and no build step: everything the browser gets ships in this package.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from edged.config import parse_listen

if TYPE_CHECKING:
    from aiohttp import web

    from edged.daemon import Daemon

log = logging.getLogger("edged.ui")


async def run_app(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None, what: str, started: str
) -> bool:
    """Serve `app` until cancelled; False (logged) when the port cannot be bound: the gateway keeps
    running without its web page rather than not at all."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.warning("%s: cannot listen on %s:%d (%s); running without it", what, host, port, exc.strerror)
            return False
        log.info("%s", started)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()
    return True


async def serve(daemon: Daemon) -> None:
    """The UI (and /metrics, /health) on `[ui] listen` until cancelled."""
    try:
        from edged.ui.server import make_app
    except ImportError as exc:
        log.warning("the web UI needs aiohttp and jinja2 (pip install 'edged[ui]'): %s", exc)
        return
    cfg = daemon.config.ui
    ctx = None
    if cfg.tls_cert and cfg.tls_key:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(daemon.config.data_dir / cfg.tls_cert, daemon.config.data_dir / cfg.tls_key)
    app, ui = make_app(daemon, secure=ctx is not None)
    host, port = parse_listen(cfg.listen)
    for s in await daemon.buffer.call(daemon.buffer.store.latest):  # the values before this start
        daemon.current.setdefault(s.tag, s)
    scheme = "https" if ctx else "http"
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(ui.run_sampler(), name="ui-sampler")
        shown = f"[{host}]" if ":" in host else host
        started = f"web UI on {scheme}://{shown}:{port}/ (metrics on /metrics, health on /health)"
        if not await run_app(app, host, port, ctx, "web UI", started):
            sampler.cancel()  # no page to show it on
