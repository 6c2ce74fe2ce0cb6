"""`[[computed]]`: groups of computed tags, declared like a device's tags (docs/compute.md).

A group is a pseudo-device: its tags are `<group>/<tag>`, have a unit, range, deadband and quality
checks like any tag, and are stored, delivered and served exactly like measured ones. Each tag is
either an expression (`expr`) or a function (`function`) of other tags. What one struct can check
alone is checked here; references, units and cycles need the whole config (edged.compute.plan).
"""

from __future__ import annotations

import math
from typing import Literal

from edged.config import DeviceBase, Duration, TagBase, ValueKind

WINDOW_FUNCTIONS = frozenset({"average", "minimum", "maximum", "sum", "count", "stddev", "first", "last"})
STREAM_FUNCTIONS = frozenset({"totalizer", "rate", "ema"})
Function = Literal[
    "average", "minimum", "maximum", "sum", "count", "stddev", "first", "last",
    "totalizer", "rate", "ema", "difference", "median", "mean",
]  # fmt: skip

_ONLY: dict[str, frozenset[str]] = {  # key -> the functions it applies to
    "window": WINDOW_FUNCTIONS,
    "aligned": WINDOW_FUNCTIONS,
    "min_coverage": WINDOW_FUNCTIONS,
    "interpolation": frozenset({"average", "totalizer"}),
    "max_gap": frozenset({"totalizer", "rate", "ema"}),
    "time_base": frozenset({"totalizer", "rate"}),
    "rollover": frozenset({"totalizer"}),
    "time_constant": frozenset({"ema"}),
    "max_deviation": frozenset({"median", "mean"}),
    "deviation_delay": frozenset({"median", "mean"}),
    "min_good": frozenset({"mean"}),
}


class ComputedTag(TagBase):
    """One computed tag: `expr` over other tags, or one `function` of its `input` / `inputs`."""

    expr: str | None = None
    function: Function | None = None
    input: str | None = None  # the one input of a window, totalizer, rate or ema
    inputs: dict[str, str] | list[str] = []  # expr: alias -> tag; median/mean/difference: the tags
    window: Duration | None = None
    aligned: bool = False  # fixed windows aligned to the clock (every full minute); else sliding
    interpolation: Literal["stepped", "linear"] = "stepped"
    min_coverage: float = 100.0  # percent of the window with usable data below which the result is Uncertain
    max_gap: Duration | None = None  # no integration (totalizer, rate, ema) across a longer silence
    time_base: Duration | None = None  # the rate's time unit where the units do not say (m3 per "1h")
    rollover: float | None = None  # a totalizer wraps to 0 at this value (a mechanical counter's)
    time_constant: Duration | None = None  # ema: tau; alpha = 1 - exp(-dt/tau)
    max_deviation: float | None = None  # redundant inputs further apart than this (unit of the tag) drift
    deviation_delay: Duration = Duration(0.0)  # ... for at least this long
    min_good: int = 1  # mean: fewer usable inputs than this makes the result Uncertain
    input_max_age: Duration | None = None  # an input older than this against the newest is stale

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source_unit is not None or self.calibration is not None:
            raise ValueError(
                "a computed tag has no source_unit or calibration: its inputs are converted into `unit` already"
            )
        if (self.expr is None) == (self.function is None):
            raise ValueError('give either expr = "..." or function = "..." (one of them)')
        if self.expr is not None:
            if isinstance(self.inputs, list) and not self.inputs:
                self.inputs = {}
            if self.input is not None or isinstance(self.inputs, list):
                raise ValueError(
                    'an expr names its inputs in the expression, or as a table: inputs = { a = "dev/tag" }'
                )
            self._only(None)
            return
        fn = self.function
        assert fn is not None
        self._only(fn)
        if isinstance(self.inputs, dict):
            if self.inputs:
                raise ValueError(f'inputs of {fn} are a list of tags, e.g. inputs = ["dev/a", "dev/b"]')
            self.inputs = []
        single = fn in WINDOW_FUNCTIONS or fn in STREAM_FUNCTIONS
        if single:
            if self.input is None or self.inputs:
                raise ValueError(f'{fn} takes one tag: input = "device/tag"')
        else:
            if self.input is not None:
                raise ValueError(f'{fn} takes a list of tags: inputs = ["dev/a", "dev/b", ...]')
            need = {"difference": (2, 2), "median": (3, 15), "mean": (2, 16)}[fn]
            if not need[0] <= len(self.inputs) <= need[1]:
                want = "exactly 2" if fn == "difference" else f"{need[0]} to {need[1]}"
                raise ValueError(f"{fn} takes {want} inputs, got {len(self.inputs)}")
            if fn == "median" and len(self.inputs) % 2 == 0:
                raise ValueError("median takes an odd number of inputs (3 for 2oo3 voting)")
            if len(set(self.inputs)) != len(self.inputs):
                raise ValueError("inputs lists a tag twice")
        if fn in WINDOW_FUNCTIONS and (self.window is None or self.window <= 0):
            raise ValueError(f'{fn} needs a window, e.g. window = "1m"')
        if self.window is not None and self.window < 0.001:
            raise ValueError("window must be at least 1ms")
        if not 0.0 < self.min_coverage <= 100.0:
            raise ValueError("min_coverage is a percentage: more than 0, at most 100")
        if fn == "ema" and (self.time_constant is None or self.time_constant <= 0):
            raise ValueError('ema needs a time_constant, e.g. time_constant = "30s"')
        for key in ("max_gap", "time_base"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{key} must be a positive duration")
        if self.rollover is not None and not 0.0 < self.rollover < math.inf:
            raise ValueError("rollover must be a positive number")
        if self.max_deviation is not None and not 0.0 < self.max_deviation < math.inf:
            raise ValueError("max_deviation must be a positive number (in the tag's unit)")
        if fn == "mean" and not 1 <= self.min_good <= len(self.inputs):
            raise ValueError(f"min_good must be between 1 and the number of inputs ({len(self.inputs)})")

    def _only(self, fn: str | None) -> None:
        """A key set that `fn` does not use is a mistake, not a silent no-op."""
        defaults = {"aligned": False, "interpolation": "stepped", "min_coverage": 100.0, "deviation_delay": 0.0,
                    "min_good": 1}  # fmt: skip
        for key, fns in _ONLY.items():
            value = getattr(self, key)
            if value is not None and value != defaults.get(key) and fn not in fns:
                users = ", ".join(sorted(fns))
                what = f"function {fn!r}" if fn else "an expr"
                raise ValueError(f"{key} does not apply to {what} (only to {users})")

    def inputs_of(self) -> list[str]:
        """The tags a function reads (an expr's come from its text)."""
        if self.input is not None:
            return [self.input]
        return list(self.inputs) if isinstance(self.inputs, list) else []

    def value_kind(self) -> ValueKind | None:
        return "number"

    def accepts_writes(self) -> bool:
        """A totalizer can be written through the command gate: a reset (or a preset)."""
        return self.function == "totalizer"


class ComputedGroup(DeviceBase):
    """A `[[computed]]` entry: a name (the first part of its tags' paths) and its tags."""

    type: str = "computed"
    tags: list[ComputedTag] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.type != "computed":
            raise ValueError("type of a [[computed]] entry is 'computed' (or leave it out)")
