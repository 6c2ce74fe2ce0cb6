"""`edged` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from edged import __version__, config, files, logs
from edged.errors import ConfigError, Permanent, StorageError, Transient

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/edged/edged.toml"


def demo_config(data_dir: Path | None = None) -> config.Config:
    """The embedded demo plant, writing to ./edged-demo (or $EDGED_DEMO_DIR)."""
    raw = tomllib.loads(resources.files("edged").joinpath("demo.toml").read_text())
    target = data_dir or Path(os.environ.get("EDGED_DEMO_DIR", "edged-demo"))
    raw["gateway"]["data_dir"] = str(target.resolve())
    return config.parse(raw, file="<embedded demo>")


def _load(path: str | None) -> config.Config:
    """The one validation of `run`, `check-config` and the other commands (config.load)."""
    if path is None:
        return demo_config()
    cfg = config.load(path)
    inline = config.inline_secrets(cfg)
    if inline and config.world_readable(path):
        logging.getLogger("edged").warning(
            "%s is world-readable and holds an inline secret at %s: chmod 640 it or use { file = ... }",
            path, ", ".join(inline),
        )  # fmt: skip
    return cfg


def _fmt_ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from edged.daemon import Daemon

    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG) and not args.demo:
        path = DEFAULT_CONFIG
    files.restrict_umask()  # buffer, status and state files 0640 however edged was started
    cfg = _load(path)
    logs.setup(args.log_level or cfg.gateway.log_level, cfg.gateway.log_format)
    log = logging.getLogger("edged")
    if path is None:
        log.info(
            "no --config given: running the embedded demo plant; buffer in %s, samples in %s",
            cfg.data_dir, cfg.data_dir / "samples.jsonl",
        )  # fmt: skip
    try:
        asyncio.run(Daemon(cfg, hard_exit=True).run())
    except StorageError as exc:  # locked, newer, unwritable: the buffer is left as it is (README "Buffer")
        log.error("cannot start: %s", exc)
        return EXIT_FAIL
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _check_buffer_space(cfg: config.Config) -> None:
    """Warn (not an error: the file is valid) when the buffer's file system holds far less than
    max_bytes; checked where the buffer will be, so run it on the gateway itself."""
    from buffer import estimate_cap, warn_small_cap

    try:
        cap, min_free = estimate_cap(cfg.buffer, cfg.buffer_path)
    except OSError:
        return
    warn_small_cap(logging.getLogger("edged"), cfg.buffer_path, cap, cfg.buffer, min_free)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    _check_buffer_space(cfg)
    if not args.quiet:
        print(f"{args.file}: ok")
        print(f"  gateway {cfg.gateway.id}, data in {cfg.data_dir}, buffer {cfg.buffer_path}")
        print(f"  retention {float(cfg.buffer.retention):g}s, max {_fmt_bytes(cfg.buffer.max_bytes)}")
        for d in cfg.devices:
            print(f"  device {d.name} ({d.type}){'' if d.enabled else ' disabled'}: {len(d.tags)} tags")
        for g in cfg.computed:
            print(f"  computed {g.name}{'' if g.enabled else ' disabled'}: {len(g.tags)} tags")
        for u in cfg.uplinks:
            print(f"  uplink {u.name} ({u.type}){'' if u.enabled else ' disabled'}")
        cmds = cfg.commands
        if not cmds.enabled:
            print("  commands disabled: every write is refused")
        else:
            print(
                f"  commands enabled: {len(cmds.tags)} writable tags, refused when older than {float(cmds.max_age):g}s"
            )
            for t in cmds.tags:
                limits = ", ".join(
                    f"{k} {v}" for k, v in (("min", t.min), ("max", t.max), ("max_step", t.max_step)) if v is not None
                )
                print(f"    {t.tag} by {', '.join(t.sources)}{f' ({limits})' if limits else ''}")
        if cfg.alarms.tags:  # process alarms (docs/alarms.md)
            oos = sum(a.out_of_service for a in cfg.alarms.tags)
            print(f"  alarms: {len(cfg.alarms.tags)} ({oos} out of service), acknowledged and shelved by "
                  f"{', '.join(cfg.alarms.sources)}")  # fmt: skip
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when a daemon runs on this data dir, is fresh and has no alarm: for HEALTHCHECKs,
    monitoring scripts and a quick look after an upgrade."""
    from edged.daemon import read_status, status_age_s

    data_dir = Path(args.data_dir) if args.data_dir else _config_for(args).data_dir
    st = read_status(data_dir)
    problems: list[str] = []
    if st is None:
        problems.append(f"no status in {data_dir}: the daemon has not run here")
    else:
        age = status_age_s(st)
        if st.get("stopped"):
            problems.append("the daemon stopped")
        elif age > args.max_age:
            problems.append(f"the daemon's status is {age:.0f}s old: not running, or its event loop is stuck")
        if st.get("buffer", {}).get("alarm"):
            problems.append(str(st["buffer"]["alarm"]))
        down = [n for n, d in st.get("devices", {}).items() if d.get("state") != "running"]
        if down and not args.quiet:
            print(f"devices not running (not a health failure): {', '.join(down)}")
    if problems:
        for p in problems:
            print(f"unhealthy: {p}", file=sys.stderr)
        return EXIT_FAIL
    if not args.quiet:
        print("healthy")
    return EXIT_OK


