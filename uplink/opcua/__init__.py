"""OPC UA server uplink (asyncua): SCADA browses and subscribes to every tag's latest value.

The address space mirrors the config: Objects/<gateway>/<device>/<tag>, one read-only Variable per
tag carrying the sample's value, StatusCode and source timestamp. NodeIds are derived from names
(`ns=<namespace>;s=<device>/<tag>`), so they stay the same across restarts and SCADA tag lists keep
working. A batch counts as delivered once its values are in the address space; a variable only
moves forward in time, so a replayed (historical) sample never hides a newer value.

Access: username/password users (and anonymous only when allowed) may browse, read and subscribe.
A trust list, when set, binds on every endpoint (the None one admits no session then); a policy not
offered is answered BadSecurityPolicyRejected and closed; wrong passwords lock a (client, user)
pair out for a while. Who may do what is `access.py` (the entry itself `config.py`); the asyncua
internals this needs are in `_asyncua`.
Nobody may change the address space. Method calls are refused but ConditionRefresh and the alarm
methods (Acknowledge, TimedShelve, Unshelve: alarms.py, through the gate like writes). Writes are
refused (BadUserAccessDenied), except
the Value of a tag the command gate lets this uplink write ([[commands.tags]] with this uplink in
`sources`), by a user listed in `command_users`: such a write never touches the address space. It
goes through the gate (edged.commands: checks, device write, read-back, audit) and the client gets
the gate's answer as its StatusCode: Good once the device read the value back, else e.g.
BadOutOfRange, BadUserAccessDenied, BadTypeMismatch, BadNotConnected, BadCommunicationError.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes, get_name_and_doc
from asyncua.ua.uaerrors import UaError
from cryptography import x509

import edged
from edged.alarms.config import is_alarm_path
from edged.commands import Command, CommandGate, new_id
from edged.config import Config as EdgedConfig
from edged.config import DeviceBase, tag_matcher
from edged.errors import Permanent, Transient
from edged.model import Batch, Sample, Severity, Status, severity
from edged.plugin import PluginContext, UplinkSpec
from edged.protocols.opcua import certs
from edged.protocols.opcua.errors import map_error
from edged.protocols.opcua.values import datetime_ns, ns_datetime, ua_struct
from uplink.opcua import space
from uplink.opcua._asyncua import Published, Rejected, Server, current_channel, on_read, publish
from uplink.opcua.access import THROTTLE_PAIRS, GatedWrites, UserAccess, Users, written_value
from uplink.opcua.addresses import endpoint_addresses
from uplink.opcua.alarms import AlarmConditions, GatedCalls
from uplink.opcua.config import Config
from uplink.opcua.history import BufferHistory, HistoryReadable, advertise

__all__ = ["Config", "Uplink"]

_POLICY_TYPES: Final[dict[tuple[str, str], ua.SecurityPolicyType]] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
_BAD_TYPE_MISMATCH: Final = StatusCodes.BadTypeMismatch
_GATEWAY_NODE: Final = 1  # numeric, so it can never collide with a device folder's string NodeId
_STOP_TIMEOUT: Final = 5.0
_YIELD_EVERY: Final = 200  # values written between two yields to the event loop
BACKOFF_CAP: Final = 900.0  # s: the longest login lockout
_LOG_EVERY: Final = 60.0  # s: a refusal repeated by the same client is logged once per this
_COUNTERS: Final = ("channels_rejected", "sessions_refused", "logins_failed", "logins_throttled")
_INT64: Final = 2**63  # SQLite integers (and the buffer's ns timestamps) are 64-bit


@dataclass(slots=True)
class _Var:
    nodeid: ua.NodeId
    tag: str
    vtype: ua.VariantType | None = None  # the DataType's; None: BaseDataType, typed by the first value
    ts_ns: int = -1  # source time of the value shown; never moves back
    type_warned: bool = False
    declared: bool = True  # vtype is the node's DataType (else only the first value's type)


def _build_date() -> dt.datetime:
    """When this edged was installed (its package's files), for BuildInfo.BuildDate."""
    return dt.datetime.fromtimestamp(Path(edged.__file__).stat().st_mtime, dt.UTC)


class Uplink:
    def __init__(self, config: Config, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self.gateway = ctx.gateway_id
        self.log: logging.Logger = ctx.log
        self.namespace = config.namespace or f"urn:edged:{ctx.gateway_id}"
        self.ns = 0
        self.skipped_older = 0  # samples older than the value already shown (historical replays)
        self._server: Server | None = None
        self._root: Node | None = None
        self._folders: dict[str, ua.NodeId] = {}
        self._vars: dict[str, _Var] = {}
        gate = ctx.commands
        self._gate: CommandGate | None = gate if isinstance(gate, CommandGate) else None
        self._commandable: dict[ua.NodeId, str] = {}  # shown writable: tags this uplink may write now
        self._routed: dict[ua.NodeId, str] = {}  # variable -> tag path: its client writes go to the gate
        self._counts: collections.Counter[str] = collections.Counter()
        self._logged: dict[tuple[str, str], float] = {}  # (what, client) -> when last logged
        self._history: BufferHistory | None = None  # HistoryRead from the buffer (history.py)
        self._alarms: AlarmConditions | None = None  # alarm events as AlarmConditionType events (alarms.py)

    def count(self, name: str) -> None:
        self._counts[name] += 1

    def counters(self) -> dict[str, float]:
        """Reported by the Sender in status and metrics."""
        out: dict[str, float] = {k: float(self._counts[k]) for k in _COUNTERS}
        out["skipped_older"] = float(self.skipped_older)
        return out

    def log_limited(self, key: tuple[str, str], msg: str, *args: object) -> None:
        """A warning, at most once per _LOG_EVERY for the same refusal of the same client, so a
        client retrying in a loop (or a stranger) cannot fill the log; the counters count them all."""
        now = time.monotonic()
        if now - self._logged.get(key, -_LOG_EVERY) < _LOG_EVERY:
            return
        self._logged[key] = now
        if len(self._logged) > THROTTLE_PAIRS:
            self._logged = {k: t for k, t in self._logged.items() if now - t < _LOG_EVERY}
        self.log.warning(msg, self.config.name, *args)

    def _on_reject(self, peer: str, r: Rejected) -> None:
        """A secure channel asked for what is not offered: answered ERR and closed by _asyncua."""
        self.count("channels_rejected")
        self.log_limited(
            ("channel", peer), "uplink %s: refused a secure channel from %s: %s (%s)",
            peer, r.reason, get_name_and_doc(r.status)[0],
        )  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        c = self.config
        users = Users(self, self._trusted_clients())
        server = Server(user_manager=users, on_reject=self._on_reject)
        server.name = c.server_name
        server.product_uri = "urn:edged"
        server.manufacturer_name = "edged"
        server.application_type = ua.ApplicationType.Server  # it is no client of anyone
        try:
            await server.init()  # the standard address space: about 1.5 s of CPU, in a thread
            await space.describe_server(server, edged.__version__, _build_date())
            server.allow_remote_admin(False)
            server.set_endpoint(c.endpoint)
            server.set_server_name(c.server_name)
            cert = await self._load_certificate(server)
            app_uri = c.application_uri or (cert and certs.application_uri(cert)) or self._default_app_uri()
            await server.set_application_uri(app_uri)
            writable = self._writable_tags()
            routed = self._routed_tags()
            # Write is a service every session may call: GatedWrites answers it per node;
            # HistoryRead is too, served from the buffer (history.py)
            # Call too: GatedCalls answers it per method (ConditionRefresh, the alarm methods)
            ruleset = HistoryReadable(writes=True, calls=True)
            server.set_security_policy(self._policy_types(), permission_ruleset=ruleset)
            tokens: list[type] = [ua.UserNameIdentityToken] if c.users else []
            if c.allow_anonymous:
                tokens.append(ua.AnonymousIdentityToken)
            server.set_identity_tokens(tokens)
            server.set_certificate_validator(self._client_validator(users))
            self.ns = await server.register_namespace(self.namespace)
            # --- history (uplink/opcua/history.py): HistoryRead served from the buffer
            if self.ctx.history is not None:
                self._history = BufferHistory(server.iserver, self.ctx.history)
                server.iserver.history_manager = self._history
                await advertise(server.iserver)
            # --- end history
            await self._build(server)
            # --- alarms (uplink/opcua/alarms.py): AlarmConditionType events from the Server object
            full = self.ctx.config
            self._alarms = AlarmConditions(
                server, self.ns, self.log, self._node_id, name=c.name, gate=self._gate,
                command_users=c.command_users, config=full.alarms if isinstance(full, EdgedConfig) else None,
            )  # fmt: skip
            server.iserver.bind_condition_methods = 1  # the Severity of RefreshStart/RefreshEnd events
            await server.iserver.setup_condition_methods()  # ConditionRefresh (asyncua's, off by default)
            server.iserver.method_service.stop()  # replaced: client calls go through GatedCalls
            server.iserver.method_service = GatedCalls(server.iserver.aspace, self._alarms)
            # --- end alarms
            await self._open_for_commands(server, writable, routed)
            await server.start()
        except (UaError, ServiceError) as exc:
            raise map_error(exc, f"OPC UA server at {c.endpoint}") from exc
        except OSError as exc:
            raise Transient(f"cannot listen on {c.endpoint}: {exc.strerror or exc}") from exc
        self._server = server
        self._warn_open_trust()
        await self._seed()
        self.log.info(
            "uplink %s: OPC UA server at %s (namespace %s = ns %d, %d variables)",
            c.name, c.endpoint, self.namespace, self.ns, len(self._vars),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await server.stop()
        except (UaError, ServiceError, OSError, TimeoutError) as err:
            self.log.debug("uplink %s: stopping the OPC UA server: %r", self.config.name, err)

    def _default_app_uri(self) -> str:
        return f"urn:edged:{self.gateway}:opcua-server"

    # ------------------------------------------------------------------ commands

    def _routed_tags(self) -> set[str]:
        """Tags `[commands.tags]` lists for this uplink, enabled or not: their writes reach the gate,
        which audits each one (refused while commands are disabled, or for a user who may not)."""
        if self._gate is None:
            return set()
        return {e.tag for e in self._gate.config.tags if self.config.name in e.sources}

    def _writable_tags(self) -> set[str]:
        """Tags clients may write here: listed for this uplink by the gate, and someone to write them."""
        c = self.config
        tags = set(self._gate.tags_for(c.name)) if self._gate is not None else set()
        if tags and not c.command_users:
            self.log.warning(
                "uplink %s: %d tags take commands from this uplink but command_users is empty: writes stay refused",
                c.name, len(tags),
            )  # fmt: skip
            return set()
        return tags

    async def _open_for_commands(self, server: Server, writable: set[str], routed: set[str]) -> None:
        """Mark the commandable variables writable (so SCADA shows them so) and route client writes
        of the listed ones through the gate instead of the address space."""
        for path in sorted(routed):
            var = self._vars.get(path)
            if var is None:  # filtered out by this uplink's `tags` patterns, or its device disabled
                continue
            self._routed[var.nodeid] = path
            if path in writable:
                # AccessLevel says the variable can be written; UserAccessLevel stays read for
                # everyone but command_users, whose sessions read CurrentWrite (UserAccess)
                stored = server.read_attribute_value(var.nodeid, AttributeIds.AccessLevel).Value
                level = (stored.Value if stored is not None else 0) | ua.AccessLevel.CurrentWrite.mask
                await server.write_attribute_value(
                    var.nodeid, ua.DataValue(ua.Variant(level, ua.VariantType.Byte)), AttributeIds.AccessLevel
                )
                self._commandable[var.nodeid] = path
        gated = GatedWrites(server.iserver.aspace, self._routed, self._on_write)
        server.iserver.attribute_service = gated
        on_read(server, UserAccess(self._commandable, self.config.command_users))
        if not self._commandable:
            return
        self.log.info(
            "uplink %s: %d tags writable through the command gate by %s",
            self.config.name, len(self._commandable), ", ".join(self.config.command_users),
        )  # fmt: skip

    async def _on_write(self, user: User, wv: ua.WriteValue) -> ua.StatusCode:
        """A client wrote a commandable tag's Value: the gate decides, the device is written, the
        client gets the outcome as the StatusCode. The address space is left to the data path."""
        gate, c = self._gate, self.config
        assert gate is not None
        path = self._routed[wv.NodeId]
        name = user.name if user.role == UserRole.User else None
        ts = wv.Value.SourceTimestamp
        ts_ns = datetime_ns(ts) if ts is not None and ts.year > 1601 else time.time_ns()
        value, problem = written_value(wv)
        var = self._vars[path]
        written = wv.Value.Value
        declared = var.vtype if var.declared else None
        if problem is None and declared is not None and written is not None and written.VariantType != declared:
            # Part 4 5.10.4: the server does not convert (a Float to a Double node): BadTypeMismatch
            problem = f"a {written.VariantType.name} was written to a {declared.name} variable"
        if not -_INT64 <= ts_ns < _INT64:  # e.g. year 9999: beyond what the audit trail can hold
            cmd = Command(new_id(), c.name, name, path, value, 0)  # audited without a command time
            result = await gate.refuse(cmd, "stale", f"the write's source timestamp {ts.isoformat()} is out of range")
            return ua_struct(ua.StatusCode, value=result.status)
        cmd = Command(new_id(), c.name, name, path, value, ts_ns)
        if name is None or name not in c.command_users:
            who = f"user {name!r}" if name else "an anonymous session"
            result = await gate.refuse(
                cmd, "unauthorised", f"{who} may not write through uplink {c.name} (command_users)"
            )
        elif problem is not None:
            result = await gate.refuse(cmd, "type", problem)
        else:
            result = await gate.submit(cmd)
        return ua_struct(ua.StatusCode, value=result.status)

    def _path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.ctx.data_dir / path

    def _policy_types(self) -> list[ua.SecurityPolicyType]:
        c = self.config
        out = []
        for policy in c.security_policies:
            if policy == "None":
                self.log.warning(
                    "uplink %s: %s accepts unencrypted, unsigned connections (security_policies has 'None')",
                    c.name, c.endpoint,
                )  # fmt: skip
                out.append(ua.SecurityPolicyType.NoSecurity)
            else:
                out.extend(_POLICY_TYPES[(policy, mode)] for mode in c.security_modes)
        return out

    async def _load_certificate(self, server: Server) -> x509.Certificate | None:
        """The configured server certificate, or one generated on first start and kept (SCADA clients
        trust a server certificate once; regenerating it every start would break that)."""
        c = self.config
        if all(p == "None" for p in c.security_policies):
            return None
        addresses = await asyncio.to_thread(endpoint_addresses, c.endpoint)
        if c.certificate and c.private_key:
            cert_path, key_path = self._path(c.certificate), self._path(c.private_key)
        else:
            base = self.ctx.data_dir / "opcua" / c.name
            cert_path, key_path = base / "server_cert.der", base / "server_key.pem"
            if not (cert_path.exists() and key_path.exists()):
                made = await asyncio.to_thread(
                    certs.create_self_signed_certificate,
                    cert_path, key_path, c.application_uri or self._default_app_uri(), socket.gethostname(),
                    server=True, overwrite=True, days=3650, addresses=addresses,
                )  # fmt: skip
                self.log.info(
                    "uplink %s: created the server certificate %s (SHA-1 %s): give it to the SCADA to trust",
                    c.name, made.cert_path, made.thumbprint,
                )  # fmt: skip
        try:
            cert = certs.load_certificate(cert_path)
            await server.load_certificate(str(cert_path))
            password = c.private_key_password.reveal() if c.private_key_password else None
            await server.load_private_key(str(key_path), password)
        except OSError as exc:
            raise Permanent(f"uplink {c.name}: cannot read {exc.filename}: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise Permanent(f"uplink {c.name}: cannot load {cert_path} / {key_path}: {exc}") from exc
        missing = [a for a in addresses if a not in certs.alt_addresses(cert)]
        if missing:  # a client connecting by one of these refuses the certificate (hostname check)
            self.log.warning(
                "uplink %s: server certificate %s does not name %s in its SubjectAltName: clients connecting "
                "so reject it%s",
                c.name, cert_path, ", ".join(missing),
                "" if c.certificate else " (delete it and its key to have one made, then trust it anew)",
            )  # fmt: skip
        if certs.expires_within(cert, 30):
            self.log.warning(
                "uplink %s: server certificate %s expires on %s",
                c.name,
                cert_path,
                cert.not_valid_after_utc.date(),
            )
        return cert

    def _trusted_clients(self) -> list[x509.Certificate]:
        c = self.config
        try:
            return certs.load_trusted([self._path(p) for p in c.trusted_client_certificates])
        except (OSError, ValueError) as exc:
            raise Permanent(f"uplink {c.name}: trusted_client_certificates: {exc}") from exc

    def _client_validator(self, users: Users) -> Any:
        """At CreateSession, when the client sends a certificate: refuse early what ActivateSession
        (users.get_user, which also sees sessions without a certificate) would refuse. The channel's
        certificate is checked, not the one in the request: only the channel's is proven."""

        async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
            users.check_client(current_channel())

        return validate

    def _warn_open_trust(self) -> None:
        """An empty trust list trusts every client certificate: say so when strangers can reach us."""
        c = self.config
        if c.trusted_client_certificates:
            return
        host = urlparse(c.endpoint).hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            self.log.warning(
                "uplink %s: %s listens beyond loopback and trusts every client certificate "
                "(trusted_client_certificates is empty): list the SCADA's certificate there",
                c.name, c.endpoint,
            )  # fmt: skip

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Server) -> None:
        """Gateway folder, a folder per device, a variable per tag, described from the daemon's
        config (space.TagNode); tags missing from it (config unknown, or changed since the samples
        were stored) appear lazily. Added in chunks: thousands of tags do not stall the loop."""
        gw_id = ua_struct(ua.NodeId, Identifier=_GATEWAY_NODE, NamespaceIndex=self.ns)
        self._root = await server.nodes.objects.add_folder(gw_id, self._qname(self.gateway))
        full = self.ctx.config
        # computed groups are pseudo-devices (edged.compute): their tags are announced like measured ones
        devices: list[DeviceBase] = [*full.devices, *full.computed] if isinstance(full, EdgedConfig) else []
        wanted = tag_matcher(self.config.tags)
        items: list[ua.AddNodesItem] = []
        for dev in devices:
            if not dev.enabled:
                continue
            for tag in dev.tags:
                path = dev.tag_path(tag)
                if not wanted(path) or path in self._vars:
                    continue  # the Sender never forwards it either
                node = space.TagNode(
                    path, tag.name, space.variant_type(tag.value_type()), tag.unit, tag.description,
                    tag.low, tag.high, dev.read_interval(tag),
                )  # fmt: skip
                items.extend(self._items(node, dev.name))
                self._vars[path] = _Var(self._node_id(path), path, node.vtype)
                if len(items) >= space.CHUNK:  # describing tags takes time too: add as we go
                    await space.add_nodes(server, items)
                    items = []
        await space.add_nodes(server, items)

    def _qname(self, name: str, ns: int | None = None) -> ua.QualifiedName:
        return ua_struct(ua.QualifiedName, Name=name, NamespaceIndex=self.ns if ns is None else ns)

    def _node_id(self, ident: str) -> ua.NodeId:
        return ua_struct(ua.NodeId, Identifier=ident, NamespaceIndex=self.ns)

    def _items(self, node: space.TagNode, device: str) -> list[ua.AddNodesItem]:
        """The nodes of one tag, with its device folder first when it is new."""
        assert self._root is not None
        history = self._history is not None
        if self._history is not None:
            self._history.track(self._node_id(node.path), node.path)
        if not device:
            return space.variable_items(node, self._root.nodeid, self.ns, history=history)
        folder = self._folders.get(device)
        items = []
        if folder is None:
            folder = self._folders[device] = self._node_id(device)
            items.append(space.folder_item(folder, device, self._root.nodeid))
        return [*items, *space.variable_items(node, folder, self.ns, history=history)]

    async def _lazy(self, s: Sample) -> _Var:
        """A tag the config did not announce: its device folder and variable appear now, typed
        by this first value (BaseDataType when it has none)."""
        assert self._server is not None
        device, sep, name = s.tag.partition("/")
        if not sep:  # not a device/tag path: straight under the gateway folder
            device, name = "", s.tag
        vtype = None if s.value is None else space.value_variant_type(s.value)
        self.log.info("uplink %s: adding variable for tag %s (not in the config)", self.config.name, s.tag)
        node = space.TagNode(s.tag, name, vtype, s.unit)
        await space.add_nodes(self._server, self._items(node, device))
        var = self._vars[s.tag] = _Var(self._node_id(s.tag), s.tag, vtype)
        return var

    # ------------------------------------------------------------------ data

    async def _seed(self) -> None:
        """Show each tag's last stored value right away after a (re)start, rather than
        BadWaitingForInitialData until its next sample; the buffer has it (ctx.latest)."""
        latest = self.ctx.latest
        if not callable(latest):
            return
        try:
            samples = await latest()
        except Exception as exc:  # a buffer problem must not keep the SCADA server down
            self.log.warning("uplink %s: no last values to show: %s", self.config.name, exc)
            return
        keep = [s for s in samples if s.tag in self._vars]  # configured (and filtered-in) tags only
        if keep:
            await self.send(Batch(self.ctx.gateway_id, 0, 0, True, keep))
        if self._alarms is not None:  # the conditions not normal are back before their next event
            try:
                restored = await self._alarms.restore(samples)
            except (UaError, ServiceError) as exc:
                self.log.warning("uplink %s: alarm conditions not restored: %s", self.config.name, exc)
                return
            if restored:
                self.log.info("uplink %s: %d alarm conditions restored from the buffer", self.config.name, restored)

    async def send(self, batch: Batch) -> None:
        """Write the newest sample of each tag into the address space (gaps mean nothing to a
        server of current values). Returns once subscribers can see the values."""
        server = self._server
        if server is None:
            raise Transient("the OPC UA server is not running")
        newest: dict[str, Sample] = {}
        alarms: list[Sample] = []
        for s in batch.samples:
            if is_alarm_path(s.tag):  # an alarm event (edged.alarms): an OPC UA event, not a value
                alarms.append(s)
                continue
            cur = newest.get(s.tag)
            if cur is None or s.ts_ns >= cur.ts_ns:
                newest[s.tag] = s
        now = dt.datetime.now(dt.UTC)
        try:
            for i, s in enumerate(newest.values()):
                if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # each value costs ~50 us per subscriber: let the loop breathe
                var = self._vars.get(s.tag) or await self._lazy(s)
                if s.ts_ns < var.ts_ns:
                    self.skipped_older += 1
                    continue
                await self._write(server, var, s, now)
            if alarms and self._alarms is not None:
                for s in alarms:
                    await self._alarms.fire(s, historical=batch.historical)
        except (UaError, ServiceError) as exc:
            raise map_error(exc, "write into the OPC UA address space") from exc

    async def _write(self, server: Server, var: _Var, s: Sample, now: dt.datetime) -> None:
        value, status = s.value, s.status
        variant = ua.Variant(None, ua.VariantType.Null)
        if value is None or severity(status) == Severity.BAD:
            if severity(status) != Severity.BAD:
                status = Status.BAD  # no value cannot be Good or Uncertain
        else:
            if var.vtype is None:  # BaseDataType: the first value's type is kept from now on
                var.vtype, var.declared = space.value_variant_type(value), False
            converted = space.to_variant(value, var.vtype)
            if converted is not None:
                variant = converted
            else:
                if not var.type_warned:
                    var.type_warned = True
                    self.log.warning(
                        "uplink %s: tag %s has a %s value %r, not a %s: published as BadTypeMismatch",
                        self.config.name, s.tag, type(value).__name__, value, var.vtype.name,
                    )  # fmt: skip
                status = _BAD_TYPE_MISMATCH
        dv = ua_struct(
            Published,
            Value=variant,
            StatusCode=ua_struct(ua.StatusCode, value=status),
            SourceTimestamp=ns_datetime(s.ts_ns),
            ServerTimestamp=now,
        )
        await publish(server.iserver.aspace, var.nodeid, dv)
        var.ts_ns = s.ts_ns


plugin = UplinkSpec(config=Config, uplink=Uplink)  # mypy checks it against edged.plugin
