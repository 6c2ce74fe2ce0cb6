"""A real mosquitto broker on 127.0.0.1 for tests: started, stopped and restarted by the tests."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process on a fixed port, so clients reconnect to the same address after restart.
    With `users` (name -> password) only they may connect; `acl` is a mosquitto ACL file's text;
    `max_inflight` is also the Receive Maximum it tells MQTT 5 clients."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        max_inflight: int = 1000,
    ) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if users:
            passwd = workdir / "mosquitto.passwd"
            passwd.write_text("")
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), name, password], check=True, capture_output=True)
            passwd.chmod(0o600)
            auth = f"allow_anonymous false\npassword_file {passwd}\n"
        if acl is not None:
            (workdir / "mosquitto.acl").write_text(acl)
            (workdir / "mosquitto.acl").chmod(0o600)
            auth += f"acl_file {workdir / 'mosquitto.acl'}\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{auth}user {getpass.getuser()}\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 0\n"
            f"max_inflight_messages {max_inflight}\nmax_queued_messages 100000\nlog_type error\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"mosquitto exited: {err}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
