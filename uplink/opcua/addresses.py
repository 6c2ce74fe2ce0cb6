"""The addresses a client may reach the server by, for the server certificate's SubjectAltName:
strict clients (UaExpert, .NET) check that a certificate names the host they connected to, IP
addresses included. The endpoint's host, or with a wildcard (0.0.0.0, ::) this machine's
addresses (Linux interfaces; loopback included, for local tools)."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

_SIOCGIFADDR: Final = 0x8915  # Linux: an interface's IPv4 address
_IF_INET6: Final = Path("/proc/net/if_inet6")


def endpoint_addresses(endpoint: str) -> list[str]:
    """IP addresses and DNS names to list in the certificate of a server listening on `endpoint`."""
    host = urlparse(endpoint).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [host, "localhost"] if host else ["localhost"]
    if not ip.is_unspecified:
        return [str(ip)]
    return ["localhost", *local_addresses(v6=ip.version == 6)]


def local_addresses(*, v6: bool = False) -> list[str]:
    """This machine's interface addresses (IPv4, and with `v6` the IPv6 ones that are not
    link-local); empty where the OS does not tell this way."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):  # an interface without an IPv4 address
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                out.append(socket.inet_ntoa(packed[20:24]))
    if v6:
        with contextlib.suppress(OSError):
            for line in _IF_INET6.read_text().splitlines():
                raw = line.split()[0]
                ip = ipaddress.IPv6Address(bytes.fromhex(raw))
                if not ip.is_link_local:
                    out.append(str(ip))
    return list(dict.fromkeys(out))
