"""The web UI in a real browser: Debian's chromium driven by selenium, against `edged run` as a
process (a sim plant with a Good, an Uncertain and a Bad tag, and a totalizer the UI may reset).

A screenshot of every page is written under the test's tmp dir for a person to look at.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.ui.auth import hash_password
from peers.mosquitto import free_port
from peers.waiting import wait_until

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are missing: scripts/test.sh installs them")
    pytest.skip("chromium + chromium-driver not installed (scripts/test.sh installs them)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CONFIG = """
[gateway]
id = "ui-test"
data_dir = "{data}"

[[devices]]
name = "plant"
type = "sim"
interval = "200ms"
seed = 1

[[devices.tags]]
name = "level"
signal = "ramp"
amplitude = 100.0
period = "20s"
unit = "%"

[[devices.tags]]
name = "flow"
signal = "sine"
offset = 10.0
amplitude = 2.0
unit = "m3/h"

[[devices.tags]]
name = "stuck"
signal = "stuck"
offset = 4.0
unit = "bar"
quality = {{ flatline = "1s" }}

[[devices.tags]]
name = "broken"
signal = "noisy"
nan_probability = 1.0
unit = "degC"

[[computed]]
name = "totals"

[[computed.tags]]
name = "volume"
function = "totalizer"
input = "plant/flow"
unit = "m3"

[[uplinks]]
name = "archive"
type = "file"
path = "samples.jsonl"

[commands]
enabled = true
tags = [{{ tag = "totals/volume", sources = ["ui"], min = 0, max = 1000000 }}]

[alarms]
sources = {alarm_sources}

[[alarms.tags]]
tag = "plant/stuck"
type = "hi"
limit = 3.0
priority = "high"
message = "stuck pressure above 3 bar"

[[alarms.tags]]
tag = "plant/flow"
type = "lo"
limit = 1.0
priority = "low"
message = "no flow"

