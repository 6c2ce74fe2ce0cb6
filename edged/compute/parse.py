"""The expression grammar of computed tags, parsed into a tree and compiled into closures.

A small hand-written Pratt parser, not a library: lark (the well-kept choice) is not a dependency
of edged, and this grammar is a dozen operators and seven functions. Written by hand it gives what
a plant engineer needs from a config error, the exact column and a sentence ("column 9: expected
')' to close the '(' at column 3"), bounds the depth and length of what it accepts, and never
reaches Python's eval. docs/compute.md is the reference.

    expr    := or
    or      := and (("or" | "||") and)*
    and     := not (("and" | "&&") not)*
    not     := ("not" | "!") not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?      one comparison, never chained
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/" | "%") unary)*
    unary   := ("-" | "+") unary | power
    power   := atom (("^" | "**") unary)?                            right-associative
    atom    := NUMBER | "true" | "false" | NAME | "{" TAG "}" | NAME "(" args ")" | "(" expr ")"

NAME is an alias from the tag's `inputs` table; `{device/tag}` names any tag (or computed tag).

Units: each input carries its tag's unit. Sums, differences, comparisons, min/max and the two
branches of if() convert the right operand into the left one's unit (pint factors, computed here,
at load); products and quotients multiply units; sqrt/pow take roots and powers; exp/log need a
ratio. A bare number takes the unit of whatever it meets. The result is converted to the computed
tag's own `unit`. Every mismatch is an `ExprError` at the operator's column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from edged.config import TAG_RE

MAX_LENGTH: Final = 4096
MAX_DEPTH: Final = 64

Num = float | bool
Fn = Callable[[Sequence[Any]], Any]
Resolve = Callable[[str, int, bool], str]


class ExprError(ValueError):
    """A syntax, name or unit error at `pos` (0-based; shown 1-based as a column)."""

    def __init__(self, pos: int, message: str) -> None:
        self.pos = pos
        self.message = message
        super().__init__(f"column {pos + 1}: {message}")


# ----------------------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<tag>\{[^{}]*\}?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>\*\*|<=|>=|==|!=|&&|\|\||[-+*/%^<>!(),])""",
    re.X,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # num | tag | name | op | end
    text: str
    pos: int


