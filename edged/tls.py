"""Client-side TLS for the uplinks: one place that declares the keys and builds the context, so MQTT,
Sparkplug and HTTP take the same TOML keys and verify certificates the same way (on by default, off
only on purpose and with a warning)."""

from __future__ import annotations

import logging
import ssl

from edged.config import Secret, UplinkBase
from edged.errors import Permanent


class TlsUplink(UplinkBase):
    """The TLS keys of every TLS-capable uplink's Config (it subclasses this). Whether TLS is on is
    the uplink's own say (`tls = true`, an https:// url), so it calls `check_tls` with that."""

    ca_file: str | None = None  # default: the system trust store
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    key_password: Secret | None = None
    tls_insecure_skip_verify: bool = False  # only for commissioning; logged as a warning

    def check_tls(self, *, enabled: bool, otherwise: str) -> None:
        """ValueError for TLS keys that do not fit together; `otherwise` says why TLS is off."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.cert_file or self.ca_file or self.tls_insecure_skip_verify) and not enabled:
            raise ValueError(f"TLS options are set but {otherwise}")


def client_context(c: TlsUplink, log: logging.Logger) -> ssl.SSLContext:
    """A verifying client context (the system trust store unless `ca_file`), with the client
    certificate for mutual TLS when configured. Unreadable files are Permanent: retrying won't help."""
    try:
        ctx = ssl.create_default_context(cafile=c.ca_file)
        if c.cert_file and c.key_file:
            ctx.load_cert_chain(c.cert_file, c.key_file, c.key_password.reveal() if c.key_password else None)
    except (OSError, ssl.SSLError) as exc:
        raise Permanent(f"TLS setup failed: {exc}") from exc
    if c.tls_insecure_skip_verify:
        log.warning("uplink %s: TLS certificate verification is OFF (tls_insecure_skip_verify)", c.name)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
