"""A real asyncua OPC UA server on 127.0.0.1 for contract tests.

One port serves a plain endpoint (SecurityPolicy None) and a Basic256Sha256 SignAndEncrypt one, with
self-signed server and client certificates generated into a temp dir. Startup builds the standard
address space (about 1.5 s), so tests share one server per module and restart it in place.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager

from edged.protocols.opcua.certs import create_client_certificate, create_self_signed_certificate

USERNAME = "operator"
PASSWORD = "s3cret-pw"
NAMESPACE = "urn:edged:test:plant"
SERVER_URI = "urn:edged:test:plant-server"
CLIENT_URI = "urn:edged:test:client"

# name -> (NodeId identifier in the plant namespace, initial value, variant type)
VARIABLES: dict[str, tuple[str | int, Any, ua.VariantType]] = {
    "Pressure": ("Boiler.Pressure", 12.5, ua.VariantType.Double),
    "Temperature": (7, 80.25, ua.VariantType.Double),
    "Count": ("Boiler.Count", 42, ua.VariantType.Int32),
    "Running": ("Boiler.Running", True, ua.VariantType.Boolean),
    "Mode": ("Boiler.Mode", "auto", ua.VariantType.String),
    "Profile": ("Boiler.Profile", [1.0, 2.0, 3.0], ua.VariantType.Double),  # an array: not storable
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Users(UserManager):
    """Anonymous and `operator` may log in; a wrong password is refused (BadUserAccessDenied)."""

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        if username == USERNAME and password == PASSWORD:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class PlantServer:
    """A boiler under Objects/2:Boiler, NodeIds `ns=2;s=Boiler.Pressure`, `ns=2;i=7`, ..."""

    workdir: Path
    port: int = field(default_factory=free_port)
    server: Server | None = None
    ns: int = 2
    nodes: dict[str, ua.NodeId] = field(default_factory=dict)
    writable: frozenset[str] = frozenset()  # VARIABLES clients may write (the others answer BadUserAccessDenied)

    def __post_init__(self) -> None:
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plant/"
        self.server_cert = self.workdir / "server_cert.der"
        self.server_key = self.workdir / "server_key.pem"
        self.client_cert = self.workdir / "client_cert.der"
        self.client_key = self.workdir / "client_key.pem"
        create_self_signed_certificate(self.server_cert, self.server_key, SERVER_URI, server=True, overwrite=True)
        create_client_certificate(self.client_cert, self.client_key, CLIENT_URI, overwrite=True)

    def node_id(self, name: str) -> str:
        """The NodeId string a tag config would use, e.g. 'ns=2;s=Boiler.Pressure'."""
        return self.nodes[name].to_string()

    async def start(self) -> None:
        if self.server is not None:  # restart in place: the address space and values survive
            await self.server.start()
            return
        server = Server(user_manager=_Users())
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("edged test plant")
        await server.set_application_uri(SERVER_URI)
        server.set_security_policy(
            [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        )
        await server.load_certificate(str(self.server_cert))
        await server.load_private_key(str(self.server_key))
        self.ns = await server.register_namespace(NAMESPACE)
        boiler = await server.nodes.objects.add_folder(
            ua.NodeId("Boiler", self.ns), ua.QualifiedName("Boiler", self.ns)
        )
        for name, (ident, value, vtype) in VARIABLES.items():
            var = await boiler.add_variable(
                ua.NodeId(ident, self.ns), ua.QualifiedName(name, self.ns), ua.Variant(value, vtype)
            )
            self.nodes[name] = var.nodeid
            if name in self.writable:
                await var.set_writable()
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    async def close(self) -> None:
        await self.stop()
        self.server = None

    async def set(self, name: str, value: Any, *, status: int = 0, source_ts: dt.datetime | None = None) -> dt.datetime:
        """Write a value as the device would, with a source timestamp (default: now); returns it."""
        assert self.server is not None
        ts = source_ts or dt.datetime.now(dt.UTC)
        vtype = VARIABLES[name][2]
        dv = ua.DataValue(
            ua.Variant(value, vtype),
            ua.StatusCode(status),
            SourceTimestamp=ts,
            ServerTimestamp=dt.datetime.now(dt.UTC),
        )
        await self.server.write_attribute_value(self.nodes[name], dv)
        return ts

    def get(self, name: str) -> Any:
        """The value in the server's address space right now."""
        assert self.server is not None
        dv = self.server.read_attribute_value(self.nodes[name])
        return dv.Value.Value if dv.Value is not None else None