def cmd_opcua_cert(args: argparse.Namespace) -> int:
    """First OPC UA setup: a self-signed client certificate for the server's admin to trust."""
    import socket

    from edged.protocols.opcua.certs import create_client_certificate

    files.restrict_umask()  # the opcua/ directory it may create: 0750
    data_dir = Path(args.data_dir) if args.data_dir else _config_for(args).data_dir
    cert = Path(args.cert) if args.cert else data_dir / "opcua" / "client_cert.der"
    key = Path(args.key) if args.key else data_dir / "opcua" / "client_key.pem"
    host = args.hostname or socket.gethostname()
    uri = args.app_uri or f"urn:edged:{host}:opcua-client"
    try:
        made = create_client_certificate(cert, key, uri, host, days=args.days, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"edged: {exc} (use --overwrite to replace it)", file=sys.stderr)
        return EXIT_FAIL
    print(f"certificate {cert}\nprivate key {key} (mode 0600)\napplication URI {uri}")
    print(f"thumbprint {made.thumbprint}, valid until {made.not_after:%Y-%m-%d}")
    print("next: let the server's administrator trust the certificate; set certificate/private_key in the device entry")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    import msgspec

    from buffer import Store
    from edged.daemon import is_running, pid_alive, read_status, status_age_s

    if args.data_dir:
        data_dir = Path(args.data_dir)
        db = data_dir / "buffer.db"
    else:
        cfg = _config_for(args)
        data_dir, db = cfg.data_dir, cfg.buffer_path
    with Store(db, create=False, readonly=True) as store:
        st = store.status()
    live = read_status(data_dir)
    if args.json:
        doc: dict[str, Any] = {"buffer": msgspec.to_builtins(st), "daemon": live}
        print(msgspec.json.encode(doc).decode())
        return EXIT_OK
    print(f"buffer   {st.path}")
    print(f"  size   {_fmt_bytes(st.file_bytes)} on disk, {_fmt_bytes(st.used_bytes)} used, {st.samples} samples")
    print(f"  seq    {st.first_seq or '-'} .. {st.head}")
    print(f"  time   {_fmt_ns(st.oldest_ns)} .. {_fmt_ns(st.newest_ns)}")
    print(f"  trimmed by age {st.trimmed_age}, by size cap {st.trimmed_size}")
    for ev in st.set_aside:
        print(f"  set aside {_fmt_ns(ev.at_ns)}: {ev.path}")
        print(f"    because {ev.reason}")
        print(f"    salvaged {ev.salvaged} samples, {ev.lost} unreadable (owed as {ev.gaps} gap records)")
        if ev.note:
            print(f"    {ev.note}")
    for u in st.uplinks:
        print(f"uplink   {u.name}")
        print(f"  backlog {u.backlog} samples, oldest unsent {_fmt_ns(u.oldest_unsent_ns)}")
        print(f"  sent {u.sent}, dropped before delivery {u.dropped}, gap records pending {u.pending_gaps}")
        last = u.acked[-1][1] if u.acked else None
        print(f"  acknowledged up to {last if last is not None else '-'} in {len(u.acked)} range(s)")
    if live is not None:
        if live.get("stopped"):
            state = "stopped"
        elif is_running(live):
            state = "running"
        else:
            gone = "" if pid_alive(int(live.get("pid", 0))) else ", process gone"
            state = f"not running (last seen {status_age_s(live):.0f}s ago{gone})"
        print(f"daemon   pid {live['pid']}: {state}")
        # A daemon that died without stopping (SIGKILL, power cut) left its last states behind:
        # say so, instead of showing devices "running" that nothing reads.
        seen = "" if state == "running" or live.get("stopped") else " (when last seen)"
        for name, d in live["devices"].items():
            err = f", last error: {d['last_error']}" if d["last_error"] else ""
            print(f"  device {name}: {d['state']}{seen}, {d['samples']} samples{err}")
            _print_counters(d.get("counters"))
        for name, u in live["uplinks"].items():
            err = f", last error: {u['last_error']}" if u["last_error"] else ""
            print(f"  uplink {name}: {u['state']}{seen}, live {u['sent_live']}, historical {u['sent_historical']}{err}")
            _print_counters(u.get("counters"))
        alarms = live.get("alarms") or {}
        if alarms:  # process alarms (docs/alarms.md); `edged alarms` lists them from the buffer
            print(f"  alarms{seen}: {alarms['active']} active, {alarms['unacknowledged']} unacknowledged, "
                  f"{alarms['shelved']} shelved, {alarms['out_of_service']} out of service; "
                  f"{alarms['events']} events, {alarms['suppressed']} summarised by the flood limit")  # fmt: skip
            for row in alarms.get("list", [])[:20]:
                print(f"    {row['path']}: {row['state']}{' (shelved)' if row['shelved_until_ns'] else ''}")
    return EXIT_OK