[ui]
listen = "127.0.0.1:{port}"
users.op = {{ password_hash = "{op_hash}", role = "operator" }}
users.viewer = {{ password_hash = "{viewer_hash}", role = "viewer" }}
"""

RED, AMBER = "rgba(198, 40, 40, 1)", "rgba(178, 106, 0, 1)"


class Gateway:
    def __init__(self, tmp: Path, alarm_sources: str = '["ui", "cli"]') -> None:
        self.tmp = tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data = tmp / "data"
        cfg = tmp / "edged.toml"
        cfg.write_text(CONFIG.format(data=self.data, port=self.port, op_hash=hash_password("op-secret", n=2**14),
                                     viewer_hash=hash_password("viewer-secret", n=2**14),
                                     alarm_sources=alarm_sources))  # fmt: skip
        self.log = (tmp / "edged.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_until(lambda: get(f"{self.base}/health")[0] == 200, 30, "the UI to answer")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def get(url: str, opener: Any = None) -> tuple[int, str]:
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, form: dict[str, str], cookies: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    if cookies:
        req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("gw"))
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()


def console_errors(drv: Any) -> list[dict[str, Any]]:
    return [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def wait(drv: Any, pred: Any, timeout: float, what: str) -> None:
    """`pred(drv)` until truthy; an element replaced by a navigation meanwhile counts as "not yet"."""

    def check() -> Any:
        try:
            return pred(drv)
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_until(check, timeout, what, interval=0.05)


def login(drv: Any, gw: Gateway, user: str, password: str, then: str = "/") -> None:
    drv.get(f"{gw.base}/login?next={urllib.parse.quote(then)}")
    drv.find_element(By.ID, "user").send_keys(user)
    drv.find_element(By.ID, "password").send_keys(password)
    drv.find_element(By.ID, "login").click()
    wait(drv, lambda d: d.get_cookie("edged_session") is not None, 10, "the session cookie")


@pytest.mark.timeout(90)
def test_every_page_renders_without_console_errors(gw: Gateway, browser: Any, shots: Path) -> None:
    pages = {"overview": "/", "devices": "/devices", "tags": "/tags", "tag": "/tag?tag=plant%2Flevel",
             "uplinks": "/uplinks", "alarms": "/alarms", "audit": "/audit", "login": "/login"}  # fmt: skip
    wait_until(lambda: "plant/level" in get(f"{gw.base}/api/trend?tag=plant%2Flevel")[1], 10, "a first sample")
    for name, path in pages.items():
        browser.get(gw.base + path)
        assert "edged" in browser.title
        if name not in ("audit", "login"):  # pages with a live stream: wait for its first push
            wait(browser, lambda d: d.find_element(By.ID, "live").text.startswith("live"), 5, f"{name} live")
        if name == "tag":
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#trend svg polyline"), 10, "the trend")
        if name == "uplinks":
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".uplink-chart svg"), 10, "the backlog chart")
        browser.save_screenshot(str(shots / f"{name}.png"))
        assert console_errors(browser) == [], f"{name}: console errors"
    assert (shots / "overview.png").stat().st_size > 10_000


@pytest.mark.timeout(60)
def test_bad_is_red_uncertain_is_amber_and_values_update_live(gw: Gateway, browser: Any, shots: Path) -> None:
    browser.get(f"{gw.base}/tags")
    browser.execute_script("window.__no_reload = 1")

    def colour(tag: str) -> str:
        return str(browser.find_element(By.ID, f"s:{tag}").value_of_css_property("background-color"))

    wait(browser, lambda d: colour("plant/broken") == RED, 10, "the Bad tag in red")
    wait(browser, lambda d: colour("plant/stuck") == AMBER, 10, "the Uncertain tag in amber")
    assert browser.find_element(By.ID, "s:plant/broken").text.startswith("Bad")
    assert browser.find_element(By.ID, "s:plant/stuck").text.startswith("Uncertain")
    assert colour("plant/level") not in (RED, AMBER)
    # a value changes on the page without a reload, and what is shown is less than 2 s old
    first = browser.find_element(By.ID, "v:plant/level").text
    t0 = time.monotonic()
    wait(browser, lambda d: d.find_element(By.ID, "v:plant/level").text != first, 2.0, "a new value within 2 s")
    assert time.monotonic() - t0 < 2.0
    shown = float(browser.find_element(By.ID, "v:plant/level").text)
    age_ms = browser.execute_script("return Date.now() - Number(document.getElementById('a:plant/level').dataset.ts)")
    assert age_ms < 2000 and 0 <= shown <= 100
    assert browser.execute_script("return window.__no_reload") == 1
    # the filter narrows the table to the matching rows
    browser.find_element(By.ID, "filter").send_keys("stuck")
    wait(browser, lambda d: d.find_element(By.ID, "shown").text == "1 shown", 3, "the filter")
    browser.save_screenshot(str(shots / "tags-filtered.png"))
    assert console_errors(browser) == []


@pytest.mark.timeout(60)
def test_trend_shows_the_buffers_samples(gw: Gateway, browser: Any) -> None:
    wait_until(lambda: json.loads(get(f"{gw.base}/api/trend?tag=plant%2Flevel")[1])["samples"] >= 20, 20, "samples")
    browser.get(f"{gw.base}/tag?tag=plant%2Flevel")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#trend svg[data-samples]"), 10, "the trend")
    svg = browser.find_element(By.CSS_SELECTOR, "#trend svg")
    shown = int(svg.get_attribute("data-samples"))
    points = int(svg.get_attribute("data-points"))
    data = json.loads(get(f"{gw.base}/api/trend?tag=plant%2Flevel")[1])
    # independent count straight from the buffer's SQLite file (read after the page and the API, so a
    # superset of what they saw): at least as many samples, and the same extremes or wider
    db = sqlite3.connect(f"file:{gw.data / 'buffer.db'}?mode=ro", uri=True)
    stored, lo, hi = db.execute(
        "SELECT count(*), min(value), max(value) FROM samples JOIN tags USING(tag_id) WHERE name = 'plant/level'"
    ).fetchone()
    db.close()
    assert 20 <= shown <= stored, (shown, stored)
    polyline = svg.find_element(By.CSS_SELECTOR, "polyline").get_attribute("points").split()
    assert len(polyline) == points > 0
    assert min(p[1] for p in data["points"]) >= lo and max(p[2] for p in data["points"]) <= hi


@pytest.mark.timeout(90)
def test_writes_need_an_operator_login_and_a_csrf_token(gw: Gateway, browser: Any, shots: Path) -> None:
    tag_page = f"{gw.base}/tag?tag=totals%2Fvolume"
    # anonymous: no form, and a direct POST is refused
    browser.get(tag_page)
    assert not browser.find_elements(By.ID, "write-form")
    assert "Log in" in browser.find_element(By.TAG_NAME, "main").text
    assert post(f"{gw.base}/write", {"tag": "totals/volume", "value": "5", "csrf": "x"})[0] == 401
    # a viewer: no form either, and a POST with the viewer's own session and CSRF token is refused
    login(browser, gw, "viewer", "viewer-secret", then="/tag?tag=totals%2Fvolume")
    assert not browser.find_elements(By.ID, "write-form")
    cookie = browser.get_cookie("edged_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    code, text = post(f"{gw.base}/write", {"tag": "totals/volume", "value": "5", "csrf": csrf},
                      {"edged_session": cookie["value"]})  # fmt: skip
    assert code == 403 and "viewer" in text
    browser.delete_all_cookies()
    # an operator with a wrong CSRF token: refused
    login(browser, gw, "op", "op-secret", then="/tag?tag=totals%2Fvolume")
    browser.execute_script("document.querySelector('#write-form input[name=csrf]').value = 'forged'")
    browser.find_element(By.ID, "write-value").send_keys("42")
    browser.find_element(By.CSS_SELECTOR, "#write-form button").click()
    wait(browser, lambda d: "CSRF" in d.find_element(By.TAG_NAME, "body").text, 5, "the CSRF refusal")
    # ... and with the right one: written through the gate, audited as source ui with the user
    browser.get(tag_page)
    browser.find_element(By.ID, "write-value").send_keys("42")
    browser.find_element(By.CSS_SELECTOR, "#write-form button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "write-result"), 10, "the write's result")
    assert browser.find_element(By.ID, "write-result").text.startswith("written"), browser.page_source[-2000:]
    browser.save_screenshot(str(shots / "tag-written.png"))
    browser.get(f"{gw.base}/audit")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert any("ui op totals/volume 42" in r and "accepted" in r for r in rows), rows
    assert sum("totals/volume" in r for r in rows) == 1  # the refused attempts never reached the gate
    browser.save_screenshot(str(shots / "audit.png"))


ALARM = "plant/stuck#alarm/hi"


def session_of(gw: Gateway, user: str, password: str) -> tuple[Any, str]:
    """An opener logged in as `user` (its cookie jar holds the session) and the session's CSRF token."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)
    token = get(f"{gw.base}/login", opener)[1].split('name="csrf" value="')[1].split('"')[0]
    req = urllib.request.Request(f"{gw.base}/login", data=urllib.parse.urlencode(
        {"csrf": token, "user": user, "password": password}).encode())  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as redirect:  # 303: NoRedirect turns it into an error
        opener.open(req, timeout=10)
    assert redirect.value.code == 303 and "error" not in redirect.value.headers["Location"]
    page = get(f"{gw.base}/alarms", opener)[1]
    return opener, page.split('action="/logout"')[1].split('name="csrf" value="')[1].split('"')[0]


