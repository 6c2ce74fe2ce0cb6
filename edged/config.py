"""Load and validate the TOML config into typed structs.

Every error names the file, the key path and the reason, because the person reading it is a plant
engineer at a terminal, not a Python developer. Plugins contribute their own struct (a subclass of
`DeviceBase` or `UplinkBase`), found by the entry's `type` through `edged.registry`.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import logging
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from edged.errors import ConfigError
from edged.tagruns import expand_runs

# ----------------------------------------------------------------------------------------- value types


# Bounds that keep every value usable downstream: nanoseconds of a duration and a byte count
# must fit SQLite's 64-bit integers (a 9...9d retention used to crash `run` with OverflowError).
MAX_DURATION_S = 36500 * 86400.0  # 100 years
MAX_BYTES = 1024**5  # 1 PiB
MAX_NESTING = 32  # TOML arrays/tables deeper than this are a mistake (or an attack), not a config
SECRET_FILE_MAX = 64 * 1024
CONFIG_FILE_MAX = 64 * 1024**2


def _shown(text: object, limit: int = 40) -> str:
    """repr() of a value for an error message, shortened: a 400-digit typo need not fill the screen."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class Duration(float):
    """Seconds, written with a unit in the config: "500ms", "10s", "1h30m", "24h", "7d"."""

    _UNITS: Mapping[str, float] = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")

    @classmethod
    def parse(cls, text: str) -> Duration:
        s = text.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in cls._PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * cls._UNITS[m.group(2)]
            pos = m.end()
        if not s or pos != len(s):
            raise ValueError(f"invalid duration {_shown(text)}: use a number with a unit, e.g. '500ms', '10s', '24h'")
        if not total <= MAX_DURATION_S:  # also catches inf (a float overflow of a huge number)
            raise ValueError(f"duration {_shown(text)} is too long: at most 36500d (100 years)")
        return cls(total)

    def __repr__(self) -> str:
        return f"Duration({float(self)}s)"


class ByteSize(int):
    """Bytes, written as an integer or with a unit: "512MiB", "2GB", "64k"."""

    _UNITS: Mapping[str, int] = {
        "": 1, "b": 1,
        "k": 1000, "kb": 1000, "kib": 1024,
        "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
        "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
        "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
        "p": 1000**5, "pb": 1000**5, "pib": 1024**5,
    }  # fmt: skip

    @classmethod
    def parse(cls, value: str | int) -> ByteSize:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError("a size cannot be negative")
            n: float = value
        elif isinstance(value, str):
            m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
            unit = m.group(2).lower() if m else ""
            if m is None or unit not in cls._UNITS:
                raise ValueError(f"invalid size {_shown(value)}: use bytes or a unit (kB, MB, GB, KiB, MiB, GiB)")
            n = float(m.group(1)) * cls._UNITS[unit]
        else:
            raise TypeError("expected a size such as 1073741824 or '1GiB'")
        if not n <= MAX_BYTES:  # also catches inf
            raise ValueError(f"size {_shown(value)} is too large: at most 1PiB")
        return cls(int(n))


class Secret:
    """A password or token. Its repr never shows the value, so it cannot leak into logs.

    In TOML: a plain string, `{ env = "NAME" }`, `{ file = "/path" }`, or `{ credential = "name" }`
    (a systemd `LoadCredential=` file in `$CREDENTIALS_DIRECTORY`).
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "inline") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<redacted, from {self.source}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO, a device (/dev/zero) or a
    socket is refused without reading, so a wrong path can neither hang the load nor fill memory."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
            raise ValueError(f"it is {kind}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ValueError(f"it is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_secret(path: Path, what: str) -> str:
    try:
        data = read_regular_file(path, SECRET_FILE_MAX)
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"cannot read {what}: {exc}") from None
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {what}: not UTF-8 text (byte {exc.start})") from None


def _resolve_secret(obj: Any, base_dir: Path) -> Secret:
    if isinstance(obj, str):
        return Secret(obj)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise TypeError("a secret is a string or one of { env = ... }, { file = ... }, { credential = ... }")
    ((kind, ref),) = obj.items()
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"secret `{kind}` must be a non-empty string")
    if "\0" in ref:
        raise ValueError(f"secret `{kind}` contains a NUL character")
    if kind == "env":
        if ref not in os.environ:
            raise ValueError(f"environment variable {ref} is not set")
        return Secret(os.environ[ref], f"env {ref}")
    if kind == "file":
        path = (base_dir / ref) if not os.path.isabs(ref) else Path(ref)
        if world_readable(path):
            logging.getLogger("edged.config").warning("secret file %s is readable by everyone: chmod 600 it", path)
        return Secret(_read_secret(path, f"secret file {path}"), f"file {path}")
    if kind == "credential":
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ValueError("CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the systemd unit)")
        if "/" in ref or ref in (".", ".."):
            raise ValueError(f"invalid credential name {ref!r}: the name given to LoadCredential=, without '/'")
        return Secret(_read_secret(Path(cred_dir) / ref, f"credential {ref}"), f"credential {ref}")
    raise TypeError(f"unknown secret source `{kind}`: use env, file or credential")


# ----------------------------------------------------------------------------------------- structs

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


def tag_matcher(patterns: list[str]) -> Callable[[str], bool]:
    """A predicate for an uplink's `tags` globs (case-sensitive, `*` spans `/`); no pattern = all."""
    if not patterns:
        return lambda tag: True
    rx = re.compile("|".join(fnmatch.translate(p) for p in patterns))
    return lambda tag: rx.match(tag) is not None


class Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


def _require_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value}")


class LinearCalibration(Base, tag="linear", tag_field="kind"):
    """actual = raw * gain + offset: a zero/span trim from a calibration certificate."""

    gain: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        _require_finite(gain=self.gain, offset=self.offset)
        if self.gain == 0.0:
            raise ValueError("gain must not be 0 (every reading would become the offset)")


class TwoPointCalibration(Base, tag="two_point", tag_field="kind"):
    """The line through two reference points, e.g. raw = [4.0, 20.0] (mA), actual = [0.0, 16.0] (bar)."""

    raw: list[float]
    actual: list[float]

    def __post_init__(self) -> None:
        if len(self.raw) != 2 or len(self.actual) != 2:
            raise ValueError("raw and actual need exactly two values each, e.g. raw = [4.0, 20.0]")
        _require_finite(**{f"raw[{i}]": v for i, v in enumerate(self.raw)})
        _require_finite(**{f"actual[{i}]": v for i, v in enumerate(self.actual)})
        if self.raw[0] == self.raw[1]:
            raise ValueError("the two raw points must differ")


class PolynomialCalibration(Base, tag="polynomial", tag_field="kind"):
    """actual = c0 + c1*raw + c2*raw^2 + ...: sensor curves given as coefficients."""

    coefficients: list[float]

    def __post_init__(self) -> None:
        if not 2 <= len(self.coefficients) <= 16:
            raise ValueError("coefficients needs 2 to 16 values [c0, c1, c2, ...] (c0 + c1*x + c2*x^2 ...)")
        _require_finite(**{f"coefficients[{i}]": v for i, v in enumerate(self.coefficients)})
        if not any(self.coefficients[1:]):
            raise ValueError("coefficients c1 and above are all 0: every reading would become c0")


class TableCalibration(Base, tag="table", tag_field="kind"):
    """Points measured on a rig or a strapping table, interpolated between; raw strictly increasing."""

    raw: list[float]
    actual: list[float]
    method: Literal["linear", "spline"] = "linear"  # spline: monotone cubic (PCHIP), needs scipy

    def __post_init__(self) -> None:
        n = len(self.raw)
        if n != len(self.actual):
            raise ValueError(f"raw has {n} points but actual has {len(self.actual)}")
        need = 4 if self.method == "spline" else 2
        if not need <= n <= 1000:
            raise ValueError(f"a {self.method} table needs {need} to 1000 points, got {n}")
        _require_finite(**{f"raw[{i}]": v for i, v in enumerate(self.raw)})
        _require_finite(**{f"actual[{i}]": v for i, v in enumerate(self.actual)})
        for i in range(1, n):
            if not self.raw[i - 1] < self.raw[i]:
                raise ValueError(f"raw must be strictly increasing: raw[{i}] = {self.raw[i]} follows {self.raw[i - 1]}")
        if self.method == "spline":
            from edged.calibration import build  # imports scipy, only for a spline table

            build(self)  # ValueError when scipy is missing or the table cannot make a usable spline


Calibration = LinearCalibration | TwoPointCalibration | PolynomialCalibration | TableCalibration


class QualityConfig(Base):
    """Per-tag plausibility thresholds (docs/quality.md). Each check is off until it has a threshold,
    because no single default suits both a tank level and a flow."""

    max_rate: float | None = None  # engineering units per second; a faster change is implausible
    flatline: Duration | None = None  # values within flatline_tolerance for this long: a stuck sensor
    flatline_tolerance: float = 0.0  # absolute, engineering units
    spike_mad: float | None = None  # robust z-score limit (deviation from the median / scaled MAD); 6.0 is usual
    spike_window: int = 31  # samples compared against; odd, so the median is one of them
    spike_floor: float = 0.0  # smallest deviation that can be a spike: set it to the resolution of the signal
    stale_after: Duration | None = None  # older than this (source timestamp), or silent this long: stale
    ne43: bool = False  # the driver's value is a 4-20 mA loop current: NAMUR NE43 bands apply to it

    def __post_init__(self) -> None:
        if self.max_rate is not None and not 0.0 < self.max_rate < math.inf:
            raise ValueError("max_rate must be a positive number (engineering units per second)")
        if self.flatline is not None and self.flatline <= 0:
            raise ValueError("flatline must be a positive duration, e.g. '10m'")
        if not 0.0 <= self.flatline_tolerance < math.inf:
            raise ValueError("flatline_tolerance must be >= 0")
        if self.spike_mad is not None and not 0.0 < self.spike_mad < math.inf:
            raise ValueError("spike_mad must be a positive number, e.g. 6.0")
        if not (5 <= self.spike_window <= 1001 and self.spike_window % 2 == 1):
            raise ValueError("spike_window must be an odd number of samples from 5 to 1001")
        if not 0.0 <= self.spike_floor < math.inf:
            raise ValueError("spike_floor must be >= 0")
        if self.stale_after is not None and self.stale_after <= 0:
            raise ValueError("stale_after must be a positive duration, e.g. '30s'")