def _print_counters(counts: dict[str, float] | None) -> None:
    """A plugin's own counters on one line, problems (anything but routine work) first."""
    if counts:
        routine = {"polls", "requests", "connects"}
        items = sorted(counts.items(), key=lambda kv: (kv[0] in routine, kv[0]))
        print("    counters: " + ", ".join(f"{k} {v:g}" for k, v in items))


def _config_for(args: argparse.Namespace) -> config.Config:
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    return _load(path)


def cmd_replay(args: argparse.Namespace) -> int:
    from buffer import Store
    from edged import replay

    cfg = _config_for(args)
    logs.setup(cfg.gateway.log_level, "text")
    uplinks = {u.name: u for u in cfg.uplinks}
    if args.uplink not in uplinks:
        raise ConfigError(f"no uplink named {args.uplink!r} in the config (have: {', '.join(uplinks) or 'none'})")
    since = replay.parse_time(args.since) if args.since else None
    until = replay.parse_time(args.until) if args.until else None
    with Store(cfg.buffer_path, create=False) as store:
        plan = replay.make_plan(
            store, args.uplink, since_ns=since, until_ns=until, from_seq=args.from_seq, to_seq=args.to_seq
        )
        if plan is None:
            print("nothing stored in that range")
            return EXIT_OK
        print(
            f"replay to {plan.uplink}: seq {plan.lo}..{plan.hi}, {plan.samples:,} stored samples, "
            f"{plan.pending:,} of them not yet delivered"
        )
        if args.dry_run:
            return EXIT_OK
        reopened = store.unack(plan.uplink, plan.lo, plan.hi)
        progress = replay.Progress(plan.hi - plan.lo + 1)
        t0 = time.monotonic()
        pid = replay.daemon_pid(cfg.data_dir)
        if pid is not None:
            print(f"the daemon (pid {pid}) sends it as historical data alongside live data; watching")
            owed = asyncio.run(replay.watch(store, plan, progress, timeout_s=args.timeout))
            took = time.monotonic() - t0
            if owed:
                print(f"not finished after {took:.0f}s: {owed:,} still owed; the daemon keeps sending them")
                return EXIT_FAIL
            print(f"done: {plan.samples:,} samples re-sent by the daemon in {took:.1f}s ({reopened:,} seqs re-opened)")
            return EXIT_OK
        print("no daemon running on this buffer: sending directly")
        try:
            stats = asyncio.run(replay.send_standalone(store, cfg, uplinks[args.uplink], plan, progress))
        except Transient as exc:
            print(
                f"edged: replay stopped: {exc}; the rest stays owed and goes out when the daemon runs", file=sys.stderr
            )
            return EXIT_FAIL
        took = time.monotonic() - t0
        sent = stats.sent_historical
        print(f"done: {sent:,} samples sent in {took:.1f}s ({sent / max(took, 1e-9):,.0f}/s)")
        if stats.rejected:
            print(f"  {stats.rejected:,} samples refused by the peer and skipped (on_reject = 'skip'); see the log")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from buffer import Store
    from edged import replay

    db = Path(args.data_dir) / "buffer.db" if args.data_dir else _config_for(args).buffer_path
    since = replay.parse_time(args.since) if args.since else None
    until = replay.parse_time(args.until) if args.until else None
    if args.audit:
        return _export_audit(args, db, since, until)
    with Store(db, create=False, readonly=True) as store:
        samples = replay.iter_samples(store, since, until, args.tags or [])
        if args.output in (None, "-"):
            n = replay.export(samples, sys.stdout, args.format)
        else:
            with open(args.output, "w", newline="") as fh:
                n = replay.export(samples, fh, args.format)
    print(f"exported {n:,} samples", file=sys.stderr)
    return EXIT_OK