def post_as(gw: Gateway, opener: Any, path: str, form: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(f"{gw.base}{path}", data=urllib.parse.urlencode(form).encode(),
                                 headers={"Accept": "application/json"})  # fmt: skip
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def audit_rows(gw: Gateway) -> list[tuple[str, str, str, str, str]]:
    """The audit trail straight from the buffer's SQLite file: (source, user, tag, value, result)."""
    db = sqlite3.connect(f"file:{gw.data / 'buffer.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT source, user, tag, value, result FROM audit ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.timeout(90)
def test_an_operator_acknowledges_and_shelves_an_alarm_on_the_page(gw: Gateway, browser: Any, shots: Path) -> None:
    # the overview counts the raised alarm: active and unacknowledged
    browser.get(gw.base + "/")
    wait(browser, lambda d: d.find_element(By.ID, "alarms-unacked").text == "1", 10, "an unacknowledged alarm")
    assert browser.find_element(By.ID, "alarms-active").text == "1"
    login(browser, gw, "op", "op-secret", then="/alarms")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#alarm-table tbody tr"), 10, "the alarms page")
    state = f"al-state:{ALARM}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#alarm-table tbody tr")
    assert [r.get_attribute("data-alarm") for r in rows] == [ALARM, "plant/flow#alarm/lo"]  # the active one first
    assert browser.find_element(By.ID, state).text == "active, unacknowledged"
    assert browser.find_element(By.ID, state).value_of_css_property("background-color") == RED
    assert "stuck pressure above 3 bar" in rows[0].text and "700" in rows[0].text
    assert browser.find_element(By.ID, "al-state:plant/flow#alarm/lo").text == "normal"
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-alarm='{ALARM}']")
    assert not row.find_element(By.CSS_SELECTOR, "button.unshelve").is_displayed()  # not shelved
    assert not browser.find_element(By.CSS_SELECTOR, "tr[data-alarm='plant/flow#alarm/lo'] button.ack").is_displayed()
    browser.save_screenshot(str(shots / "alarms.png"))
    browser.execute_script("window.__no_reload = 1")
    # acknowledge: the state changes on the page by the event stream, without a reload
    row.find_element(By.CSS_SELECTOR, "button.ack").click()
    wait(browser, lambda d: d.find_element(By.ID, "alarm-result").is_displayed(), 5, "the answer")
    assert "unack -> acked" in browser.find_element(By.ID, "alarm-result").text
    wait(browser, lambda d: d.find_element(By.ID, state).text == "active, acknowledged", 5, "the acknowledged state")
    assert browser.find_element(By.ID, state).value_of_css_property("background-color") == AMBER
    wait(browser, lambda d: not row.find_element(By.CSS_SELECTOR, "button.ack").is_displayed(), 3, "no ack button")
    # shelve for 1h, then unshelve
    from selenium.webdriver.support.ui import Select

    Select(row.find_element(By.CSS_SELECTOR, "select.duration")).select_by_visible_text("1h")
    row.find_element(By.CSS_SELECTOR, "button.shelve").click()
    sup = f"al-sup:{ALARM}"
    wait(browser, lambda d: d.find_element(By.ID, sup).text.startswith("shelved until"), 5, "the shelve")
    wait(browser, lambda d: row.find_element(By.CSS_SELECTOR, "button.unshelve").is_displayed(), 3, "unshelve")
    assert not row.find_element(By.CSS_SELECTOR, "button.shelve").is_displayed()
    row.find_element(By.CSS_SELECTOR, "button.unshelve").click()
    wait(browser, lambda d: d.find_element(By.ID, sup).text == "", 5, "the unshelve")
    assert browser.execute_script("return window.__no_reload") == 1
    assert console_errors(browser) == []
    # the audit trail: source ui and the user, on the page and in the buffer's file
    audited = [r for r in audit_rows(gw) if r[2] == ALARM]
    assert [(r[0], r[1], r[3], r[4]) for r in audited] == [
        ("ui", "op", '"ack"', "accepted"),
        ("ui", "op", '"shelve 1h"', "accepted"),
        ("ui", "op", '"unshelve"', "accepted"),
    ]  # values as the audit stores them (JSON)
    browser.get(f"{gw.base}/audit")
    rows_text = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert any(f'ui op {ALARM} "ack"' in r and "accepted" in r for r in rows_text), rows_text
    browser.get(gw.base + "/")
    wait(browser, lambda d: d.find_element(By.ID, "alarms-unacked").text == "0", 5, "no unacknowledged alarm")
    assert browser.find_element(By.ID, "alarms-active").text == "1"


