"""`edged alarms` and `edged ack`: the alarms as the buffer holds them, and acknowledge / shelve
through the command gate (source "cli", audited), handed to a running daemon through the inbox
or, with no daemon on the buffer, carried out here: the event is stored and the daemon resumes
from it at its next start (edged.alarms.engine.recover)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from typing import Any

import msgspec

from buffer.store import Store
from edged.alarms.engine import AlarmEngine
from edged.alarms.model import from_sample
from edged.config import COMMAND_SOURCE_CLI, Config


def standalone_handler(config: Config, store: Store) -> Any:
    """The gate's alarm handler while no daemon runs: state from the buffer, the event into it."""

    async def handle(path: str, action: str, seconds: float | None, user: str | None, source: str) -> tuple[str, str]:
        engine = AlarmEngine(config.alarms)
        engine.recover(store)
        before, after, event = engine.command(path, action, seconds, user=user, source=source)
        store.append([event])
        return before, after

    return handle


def alarm_rows(config: Config, store: Store) -> list[dict[str, Any]]:
    """Every configured alarm with its state as recovered from the buffer, and its newest event's time."""
    engine = AlarmEngine(config.alarms)
    engine.recover(store)
    newest = {s.tag: s for s in store.newest_of_tags(list(engine.alarms))}
    rows = []
    for a in engine.alarms.values():
        row = engine.describe(a)
        s = newest.get(a.path)
        ev = from_sample(s) if s is not None else None
        row["since_ns"] = s.ts_ns if s is not None else None
        row["event"] = ev.event if ev is not None else None
        rows.append(row)
    return rows


def cmd_alarms(args: argparse.Namespace, config: Config) -> int:
    if not config.alarms.tags:
        print("no alarms configured ([[alarms.tags]], docs/alarms.md)")
        return 0
    if not config.buffer_path.exists():
        rows: list[dict[str, Any]] = []
    else:
        with Store(config.buffer_path, create=False, readonly=True) as store:
            rows = alarm_rows(config, store)
    shown = [r for r in rows if args.all or r["state"] != "normal" or r["shelved_until_ns"] or r["out_of_service"]]
    if args.json:
        print(msgspec.json.encode(shown).decode())
        return 0
    active = sum(r["state"] in ("unack", "acked") for r in rows)
    unacked = sum(r["state"] in ("unack", "rtn_unack") for r in rows)
    print(f"alarms: {len(rows)} configured, {active} active, {unacked} unacknowledged")
    for r in sorted(shown, key=lambda r: (-r["priority"], r["path"])):
        flags = []
        if r["shelved_until_ns"]:
            flags.append("shelved until " + _local(r["shelved_until_ns"]))
        if r["out_of_service"]:
            flags.append("out of service")
        since = _local(r["since_ns"]) if r["since_ns"] else "-"
        extra = f" [{', '.join(flags)}]" if flags else ""
        print(f"  {r['path']:<40} {r['state']:<10} priority {r['priority']:<4} since {since}{extra}  {r['message']}")
    return 0


def cmd_ack(args: argparse.Namespace, config: Config) -> int:
    from edged import commands, files, logs, replay
    from edged.commands.cli import write_via_daemon

    files.restrict_umask()  # it may create the buffer (and its directory)
    logs.setup("warning", "text")
    value = f"shelve {args.shelve}" if args.shelve else "unshelve" if args.unshelve else "ack"
    user = args.user or getpass.getuser()
    cmd = commands.Command(commands.new_id(), COMMAND_SOURCE_CLI, user, args.tag, value, time.time_ns())
    pid = replay.daemon_pid(config.data_dir)
    with Store(config.buffer_path, create=pid is None) as store:
        if pid is not None:
            print(f"the daemon (pid {pid}) runs on this buffer: it executes the command", file=sys.stderr)
            result = write_via_daemon(store, cmd, config.commands)
        else:
            gate = commands.CommandGate(
                config, commands.AuditTrail.for_store(store), _no_driver, alarms=standalone_handler(config, store)
            )
            result = asyncio.run(gate.submit(cmd))
    if result.ok:
        print(f"{result.result.value}: {args.tag}: {result.reason}")
    else:
        print(f"{result.result.value}: {args.tag} {value}: {result.reason}")
    return 0 if result.ok else 1


def _local(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


async def _no_driver(device: str) -> None:
    return None


def add_parsers(sub: Any, load: Any) -> None:
    """`edged alarms` and `edged ack` (edged.cli's subparsers; `load(args)` gives the Config)."""
    al = sub.add_parser("alarms", help="alarms that are active, unacknowledged or shelved (--all: every one)")
    al.add_argument("--config", "-c")
    al.add_argument("--all", action="store_true")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=lambda a: cmd_alarms(a, load(a)))
    ak = sub.add_parser("ack", help="acknowledge or shelve an alarm through the command gate (source 'cli')")
    ak.add_argument("tag", help="the alarm, <device>/<tag>#alarm/<name> (see `edged alarms --all`)")
    how = ak.add_mutually_exclusive_group()
    how.add_argument("--shelve", metavar="DURATION", help="shelve it for this long, e.g. 1h (at most max_shelve)")
    how.add_argument("--unshelve", action="store_true")
    ak.add_argument("--config", "-c")
    ak.add_argument("--user", help="who acknowledges, for the audit trail (default: the login name)")
    ak.set_defaults(func=lambda a: cmd_ack(a, load(a)))
