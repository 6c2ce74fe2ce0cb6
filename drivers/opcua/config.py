"""The `[[devices]]` entry of an OPC UA device and its tags: endpoint, security, NodeIds and browse paths."""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlparse

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from edged.config import DeviceBase, Duration, Secret, TagBase
from edged.protocols.opcua import SecurityMode, SecurityPolicyName
from edged.protocols.opcua.values import ua_struct

_HIERARCHICAL: Final = ua_struct(ua.NodeId, Identifier=ObjectIds.HierarchicalReferences)


def parse_node_id(text: str) -> ua.NodeId:
    """'ns=2;s=Boiler.Pressure', 'ns=2;i=7', 'i=2258': ValueError with an example when malformed."""
    try:
        return ua.NodeId.from_string(text.strip())
    except (UaError, ValueError):
        raise ValueError(
            f"invalid node {text!r}: expected a NodeId such as 'ns=2;s=Boiler.Pressure' or 'ns=2;i=7'"
        ) from None


def parse_browse_path(text: str) -> ua.RelativePath:
    """'0:Objects/2:Boiler/2:Pressure' from the Root folder. Each segment is `nsindex:BrowseName`
    (ns 0 when the prefix is left out); '.' and other characters inside a name are literal."""
    elements = []
    for seg in text.strip().strip("/").split("/"):
        if not seg:
            raise ValueError(f"invalid browse_path {text!r}: empty segment")
        try:
            name = ua.QualifiedName.from_string(seg)
        except (UaError, ValueError):
            raise ValueError(f"invalid browse_path {text!r}: segment {seg!r} is not 'nsindex:Name'") from None
        elements.append(
            ua_struct(
                ua.RelativePathElement,
                ReferenceTypeId=_HIERARCHICAL,
                IsInverse=False,
                IncludeSubtypes=True,
                TargetName=name,
            )
        )
    if not elements:
        raise ValueError(f"invalid browse_path {text!r}: expected e.g. '0:Objects/2:Boiler/2:Pressure'")
    return ua.RelativePath(elements)


class OpcuaTag(TagBase):
    node: str | None = None  # "ns=2;s=Boiler.Pressure"
    browse_path: str | None = None  # "0:Objects/2:Boiler/2:Pressure", from the Root folder
    sampling_interval: Duration | None = None  # default: the device's sampling_interval
    # `deadband` (TagBase) is also sent to the server as an absolute DataChangeFilter, unless the tag
    # has a `heartbeat`: the core needs samples inside the deadband to store one per heartbeat.

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.node is None) == (self.browse_path is None):
            raise ValueError(
                "give exactly one of `node` (e.g. 'ns=2;s=Boiler.Pressure') "
                "or `browse_path` (e.g. '0:Objects/2:Boiler/2:Pressure')"
            )
        if self.node is not None:
            parse_node_id(self.node)
        if self.browse_path is not None:
            parse_browse_path(self.browse_path)
        if self.sampling_interval is not None and self.sampling_interval < 0:
            raise ValueError("sampling_interval must be >= 0 (0 = as fast as the server can)")


class Config(DeviceBase):
    endpoint: str = ""  # opc.tcp://host:4840/path (required)
    # Required: "None" must be written out to connect without security.
    security_policy: SecurityPolicyName | None = None
    security_mode: SecurityMode = "SignAndEncrypt"
    certificate: str | None = None  # client certificate (DER or PEM); relative to gateway.data_dir
    private_key: str | None = None
    private_key_password: Secret | None = None
    trusted_server_certificates: list[str] = []  # files or directories; required with a security policy
    application_uri: str | None = None  # default: the certificate's URI, else urn:edged:<gateway>:opcua-client
    username: str | None = None
    password: Secret | None = None
    mode: Literal["subscribe", "poll"] = "subscribe"
    publishing_interval: Duration = Duration(1.0)
    sampling_interval: Duration | None = None  # default: publishing_interval
    poll_interval: Duration = Duration(1.0)  # mode = "poll", or when the server has no subscriptions
    timeout: Duration = Duration(10.0)  # per request; connecting may take a few
    session_timeout: Duration = Duration(60.0)
    keepalive: Duration = Duration(5.0)  # how often an idle session is checked
    max_nodes_per_read: int = 500  # per Read/CreateMonitoredItems/TranslateBrowsePaths request
    tags: list[OpcuaTag] = []

    def read_interval(self, tag: TagBase) -> float:
        if self.mode == "poll":
            return float(self.poll_interval)
        own = tag.sampling_interval if isinstance(tag, OpcuaTag) else None
        for interval in (own, self.sampling_interval):
            if interval is not None:
                return float(interval)
        return float(self.publishing_interval)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.endpoint:
            raise ValueError("endpoint is required, e.g. 'opc.tcp://plc1:4840'")
        url = urlparse(self.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError(f"endpoint {self.endpoint!r} must look like 'opc.tcp://host:4840/path'")
        if "@" in url.netloc:
            raise ValueError("endpoint must not contain credentials: use username and password")
        try:
            port = url.port
        except ValueError:
            port = None
        if port is None:
            raise ValueError(f"endpoint {self.endpoint!r} needs a port (OPC UA's usual one is 4840)")
        if self.security_policy is None:
            raise ValueError(
                "security_policy is required: set it to 'Basic256Sha256', 'Aes128_Sha256_RsaOaep' or "
                "'Aes256_Sha256_RsaPss' (with certificate, private_key and trusted_server_certificates), "
                "or to 'None' to connect without any security on purpose"
            )
        if self.security_policy != "None":
            if not (self.certificate and self.private_key):
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs certificate and private_key "
                    "(create a pair with `edged opcua-cert`)"
                )
            if not self.trusted_server_certificates:
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs trusted_server_certificates: "
                    "the server's certificate (or its CA) that edged may trust"
                )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username == "":
            raise ValueError("username must not be empty")
        if self.publishing_interval < 0.01:
            raise ValueError("publishing_interval must be at least 10ms")
        if self.sampling_interval is not None and self.sampling_interval < 0:
            raise ValueError("sampling_interval must be >= 0")
        if self.poll_interval < 0.01:
            raise ValueError("poll_interval must be at least 10ms")
        if not 0 < self.timeout <= 600:
            raise ValueError("timeout must be between 0 and 10m")
        if not 0.1 <= self.keepalive <= 600:
            raise ValueError("keepalive must be between 100ms and 10m")
        if self.session_timeout < max(10.0, 2 * self.keepalive):
            raise ValueError("session_timeout must be at least 10s and twice keepalive")
        if not 1 <= self.max_nodes_per_read <= 100_000:
            raise ValueError("max_nodes_per_read must be between 1 and 100000")