class TagBase(Base):
    """Fields every tag of every driver has; drivers subclass it with their addressing fields.

    Processing order (edged.quality): the driver's value in `source_unit` -> converted to `unit` ->
    `calibration` -> rounded to `decimals` -> checks. The pint factors and calibration curves are
    computed once, at load.
    """

    name: str
    unit: str | None = None
    description: str = ""
    low: float | None = None  # engineering range; outside it the value is Uncertain
    high: float | None = None
    deadband: float = 0.0  # absolute; a change smaller than this is not stored (status changes always are)
    heartbeat: Duration | None = None  # store at least this often even inside the deadband
    source_unit: str | None = None  # the unit the driver delivers, when it is not `unit` (psi -> bar)
    calibration: Calibration | None = None  # applied after the unit conversion, in `unit`
    calibrated_on: datetime.date | None = None
    calibration_due: datetime.date | None = None  # after this day (UTC) the values are Uncertain
    # Round float values to this many decimal places (0..12), the signal's resolution: digits below it
    # are noise that no compressor can shrink (docs/payload.md). Ints, bools and strings are kept as are.
    decimals: int | None = None
    quality: QualityConfig = msgspec.field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if not TAG_RE.match(self.name):
            raise ValueError(f"invalid tag name {self.name!r}: letters, digits, _ . - / only")
        for bound, value in (("low", self.low), ("high", self.high)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{bound} must be a finite number")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.deadband < 0 or math.isnan(self.deadband):
            raise ValueError("deadband must be >= 0")
        if self.decimals is not None and not 0 <= self.decimals <= 12:
            raise ValueError(f"decimals must be between 0 and 12, got {self.decimals}")
        if self.source_unit is not None:
            if self.unit is None:
                raise ValueError(f"source_unit = {self.source_unit!r} needs `unit`, the unit to convert to")
            from edged.units import conversion  # pint stays out of the import of edged.config

            conversion(self.source_unit, self.unit)  # ValueError names the unit; cached for TagProcessor
        if self.calibrated_on and self.calibration_due and self.calibrated_on > self.calibration_due:
            raise ValueError(f"calibrated_on ({self.calibrated_on}) is after calibration_due ({self.calibration_due})")
        if self.quality.ne43 and self.source_unit not in (None, "mA"):
            raise ValueError("quality.ne43 judges the driver's loop current: source_unit must be 'mA' or unset")

    def value_kind(self) -> ValueKind | None:
        """What the tag holds, where its config says (a Modbus tag's table/type/bit); None: unknown
        until the device is asked (an OPC UA node's DataType is read at the first write)."""
        return None

    def accepts_writes(self) -> bool:
        """Whether the tag's own config lets commands write it (a driver with a `writable` flag
        says no until it is set); whether the driver can write at all is its Writable capability."""
        return True

    def source_type(self) -> ValueType | None:
        """The type of the driver's values where its config says (a Modbus `type`); by default
        derived from value_kind(), a number being a double. None: only the device knows."""
        kind = self.value_kind()
        return None if kind is None else _KIND_TYPES[kind]

    def value_type(self) -> ValueType | None:
        """The type of the stored values: the driver's, except that an integer the core converts
        (source_unit, calibration) becomes a double. Known at load, so an OPC UA server can show
        the DataType before the first value arrives."""
        t = self.source_type()
        if t in INTEGER_TYPES and (self.source_unit is not None or self.calibration is not None):
            return "double"
        return t


ValueKind = Literal["number", "bool", "string"]
# A tag's value type, finer than ValueKind: the integer widths a driver delivers exactly (ints stay
# ints through the core unless converted), "double" for every other number.
ValueType = Literal["bool", "string", "int16", "uint16", "int32", "uint32", "int64", "uint64", "double"]
INTEGER_TYPES: Final[frozenset[str]] = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_KIND_TYPES: Final[dict[str, ValueType]] = {"number": "double", "bool": "bool", "string": "string"}


class DeviceBase(Base):
    """Fields every `[[devices]]` entry has; a driver's `Config` subclasses it."""

    name: str
    type: str
    enabled: bool = True
    tags: list[Any] = []  # narrowed by each driver to a list of its TagBase subclass

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"invalid device name {self.name!r}: letters, digits, _ . - only")

    def tag_path(self, tag: TagBase) -> str:
        return f"{self.name}/{tag.name}"

    def read_interval(self, tag: TagBase) -> float | None:
        """Seconds between the driver's readings of `tag` where the config says (a poll interval),
        None when unknown: how current the tag's value is kept (OPC UA MinimumSamplingInterval)."""
        return None


class UplinkBase(Base):
    """Fields every `[[uplinks]]` entry has; an uplink's `Config` subclasses it."""

    name: str
    type: str
    enabled: bool = True
    batch_size: int = 5000  # at most this many samples per acknowledged batch
    batch_bytes: ByteSize = ByteSize(128 * 1024)  # and about this many payload bytes (AWS IoT's limit is 128 KB)
    max_inflight: int = 16  # batches sent and not yet acknowledged, where the uplink allows several
    max_inflight_bytes: ByteSize = ByteSize(8 * 1024**2)  # and at most about this many payload bytes
    linger: Duration = Duration(0.02)  # while batches are in flight, live samples wait this long for company
    backfill_share: float = 0.5  # share of batches given to backfill while live data is pending
    start_from: Literal["earliest", "latest"] = "earliest"  # where a brand-new uplink begins
    tags: list[str] = []  # glob patterns of tags to forward; empty means all
    on_reject: Literal["skip", "halt"] = "skip"  # a batch the peer refuses for good: skip it (counted) or halt
    # (halt sends one batch at a time, whatever max_inflight says)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"invalid uplink name {self.name!r}: letters, digits, _ . - only")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError("batch_size must be between 1 and 100000")
        if not 0.0 < self.backfill_share < 1.0:
            raise ValueError("backfill_share must be between 0 and 1 (exclusive)")
        if not 1024 <= self.batch_bytes <= 256 * 1024**2:
            raise ValueError("batch_bytes must be between 1KiB and 256MiB")
        if not 1 <= self.max_inflight <= 1000:
            raise ValueError("max_inflight must be between 1 and 1000")
        if not self.batch_bytes <= self.max_inflight_bytes <= 4 * 1024**3:
            raise ValueError("max_inflight_bytes must be at least batch_bytes and at most 4GiB")
        if not 0 <= self.linger <= 5:
            raise ValueError("linger must be between 0 and 5s")

    def takes_commands(self) -> bool:
        """Whether this uplink receives commands (then its spec's `serve_commands` runs)."""
        return False

    def peer_address(self) -> tuple[str, int] | None:
        """The TCP host and port the uplink connects to, when it has one: while the peer is down the
        Sender probes it about once a second, so the first reconnect comes right after it is back."""
        return None


