"""`edged` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from edged import __version__, config, logs
from edged.errors import ConfigError, StorageError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/edged/edged.toml"


def demo_config(data_dir: Path | None = None) -> config.Config:
    """The embedded demo plant, writing to ./edged-demo (or $EDGED_DEMO_DIR)."""
    raw = tomllib.loads(resources.files("edged").joinpath("demo.toml").read_text())
    target = data_dir or Path(os.environ.get("EDGED_DEMO_DIR", "edged-demo"))
    raw["gateway"]["data_dir"] = str(target.resolve())
    return config.parse(raw, file="<embedded demo>")


def _load(path: str | None) -> config.Config:
    if path is None:
        return demo_config()
    cfg = config.load(path)
    if config.world_readable(path) and _has_inline_secret(Path(path)):
        logging.getLogger("edged").warning(
            "%s is world-readable and holds an inline secret: chmod 640 it or use { file = ... }", path
        )
    return cfg


def _has_inline_secret(path: Path) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    return any(
        line.split("=", 1)[0].strip() in ("password", "token", "key_password") and '"' in line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )


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
    cfg = _load(path)
    logs.setup(args.log_level or cfg.gateway.log_level, cfg.gateway.log_format)
    log = logging.getLogger("edged")
    if path is None:
        log.info(
            "no --config given: running the embedded demo plant; buffer in %s, samples in %s",
            cfg.data_dir, cfg.data_dir / "samples.jsonl",
        )  # fmt: skip
    try:
        asyncio.run(Daemon(cfg).run())
    except StorageError as exc:
        log.error("%s", exc)
        return EXIT_FAIL
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if not args.quiet:
        print(f"{args.file}: ok")
        print(f"  gateway {cfg.gateway.id}, data in {cfg.data_dir}, buffer {cfg.buffer_path}")
        print(f"  retention {float(cfg.buffer.retention):g}s, max {_fmt_bytes(cfg.buffer.max_bytes)}")
        for d in cfg.devices:
            print(f"  device {d.name} ({d.type}){'' if d.enabled else ' disabled'}: {len(d.tags)} tags")
        for u in cfg.uplinks:
            print(f"  uplink {u.name} ({u.type}){'' if u.enabled else ' disabled'}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    import msgspec

    from buffer import Store
    from edged.daemon import read_status

    if args.data_dir:
        data_dir = Path(args.data_dir)
        db = data_dir / "buffer.db"
    else:
        path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
        cfg = _load(path)
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
    for u in st.uplinks:
        print(f"uplink   {u.name}")
        print(f"  backlog {u.backlog} samples, oldest unsent {_fmt_ns(u.oldest_unsent_ns)}")
        print(f"  sent {u.sent}, dropped before delivery {u.dropped}, gap records pending {u.pending_gaps}")
        last = u.acked[-1][1] if u.acked else None
        print(f"  acknowledged up to {last if last is not None else '-'} in {len(u.acked)} range(s)")
    if live is not None:
        age = (dt.datetime.now(dt.UTC).timestamp() * 1e9 - live["updated_ns"]) / 1e9
        state = (
            "stopped" if live.get("stopped") else "running" if age < 10 else f"not running (last seen {age:.0f}s ago)"
        )
        print(f"daemon   pid {live['pid']}: {state}")
        for name, d in live["devices"].items():
            err = f", last error: {d['last_error']}" if d["last_error"] else ""
            print(f"  device {name}: {d['state']}, {d['samples']} samples{err}")
        for name, u in live["uplinks"].items():
            err = f", last error: {u['last_error']}" if u["last_error"] else ""
            print(f"  uplink {name}: {u['state']}, live {u['sent_live']}, historical {u['sent_historical']}{err}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------- main


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
    return p


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