@pytest.mark.timeout(60)
def test_a_viewer_sees_no_alarm_buttons_and_forged_posts_are_refused(gw: Gateway, browser: Any) -> None:
    before = len(audit_rows(gw))
    browser.get(f"{gw.base}/alarms")  # anonymous
    wait(browser, lambda d: d.find_element(By.ID, "live").text.startswith("live"), 5, "alarms live")
    assert not browser.find_elements(By.CSS_SELECTOR, "form.alarm-action")
    login(browser, gw, "viewer", "viewer-secret", then="/alarms")
    assert not browser.find_elements(By.CSS_SELECTOR, "form.alarm-action")
    assert "viewer" in browser.find_element(By.TAG_NAME, "main").text
    form = {"alarm": ALARM, "action": "ack"}
    assert post(f"{gw.base}/alarm", {**form, "csrf": "x"})[0] == 401  # no session
    viewer, viewer_csrf = session_of(gw, "viewer", "viewer-secret")
    code, text = post_as(gw, viewer, "/alarm", {**form, "csrf": viewer_csrf})
    assert code == 403 and "viewer" in text
    op, _ = session_of(gw, "op", "op-secret")
    code, text = post_as(gw, op, "/alarm", {**form, "csrf": "forged"})
    assert code == 403 and "CSRF" in text
    code, text = post_as(gw, op, "/alarm", {**form, "csrf": viewer_csrf})  # another session's token
    assert code == 403 and "CSRF" in text
    assert len(audit_rows(gw)) == before  # none of them reached the gate


