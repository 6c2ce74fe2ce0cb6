"""Re-take the README's web UI screenshots (docs/img/ui-*.png) from the demo plant.

Runs `edged run` on the embedded demo's config (its own data dir, a free port, one operator so
the alarms page shows its buttons), waits until the stack temperature HI alarm is active and the
stuck sensor has turned Uncertain, and photographs the pages with Debian's chromium + selenium.
Usage: PYTHONPATH=. .venv/bin/python scripts/ui_screenshots.py [OUT_DIR]   (default docs/img)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from edged.ui.auth import hash_password  # noqa: E402
from peers.mosquitto import free_port  # noqa: E402
from peers.waiting import wait_until  # noqa: E402


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img"
    tmp = Path(tempfile.mkdtemp(prefix="edged-shots-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    text = (ROOT / "edged" / "demo.toml").read_text().replace('data_dir = "edged-demo"', f'data_dir = "{tmp}/data"')
    op = hash_password("op", n=2**14)
    text += f'\n[ui]\nlisten = "127.0.0.1:{port}"\nusers.op = {{ password_hash = "{op}", role = "operator" }}\n'
    cfg = tmp / "demo.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    log = (tmp / "edged.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--hide-scrollbars"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    try:
        wait_until(lambda: fetch(f"{base}/health") != "", 30, "the UI")
        started = time.monotonic()
        # the stuck sensor turns Uncertain after 30 s; then catch the HI alarm while it is active
        wait_until(lambda: time.monotonic() - started > 40, 60, "40 s of samples")
        wait_until(lambda: "active, unacknowledged" in fetch(f"{base}/alarms"), 90, "the HI alarm")
        drv.get(f"{base}/login?next=/alarms")
        drv.find_element(By.ID, "user").send_keys("op")
        drv.find_element(By.ID, "password").send_keys("op")
        drv.find_element(By.ID, "login").click()
        wait_until(lambda: drv.find_elements(By.ID, "alarm-table"), 10, "the alarms page")
        time.sleep(1.5)  # a push of the event stream, so the footer says "live"
        drv.save_screenshot(str(out / "ui-alarms.png"))
        drv.delete_all_cookies()
        for name, path in (("overview", "/"), ("tags", "/tags"), ("tag", "/tag?tag=boiler%2Fstack_temp")):
            drv.get(base + path)
            time.sleep(2.0)  # the first push and, on the tag page, the trend
            if name == "tags":  # the 4-20 mA loop is broken 20 s in every 40 s: show it red
                bad = drv.find_element(By.ID, "s:boiler/dosing_flow")
                wait_until(lambda: bad.get_attribute("class") == "bad", 45, "the broken loop in red")  # noqa: B023
                time.sleep(0.5)
            drv.save_screenshot(str(out / f"ui-{name}.png"))
        print(f"screenshots in {out}")
    finally:
        drv.quit()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