def _export_audit(args: argparse.Namespace, db: Path, since: int | None, until: int | None) -> int:
    from buffer import Store
    from edged.commands import export_audit

    with Store(db, create=False, readonly=True) as store:
        rows = store.audit_rows(since, until)
    if args.tags:
        keep = config.tag_matcher(args.tags)
        rows = [r for r in rows if r.tag and keep(r.tag)]
    if args.output in (None, "-"):
        n = export_audit(rows, sys.stdout, args.format)
    else:
        with open(args.output, "w", newline="") as fh:
            n = export_audit(rows, fh, args.format)
    print(f"exported {n:,} audit rows", file=sys.stderr)
    return EXIT_OK


def cmd_write(args: argparse.Namespace) -> int:
    """One setpoint write through the command gate, as source "cli" (docs/commands.md)."""
    import getpass

    from buffer import Store
    from edged import commands, replay

    files.restrict_umask()  # it may create the buffer (and its directory)
    cfg = _config_for(args)
    logs.setup("warning", "text")
    pid = replay.daemon_pid(cfg.data_dir)
    with Store(cfg.buffer_path, create=pid is None) as store:
        gate = commands.CommandGate(cfg, commands.AuditTrail.for_store(store), _no_driver)
        try:
            value = commands.parse_value(args.value, gate.kind(args.tag))
        except ValueError:
            value = args.value  # the gate refuses it with the reason, and audits it
        user = args.user or getpass.getuser()
        cmd = commands.Command(commands.new_id(), config.COMMAND_SOURCE_CLI, user, args.tag, value, time.time_ns())
        if pid is not None:
            print(f"the daemon (pid {pid}) runs on this buffer: it executes the command", file=sys.stderr)
            result = commands.write_via_daemon(store, cmd, cfg.commands)
        else:
            result = asyncio.run(commands.write_standalone(cfg, store, cmd))
    print(commands.describe(result))
    return EXIT_OK if result.ok else EXIT_FAIL


async def _no_driver(device: str) -> None:
    return None


# ----------------------------------------------------------------------------------------- main


# ----------------------------------------------------------------------------------------- discover bacnet
# (one function per protocol: `discover` may gain opcua/hart beside it; merge under one `discover`)


