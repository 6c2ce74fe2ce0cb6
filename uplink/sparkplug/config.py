"""The `[[uplinks]]` keys of a Sparkplug B edge node (README.md documents each)."""

from __future__ import annotations

import re
from typing import Literal

from edged.config import Duration
from edged.protocols.mqtt import MqttUplink

_ID_BAD = re.compile(r"[/+#]")


def check_id(what: str, value: str) -> None:
    """A Sparkplug id (group, edge node, host) is one topic level: no separators or wildcards."""
    if not value or _ID_BAD.search(value):
        raise ValueError(f"{what} {value!r} must be non-empty without '/', '+' or '#'")


class Config(MqttUplink, kw_only=True):
    # host, port, client_id, username, password, tls, keepalive, timeout: edged.protocols.mqtt.MqttUplink
    # ca_file, cert_file, key_file, key_password, tls_insecure_skip_verify: edged.tls.TlsUplink
    group_id: str
    edge_node_id: str | None = None  # default: the gateway id
    primary_host_id: str | None = None  # publish only while spBv1.0/STATE/<id> says online
    data_qos: Literal[0, 1] = 0  # Sparkplug says 0 for NDATA/DDATA; 1 waits for the broker's PUBACK
    quality_codes: Literal["opc_da", "ignition8"] = "opc_da"
    # where a UInt32 (the OpcUaStatusCode property) travels: long_value as Eclipse Tahu and Ignition read
    # it (eclipse-sparkplug/sparkplug#102), or int_value, the protobuf uint32 field the specification names
    uint32_field: Literal["long_value", "int_value"] = "long_value"
    max_command_bytes: int = 65536  # a larger NCMD/DCMD payload is dropped before it is decoded
    commands_require_primary_host: bool = True  # with primary_host_id: writes only while it is online
    rebirth_min_interval: Duration = Duration(5.0)  # Rebirth NCMDs closer together are coalesced; 0: off

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_command_bytes < 256:
            raise ValueError(f"max_command_bytes {self.max_command_bytes} is below 256")
        if self.rebirth_min_interval < 0:
            raise ValueError("rebirth_min_interval must not be negative")
        check_id("group_id", self.group_id)
        if self.edge_node_id is not None:
            check_id("edge_node_id", self.edge_node_id)
        if self.primary_host_id is not None:
            check_id("primary_host_id", self.primary_host_id)
        self.check_broker()
