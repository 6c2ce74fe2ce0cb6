"""The daemon's config file: any bytes through edged.config.load, whose only refusal is ConfigError.
Another engineer owns config.py: crashes are reported, not fixed here."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from edged.config import load
from edged.errors import ConfigError

ACCEPTS = (ConfigError,)
_ROOT = Path(__file__).resolve().parents[2]
_DIR = Path(tempfile.mkdtemp(prefix="edged-fuzz-config-"))
_FILE = _DIR / "edged.toml"
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def target(data: bytes) -> None:
    _FILE.write_bytes(data)
    load(_FILE)


def seeds() -> list[bytes]:
    files = [*_ROOT.glob("examples/*.toml"), *_ROOT.glob("*/*/sample.toml"), _ROOT / "edged/demo.toml"]
    return [f.read_bytes() for f in sorted(files) if f.is_file()]
