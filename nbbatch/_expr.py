"""Row-choosing expressions (``where=`` / ``escalate_when=``), parsed and evaluated safely.

An expression such as ``"confidence < 0.7 and label != 'spam'"`` chooses rows of the
merged DataFrame. It is a string a user typed, but also one the ledger keeps and that
whichever process polls the job evaluates later (a script, the Jupyter server behind the
Lab sidebar). So it is never handed to ``eval``, ``DataFrame.eval`` or ``DataFrame.query``
(these resolve ``@names``, attributes and calls, which is running arbitrary code): it is
parsed with :mod:`ast`, every node is checked against a short list, and the tree is
evaluated here, vectorised over the frame's columns.

Allowed:

- column names (``confidence``), or any column name in backticks (```my column```);
- constants: numbers, strings, ``True``, ``False``, ``None``; lists or tuples of them
  (for ``in``);
- comparisons ``== != < <= > >=`` (chained too: ``0.2 < score <= 0.5``), ``in`` /
  ``not in`` a list, ``is None`` / ``is not None`` (a missing value);
- boolean ``and or not``, and their elementwise spellings ``& | ~``;
- arithmetic ``+ - * / // % **`` and unary ``-`` / ``+`` on numbers.

Everything else (attributes, calls, subscripts, ``@`` locals, lambdas, comprehensions,
names starting with ``__``) is refused with :class:`~nbbatch.InputError` when the
expression is given, before anything is sent or recorded. For anything beyond this, a
function of the merged DataFrame does it (``lambda out: out["text"].str.len() > 100``).
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from ._errors import InputError

#: Longer expressions are refused: nobody types one, and a deeply nested one could
#: exhaust the parser's recursion.
MAX_LENGTH = 2000
#: Placeholder names a backticked column is parsed as (``_nbbatch_col_0``, ...).
_BACKTICK = "_nbbatch_col_"

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_LOGICAL: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}
_HINT = (
    "An expression may use column names (in `backticks` if they have spaces), "
    "constants, comparisons, in/not in a list, is None, and/or/not (& | ~) and "
    "arithmetic; for anything else give a function of the merged DataFrame, e.g. "
    "lambda out: out['text'].str.len() > 100."
)


class Expression:
    """A checked expression: its text, its tree and the columns it reads."""

    def __init__(self, text: str, tree: ast.Expression, backticked: dict[str, str]) -> None:
        self.text = text
        self.tree = tree
        self._backticked = backticked
        self.columns: list[str] = sorted(
            {self._column(n.id) for n in ast.walk(tree) if isinstance(n, ast.Name)}
        )

    def _column(self, name: str) -> str:
        return self._backticked.get(name, name)

    def check_columns(self, columns: Iterable[Any], what: str = "the merged DataFrame") -> None:
        """Refuse an expression naming a column ``columns`` lacks, with a did-you-mean."""
        have = [str(c) for c in columns]
        for name in self.columns:
            if name not in have:
                close = difflib.get_close_matches(name, have, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise InputError(
                    f"the expression {self.text!r} names column {name!r}, which {what} "
                    f"will not have.{hint} Its columns: {have}."
                )

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        """One bool per row of ``frame``: the rows the expression chooses (a missing
        value compares false, as in pandas)."""
        self.check_columns(frame.columns)
        by_name = {str(c): c for c in frame.columns}
        try:
            value = _Evaluator(frame, by_name, self._column, self.text).visit(self.tree.body)
        except RecursionError:
            raise InputError(f"the expression {self.text!r} is too deeply nested.") from None
        if isinstance(value, pd.Series) and _is_boolean(value):
            return _truth(value)
        if isinstance(value, pd.Series):
            raise InputError(
                f"the expression {self.text!r} gives values of type {value.dtype}, not True "
                "or False for each row: compare them, e.g. 'confidence < 0.7'."
            )
        if isinstance(value, bool | np.bool_):
            # A constant (``"True"``): every row or none.
            return np.full(len(frame), bool(value))
        raise InputError(
            f"the expression {self.text!r} gives {type(value).__name__} {value!r}, not "
            "True or False for each row: compare a column, e.g. 'confidence < 0.7'."
        )


def parse(text: str) -> Expression:
    """Check ``text`` and return it parsed; raise :class:`InputError` saying what is
    not allowed and what to write instead (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("an expression must be a non-empty string, e.g. 'confidence < 0.7'.")
    if len(text) > MAX_LENGTH:
        raise InputError(
            f"the expression is {len(text):,} characters long (at most {MAX_LENGTH:,}): "
            "give a function of the merged DataFrame instead."
        )
    source, backticked = _replace_backticks(text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        if "@" in source:
            raise InputError(
                f"the expression {text!r} uses '@': local variables are not read into an "
                "expression (it is kept and may be evaluated later, in another process). "
                "Write the value itself, e.g. 'confidence < 0.7', or give a function. " + _HINT
            ) from None
        raise InputError(f"the expression {text!r} is not valid: {exc.msg}. {_HINT}") from None
    except (RecursionError, MemoryError, ValueError):
        raise InputError(f"the expression {text!r} is too deeply nested. {_HINT}") from None
    for node in ast.walk(tree):
        _check_node(node, text, backticked)
    return Expression(text, tree, backticked)


def _replace_backticks(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with each ```column name``` (outside string literals) replaced by a
    placeholder name, and the placeholders' column names."""
    out: list[str] = []
    names: dict[str, str] = {}
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise InputError(f"the expression {text!r} opens a ` it does not close.")
            placeholder = f"{_BACKTICK}{len(names)}"
            names[placeholder] = text[i + 1 : end]
            out.append(f" {placeholder} ")
            i = end
        else:
            out.append(ch)
        i += 1
    return "".join(out), names


def _check_node(node: ast.AST, text: str, backticked: dict[str, str]) -> None:
    """Refuse any node of a kind not listed in the module docstring."""
    ok: tuple[type[ast.AST], ...] = (
        ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Load,
        *_COMPARE, ast.In, ast.NotIn, ast.Is, ast.IsNot, *_ARITHMETIC, *_LOGICAL,
        ast.Not, ast.USub, ast.UAdd, ast.Invert,
    )  # fmt: skip
    if isinstance(node, ast.Name):
        if node.id.startswith("__") or (
            node.id.startswith(_BACKTICK) and node.id not in backticked
        ):
            raise InputError(f"the expression {text!r} uses the name {node.id!r}. {_HINT}")
        return
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, int | float | str | bool | type(None)):
            raise InputError(
                f"the expression {text!r} uses the constant {node.value!r}, which is not a "
                f"number, a string, True, False or None. {_HINT}"
            )
        return
    if isinstance(node, ast.List | ast.Tuple):
        if not all(_constant(e) is not _NOT_CONSTANT for e in node.elts):
            raise InputError(
                f"the expression {text!r} has a list or tuple of other things than "
                f"constants: only e.g. label in ['spam', 'ham'] is allowed. {_HINT}"
            )
        return
    if isinstance(node, ast.BinOp | ast.UnaryOp) or isinstance(node, ok):
        if isinstance(node, ast.BinOp) and not isinstance(node.op, tuple(_ARITHMETIC)):
            if not isinstance(node.op, tuple(_LOGICAL)):
                raise InputError(_refused(node.op, text))
        return
    raise InputError(_refused(node, text))


_NOT_CONSTANT = object()


def _constant(node: ast.AST) -> Any:
    """The value of a constant, a signed number included (``-1`` is ``-`` applied to
    ``1`` in the tree); ``_NOT_CONSTANT`` for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    return _NOT_CONSTANT


def _refused(node: ast.AST, text: str) -> str:
    kind = {
        ast.Attribute: "an attribute (x.y)",
        ast.Call: "a call (f(...))",
        ast.Subscript: "a subscript (x[...])",
        ast.Lambda: "a lambda",
        ast.IfExp: "an if-else",
        ast.NamedExpr: "an assignment (:=)",
        ast.JoinedStr: "an f-string",
        ast.MatMult: "'@'",
    }.get(type(node), type(node).__name__)
    return f"the expression {text!r} uses {kind}, which is not allowed. {_HINT}"


def _is_boolean(value: pd.Series) -> bool:
    """Whether a column holds only True, False or missing values (a flag column)."""
    if pd.api.types.is_bool_dtype(value.dtype):
        return True
    return value.dtype == object and all(
        isinstance(v, bool | np.bool_) or _missing(v) for v in value
    )


def _truth(value: Any) -> Any:
    """A Series as one bool per row (missing: False); a scalar as a bool."""
    if isinstance(value, pd.Series):
        if value.dtype == bool:
            return value.to_numpy()
        return np.array([bool(v) if not _missing(v) else False for v in value], dtype=bool)
    return bool(value)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _numeric(value: Any, text: str) -> Any:
    """``value`` if it is a number or a Series of numbers: arithmetic on strings (or
    huge Python integers) could take any amount of memory or time."""
    if isinstance(value, pd.Series):
        if pd.api.types.is_numeric_dtype(value.dtype) or pd.api.types.is_bool_dtype(value.dtype):
            return value
        raise InputError(
            f"the expression {text!r} does arithmetic on column {value.name!r}, which does "
            f"not hold numbers (dtype {value.dtype})."
        )
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return np.float64(value)  # overflows to inf rather than growing without bound
    if isinstance(value, float | np.floating):
        return np.float64(value)
    raise InputError(f"the expression {text!r} does arithmetic on {value!r}, not a number.")


class _Evaluator:
    """Evaluates a checked tree over the columns of one frame."""

    def __init__(
        self,
        frame: pd.DataFrame,
        by_name: dict[str, Any],
        column: Callable[[str], str],
        text: str,
    ) -> None:
        self.frame = frame
        self.by_name = by_name
        self.column = column
        self.text = text

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self.frame[self.by_name[self.column(node.id)]]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [_constant(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            values = [_as_mask(self.visit(v), len(self.frame)) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = values[0]
            for value in values[1:]:
                out = combine(out, value)
            return pd.Series(out, index=self.frame.index)
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.Not | ast.Invert):
                return pd.Series(~_as_mask(operand, len(self.frame)), index=self.frame.index)
            value = _numeric(operand, self.text)
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if type(node.op) in _LOGICAL:
                n = len(self.frame)
                combined = _LOGICAL[type(node.op)](_as_mask(left, n), _as_mask(right, n))
                return pd.Series(combined, index=self.frame.index)
            with np.errstate(all="ignore"):
                return _ARITHMETIC[type(node.op)](
                    _numeric(left, self.text), _numeric(right, self.text)
                )
        if isinstance(node, ast.Compare):
            return self._compare(node)
        raise InputError(_refused(node, self.text))  # unreachable: parse() checked the tree

    def _compare(self, node: ast.Compare) -> Any:
        n = len(self.frame)
        out = np.ones(n, dtype=bool)
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.visit(right_node)
            out &= _as_mask(_compare_one(op, left, right, self.text), n)
            left = right
        return pd.Series(out, index=self.frame.index)


def _compare_one(op: ast.cmpop, left: Any, right: Any, text: str) -> Any:
    """One comparison, elementwise when either side is a column."""
    if isinstance(op, ast.Is | ast.IsNot) or (
        isinstance(op, ast.Eq | ast.NotEq) and (left is None or right is None)
    ):
        other = right if left is None else left
        found = pd.isna(other) if other is not None else True
        missing = found.to_numpy() if isinstance(found, pd.Series) else found
        return ~missing if isinstance(op, ast.IsNot | ast.NotEq) else missing
    if isinstance(op, ast.In | ast.NotIn):
        if not isinstance(right, list):
            raise InputError(
                f"the expression {text!r} has 'in' without a list of constants on its right, "
                "e.g. label in ['spam', 'ham']."
            )
        inside = left.isin(right).to_numpy() if isinstance(left, pd.Series) else left in right
        return ~inside if isinstance(op, ast.NotIn) else inside
    try:
        result = _COMPARE[type(op)](left, right)
    except TypeError as exc:
        raise InputError(
            f"the expression {text!r} compares values that cannot be compared: {exc}"
        ) from None
    if isinstance(result, pd.Series):
        # A missing value compares false (pandas gives NA or False depending on dtype).
        return result.fillna(False).astype(bool).to_numpy()
    return result


def _as_mask(value: Any, n: int) -> np.ndarray:
    """``value`` as n bools (a scalar broadcast)."""
    if isinstance(value, pd.Series | np.ndarray):
        series = value if isinstance(value, pd.Series) else pd.Series(value)
        return np.asarray(_truth(series), dtype=bool)
    return np.full(n, bool(value))
