"""Resolve every computed tag against the whole config: its inputs exist, units fit, no cycles.

The one validation behind `check-config`, `run` and the engine: `build` raises a ConfigError naming
the file, the key and the reason (an expression's errors name the column), and otherwise returns
what the engine runs, in dependency order, with every unit factor already computed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edged.compute.config import WINDOW_FUNCTIONS, ComputedGroup, ComputedTag
from edged.compute.parse import (
    FUNCTIONS,
    Compiled,
    ExprError,
    Node,
    UnitAlgebra,
    check_tag_path,
    compile_expr,
    parse,
)
from edged.config import DeviceBase
from edged.errors import ConfigError

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = frozenset({"and", "or", "not", "true", "false", *FUNCTIONS})


@dataclass(frozen=True, slots=True)
class TagPlan:
    """One computed tag, resolved: what the engine needs and nothing it would have to look up."""

    path: str
    group: ComputedGroup
    cfg: ComputedTag
    label: str  # computed[i] (group).tags[j] (name): for log lines
    inputs: tuple[str, ...]
    expr: Compiled | None = None
    factors: tuple[tuple[float, float], ...] = ()  # per input: value * k + offset, into the tag's unit
    scale: float = 1.0  # totalizer: per second of rate -> unit; rate: per second -> unit
    input_max_age_ns: tuple[int | None, ...] = field(default=())  # per input


def _shown(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


class _Units:
    """pint only when some unit takes part (and then once per config)."""

    def __init__(self) -> None:
        self._alg: UnitAlgebra | None = None

    @property
    def alg(self) -> UnitAlgebra:
        if self._alg is None:
            self._alg = UnitAlgebra()
        return self._alg

    def maybe(self, involved: Sequence[str | None]) -> UnitAlgebra | None:
        """The algebra when any unit takes part; without pint, units that are all one label need none."""
        present = {x for x in involved if x is not None}
        if not present:
            return None
        try:
            return self.alg
        except ValueError:
            if len(present) == 1:
                return None
            raise

    def factor(self, src: str | None, dst: str | None) -> tuple[float, float]:
        if src is None or dst is None or src == dst:
            return (1.0, 0.0)
        from edged.units import conversion

        return conversion(src, dst)

    def time_scale(self, rate: str, total: str, *, integral: bool) -> float:
        """Totalizer (`integral`): unit of rate x seconds -> total; rate: unit per second -> total."""
        alg = self.alg
        second = alg.ureg.second
        src = alg.parse(rate) * second if integral else alg.parse(rate) / second
        dst = alg.parse(total)
        if not alg.same_kind(src, dst):
            what = "time integral" if integral else "rate of change"
            raise ValueError(f"the {what} of {rate} is not convertible to unit {total!r} ({alg.label(src)})")
        k, off = alg.factor(src, dst)
        if off != 0.0:
            raise ValueError(f"{rate} -> {total} has an offset: integrate or differentiate a difference unit")
        return k


def build(devices: Sequence[DeviceBase], groups: Sequence[ComputedGroup], *, file: str = "<config>") -> list[TagPlan]:
    """Every enabled computed tag resolved, in an order where inputs come before their users."""
    units: dict[str, str | None] = {}
    stale: dict[str, int | None] = {}
    for dev in devices:
        for t in dev.tags:
            units[dev.tag_path(t)] = t.unit
            stale[dev.tag_path(t)] = int(t.quality.stale_after * 1e9) if t.quality.stale_after else None
    device_names = {d.name for d in devices}
    labels: dict[str, str] = {}
    for gi, g in enumerate(groups):
        glabel = f"computed[{gi}] ({g.name})"
        if g.name in device_names:
            raise ConfigError(
                f"{g.name!r} is also a [[devices]] name: a computed group needs a name of its own",
                file=file,
                path=f"{glabel}.name",
            )
        for ti, t in enumerate(g.tags):
            path = g.tag_path(t)
            label = f"{glabel}.tags[{ti}] ({t.name})"
            if path in units:
                raise ConfigError(f"duplicate tag {path!r}", file=file, path=f"{label}.name")
            units[path] = t.unit
            stale[path] = int(t.quality.stale_after * 1e9) if t.quality.stale_after else None
            labels[path] = label
    u = _Units()
    plans: dict[str, TagPlan] = {}
    for g in groups:
        if not g.enabled:
            continue
        for t in g.tags:
            path = g.tag_path(t)
            label = labels[path]
            try:
                plans[path] = _plan(g, t, path, label, units, stale, u)
            except ExprError as exc:
                raise ConfigError(f"{exc} in {_shown(t.expr or '')}", file=file, path=f"{label}.expr") from None
            except _KeyError as exc:
                raise ConfigError(exc.reason, file=file, path=f"{label}.{exc.key}") from None
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, path=label) from None
    return _ordered(plans, labels, file)


class _KeyError(Exception):
    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason


def _plan(
    g: ComputedGroup,
    t: ComputedTag,
    path: str,
    label: str,
    units: Mapping[str, str | None],
    stale: Mapping[str, int | None],
    u: _Units,
) -> TagPlan:
    max_age = int(t.input_max_age * 1e9) if t.input_max_age is not None else None

    def ages(inputs: Sequence[str]) -> tuple[int | None, ...]:
        return tuple(max_age if max_age is not None else stale.get(i) for i in inputs)

    if t.expr is not None:
        aliases = t.inputs if isinstance(t.inputs, dict) else {}
        for alias, tag in aliases.items():
            if not _ALIAS.match(alias) or alias in _RESERVED:
                reason = f"{alias!r} cannot be an input name: letters, digits and _, not a keyword or function"
                raise _KeyError(f"inputs.{alias}", reason)
            if tag not in units:
                raise _KeyError(f"inputs.{alias}", f"unknown tag {tag!r}: no device or computed tag has it")
            if tag == path:
                raise _KeyError(f"inputs.{alias}", "a computed tag cannot read itself")

        def resolve(name: str, pos: int, braced: bool) -> str:
            if not braced:
                if name in aliases:
                    return aliases[name]
                known = ", ".join(sorted(aliases)) or "none; name a tag as {device/tag} or add an inputs table"
                raise ExprError(pos, f"unknown input {name!r} (inputs: {known})")
            check_tag_path(name, pos)
            if name not in units:
                raise ExprError(pos, f"unknown tag {name!r}: no device or computed tag has it")
            if name == path:
                raise ExprError(pos, "a computed tag cannot read itself")
            return name

        tree = parse(t.expr, resolve)
        if not _refs(tree):
            raise ExprError(0, "the expression reads no tag: a computed tag is computed from other tags")
        alg = u.maybe([units.get(r) for r in _refs(tree)] + [t.unit])
        compiled = compile_expr(tree, units, t.unit, alg)
        return TagPlan(path, g, t, label, compiled.inputs, expr=compiled, input_max_age_ns=ages(compiled.inputs))
    fn = t.function
    inputs = t.inputs_of()
    for i, tag in enumerate(inputs):
        key = "input" if t.input is not None else f"inputs[{i}]"
        if tag not in units:
            raise _KeyError(key, f"unknown tag {tag!r}: no device or computed tag has it")
        if tag == path:
            raise _KeyError(key, "a computed tag cannot read itself")
    if fn == "difference":
        a, b = (Node("ref", 0, "a", tag=inputs[0]), Node("ref", 0, "b", tag=inputs[1]))
        try:
            compiled = compile_expr(Node("binary", 0, "-", (a, b)), units, t.unit, _alg_for(u, units, inputs, t))
        except ExprError as exc:
            raise ValueError(exc.message) from None
        return TagPlan(path, g, t, label, compiled.inputs, expr=compiled, input_max_age_ns=ages(compiled.inputs))
    if fn in ("totalizer", "rate"):
        src = units.get(inputs[0])
        if src is not None and t.unit is not None:
            if t.time_base is not None:
                raise _KeyError("time_base", f"the units ({src} -> {t.unit}) already say the time base: leave it out")
            scale = u.time_scale(src, t.unit, integral=fn == "totalizer")
        elif t.time_base is None:
            example = "input unit 'm3/h' and unit 'm3'" if fn == "totalizer" else "input unit 'bar' and unit 'bar/min'"
            raise ValueError(
                f"{fn} needs units on its input and itself ({example}) or a time_base (e.g. time_base = '1h')"
            )
        else:
            scale = 1.0 / float(t.time_base) if fn == "totalizer" else float(t.time_base)
        return TagPlan(path, g, t, label, tuple(inputs), scale=scale, input_max_age_ns=ages(inputs))
    # window functions, ema, median, mean: every input converted into the tag's unit (or the first input's)
    target = t.unit if t.unit is not None else units.get(inputs[0])
    factors = []
    for i, tag in enumerate(inputs):
        src = units.get(tag)
        if fn == "count" or src is None or target is None:
            factors.append((1.0, 0.0))
            continue
        try:
            factors.append(u.factor(src, target))
        except ValueError as exc:
            key = "input" if t.input is not None else f"inputs[{i}]"
            raise _KeyError(key, f"{tag}: {exc}") from None
    if fn in WINDOW_FUNCTIONS and fn == "stddev":
        factors = [(k, 0.0) for k, _ in factors]  # a spread converts without the offset
    return TagPlan(path, g, t, label, tuple(inputs), factors=tuple(factors), input_max_age_ns=ages(inputs))


def _alg_for(u: _Units, units: Mapping[str, str | None], inputs: Sequence[str], t: ComputedTag) -> UnitAlgebra | None:
    return u.maybe([units.get(i) for i in inputs] + [t.unit])


def _refs(tree: Node) -> list[str]:
    from edged.compute.parse import references

    return references(tree)


def _ordered(plans: Mapping[str, TagPlan], labels: Mapping[str, str], file: str) -> list[TagPlan]:
    """Inputs before their users (depth-first); a cycle is a config error naming it."""
    done: dict[str, None] = {}
    active: list[str] = []

    def visit(path: str) -> None:
        if path in done:
            return
        if path in active:
            cycle = [*active[active.index(path) :], path]
            raise ConfigError(f"computed tags depend on each other in a cycle: {' -> '.join(cycle)}", file=file,
                              path=labels[path])  # fmt: skip
        active.append(path)
        for dep in plans[path].inputs:
            if dep in plans:
                visit(dep)
        active.pop()
        done[path] = None

    for path in plans:
        visit(path)
    return [plans[p] for p in done]


def check(config: Any, file: str) -> None:
    """For the config loader: raise the first problem of the config's computed tags."""
    build(config.devices, config.computed, file=file)