_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` of a local listening socket: an IP address (IPv6 in brackets) or localhost,
    and a port 1-65535; an empty host means 127.0.0.1. ValueError says what is wrong."""
    m = _LISTEN.fullmatch(listen)
    if m is None:
        raise ValueError(f"{listen!r}: expected host:port, e.g. 127.0.0.1:9337 or [::1]:9337")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"{listen!r}: port {port} is outside 1-65535")
    host = m.group("v6") if m.group("v6") is not None else m.group("host")
    if host == "":
        return "127.0.0.1", port
    if host != "localhost":
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{listen!r}: {host!r} is not an IP address (127.0.0.1, 0.0.0.0, [::1]) or localhost"
            ) from None
        if (addr.version == 6) != (m.group("v6") is not None):
            raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. [::1]:9337")
    return host, port


class ListenAddress(str):
    """A `host:port` checked by `parse_listen` when the config is loaded, not when the socket opens."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: object) -> ListenAddress:
        if not isinstance(value, str):
            raise TypeError("expected a string host:port, e.g. '127.0.0.1:9337'")
        parse_listen(value)
        return cls(value)


class GatewayConfig(Base):
    id: str = msgspec.field(default_factory=socket.gethostname)
    data_dir: str = "/var/lib/edged"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "text", "json", "journal"] = "auto"
    metrics_listen: ListenAddress | None = None  # "127.0.0.1:9337"; off when unset

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.id) or len(self.id) > 128:
            raise ValueError(f"invalid gateway id {self.id!r}: up to 128 letters, digits, _ . - only")
        if not self.data_dir or "\0" in self.data_dir:
            raise ValueError("data_dir must be a directory path")


class BufferConfig(Base):
    path: str = "buffer.db"  # relative to gateway.data_dir
    retention: Duration = Duration(86400.0)
    max_bytes: ByteSize = ByteSize(1024**3)
    flush_interval: Duration = Duration(0.1)
    flush_rows: int = 5000
    synchronous: Literal["normal", "full"] = "normal"
    trim_interval: Duration = Duration(10.0)
    # the buffer stops growing when the file system has less than this free (then reuses its file,
    # oldest dropped); None: 5 % of the file system, 1..64 MiB (buffer.default_min_free)
    min_free: ByteSize | None = None

    def __post_init__(self) -> None:
        if self.retention <= 0:
            raise ValueError("retention must be positive")
        if self.max_bytes < 1024 * 1024:
            raise ValueError("max_bytes must be at least 1MiB")
        if not 0.001 <= self.flush_interval <= 10:
            raise ValueError("flush_interval must be between 1ms and 10s")
        if not 1 <= self.flush_rows <= 1_000_000:
            raise ValueError("flush_rows must be between 1 and 1000000")
        if not 1 <= self.trim_interval <= 3600:
            raise ValueError("trim_interval must be between 1s and 1h")
        if not self.path or "\0" in self.path:
            raise ValueError("path must be a file name or path")


# ----------------------------------------------------------------------------------------- commands
# Setpoint writes from SCADA/cloud down to devices (edged.commands, docs/commands.md). Closed by
# default: without a [commands] section, or with enabled = false, every command is refused.

COMMAND_SOURCE_CLI = "cli"  # `edged write`; every other source is an uplink name
COMMAND_SOURCE_UI = "ui"  # the local web UI (edged.ui), a logged-in operator

CommandValue = bool | int | float | str


class CommandTag(Base):
    """One tag commands may write, and the limits checked before anything reaches the wire."""

    tag: str  # "device/tag"
    sources: list[str]  # uplink names allowed to write it, plus "cli" for `edged write`
    min: float | None = None
    max: float | None = None
    allowed: list[CommandValue] | None = None  # the only values accepted (e.g. modes 0, 1, 2)
    max_step: float | None = None  # largest change from the last known value in one write
    min_interval: Duration | None = None  # at least this long between two writes to the tag

    def __post_init__(self) -> None:
        if not TAG_RE.match(self.tag) or "/" not in self.tag:
            raise ValueError(f"invalid tag {self.tag!r}: write the full path, device/tag")
        if not self.sources:
            raise ValueError("sources must list who may write this tag (uplink names, or 'cli')")
        for src in self.sources:
            if not NAME_RE.match(src):
                raise ValueError(f"invalid source {src!r}: an uplink name or 'cli'")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources lists a name twice")
        for bound, value in (("min", self.min), ("max", self.max)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{bound} must be a finite number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        if self.allowed is not None:
            if not self.allowed:
                raise ValueError("allowed must list at least one value (leave it out to allow any)")
            for v in self.allowed:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError("allowed values must be finite")
                if not isinstance(v, bool | str) and not (
                    (self.min is None or v >= self.min) and (self.max is None or v <= self.max)
                ):
                    raise ValueError(f"allowed value {v} is outside min..max: it could never be written")
        if self.max_step is not None and not 0.0 < self.max_step < math.inf:
            raise ValueError("max_step must be a positive number (largest change in one write)")
        if self.min_interval is not None and self.min_interval <= 0:
            raise ValueError("min_interval must be a positive duration, e.g. '5s'")


class CommandSource(Base):
    """How the commands of one MQTT source are authenticated: HMAC-SHA256 signatures with these keys
    (key id -> secret; several, so keys can be rotated), or `require_signature = false`: broker ACLs only."""

    keys: dict[str, Secret] = {}
    require_signature: bool = True

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if not NAME_RE.match(kid) or len(kid) > 64:
                raise ValueError(f"invalid key id {kid!r}: letters, digits, _ . - only, at most 64")
            if len(key.reveal().encode()) < 16:
                raise ValueError(f"key {kid!r} is too short: use at least 16 bytes, e.g. `openssl rand -hex 32`")


# Uplink types whose commands carry no authenticated identity of their own: a command source of one
# of these types must say how it is authenticated ([commands.sources.<name>]).
SIGNED_SOURCE_TYPES = frozenset({"mqtt"})


class CommandsConfig(Base):
    enabled: bool = False
    max_age: Duration = Duration(30.0)  # older commands (e.g. queued while offline) are refused
    max_future: Duration = Duration(5.0)  # a command stamped further ahead of the gateway's clock is refused
    audit_retention: Duration = Duration(365 * 86400.0)  # audit rows are kept this long
    audit_max_rows: int = 100_000  # the audit trail's own bound: oldest rows dropped (and counted)
    audit_max_bytes: ByteSize | None = None  # default: 1/16 of [buffer] max_bytes, at most 16 MiB
    timeout: Duration = Duration(10.0)  # a driver write with read-back taking longer: failed
    sources: dict[str, CommandSource] = {}  # MQTT uplink name -> how its commands are authenticated
    tags: list[CommandTag] = []

    def __post_init__(self) -> None:
        if not 0.1 <= self.max_age <= 86400:
            raise ValueError("max_age must be between 100ms and 24h")
        if not 0 <= self.max_future <= 60:
            raise ValueError("max_future must be between 0s and 60s")
        if self.audit_retention < 86400:
            raise ValueError("audit_retention must be at least 1d")
        if not 10 <= self.audit_max_rows <= 10_000_000:
            raise ValueError("audit_max_rows must be between 10 and 10000000")
        if self.audit_max_bytes is not None and self.audit_max_bytes < 64 * 1024:
            raise ValueError("audit_max_bytes must be at least 64KiB")
        if not 0.1 <= self.timeout <= 300:
            raise ValueError("timeout must be between 100ms and 5m")

    @property
    def duplicate_window(self) -> float:
        """Seconds a command id is remembered: as long as a command with that id can pass the age checks."""
        return float(self.max_age) + float(self.max_future)


def audit_max_bytes(config: Config) -> int:
    """The audit trail's byte bound: what is configured, else 1/16 of the buffer (at most 16 MiB)."""
    configured = config.commands.audit_max_bytes
    return int(configured) if configured is not None else min(16 * 1024**2, int(config.buffer.max_bytes) // 16)


def command_signing(config: Config) -> dict[str, CommandSource]:
    """The signing rule of every source that has one: the configured ones, and a rule that cannot
    be met (signatures required, no keys) for a signed-type uplink with commands but no entry."""
    rules = dict(config.commands.sources)
    for up in config.uplinks:
        if up.type in SIGNED_SOURCE_TYPES and up.takes_commands() and up.name not in rules:
            rules[up.name] = CommandSource()  # signatures required, no keys: every command is refused
    return rules


def _check_commands(
    cmds: CommandsConfig, devices: list[Any], uplinks: list[Any], file: str, buffer: BufferConfig | None = None
) -> None:
    """Every listed tag exists and its driver can write it; every source is an uplink or 'cli'; every
    MQTT source says how it is authenticated; the audit bound leaves room for the samples."""
    from edged import registry  # local: registry imports this module

    if buffer is not None and cmds.audit_max_bytes is not None and cmds.audit_max_bytes > buffer.max_bytes // 4:
        raise ConfigError(
            f"audit_max_bytes ({int(cmds.audit_max_bytes)}) must be at most a quarter of [buffer] max_bytes "
            f"({int(buffer.max_bytes)}): the audit trail shares the buffer's size cap with the samples",
            file=file,
            path="commands.audit_max_bytes",
        )
    by_name = {u.name: u for u in uplinks}
    for name in cmds.sources:
        up = by_name.get(name)
        if up is None or up.type not in SIGNED_SOURCE_TYPES:
            raise ConfigError(
                f"{name!r} is not an MQTT uplink: signing keys apply to MQTT command sources",
                file=file,
                path=f"commands.sources.{name}",
            )
        if cmds.sources[name].require_signature and not cmds.sources[name].keys:
            raise ConfigError(
                'give the signing keys (keys = { k1 = { env = "..." } }), or require_signature = false '
                "(broker ACLs only)",
                file=file,
                path=f"commands.sources.{name}",
            )
    tags = {dev.tag_path(t): (dev, t) for dev in devices for t in dev.tags}
    sources = set(by_name) | {COMMAND_SOURCE_CLI, COMMAND_SOURCE_UI}
    seen: dict[str, int] = {}
    for i, entry in enumerate(cmds.tags):
        label = f"commands.tags[{i}] ({entry.tag})"
        if entry.tag in seen:
            raise ConfigError(f"tag listed twice (also commands.tags[{seen[entry.tag]}])", file=file, path=label)
        seen[entry.tag] = i
        found = tags.get(entry.tag)
        if found is None:
            raise ConfigError(f"unknown tag {entry.tag!r}: no [[devices]] entry has it", file=file, path=f"{label}.tag")
        dev, tag = found
        computed = _is_computed(dev)
        if not computed and not registry.driver_spec(dev.type).can_write:
            raise ConfigError(f"the {dev.type} driver of device {dev.name!r} cannot write", file=file, path=label)
        if computed and not tag.accepts_writes():
            raise ConfigError(
                f"computed tag {entry.tag!r} cannot be written: only a totalizer can (a reset through the gate)",
                file=file,
                path=label,
            )
        if not tag.accepts_writes():
            raise ConfigError(
                f"device {dev.name!r} tag {tag.name!r} is not writable: set writable = true on the tag",
                file=file,
                path=label,
            )
        if tag.source_unit is not None or tag.calibration is not None:
            raise ConfigError(
                "a tag with source_unit or calibration cannot be commanded: the value would be written in "
                "the device's units, not the units shown",
                file=file,
                path=label,
            )
        kind = tag.value_kind()
        if kind in ("bool", "string") and (entry.min, entry.max, entry.max_step) != (None, None, None):
            raise ConfigError(f"min, max and max_step apply to numbers; this tag holds a {kind}", file=file, path=label)
        for src in entry.sources:
            if src not in sources:
                known = ", ".join(sorted(sources))
                raise ConfigError(
                    f"unknown source {src!r}: a source is an uplink name or 'cli' (known: {known})",
                    file=file,
                    path=f"{label}.sources",
                )
            up = by_name.get(src)
            if up is not None and up.type in SIGNED_SOURCE_TYPES and up.takes_commands() and src not in cmds.sources:
                raise ConfigError(
                    f"source {src!r} receives MQTT commands: say how they are authenticated, with signing keys "
                    f'([commands.sources.{src}] keys = {{ k1 = {{ env = "..." }} }}) or '
                    f"[commands.sources.{src}] require_signature = false (broker ACLs only)",
                    file=file,
                    path=f"{label}.sources",
                )


def _is_computed(dev: Any) -> bool:
    from edged.compute.config import ComputedGroup  # local: edged.compute imports this module

    return isinstance(dev, ComputedGroup)


class Config(msgspec.Struct, kw_only=True):
    """The whole validated config. `source` is the file it came from (None for the demo)."""

    gateway: GatewayConfig
    buffer: BufferConfig
    devices: list[DeviceBase]
    uplinks: list[UplinkBase]
    source: str | None = None
    commands: CommandsConfig = msgspec.field(default_factory=CommandsConfig)
    # [[computed]] groups (edged.compute.config.ComputedGroup; Any here: edged.compute imports this module)
    computed: list[Any] = []
    ui: UiConfig = msgspec.field(default_factory=lambda: UiConfig())  # the local web UI (edged.ui)
    # [alarms] (edged.alarms.config.AlarmsConfig; Any here for the same reason)
    alarms: Any = msgspec.field(default_factory=lambda: _alarms_default())

    @property
    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir)

    @property
    def buffer_path(self) -> Path:
        p = Path(self.buffer.path)
        return p if p.is_absolute() else self.data_dir / p


# ----------------------------------------------------------------------------------------- ui
# The local web UI (edged.ui, docs/ui.md): read-only for anyone who reaches it, writes for logged-in
# operators. On by default, on loopback only; beyond loopback it needs TLS (or allow_insecure).

SCRYPT_HASH_RE = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$[A-Za-z0-9+/=]{16,}\$[A-Za-z0-9+/=]{32,}$")


class UiUser(Base):
    """One UI login: a hashlib.scrypt hash (`edged ui-password` makes one), never the password."""

    password_hash: Secret
    role: Literal["viewer", "operator"] = "viewer"

    def problem(self) -> str | None:
        """Why the hash is unusable (checked by UiConfig, which knows the user's name), or None."""
        m = SCRYPT_HASH_RE.match(self.password_hash.reveal())
        if m is None:
            return "must be a scrypt hash from `edged ui-password` (scrypt$N$r$p$salt$hash), never the password"
        n, r, p = (int(x) for x in m.groups())
        if n < 2**14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            return "scrypt N must be a power of two >= 16384, r 1-32, p 1-16"
        return None


class UiConfig(Base):
    enabled: bool = True
    listen: ListenAddress = ListenAddress("127.0.0.1:8080")
    tls_cert: str | None = None  # PEM certificate chain; relative to data_dir
    tls_key: str | None = None  # its private key
    allow_insecure: bool = False  # listen beyond loopback without TLS (e.g. behind a TLS proxy)
    session_ttl: Duration = Duration(8 * 3600.0)
    users: dict[str, UiUser] = {}

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if not 60 <= self.session_ttl <= 7 * 86400:
            raise ValueError("session_ttl must be between 1m and 7d")
        for name, user in self.users.items():
            if not NAME_RE.match(name) or len(name) > 64:
                raise ValueError(f"invalid user name {name!r}: letters, digits, _ . - only, at most 64")
            problem = user.problem()
            if problem:
                raise ValueError(f"users.{name}.password_hash {problem}")

    @property
    def loopback(self) -> bool:
        host, _ = parse_listen(self.listen)
        return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _check_ui(ui: UiConfig, data_dir: Path, file: str) -> None:
    """TLS files that exist, and no plain HTTP beyond loopback unless asked for in so many words."""
    if not ui.enabled:
        return
    if ui.tls_cert is None and not ui.loopback and not ui.allow_insecure:
        raise ConfigError(
            f"{ui.listen!r} is beyond loopback: give tls_cert and tls_key, or allow_insecure = true "
            "(only behind a TLS proxy: passwords and session cookies would cross the network in clear)",
            file=file,
            path="ui.listen",
        )
    for key in ("tls_cert", "tls_key"):
        name = getattr(ui, key)
        if name is not None and not (data_dir / name).is_file():
            raise ConfigError(f"{data_dir / name} is not a readable file", file=file, path=f"ui.{key}")


# ----------------------------------------------------------------------------------------- loading

_TOP_KEYS = {"gateway", "buffer", "devices", "uplinks", "commands", "computed", "ui", "alarms"}


def _alarms_default() -> Any:
    from edged.alarms.config import AlarmsConfig  # local: edged.alarms imports this module

    return AlarmsConfig()


def _alarms(raw: Mapping[str, Any], devices: list[Any], uplinks: list[Any], file: str, base: Path) -> Any:
    """[alarms] resolved against the devices, computed groups and uplinks (edged.alarms.config)."""
    from edged.alarms.config import AlarmsConfig, check

    alarms = _convert(raw.get("alarms", {}), AlarmsConfig, file=file, path="alarms", base_dir=base)
    check(alarms, devices, uplinks, file)
    return alarms


def _dec_hook_for(base_dir: Path) -> Callable[[type, Any], Any]:
    def dec_hook(typ: type, obj: Any) -> Any:
        if typ is Duration:
            if isinstance(obj, str):
                return Duration.parse(obj)
            raise TypeError("a duration needs a unit, e.g. '500ms', '10s', '24h'")
        if typ is ByteSize:
            return ByteSize.parse(obj)
        if typ is ListenAddress:
            return ListenAddress.parse(obj)
        if typ is Secret:
            return _resolve_secret(obj, base_dir)
        raise NotImplementedError(typ)

    return dec_hook


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _convert(obj: Any, typ: type[Any], *, file: str, path: str, base_dir: Path) -> Any:
    try:
        return msgspec.convert(obj, typ, dec_hook=_dec_hook_for(base_dir))
    except msgspec.ValidationError as exc:
        m = _AT.match(str(exc))
        assert m is not None
        sub = (m.group("path") or "").lstrip(".")
        full = f"{path}.{sub}" if sub and not sub.startswith("[") else f"{path}{sub}"
        reason = m.group("reason")
        reason = re.sub(r"Object contains unknown field `([^`]+)`", r"unknown key `\1`", reason)
        reason = re.sub(r"Object missing required field `([^`]+)`", r"missing required key `\1`", reason)
        raise ConfigError(reason, file=file, path=full or None) from None


def _entry_label(kind: str, i: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"{kind}[{i}]" + (f" ({name})" if isinstance(name, str) else "")


def _check_shape(raw: Mapping[str, Any], file: str) -> None:
    """Nesting depth and integer range of the whole document, before any struct sees it: deeper
    nesting and integers beyond 64 bits are never meant and would fail later, far from the key."""
    stack: list[tuple[str, Any, int]] = [(k, v, 1) for k, v in raw.items()]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(f"nested more than {MAX_NESTING} levels deep", file=file, path=path)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ConfigError("integer out of range (64-bit)", file=file, path=path)
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v, depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(value))


def parse(raw: Mapping[str, Any], *, file: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate an already-parsed TOML document."""
    from edged import registry  # local: registry imports config for the base structs

    _check_shape(raw, file)
    base = base_dir or Path.cwd()
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level key `{unknown[0]}` (expected {', '.join(sorted(_TOP_KEYS))})", file=file)
    gateway = _convert(raw.get("gateway", {}), GatewayConfig, file=file, path="gateway", base_dir=base)
    if not os.path.isabs(gateway.data_dir):
        gateway.data_dir = str((base / gateway.data_dir).resolve())
    buffer = _convert(raw.get("buffer", {}), BufferConfig, file=file, path="buffer", base_dir=base)

    def entries(kind: str, loader: Callable[[str], type[Any]]) -> list[Any]:
        items = raw.get(kind, [])
        if not isinstance(items, list):
            raise ConfigError(f"`{kind}` must be an array of tables ([[{kind}]])", file=file, path=kind)
        out: list[Any] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            label = _entry_label(kind, i, item)
            if not isinstance(item, dict):
                raise ConfigError("must be a table", file=file, path=label)
            typ = item.get("type")
            if not isinstance(typ, str):
                raise ConfigError("missing required key `type`", file=file, path=label)
            try:
                cfg_type = loader(typ)
            except ConfigError as exc:
                raise ConfigError(exc.reason, file=file, path=f"{label}.type") from None
            origins = None
            if kind == "devices":  # runs of tags (`count`, edged.tagruns) become one entry per tag
                item, origins = expand_runs(item, file=file, label=label)
            try:
                entry = _convert(item, cfg_type, file=file, path=label, base_dir=base)
            except ConfigError as exc:
                raise (origins.relabel(exc) if origins is not None else exc) from None
            if entry.name in seen:
                raise ConfigError(
                    f"duplicate name {entry.name!r} (also {kind}[{seen[entry.name]}])", file=file, path=f"{label}.name"
                )
            seen[entry.name] = i
            out.append(entry)
        return out

    devices = entries("devices", lambda t: registry.driver_config(t))
    uplinks = entries("uplinks", lambda t: registry.uplink_config(t))

    tags_seen: dict[str, str] = {}
    for di, dev in enumerate(devices):
        for ti, tag in enumerate(dev.tags):
            full = dev.tag_path(tag)
            if full in tags_seen:
                raise ConfigError(
                    f"duplicate tag {full!r} (also at {tags_seen[full]})",
                    file=file,
                    path=f"devices[{di}] ({dev.name}).tags[{ti}].name",
                )
            tags_seen[full] = f"devices[{di}].tags[{ti}]"
    computed = _computed(raw, devices, file, base)
    commands = _convert(raw.get("commands", {}), CommandsConfig, file=file, path="commands", base_dir=base)
    _check_commands(commands, [*devices, *computed], uplinks, file, buffer)
    ui = _convert(raw.get("ui", {}), UiConfig, file=file, path="ui", base_dir=base)
    _check_ui(ui, Path(gateway.data_dir), file)
    alarms = _alarms(raw, [*devices, *computed], uplinks, file, base)
    return Config(gateway=gateway, buffer=buffer, devices=devices, uplinks=uplinks, source=file, commands=commands,
                  computed=computed, ui=ui, alarms=alarms)  # fmt: skip


def _computed(raw: Mapping[str, Any], devices: list[Any], file: str, base: Path) -> list[Any]:
    """[[computed]] groups, each resolved against the devices and the other groups (edged.compute.plan):
    unknown tags, syntax errors (with the column), unit mismatches and cycles are config errors."""
    items = raw.get("computed", [])
    if not items:
        return []
    from edged.compute.config import ComputedGroup  # local: edged.compute imports this module
    from edged.compute.plan import build

    if not isinstance(items, list):
        raise ConfigError("`computed` must be an array of tables ([[computed]])", file=file, path="computed")
    groups: list[Any] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        label = _entry_label("computed", i, item)
        if not isinstance(item, dict):
            raise ConfigError("must be a table", file=file, path=label)
        group = _convert(item, ComputedGroup, file=file, path=label, base_dir=base)
        if group.name in seen:
            raise ConfigError(f"duplicate name {group.name!r} (also computed[{seen[group.name]}])", file=file,
                              path=f"{label}.name")  # fmt: skip
        seen[group.name] = i
        groups.append(group)
    build(devices, groups, file=file)
    return groups


NOTHING_TO_DO = "no [[devices]] and no [[uplinks]]: nothing to do; `edged run --demo` runs the demo"


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming file, key and reason.

    The one validation behind `check-config`, `run` and a reload: a config that passes it runs."""
    p = Path(path)
    file = str(p)
    try:
        data = read_regular_file(p, CONFIG_FILE_MAX)
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=file) from None
    except ValueError as exc:
        raise ConfigError(f"cannot read config: {exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=file) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", file=file) from None
    except RecursionError:
        raise ConfigError(f"arrays or tables nested more than {MAX_NESTING} levels deep", file=file,
                          path=_deepest_line(text)) from None  # fmt: skip
    except ValueError:  # tomllib's int() of a number with more than 4300 digits
        raise ConfigError("a number has more than 4300 digits", file=file) from None
    cfg = parse(raw, file=file, base_dir=p.resolve().parent)
    if not cfg.devices and not cfg.uplinks:
        raise ConfigError(NOTHING_TO_DO, file=file)
    for key, target, want_dir in (("gateway.data_dir", cfg.data_dir, True), ("buffer.path", cfg.buffer_path, False)):
        if target.exists() and target.is_dir() != want_dir:
            what = "a directory" if want_dir else "a file (the buffer database)"
            raise ConfigError(f"{target} exists but is not {what}", file=file, path=key)
    return cfg


def _deepest_line(text: str) -> str | None:
    """`line N` where bracket nesting first exceeds MAX_NESTING: a location for the error when the
    TOML parser itself gave up (RecursionError). Approximate (quotes are tracked, escapes not)."""
    depth, quote = 0, ""
    for n, line in enumerate(text.splitlines(), 1):
        for ch in line:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                break
            elif ch in "[{":
                depth += 1
                if depth > MAX_NESTING:
                    return f"line {n}"
            elif ch in "]}":
                depth = max(0, depth - 1)
    return None


def inline_secrets(cfg: Config) -> list[str]:
    """Key paths of every `Secret` written inline in the file (not { env/file/credential }), found
    by walking the validated structs, so a new Secret field of any plugin is covered."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("gateway", cfg.gateway), ("buffer", cfg.buffer), ("commands", cfg.commands),
                                    ("ui", cfg.ui)]  # fmt: skip
    entries: tuple[tuple[str, list[Any]], ...] = (("devices", cfg.devices), ("uplinks", cfg.uplinks))
    for kind, items in entries:
        stack.extend((f"{kind}[{i}] ({e.name})", e) for i, e in enumerate(items))
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, Secret):
            if obj.source == "inline":
                found.append(path)
        elif isinstance(obj, msgspec.Struct):
            stack.extend((f"{path}.{f}", getattr(obj, f)) for f in obj.__struct_fields__)
        elif isinstance(obj, dict):
            stack.extend((f"{path}.{k}", v) for k, v in obj.items())
        elif isinstance(obj, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
    return sorted(found)


def world_readable(path: str | os.PathLike[str]) -> bool:
    """True when others may read the file: secrets inside it are then exposed on the box."""
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False