def cmd_discover_bacnet(args: argparse.Namespace) -> int:
    try:
        from drivers.bacnet.discover import run
    except ModuleNotFoundError as exc:
        print(f"edged: discover bacnet needs {exc.name!r}: pip install 'edged[bacnet]'", file=sys.stderr)
        return EXIT_CONFIG
    try:
        lines = asyncio.run(run(args.local, args.address, args.low, args.high, args.wait, args.objects))
    except (Transient, ValueError) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print("\n".join(lines))
    return EXIT_OK


def add_discover_bacnet(kinds: Any) -> None:
    b = kinds.add_parser("bacnet", help="BACnet/IP Who-Is: broadcast, or directed with --address")
    b.add_argument("--local", default="0.0.0.0:47808", help="our socket ip[/prefix][:port]; /prefix for broadcast")
    b.add_argument("--address", action="append", default=[], help="a device address (directed Who-Is); repeatable")
    b.add_argument("--low", type=int, help="lowest device instance (with --high)")
    b.add_argument("--high", type=int, help="highest device instance (with --low)")
    b.add_argument("--wait", type=float, default=3.0, help="seconds to listen for I-Am (default 3)")
    b.add_argument("--objects", action="store_true", help="read each device's object list: print a config entry")
    b.set_defaults(func=cmd_discover_bacnet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Edge gateway daemon for plants.")
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (the embedded demo plant without --config)")
    run.add_argument("--config", "-c", help=f"TOML config file (default {DEFAULT_CONFIG} if present, else the demo)")
    run.add_argument("--demo", action="store_true", help="run the embedded demo even if a default config exists")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config file and exit (2 when invalid)")
    chk.add_argument("file")
    chk.add_argument("--quiet", "-q", action="store_true")
    chk.set_defaults(func=cmd_check_config)

    st = sub.add_parser("status", help="buffer size, oldest/newest, per-uplink backlog")
    st.add_argument("--config", "-c")
    st.add_argument("--data-dir", help="read the buffer in this directory instead of the config's")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    hp = sub.add_parser("health", help="exit 0 when the daemon runs, is fresh and has no alarm")
    hp.add_argument("--config", "-c")
    hp.add_argument("--data-dir")
    hp.add_argument("--max-age", type=float, default=30.0, help="seconds a status may be old (default 30)")
    hp.add_argument("--quiet", "-q", action="store_true")
    hp.set_defaults(func=cmd_health)

    oc = sub.add_parser("opcua-cert", help="create a self-signed OPC UA client certificate for first setup")
    oc.add_argument("--config", "-c")
    oc.add_argument("--data-dir")
    oc.add_argument("--cert", help="default <data_dir>/opcua/client_cert.der")
    oc.add_argument("--key", help="default <data_dir>/opcua/client_key.pem")
    oc.add_argument("--app-uri", help="default urn:edged:<hostname>:opcua-client")
    oc.add_argument("--hostname")
    oc.add_argument("--days", type=int, default=730)
    oc.add_argument("--overwrite", action="store_true")
    oc.set_defaults(func=cmd_opcua_cert)

    rp = sub.add_parser("replay", help="re-send stored samples to one uplink after an outage")
    rp.add_argument("--config", "-c")
    rp.add_argument("--uplink", "-u", required=True)
    rp.add_argument("--since", help="ISO 8601 time (local unless it has an offset), 'now', or '-2h'")
    rp.add_argument("--until")
    rp.add_argument("--from-seq", type=int)
    rp.add_argument("--to-seq", type=int)
    rp.add_argument("--dry-run", action="store_true", help="only count what would be re-sent")
    rp.add_argument("--timeout", type=float, default=3600.0, help="seconds to watch a running daemon (default 1h)")
    rp.set_defaults(func=cmd_replay)

    ex = sub.add_parser("export", help="export stored samples of a time range to CSV or JSON lines")
    ex.add_argument("--config", "-c")
    ex.add_argument("--data-dir")
    ex.add_argument("--since")
    ex.add_argument("--until")
    ex.add_argument("--tags", nargs="*", help="glob patterns, e.g. 'boiler/*'")
    ex.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    ex.add_argument("--output", "-o", help="file (default: standard output)")
    ex.add_argument("--audit", action="store_true", help="export the command audit trail instead of samples")
    ex.set_defaults(func=cmd_export)

    wr = sub.add_parser("write", help="write a setpoint through the command gate (source 'cli'; see docs/commands.md)")
    wr.add_argument("tag", help="device/tag, listed under [commands] with 'cli' in its sources")
    wr.add_argument("value", help="a number, true/false, or text")
    wr.add_argument("--config", "-c")
    wr.add_argument("--user", help="who asks, for the audit trail (default: the login name)")
    wr.set_defaults(func=cmd_write)

    # ---- onboarding: discovery that writes the config, a password hash for [ui.users]
    dc = sub.add_parser("discover", help="find devices and print [[devices]] config for them")
    kinds = dc.add_subparsers(dest="kind", required=True)
    add_discover_bacnet(kinds)
    ua = kinds.add_parser("opcua", help="browse an OPC UA server and print a [[devices]] block for it")
    ua.add_argument("target", help="opc.tcp://host:port/path")
    ua.add_argument("--name", help="the device's name in the config (default: from the target)")
    ua.add_argument("--security", default="None", help="None, or POLICY[,MODE] e.g. Basic256Sha256,Sign")
    ua.add_argument("--certificate", help="client certificate (edged opcua-cert)")
    ua.add_argument("--private-key", help="its private key")
    ua.add_argument("--username", help="user name; the password is read from $EDGED_DISCOVER_PASSWORD")
    ua.add_argument("--output", "-o", help="write the TOML to this file instead of standard output")
    ua.set_defaults(func=cmd_discover)
    ht = kinds.add_parser("hart", help="poll HART polling addresses 0-63 and print a [[devices]] block per device")
    ht.add_argument("target", help="a serial HART modem (/dev/ttyUSB0) or a HART-IP server host[:port]")
    ht.add_argument("--addresses", default="0-63", help="polling addresses to try (default 0-63)")
    ht.add_argument(
        "--timeout",
        type=float,
        default=0.8,
        help="seconds for an answer after the request (default 0.8: ~0.6 s at 1200 bit/s)",
    )
    ht.add_argument("--retries", type=int, default=0, help="extra attempts per address (default 0)")
    ht.add_argument("--output", "-o", help="write the TOML to this file instead of standard output")
    ht.set_defaults(func=cmd_discover)
    mb = kinds.add_parser("modbus", help="(not possible: Modbus has no directory of registers)")
    mb.add_argument("target", nargs="?")
    mb.set_defaults(func=cmd_discover)

    pw = sub.add_parser("ui-password", help="print a scrypt hash for [ui.users.NAME] password_hash")
    pw.set_defaults(func=cmd_ui_password)

    from edged.alarms.control import add_parsers as alarm_parsers  # `edged alarms`, `edged ack`

    alarm_parsers(sub, _config_for)
    return p


def cmd_discover(args: argparse.Namespace) -> int:
    """Print what the device offers as config; the output passes check-config as it is."""
    import importlib

    if args.kind == "modbus":
        print("edged: Modbus cannot be discovered (the protocol has no directory of registers): start from "
              "examples/modbus-plant.toml and the device's register map", file=sys.stderr)  # fmt: skip
        return EXIT_FAIL
    try:
        module = importlib.import_module(f"drivers.{args.kind}.discover")
    except ImportError as exc:
        print(f"edged: discover {args.kind} needs its driver's extra: pip install 'edged[{args.kind}]' ({exc})",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAIL
    try:
        text: str = asyncio.run(module.discover_cli(args))
    except (ValueError, Transient, Permanent, OSError) as exc:
        print(f"edged: discover {args.kind} {args.target}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_ui_password(args: argparse.Namespace) -> int:
    import getpass

    from edged.ui.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("edged: the two passwords differ", file=sys.stderr)
            return EXIT_FAIL
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("edged: use at least 8 characters", file=sys.stderr)
        return EXIT_FAIL
    print(hash_password(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"edged: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StorageError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return rc


if __name__ == "__main__":
    sys.exit(main())
