"""The web UI's aiohttp application: pages, the event stream, login and operator writes.

Reads need no login (the page shows what SCADA would see); a write needs an operator session, a
CSRF token that matches it, and goes through the command gate as source `ui` with the user's name,
so it is checked and audited like any other command. Session cookies are HttpOnly and
SameSite=Strict (Secure under TLS); every response forbids framing and inline scripts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
import msgspec
from aiohttp import web
from markupsafe import Markup

from edged import __version__, commands
from edged.config import COMMAND_SOURCE_UI
from edged.ui import views
from edged.ui.auth import Sessions, Throttle, check_login

if TYPE_CHECKING:
    from edged.daemon import Daemon

log = logging.getLogger("edged.ui")

HERE = Path(__file__).parent
COOKIE = "edged_session"
LOGIN_COOKIE = "edged_login"  # double-submit CSRF token of the login form (no session yet)
PUSH_S = 1.0  # event stream period: a value on a page is at most about this old
MAX_STREAMS = 32  # concurrent event streams; more get 503 (each costs a little CPU per second)
PAGES = ("overview", "devices", "tags", "uplinks", "alarms", "audit")

_KEY_DAEMON = web.AppKey("daemon", object)
_KEY_UI = web.AppKey("ui", object)


class Ui:
    """The state behind the pages: sessions, login throttle, uplink history."""

    def __init__(self, daemon: Daemon, *, secure: bool) -> None:
        self.daemon = daemon
        self.secure = secure
        self.sessions = Sessions(float(daemon.config.ui.session_ttl))
        self.throttle = Throttle()
        self.sampler = views.Sampler(daemon)
        self.streams = 0
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["age"] = views.fmt_age
        self.env.filters["value"] = views.fmt_value
        self.env.filters["iso"] = lambda ns: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else ""

    async def run_sampler(self) -> None:
        while True:
            self.sampler.sample()
            await asyncio.sleep(self.sampler.interval_s)

    # ------------------------------------------------------------------ helpers

    def session(self, request: web.Request) -> Any:
        return self.sessions.get(request.cookies.get(COOKIE))

    def render(self, request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
        session = self.session(request)
        page = name.removesuffix(".html")
        fields: views.Fields = ctx.pop("f", {})

        def fld(key: str) -> Markup:
            text, cls = fields[key]
            return Markup('<span id="{}" class="{}">{}</span>').format(key, cls, text)

        body = self.env.get_template(name).render(
            fld=fld,
            static=lambda name: f"/static/{name}?v={__version__}",
            request_path=quote(request.path_qs, safe=""),
            gateway=self.daemon.config.gateway.id,
            page=page,
            pages=PAGES,
            session=session,
            csrf=session.csrf if session else "",
            users_configured=bool(self.daemon.config.ui.users),
            alarms_configured=self.daemon.alarms is not None,
            **ctx,
        )
        return web.Response(text=body, content_type="text/html", status=status)

    def fields(self, page: str, request: web.Request) -> tuple[views.Fields, dict[str, int]]:
        d = self.daemon
        if page == "overview":
            return views.overview_fields(d, self.sampler), {}
        if page == "devices":
            return views.devices_fields(d), {}
        if page == "tags":
            return views.tags_fields(d)
        if page == "tag":
            tag = request.query.get("tag", "")
            s = d.current.get(tag)
            return views.tag_fields(s, tag, time.time_ns()), ({f"a:{tag}": s.ts_ns // 1_000_000} if s else {})
        if page == "uplinks":
            return views.uplinks_fields(d, self.sampler), {}
        if page == "alarms":
            return views.alarm_fields(d), {}
        return {}, {}

    # ------------------------------------------------------------------ pages

    async def overview(self, request: web.Request) -> web.Response:
        fields, _ = self.fields("overview", request)
        return self.render(request, "overview.html", f=fields, uplinks=[s.name for s in self.daemon.senders])

    async def devices(self, request: web.Request) -> web.Response:
        fields, _ = self.fields("devices", request)
        devs = [(r.name, r.config.type) for r in self.daemon.devices]
        return self.render(request, "devices.html", f=fields, devices=devs)

    async def tags(self, request: web.Request) -> web.Response:
        fields, stamps = self.fields("tags", request)
        return self.render(request, "tags.html", f=fields, ts=stamps, tags=views.tag_catalogue(self.daemon),
                           now_ms=time.time_ns() // 1_000_000)  # fmt: skip

    async def tag(self, request: web.Request) -> web.Response:
        tag = request.query.get("tag", "")
        row = next((r for r in views.tag_catalogue(self.daemon) if r["tag"] == tag), None)
        if row is None:
            return self.render(request, "error.html", status=404, message=f"no tag {tag!r}")
        fields, stamps = self.fields("tag", request)
        writable = tag in self.daemon.commands.tags_for(COMMAND_SOURCE_UI)
        rng = request.query.get("range", "1h")
        return self.render(request, "tag.html", f=fields, ts=stamps, row=row, writable=writable,
                           range=rng if rng in views.TREND_RANGES else "1h", ranges=list(views.TREND_RANGES),
                           result=request.query.get("result", ""), now_ms=time.time_ns() // 1_000_000)  # fmt: skip

    async def uplinks(self, request: web.Request) -> web.Response:
        fields, _ = self.fields("uplinks", request)
        return self.render(request, "uplinks.html", f=fields, uplinks=[(s.name, s.config.type) for s in
                           self.daemon.senders])  # fmt: skip

    async def alarms(self, request: web.Request) -> web.Response:
        fields, _ = self.fields("alarms", request)
        cfg = self.daemon.config
        may = COMMAND_SOURCE_UI in cfg.alarms.sources and cfg.commands.enabled
        why_not = "" if may else _alarm_refusal(cfg.alarms.sources, cfg.commands.enabled)
        return self.render(request, "alarms.html", f=fields, alarms=views.alarm_list(self.daemon), may_act=may,
                           why_not=why_not, shelve_choices=views.shelve_choices(float(cfg.alarms.max_shelve)),
                           result=request.query.get("result", ""))  # fmt: skip

    async def audit(self, request: web.Request) -> web.Response:
        b = self.daemon.buffer
        rows = await b.call(views.audit_rows, b.store)
        return self.render(request, "audit.html", rows=rows, limit=views.AUDIT_ROWS)

    # ------------------------------------------------------------------ data

    async def trend(self, request: web.Request) -> web.Response:
        """A tag's samples over the last hour / day, read in bounded steps on the buffer thread and
        downsampled here (min/max per bucket) to a few hundred points."""
        tag = request.query.get("tag", "")
        span = views.TREND_RANGES.get(request.query.get("range", "1h"), 3600)
        hi = time.time_ns()
        lo = hi - span * 1_000_000_000
        samples: list[Any] = []
        start = None
        rows = 0
        while True:
            page = await self.daemon.history.read(tag, lo, hi, reverse=True, start=start, limit=20_000)
            samples.extend(page.samples)
            rows += page.rows
            start = page.next
            if start is None or len(samples) >= views.TREND_MAX_SAMPLES:
                break
        samples.reverse()
        if samples:  # a buffer younger than the range: the chart spans what there is
            lo = max(lo, min(s.ts_ns for s in samples[:1000]))
        points = views.downsample(samples, lo, hi)
        return web.json_response({"tag": tag, "lo_ms": lo // 1_000_000, "hi_ms": hi // 1_000_000,
                                  "samples": len(samples), "points": points,
                                  "truncated": start is not None})  # fmt: skip

    async def uplink_series(self, request: web.Request) -> web.Response:
        return web.json_response({n: self.sampler.series(n) for n in self.sampler.points})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every second the fields of the page that changed since the last push."""
        page = request.query.get("page", "")
        if self.streams >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live pages open\n")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
        await resp.prepare(request)
        self.streams += 1
        sent: views.Fields = {}
        sent_ts: dict[str, int] = {}
        try:
            while True:
                fields, stamps = self.fields(page, request)
                text = {k: v[0] for k, v in fields.items() if sent.get(k, ("", None))[0] != v[0]}
                cls = {k: v[1] for k, v in fields.items() if sent.get(k, (None, None))[1] != v[1]}
                ts = {k: v for k, v in stamps.items() if sent_ts.get(k) != v}
                sent, sent_ts = fields, stamps
                msg = {"text": text, "cls": cls, "ts": ts, "now": time.time_ns() // 1_000_000}
                await resp.write(f"data: {json.dumps(msg, separators=(',', ':'))}\n\n".encode())
                await asyncio.sleep(PUSH_S)
        except (ConnectionResetError, RuntimeError):  # the browser went away
            pass
        finally:
            self.streams -= 1
        return resp

    # ------------------------------------------------------------------ login and writes

    def _set_cookie(self, resp: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
        resp.set_cookie(name, value, httponly=True, samesite="Strict", secure=self.secure, path="/",
                        max_age=max_age)  # fmt: skip

    async def login_form(self, request: web.Request) -> web.Response:
        token = secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", login_csrf=token, error=request.query.get("error", ""),
                           next=_local(request.query.get("next", "/")))  # fmt: skip
        self._set_cookie(resp, LOGIN_COOKIE, token, max_age=3600)
        return resp

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = str(form.get("csrf", ""))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not token or not cookie or not hmac.compare_digest(token, cookie):
            raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the login page\n")
        user, password = str(form.get("user", ""))[:64], str(form.get("password", ""))[:1024]
        peer = request.remote or "?"
        keys = (f"user:{user}", f"peer:{peer}")
        wait = self.throttle.wait_s(*keys)
        if wait > 0:
            log.warning("ui: login of %r from %s refused: throttled for %.0f s", user, peer, wait)
            raise web.HTTPTooManyRequests(text=f"too many failed logins: try again in {math.ceil(wait)} s\n")
        entry = await asyncio.to_thread(check_login, self.daemon.config.ui.users, user, password)
        if entry is None:
            self.throttle.failed(*keys)
            log.warning("ui: failed login of %r from %s", user, peer)
            raise web.HTTPSeeOther("/login?error=1")
        self.throttle.succeeded(*keys)
        sid, _ = self.sessions.create(user, entry.role)
        log.info("ui: %s logged in from %s as %s", user, peer, entry.role)
        resp = web.HTTPSeeOther(_local(str(form.get("next", "/"))))
        self._set_cookie(resp, COOKIE, sid)
        resp.del_cookie(LOGIN_COOKIE, path="/")
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        session = self.session(request)
        if session is None or not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            raise web.HTTPForbidden(text="CSRF token missing or wrong\n")
        self.sessions.drop(request.cookies.get(COOKIE))
        resp = web.HTTPSeeOther("/")
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def _operator(self, request: web.Request, what: str) -> tuple[Any, Any]:
        """The form and the session of an operator whose CSRF token matches; else 401 / 403."""
        form = await request.post()
        session = self.session(request)
        if session is None:
            raise web.HTTPUnauthorized(text=f"log in to {what}\n")
        if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            raise web.HTTPForbidden(text="CSRF token missing or wrong\n")
        if session.role != "operator":
            raise web.HTTPForbidden(text=f"{session.user} is a viewer: only an operator can {what}\n")
        return form, session

    async def alarm(self, request: web.Request) -> web.StreamResponse:
        """Acknowledge, shelve or unshelve: operator session and CSRF token, then the command gate as
        source `ui` with the user (it checks `[alarms] sources` and audits every attempt)."""
        form, session = await self._operator(request, "acknowledge or shelve alarms")
        path, action = str(form.get("alarm", "")), str(form.get("action", ""))
        if action == "shelve":
            action = f"shelve {str(form.get('duration', '')).strip()}".strip()
        elif action not in ("ack", "unshelve"):
            raise web.HTTPBadRequest(text=f'unknown action {action!r}: "ack", "shelve" or "unshelve"\n')
        cmd = commands.Command(commands.new_id(), COMMAND_SOURCE_UI, session.user, path, action, time.time_ns())
        res = await self.daemon.commands.submit(cmd)
        if not res.ok and res.code == "unauthorised" and COMMAND_SOURCE_UI not in self.daemon.config.alarms.sources:
            cfg = self.daemon.config
            res = msgspec.structs.replace(res, reason=_alarm_refusal(cfg.alarms.sources, cfg.commands.enabled))
        summary = f"{path}: {res.reason}" if res.ok else f"{path} {action}: {res.result}: {res.reason}"
        if request.headers.get("Accept", "").startswith("application/json"):
            return web.json_response(json.loads(commands_json(res)), status=200 if res.ok else 409)
        raise web.HTTPSeeOther(f"/alarms?{_query(result=summary)}")

    async def write(self, request: web.Request) -> web.StreamResponse:
        """A setpoint write: operator session, matching CSRF token, then the command gate (audited)."""
        form, session = await self._operator(request, "write")
        tag, text = str(form.get("tag", "")), str(form.get("value", ""))
        gate = self.daemon.commands
        try:
            value = commands.parse_value(text, gate.kind(tag))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        cmd = commands.Command(commands.new_id(), COMMAND_SOURCE_UI, session.user, tag, value, time.time_ns())
        res = await gate.submit(cmd)
        summary = f"{res.result}: {res.reason}" if not res.ok else f"written: {views.fmt_value(res.readback)}"
        if request.headers.get("Accept", "").startswith("application/json"):
            return web.json_response(json.loads(commands_json(res)), status=200 if res.ok else 409)
        raise web.HTTPSeeOther(f"/tag?{_query(tag=tag, result=summary)}")


def _alarm_refusal(sources: list[str], enabled: bool) -> str:
    if not enabled:
        return "commands are off: acknowledging from the web UI needs [commands] enabled = true"
    return (f"the web UI may not acknowledge or shelve alarms: add \"ui\" to [alarms] sources "
            f"(now: {', '.join(sources) or 'none'})")  # fmt: skip


def commands_json(res: commands.CommandResult) -> str:
    return msgspec.json.encode(res).decode()


def _query(**kw: str) -> str:
    return urlencode(kw)


def _local(target: str) -> str:
    """Only a path on this server: a login must never redirect elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    resp: web.StreamResponse = await handler(request)
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    )
    return resp


def make_app(daemon: Daemon, *, secure: bool) -> tuple[web.Application, Ui]:
    from edged.metrics import add_routes

    ui = Ui(daemon, secure=secure)
    app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
    r = app.router
    r.add_get("/", ui.overview)
    r.add_get("/devices", ui.devices)
    r.add_get("/tags", ui.tags)
    r.add_get("/tag", ui.tag)
    r.add_get("/uplinks", ui.uplinks)
    r.add_get("/alarms", ui.alarms)
    r.add_get("/audit", ui.audit)
    r.add_get("/api/trend", ui.trend)
    r.add_get("/api/uplinks", ui.uplink_series)
    r.add_get("/events", ui.events)
    r.add_get("/login", ui.login_form)
    r.add_post("/login", ui.login)
    r.add_post("/logout", ui.logout)
    r.add_post("/write", ui.write)
    r.add_post("/alarm", ui.alarm)
    r.add_static("/static", HERE / "static")
    add_routes(app, daemon)
    return app, ui


__all__ = ["Ui", "make_app"]
