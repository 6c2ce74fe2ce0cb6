"""InfluxDB 1.x line protocol, written by hand: the only rules are escaping and number formats,
which no maintained Python library gets right for 1.x without pulling in a whole client.

The escaping follows the 1.x parser (models/points.go), which is what the server runs, and the
1.x docs' examples (tests/unit/test_influxdb_lineproto.py has them as golden bytes):

- measurement: `,` and space are escaped with a backslash;
- tag keys, tag values, field keys: `,`, `=` and space;
- string field values: `"` and `\\` (inside the double quotes; newlines survive there).

The 1.x parser never unescapes a backslash in a name, so `a\\b` is stored as written; but a name
that *ends* in a backslash would escape the separator after it, a newline ends the line, an empty
name or tag value is refused, and a measurement starting with `#` (a comment line), a tab or NUL
(skipped as leading whitespace) would be lost or renamed. Those names cannot be written at all:
`Unrepresentable` says why, and the uplink reports such a sample as rejected instead of sending a
line the server would misread.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from edged.model import Gap, Sample

# the server's time range (models.MinNanoTime, MaxNanoTime): one step inside int64 at each end
MIN_NS = -(2**63) + 2
MAX_NS = 2**63 - 2
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})

FIELD_VALUE = "value"  # numbers (floats; integers too unless integers = "integer")
FIELD_BOOL = "value_bool"  # booleans: a field's type is fixed per measurement, and a device mixes kinds
FIELD_STRING = "value_str"
FIELD_STATUS = "status"  # the OPC UA StatusCode, an integer
FIELD_SCORE = "score"  # edged's quality score 0..100, an integer
FIELDS = (FIELD_VALUE, FIELD_BOOL, FIELD_STRING, FIELD_STATUS, FIELD_SCORE)


class Line(NamedTuple):
    """One point's line (without the newline) and what a server's error message may name of it."""

    text: str
    measurement: str  # unescaped
    field: str | None  # the value's field; None when the point has none (a Bad sample's None)
    ftype: str | None  # its type as InfluxDB names it: float, integer, boolean, string


class Unrepresentable(ValueError):
    """A sample (or a configured name) that line protocol cannot carry; the message says why."""


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode"
    if "\n" in name:
        return "contains a newline"
    if name.endswith("\\"):
        return "ends with a backslash"
    return None


def check_measurement(name: str) -> None:
    problem = _name_problem(name)
    if problem is None and name[0] in "#\t\0":
        problem = f"starts with {name[0]!r}"
    if problem is not None:
        raise Unrepresentable(f"measurement {name!r} {problem}")


def check_key(name: str, what: str = "tag key") -> None:
    problem = _name_problem(name)
    if problem is not None:
        raise Unrepresentable(f"{what} {name!r} {problem}")


def escape_measurement(name: str) -> str:
    check_measurement(name)
    return name.translate(_MEASUREMENT)


def escape_key(name: str, what: str = "tag key") -> str:
    """A tag key, tag value or field key, escaped."""
    check_key(name, what)
    return name.translate(_KEY)


def string(value: str) -> str:
    """A string field value, quoted. A lone surrogate (no UTF-8 for it) cannot be sent."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Unrepresentable("string value is not valid Unicode (a lone surrogate)") from None
    return '"' + value.translate(_STRING) + '"'


def float_value(v: float) -> str:
    """Shortest round-trip repr: `1.5`, `2.0`, `1e+16`, all read as floats by the parser."""
    return repr(float(v))


def timestamp(ts_ns: int) -> str:
    if not MIN_NS <= ts_ns <= MAX_NS:
        raise Unrepresentable(f"timestamp {ts_ns} is outside InfluxDB's range")
    return str(ts_ns)


class LineEncoder:
    """One uplink's mapping of samples and gaps to lines; the fixed parts are escaped once."""

    def __init__(
        self,
        *,
        gateway: str,
        measurement: str,
        tag_key: str,
        extra_tags: dict[str, str],
        integers_as_float: bool,
        gaps_measurement: str,
    ) -> None:
        self._template = measurement
        self._per_device = "{device}" in measurement
        self._gateway = gateway
        self._tag_key = escape_key(tag_key)
        self._extra = {escape_key(k): escape_key(v, "tag value") for k, v in extra_tags.items()}
        self._integers_as_float = integers_as_float
        self._gaps_name = gaps_measurement.replace("{gateway}", gateway)
        self._gaps = escape_measurement(self._gaps_name)
        self._cache: dict[str, tuple[str, str]] = {}  # tag -> (measurement, "measurement,tags ")

    def _tag_set(self, tags: dict[str, str]) -> str:
        """Sorted by key (the server's order, so it does no work): `,k=v,k=v`."""
        both = {**self._extra, **tags}
        return "".join(f",{k}={both[k]}" for k in sorted(both))

    def _prefix(self, tag: str) -> tuple[str, str]:
        got = self._cache.get(tag)
        if got is not None:
            return got
        device, _, name = tag.partition("/")
        if not name:  # no device part (a foreign buffer): the whole name serves as both
            name = tag
        tags = {"gateway": escape_key(self._gateway, "gateway id"), self._tag_key: escape_key(name, "tag name")}
        if not self._per_device:
            tags["device"] = escape_key(device, "device name")
        m = self._template.replace("{device}", device).replace("{gateway}", self._gateway)
        got = m, escape_measurement(m) + self._tag_set(tags) + " "
        if len(self._cache) < 100_000:  # a plant has a bounded set of tags
            self._cache[tag] = got
        return got

    def sample(self, s: Sample) -> Line:
        """The sample's line; Unrepresentable for a sample that cannot be written.

        A value that is None or not finite (NaN, infinities) has no value field: the point still
        carries its status and score, so a Bad sample is there, marked, rather than missing."""
        v = s.value
        field: str | None = None
        ftype: str | None = None
        text = ""
        if isinstance(v, bool):
            field, ftype, text = FIELD_BOOL, "boolean", "true" if v else "false"
        elif isinstance(v, int):
            if self._integers_as_float:
                try:
                    field, ftype, text = FIELD_VALUE, "float", float_value(float(v))
                except OverflowError:
                    raise Unrepresentable(f"integer {v} is beyond a float's range") from None
            elif INT_MIN <= v <= INT_MAX:
                field, ftype, text = FIELD_VALUE, "integer", f"{v}i"
            else:
                raise Unrepresentable(f'integer {v} is outside int64 (integers = "float" writes it as a float)')
        elif isinstance(v, float):
            if math.isfinite(v):
                field, ftype, text = FIELD_VALUE, "float", float_value(v)
        elif isinstance(v, str):
            field, ftype, text = FIELD_STRING, "string", string(v)
        fields = f"{FIELD_SCORE}={int(s.score)}i,{FIELD_STATUS}={int(s.status)}i"
        if field is not None:
            fields = f"{field}={text},{fields}"
        meas, prefix = self._prefix(s.tag)
        return Line(prefix + fields + " " + timestamp(s.ts_ns), meas, field, ftype)

    def gap(self, g: Gap) -> Line:
        """A gap record: its own measurement, one point per gap at its first lost timestamp; the
        lo_seq tag keeps two gaps that start at the same instant apart."""
        tags = self._tag_set({"gateway": escape_key(self._gateway, "gateway id"), "lo_seq": str(g.lo_seq)})
        fields = f"count={g.count}i,hi_seq={g.hi_seq}i,hi_ts_ns={g.hi_ts_ns}i"
        ts = min(max(g.lo_ts_ns, MIN_NS), MAX_NS)
        return Line(f"{self._gaps}{tags} {fields} {ts}", self._gaps_name, None, None)