def tokens(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise ExprError(MAX_LENGTH, f"expression longer than {MAX_LENGTH} characters")
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind == "tag" and not m.group().endswith("}"):
            raise ExprError(pos, "'{' is not closed: write a tag as {device/tag}")
        if kind != "ws":
            out.append(Token(kind, m.group(), pos))
        pos = m.end()
    out.append(Token("end", "", len(text)))
    return out


# ----------------------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # num | bool | ref | unary | binary | call
    pos: int
    op: str = ""  # operator, function name, or the reference as written
    args: tuple[Node, ...] = ()
    value: float = 0.0
    tag: str = ""  # ref: the full tag path


FUNCTIONS: Final[Mapping[str, tuple[int, int]]] = {  # name -> (min args, max args)
    "abs": (1, 1),
    "sqrt": (1, 1),
    "exp": (1, 1),
    "log": (1, 1),
    "log10": (1, 1),
    "pow": (2, 2),
    "min": (2, 16),
    "max": (2, 16),
    "if": (3, 3),
}
_KEYWORD_OPS: Final = {"and": "and", "or": "or", "not": "not", "&&": "and", "||": "or", "!": "not"}
_BINARY_BP: Final = {
    "or": 1, "and": 2,
    "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
    "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "^": 8, "**": 8,
}  # fmt: skip
_NOT_BP, _NEG_BP = 3, 7
_COMPARE: Final = frozenset({"<", "<=", ">", ">=", "==", "!="})


def _describe(t: Token) -> str:
    return "the end of the expression" if t.kind == "end" else repr(t.text)


class _Parser:
    def __init__(self, text: str, resolve: Resolve) -> None:
        self.toks = tokens(text)
        self.i = 0
        self.resolve = resolve
        self.depth = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def op_of(self, t: Token) -> str | None:
        if t.kind == "op":
            return _KEYWORD_OPS.get(t.text, t.text)
        if t.kind == "name" and t.text in ("and", "or", "not"):
            return t.text
        return None

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExprError(0, "empty expression")
        node = self.expr(0)
        t = self.peek()
        if t.kind != "end":
            raise ExprError(t.pos, f"unexpected {_describe(t)} after a complete expression")
        return node

    def expr(self, rbp: int) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(self.peek().pos, f"nested more than {MAX_DEPTH} levels deep")
        left = self.prefix(self.next())
        while True:
            t = self.peek()
            op = self.op_of(t)
            bp = _BINARY_BP.get(op or "", 0)
            if bp <= rbp:
                break
            self.next()
            right = self.expr(bp - 1 if op in ("^", "**") else bp)  # power is right-associative
            assert op is not None
            if op in _COMPARE:
                after = self.op_of(self.peek())
                if after in _COMPARE:
                    raise ExprError(self.peek().pos, "comparisons cannot be chained: write (a < b) and (b < c)")
            left = Node("binary", t.pos, "^" if op == "**" else op, (left, right))
        self.depth -= 1
        return left

    def prefix(self, t: Token) -> Node:
        op = self.op_of(t)
        if op == "not":
            return Node("unary", t.pos, "not", (self.expr(_NOT_BP),))
        if op in ("-", "+"):
            return Node("unary", t.pos, op, (self.expr(_NEG_BP),))
        if t.kind == "num":
            value = float(t.text)
            if not math.isfinite(value):
                raise ExprError(t.pos, f"number {t.text} is beyond float range")
            return Node("num", t.pos, value=value)
        if t.kind == "tag":
            return Node("ref", t.pos, t.text, tag=self.resolve(t.text[1:-1].strip(), t.pos, True))
        if t.kind == "name":
            if t.text in ("true", "false"):
                return Node("bool", t.pos, value=1.0 if t.text == "true" else 0.0)
            if self.peek().text == "(":
                return self.call(t)
            if t.text in FUNCTIONS:
                raise ExprError(t.pos, f"{t.text} is a function: write {t.text}(...)")
            return Node("ref", t.pos, t.text, tag=self.resolve(t.text, t.pos, False))
        if t.text == "(":
            inner = self.expr(0)
            close = self.next()
            if close.text != ")":
                found = _describe(close)
                raise ExprError(close.pos, f"expected ')' to close the '(' at column {t.pos + 1}, found {found}")
            return inner
        raise ExprError(t.pos, f"expected a value, found {_describe(t)}")

    def call(self, name: Token) -> Node:
        arity = FUNCTIONS.get(name.text)
        if arity is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExprError(name.pos, f"unknown function {name.text!r} (known: {known})")
        opening = self.next()
        args: list[Node] = []
        if self.peek().text != ")":
            while True:
                args.append(self.expr(0))
                sep = self.next()
                if sep.text == ")":
                    break
                if sep.text != ",":
                    raise ExprError(
                        sep.pos, f"expected ',' or ')' in {name.text}( at column {opening.pos + 1}: {_describe(sep)}"
                    )
        else:
            self.next()
        lo, hi = arity
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExprError(name.pos, f"{name.text}() takes {want} arguments, got {len(args)}")
        return Node("call", name.pos, name.text, tuple(args))


def parse(text: str, resolve: Resolve) -> Node:
    """The tree of `text`; `resolve(name, pos, braced)` turns an alias (braced False) or a {tag}
    into a full tag path, or raises ExprError."""
    return _Parser(text, resolve).parse()


def references(node: Node) -> list[str]:
    """Every tag the expression reads, in order of first appearance."""
    seen: dict[str, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "ref":
            seen.setdefault(n.tag, None)
        stack.extend(reversed(n.args))
    return list(seen)


# ----------------------------------------------------------------------------------------- units


class UnitAlgebra:
    """What the compiler needs of pint, at load only: parse, multiply, compare, convert."""

    def __init__(self) -> None:
        from edged.units import registry

        self.ureg: Any = registry()

    def parse(self, text: str) -> Any:
        from edged.units import parse_unit

        return parse_unit(text)

    def same_kind(self, a: Any, b: Any) -> bool:
        return bool(self.ureg.Quantity(1.0, a).dimensionality == self.ureg.Quantity(1.0, b).dimensionality)

    def dimensionless(self, a: Any) -> bool:
        return bool(self.ureg.Quantity(1.0, a).dimensionless)

    def factor(self, src: Any, dst: Any) -> tuple[float, float]:
        from edged.units import conversion

        return conversion(str(src), str(dst))

    def label(self, a: Any) -> str:
        return f"{a:~}" or "1"


@dataclass(frozen=True, slots=True)
class Compiled:
    """An expression ready to run: `fn(values)` with one value per entry of `inputs`."""

    fn: Fn
    inputs: tuple[str, ...]
    unit: Any  # the pint unit of the raw result, or None (unitless / unknown)


class _Typed:
    __slots__ = ("const", "fn", "unit")

    def __init__(self, fn: Fn, unit: Any, const: float | None = None) -> None:
        self.fn = fn
        self.unit = unit
        self.const = const


def compile_expr(
    node: Node, units: Mapping[str, str | None], target_unit: str | None, algebra: UnitAlgebra | None
) -> Compiled:
    """Closures for `node`; `units` maps each referenced tag to its unit (None: unknown)."""
    inputs = tuple(references(node))
    index = {tag: i for i, tag in enumerate(inputs)}
    c = _Compiler(index, units, algebra)
    typed = c.node(node)
    fn = typed.fn
    if target_unit is not None and typed.unit is not None and algebra is not None:
        want = algebra.parse(target_unit)
        if not algebra.same_kind(typed.unit, want):
            raise ExprError(
                0, f"the expression gives {algebra.label(typed.unit)}, not convertible to unit {target_unit!r}"
            )
        k, off = algebra.factor(typed.unit, want)
        if (k, off) != (1.0, 0.0):
            inner = fn
            fn = lambda v: inner(v) * k + off
    return Compiled(fn, inputs, typed.unit)


class _Compiler:
    def __init__(self, index: Mapping[str, int], units: Mapping[str, str | None], algebra: UnitAlgebra | None) -> None:
        self.index = index
        self.algebra = algebra
        self.units: dict[str, Any] = {}
        for tag in index:
            u = units.get(tag)
            self.units[tag] = algebra.parse(u) if (u and algebra is not None) else None

    def node(self, n: Node) -> _Typed:
        if n.kind in ("num", "bool"):
            value: float | bool = n.value if n.kind == "num" else n.value == 1.0
            return _Typed(lambda v: value, None, float(value))
        if n.kind == "ref":
            i = self.index[n.tag]
            return _Typed(lambda v: v[i], self.units[n.tag])
        if n.kind == "unary":
            x = self.node(n.args[0])
            f = x.fn
            if n.op == "not":
                return _Typed(lambda v: not f(v), None)
            if n.op == "-":
                return _Typed(lambda v: -f(v), x.unit, -x.const if x.const is not None else None)
            return x
        if n.kind == "binary":
            return self.binary(n)
        return self.call(n)

    def _align(self, n: Node, a: _Typed, b: _Typed, what: str) -> tuple[Fn, Fn, Any]:
        """b converted into a's unit (sums, comparisons, min/max, if branches)."""
        fa, fb = a.fn, b.fn
        if a.unit is None or b.unit is None or self.algebra is None:
            return fa, fb, a.unit if a.unit is not None else b.unit
        alg = self.algebra
        if not alg.same_kind(a.unit, b.unit):
            raise ExprError(n.pos, f"cannot {what} {alg.label(a.unit)} and {alg.label(b.unit)}: different quantities")
        k, off = alg.factor(b.unit, a.unit)
        if (k, off) != (1.0, 0.0):
            inner = fb
            fb = lambda v: inner(v) * k + off
        return fa, fb, a.unit

    def binary(self, n: Node) -> _Typed:
        a, b = self.node(n.args[0]), self.node(n.args[1])
        op = n.op
        if op in ("and", "or"):
            fa, fb = a.fn, b.fn
            if op == "and":
                return _Typed(lambda v: bool(fa(v)) and bool(fb(v)), None)
            return _Typed(lambda v: bool(fa(v)) or bool(fb(v)), None)
        if op in ("+", "-") or op in _COMPARE:
            fa, fb, unit = self._align(n, a, b, "compare" if op in _COMPARE else "add or subtract")
            fn: Fn = {
                "+": lambda v: fa(v) + fb(v),
                "-": lambda v: fa(v) - fb(v),
                "<": lambda v: fa(v) < fb(v),
                "<=": lambda v: fa(v) <= fb(v),
                ">": lambda v: fa(v) > fb(v),
                ">=": lambda v: fa(v) >= fb(v),
                "==": lambda v: fa(v) == fb(v),
                "!=": lambda v: fa(v) != fb(v),
            }[op]
            return _Typed(fn, unit if op in ("+", "-") else None)
        fa, fb = a.fn, b.fn
        if op in ("*", "/"):
            unit = self._product(a.unit, b.unit, op)
            if op == "*":
                return _Typed(lambda v: fa(v) * fb(v), unit)
            return _Typed(lambda v: fa(v) / fb(v), unit)
        if op == "%":
            fa2, fb2, unit = self._align(n, a, b, "take the remainder of")
            return _Typed(lambda v: math.fmod(fa2(v), fb2(v)), unit)
        assert op == "^"
        return self._power(n, a, b)

    def _product(self, ua: Any, ub: Any, op: str) -> Any:
        if self.algebra is None or (ua is None and ub is None):
            return None
        one = self.algebra.ureg.dimensionless
        left = ua if ua is not None else one
        right = ub if ub is not None else one
        return left * right if op == "*" else left / right

    def _power(self, n: Node, base: _Typed, exponent: _Typed) -> _Typed:
        fa, fb = base.fn, exponent.fn
        unit = None
        if base.unit is not None and self.algebra is not None and not self.algebra.dimensionless(base.unit):
            if exponent.const is None:
                raise ExprError(n.pos, f"a power of {self.algebra.label(base.unit)} needs a constant exponent")
            unit = base.unit**exponent.const
        if exponent.unit is not None and self.algebra is not None and not self.algebra.dimensionless(exponent.unit):
            raise ExprError(n.args[1].pos, "an exponent must be a plain number, not a quantity with a unit")
        return _Typed(lambda v: math.pow(fa(v), fb(v)), unit)

    def _ratio(self, n: Node, x: _Typed) -> None:
        if x.unit is not None and self.algebra is not None and not self.algebra.dimensionless(x.unit):
            raise ExprError(n.pos, f"{n.op}() needs a plain number, not {self.algebra.label(x.unit)}")

    def call(self, n: Node) -> _Typed:
        args = [self.node(a) for a in n.args]
        name = n.op
        if name in ("abs", "sqrt", "exp", "log", "log10"):
            (x,) = args
            f = x.fn
            if name == "abs":
                return _Typed(lambda v: abs(f(v)), x.unit)
            if name == "sqrt":
                unit = x.unit**0.5 if x.unit is not None else None
                return _Typed(lambda v: math.sqrt(f(v)), unit)
            self._ratio(n, x)
            g = {"exp": math.exp, "log": math.log, "log10": math.log10}[name]
            return _Typed(lambda v: g(f(v)), None)
        if name == "pow":
            return self._power(n, args[0], args[1])
        if name in ("min", "max"):
            first = args[0]
            fns = [first.fn]
            unit = first.unit
            for other, node in zip(args[1:], n.args[1:], strict=True):
                _, fb, u = self._align(node, _Typed(first.fn, unit), other, "compare")
                unit = u
                fns.append(fb)
            pick = min if name == "min" else max
            return _Typed(lambda v: pick(f(v) for f in fns), unit)
        assert name == "if"
        cond, a, b = args
        fc = cond.fn
        fa, fb, unit = self._align(n.args[2], a, b, "choose between")
        return _Typed(lambda v: fa(v) if fc(v) else fb(v), unit)


def check_tag_path(path: str, pos: int) -> str:
    """A {tag} reference's path, or an ExprError at its column."""
    if not TAG_RE.match(path) or "/" not in path:
        raise ExprError(pos, f"invalid tag {path!r}: write the full path, {{device/tag}}")
    return path