@pytest.mark.timeout(60)
def test_alarm_actions_are_refused_when_ui_is_not_an_alarm_source(tmp_path: Path) -> None:
    g = Gateway(tmp_path, alarm_sources='["cli"]')
    try:
        op, csrf = session_of(g, "op", "op-secret")
        page = get(f"{g.base}/alarms", op)[1]
        assert 'id="alarm-why-not"' in page and "form" not in page.split('id="alarm-table"')[1].split("</table>")[0]
        assert "add &#34;ui&#34; to [alarms] sources" in page or 'add "ui" to [alarms] sources' in page
        wait_until(lambda: "active, unacknowledged" in get(f"{g.base}/alarms", op)[1], 10, "the alarm raised")
        code, text = post_as(g, op, "/alarm", {"alarm": ALARM, "action": "ack", "csrf": csrf})
        assert code == 409
        answer = json.loads(text)
        assert answer["result"] == "rejected" and answer["code"] == "unauthorised"
        assert 'add "ui" to [alarms] sources (now: cli)' in answer["reason"]
        assert [(r[0], r[1], r[2], r[4]) for r in audit_rows(g)] == [("ui", "op", ALARM, "rejected")]  # audited
        assert "active, unacknowledged" in get(f"{g.base}/alarms", op)[1]
    finally:
        g.stop()


@pytest.mark.timeout(60)
def test_login_is_throttled(gw: Gateway) -> None:
    # last in the module: it locks logins from 127.0.0.1 for the module's gateway
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)
    codes = []
    for _ in range(7):
        form_page = get(f"{gw.base}/login", opener)[1]
        token = form_page.split('name="csrf" value="')[1].split('"')[0]
        req = urllib.request.Request(f"{gw.base}/login", data=urllib.parse.urlencode(
            {"csrf": token, "user": "nobody", "password": "guess"}).encode())  # fmt: skip
        try:
            with opener.open(req, timeout=10) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
    assert codes[:5] == [303] * 5 and 429 in codes[5:], codes
