"""The `[[uplinks]]` entry of the OPC UA server: endpoint, security, users and login throttling."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlparse

import msgspec

from edged.config import Secret, UplinkBase
from edged.protocols.opcua import SecurityMode, SecurityPolicyName

BACKOFF_CAP: Final = 900.0  # s: the longest login lockout


class Config(UplinkBase):
    endpoint: str = "opc.tcp://127.0.0.1:4840/edged/"
    # Each policy is offered in each mode; "None" only when listed (logged as a warning).
    security_policies: list[SecurityPolicyName] = msgspec.field(
        default_factory=lambda: ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
    )
    security_modes: list[SecurityMode] = msgspec.field(default_factory=lambda: ["SignAndEncrypt"])
    certificate: str | None = None  # server certificate; default: generated once in data_dir/opcua/<name>/
    private_key: str | None = None
    private_key_password: Secret | None = None
    trusted_client_certificates: list[str] = []  # files or directories; empty: any client certificate
    users: dict[str, Secret] = {}  # username -> password; read-only access
    command_users: list[str] = []  # of `users`: who may write the tags [commands] lets this uplink write
    allow_anonymous: bool = False  # anonymous sessions, read-only
    # After this many wrong passwords in a row from one client address for one username, its
    # logins are refused unchecked for login_backoff seconds (doubling at each further lockout).
    login_attempts: int = 5
    login_backoff: float = 10.0
    namespace: str | None = None  # namespace URI; default urn:edged:<gateway>
    application_uri: str | None = None  # default: the certificate's URI, else urn:edged:<gateway>:opcua-server
    server_name: str = "edged"

    def __post_init__(self) -> None:
        super().__post_init__()
        url = urlparse(self.endpoint)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "opc.tcp" or not url.hostname or port is None:
            raise ValueError(f"endpoint {self.endpoint!r} must look like 'opc.tcp://127.0.0.1:4840/edged/'")
        if not self.security_policies:
            raise ValueError("security_policies must not be empty (write 'None' explicitly for no security)")
        if len(set(self.security_policies)) != len(self.security_policies):
            raise ValueError("security_policies lists a policy twice")
        if not self.security_modes or len(set(self.security_modes)) != len(self.security_modes):
            raise ValueError("security_modes must list 'Sign' and/or 'SignAndEncrypt', each once")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        if not self.users and not self.allow_anonymous:
            raise ValueError("nobody can log in: add [uplinks.users] (username = password) or allow_anonymous = true")
        for name in self.users:
            if not name or name != name.strip():
                raise ValueError(f"invalid username {name!r}")
        for name in self.command_users:
            if name not in self.users:
                raise ValueError(f"command_users: {name!r} is not one of `users` (anonymous sessions never write)")
        if self.login_attempts < 1:
            raise ValueError("login_attempts must be at least 1")
        if not 0 < self.login_backoff <= BACKOFF_CAP:
            raise ValueError(f"login_backoff must be between 0 and {BACKOFF_CAP:g} seconds")
        if self.namespace is not None and not self.namespace.strip():
            raise ValueError("namespace must not be empty")
