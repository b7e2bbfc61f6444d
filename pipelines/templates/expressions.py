"""A small, safe expression language for pipeline templates: conditions and text fields.

Expressions are parsed with Python's ``ast`` and then *interpreted* node by node from a short
allow-list; nothing is ever passed to ``eval``. What exists:

- names: ``params``, ``steps``, ``run`` (``id``, ``template``, ``namespace``), ``item``,
  ``index`` and attribute/index access on them
  (``steps.screen.texts[index]``, ``item.prompt``); names starting with ``_`` are refused;
- literals (strings, numbers, booleans, ``None``, lists);
- comparisons ``== != < <= > >= in not in``, ``and or not``, ``+ - * / %`` on numbers
  (``+`` also joins strings), conditional ``a if cond else b``;
- functions: ``len``, ``contains(text, part)``, ``lower``, ``upper``, ``strip``,
  ``startswith``, ``endswith``, ``number(text)`` (the first number in a text, for scores),
  ``lines(text)``, ``range(n)``, ``format(template, mapping)`` (``{key}`` only), ``str``,
  ``int``, ``float``, ``join(list, sep)``, ``min``, ``max``, ``get(mapping, key, default)``,
  ``pick(list, positions)``.

Text fields use ``{expression}`` placeholders (``{{`` and ``}}`` for literal braces).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LEN = 2000
MAX_RANGE = 10_000


class ExpressionError(ValueError):
    """An expression that is not allowed or cannot be evaluated; the message says why."""


def _number(text: Any) -> float | None:
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    found = re.search(r"-?\d+(?:\.\d+)?", str(text))
    return float(found.group()) if found else None


def _format(template: Any, mapping: Any) -> str:
    if not isinstance(mapping, Mapping):
        mapping = {"item": mapping}

    def sub(m: re.Match[str]) -> str:
        return str(mapping.get(m.group(1), m.group(0)))

    return re.sub(r"\{(\w+)\}", sub, str(template))


def _range(n: Any) -> list[int]:
    n = int(n)
    if not 0 <= n <= MAX_RANGE:
        raise ExpressionError(f"range({n}) is outside 0..{MAX_RANGE}")
    return list(range(n))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "contains": lambda text, part: (
        str(part).lower() in str(text).lower() if isinstance(text, str) else part in text
    ),
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "strip": lambda s: str(s).strip(),
    "startswith": lambda s, p: str(s).strip().startswith(str(p)),
    "endswith": lambda s, p: str(s).strip().endswith(str(p)),
    "number": _number,
    "lines": lambda s: [ln.strip() for ln in str(s).splitlines() if ln.strip()],
    "range": _range,
    "format": _format,
    "str": str,
    "int": int,
    "float": float,
    "join": lambda items, sep="\n": str(sep).join(str(x) for x in items),
    "min": min,
    "max": max,
    "get": lambda mapping, key, default=None: (
        mapping.get(key, default) if isinstance(mapping, Mapping) else default
    ),
    "pick": lambda items, positions: [items[int(i)] for i in positions],
}
NAMES = ("params", "steps", "item", "index", "run")

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


@dataclass(frozen=True)
class Reference:
    """A ``steps.NAME.FIELD`` or ``params.NAME`` an expression reads."""

    root: str
    name: str
    field: str | None = None


def parse(text: str) -> ast.expr:
    """Parse and check one expression; ``ExpressionError`` names what is not allowed."""
    if len(text) > MAX_LEN:
        raise ExpressionError(f"expression longer than {MAX_LEN} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg}") from None
    for node in ast.walk(tree):
        _check(node)
    return tree.body


def _check(node: ast.AST) -> None:
    allowed = (
        ast.Expression,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.Attribute,
        ast.Subscript,
        ast.Compare,
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.USub,
        ast.BinOp,
        ast.Call,
        ast.List,
        ast.Tuple,
        ast.IfExp,
        *_COMPARE,
        *_ARITH,
    )
    if not isinstance(node, allowed):
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")
    if isinstance(node, ast.Name) and node.id not in NAMES and node.id not in FUNCTIONS:
        raise ExpressionError(f"unknown name {node.id!r} (use {', '.join(NAMES)})")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise ExpressionError(f"attribute {node.attr!r} is not allowed")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = ast.unparse(node.func)
            raise ExpressionError(f"calling {what!r} is not allowed (functions: {_fn_names()})")
        if node.keywords:
            raise ExpressionError("keyword arguments are not allowed")


def _fn_names() -> str:
    return ", ".join(sorted(FUNCTIONS))


def references(tree: ast.expr) -> list[Reference]:
    """Every ``steps.X[.field]`` and ``params.X`` the expression reads."""
    refs: list[Reference] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "params"
        ):
            refs.append(Reference("params", node.attr))
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "steps"
        ):
            refs.append(Reference("steps", node.value.attr, node.attr))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "steps"
        ):
            refs.append(Reference("steps", node.attr))
    # a bare steps.X appears in both forms; keep the one with a field when there is one
    with_field = {(r.root, r.name) for r in refs if r.field}
    return [r for r in refs if r.field or (r.root, r.name) not in with_field]


def evaluate(tree: ast.expr, context: Mapping[str, Any]) -> Any:
    """Interpret a checked expression against ``context`` (``params``, ``steps``, ...)."""
    try:
        return _eval(tree, context)
    except ExpressionError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:
        raise ExpressionError(
            f"{ast.unparse(tree)!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _get(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        if key not in value:
            raise KeyError(key)
        return value[key]
    if isinstance(value, list | tuple | str) and isinstance(key, int):
        return value[key]
    raise TypeError(f"cannot look up {key!r} in a {type(value).__name__}")


def _eval(node: ast.expr, ctx: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in ctx:
            raise ExpressionError(f"{node.id!r} is not available here")
        return ctx[node.id]
    if isinstance(node, ast.Attribute):
        return _get(_eval(node.value, ctx), node.attr)
    if isinstance(node, ast.Subscript):
        return _get(_eval(node.value, ctx), _eval(node.slice, ctx))
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, ctx) for e in node.elts]
    if isinstance(node, ast.BoolOp):  # Python's semantics: the deciding value, not a bool
        value: Any = None
        for operand in node.values:
            value = _eval(operand, ctx)
            if bool(value) != isinstance(node.op, ast.And):
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, ctx)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BinOp):
        return _ARITH[type(node.op)](_eval(node.left, ctx), _eval(node.right, ctx))
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, ctx) else node.orelse, ctx)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, ctx)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, ctx)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id](*(_eval(a, ctx) for a in node.args))
    raise ExpressionError(f"{type(node).__name__} is not allowed")  # pragma: no cover


# -- text fields with {expression} placeholders ------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")


@dataclass(frozen=True)
class TextTemplate:
    """A text with ``{expression}`` placeholders, checked once and rendered many times."""

    source: str
    parts: tuple[str | ast.expr, ...]

    def render(self, context: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else _text(evaluate(p, context)) for p in self.parts)

    def references(self) -> list[Reference]:
        return [r for p in self.parts if not isinstance(p, str) for r in references(p)]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def text_template(source: str) -> TextTemplate:
    """Parse a text field; ``ExpressionError`` names the bad placeholder."""
    parts: list[str | ast.expr] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(source):
        parts.append(source[pos : m.start()])
        if m.group(0) in ("{{", "}}"):
            parts.append(m.group(0)[0])
        else:
            try:
                parts.append(parse(m.group(1)))
            except ExpressionError as exc:
                raise ExpressionError(f"in {{{m.group(1)}}}: {exc}") from None
        pos = m.end()
    parts.append(source[pos:])
    rest = "".join(p for p in parts if isinstance(p, str))
    if "{" in source and not any(not isinstance(p, str) for p in parts) and "{" in rest:
        raise ExpressionError(f"unbalanced brace in {source!r}")
    return TextTemplate(source, tuple(p for p in parts if p != ""))
