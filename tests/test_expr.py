"""Row-choosing expressions: only plain expressions over columns are accepted, and they
are evaluated by nbbatch itself, never as code (``where=`` / ``escalate_when=``)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbbatch import InputError
from nbbatch import _expr as expr

FRAME = pd.DataFrame(
    {
        "a": [1, 2, 3, 4, 5],
        "b": [5, 0, -3, 4, 1],
        "score": [0.1, 0.9, np.nan, 0.3, 0.7],
        "label": ["spam", "ham", None, "spam", "eggs"],
        "my col": [1.0, 2.0, 3.0, 4.0, 5.0],
        "response_status": ["succeeded", "failed", "succeeded", "expired", "succeeded"],
    }
)


def choose(text: str, frame: pd.DataFrame = FRAME) -> list[bool]:
    return expr.parse(text).evaluate(frame).tolist()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a > 2", [False, False, True, True, True]),
        ("score < 0.5", [True, False, False, True, False]),  # NaN compares false
        ("not score < 0.5", [False, True, True, False, True]),
        ("0.2 < score <= 0.9", [False, True, False, True, True]),
        ("label == 'spam' and a > 1", [False, False, False, True, False]),
        ("(label == 'spam') | (b < 0)", [True, False, True, True, False]),
        ("~(a > 2) & (b > 0)", [True, False, False, False, False]),
        ("label in ['ham', 'eggs']", [False, True, False, False, True]),
        ("label not in ('ham', 'eggs')", [True, False, True, True, False]),
        ("label is None", [False, False, True, False, False]),
        ("score is not None", [True, True, False, True, True]),
        ("label == None", [False, False, True, False, False]),
        ("a * 2 - b >= 5", [False, False, True, False, True]),
        ("a % 2 == 1 or a // 4 == 1", [True, False, True, True, True]),
        ("-a < -3", [False, False, False, True, True]),
        ("a ** 2 > 10", [False, False, False, True, True]),
        ("a / b > 1", [False, True, False, False, True]),  # 2 / 0 is inf, not an error
        ("`my col` >= 4", [False, False, False, True, True]),
        ("`my col` > a", [False, False, False, False, False]),
        ("response_status != 'succeeded'", [False, True, False, True, False]),
        ("label == 'a`b'", [False] * 5),  # a backtick in a string is a character
        ("True", [True] * 5),
        ("False", [False] * 5),
    ],
)
def test_allowed_expressions_choose_the_rows_pandas_would(text, want):
    assert choose(text) == want


def test_evaluation_never_goes_through_dataframe_eval_or_query(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("DataFrame.eval/query must not be used")

    monkeypatch.setattr(pd.DataFrame, "eval", refuse)
    monkeypatch.setattr(pd.DataFrame, "query", refuse)
    monkeypatch.setattr(pd, "eval", refuse)
    assert choose("a > 2 and label != 'ham'") == [False, False, True, True, True]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("@pd.io.common.os.system('id')", "uses '@'"),
        ("a > @threshold", "uses '@'"),
        ("a @ b", "uses '@'"),
        ("label.str.contains('x')", "a call"),
        ("label.str == 'x'", "an attribute"),
        ("a.__class__", "an attribute"),
        ("__import__('os').system('id')", "a call"),
        ("len(label) > 3", "a call"),
        ("label[0] == 's'", "a subscript"),
        ("(lambda: 1)() == 1", "a call"),
        ("(lambda: 1) == 1", "a lambda"),
        ("[x for x in a] == 1", "ListComp"),
        ("{x for x in a}", "SetComp"),
        ("{'k': 1} == a", "Dict"),
        ("a if b else score", "an if-else"),
        ("(x := 1) == a", "an assignment"),
        ("f'{a}' == '1'", "an f-string"),
        ("__builtins__ == 1", "the name '__builtins__'"),
        ("a in [b, 1]", "constants"),
        ("a << 2 == 4", "LShift"),
        ("a > 2; b", "not valid"),
        ("import os", "not valid"),
        ("a >", "not valid"),
        ("`my col > 1", "does not close"),
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("a > 1" + " or a > 1" * 300, "characters long"),
        ("(" * 500 + "a" + ")" * 500 + " > 1", "not valid"),
        ("a in [-1, +2, 'x', None, -'x']", "constants"),
        (b"a > 1", "non-empty string"),
        ("b'x' == label", "constant"),
        ("1j == a", "constant"),
        ("... == a", "constant"),
    ],
)
def test_anything_but_a_plain_expression_is_refused_with_a_clear_error(text, words):
    with pytest.raises(InputError) as raised:
        expr.parse(text)  # type: ignore[arg-type]
    assert words in str(raised.value)


def test_an_unknown_column_is_named_with_a_did_you_mean_and_the_columns():
    parsed = expr.parse("scor < 0.3 and label == 'x'")
    assert parsed.columns == ["label", "scor"]
    with pytest.raises(InputError) as raised:
        parsed.evaluate(FRAME)
    message = str(raised.value)
    assert "names column 'scor'" in message and "Did you mean 'score'?" in message
    assert "'response_status'" in message  # the list of columns


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("label * 1000000000 == 'x'", "does not hold numbers"),
        ("-label == 'x'", "does not hold numbers"),
        ("'x' * 1000000000 == label", "not a number"),
        ("label < 3", "cannot be compared"),
        ("a + 1", "not True or False"),
        ("label", "not True or False"),
        ("-" * 1900 + "a > 1", "nested"),
        ("10 ** 10 ** 10", "not True or False"),
    ],
)
def test_values_that_make_no_mask_are_refused_when_evaluated(text, words):
    started = time.monotonic()
    with pytest.raises(InputError) as raised:
        expr.parse(text).evaluate(FRAME)
    assert words in str(raised.value)
    assert time.monotonic() - started < 5  # no huge string or integer was ever built


# -- properties ----------------------------------------------------------------------------------
COLUMNS = ["a", "b", "c"]


@st.composite
def arithmetic(draw, depth: int = 2) -> tuple[str, str]:
    """An arithmetic expression, as nbbatch reads it and as Python would (same text)."""
    if depth == 0 or draw(st.booleans()):
        leaf = draw(st.one_of(st.sampled_from(COLUMNS), st.integers(-5, 5).map(str)))
        return leaf, leaf
    if draw(st.integers(0, 4)) == 0:
        inner, _ = draw(arithmetic(depth - 1))
        return f"(-{inner})", f"(-{inner})"
    left, _ = draw(arithmetic(depth - 1))
    right, _ = draw(arithmetic(depth - 1))
    op = draw(st.sampled_from(["+", "-", "*"]))
    return f"({left} {op} {right})", f"({left} {op} {right})"


@st.composite
def condition(draw, depth: int = 2) -> tuple[str, str]:
    """A condition, as nbbatch reads it and its Python spelling on one row's scalars
    (``&``, ``|``, ``~`` become ``and``, ``or``, ``not``)."""
    kind = draw(st.integers(0, 6 if depth else 1))
    if kind == 0:
        ops = draw(st.lists(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), min_size=1,
                            max_size=2))  # fmt: skip
        terms = [draw(arithmetic()) for _ in range(len(ops) + 1)]
        text = terms[0][0] + "".join(f" {o} {t[0]}" for o, t in zip(ops, terms[1:], strict=True))
        return f"({text})", f"({text})"
    if kind == 1:
        column = draw(st.sampled_from(COLUMNS))
        values = draw(st.lists(st.integers(-5, 5), max_size=3))
        negate = draw(st.booleans())
        text = f"({column} {'not in' if negate else 'in'} {values})"
        return text, text
    left, right = draw(condition(depth - 1)), draw(condition(depth - 1))
    if kind == 2:
        return f"({left[0]} and {right[0]})", f"({left[1]} and {right[1]})"
    if kind == 3:
        return f"({left[0]} or {right[0]})", f"({left[1]} or {right[1]})"
    if kind == 4:
        return f"({left[0]} & {right[0]})", f"({left[1]} and {right[1]})"
    if kind == 5:
        return f"({left[0]} | {right[0]})", f"({left[1]} or {right[1]})"
    return f"(~{left[0]})", f"(not {left[1]})"


@settings(max_examples=300, deadline=None)
@given(
    cond=condition(),
    rows=st.lists(st.tuples(*[st.integers(-6, 6)] * 3), min_size=1, max_size=8),
)
def test_allowed_expressions_agree_with_python_row_by_row(cond, rows):
    text, reference = cond
    frame = pd.DataFrame(rows, columns=COLUMNS)
    want = [
        # The reference: plain Python on each row's integers (the generator only
        # builds what that can run: no attribute, no call, no name but the columns).
        bool(eval(reference, {"__builtins__": {}}, dict(zip(COLUMNS, row, strict=True))))  # noqa: S307
        for row in rows
    ]
    assert expr.parse(text).evaluate(frame).tolist() == want


FORBIDDEN = [
    "a.real", "abs(a)", "a[0]", "(lambda: a)", "[x for x in [1]]", "{1: a}", "{a}",
    "(b if a else c)", "(y := a)", "f'{a}'", "__class__", "a.__class__.__mro__",
    "getattr(a, 'x')", "a @ b", "a << 1", "a >> 1", "a ^ b", "(*a,)", "[a]",
    "__import__('os')", "b'x'", "await a", "(yield a)", "a[1:2]", "{**a}",
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(cond=condition(depth=1), bad=st.sampled_from(FORBIDDEN), where=st.integers(0, 2))
def test_any_forbidden_node_anywhere_is_refused(cond, bad, where):
    text = [f"{cond[0]} and ({bad} > 1)", f"({bad} == a) or {cond[0]}", f"not ({bad})"][where]
    with pytest.raises(InputError):
        expr.parse(text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_any_text_is_either_a_checked_expression_or_an_input_error(text):
    try:
        parsed = expr.parse(text)
    except InputError:
        return
    # two rows even when the expression names no column (a constant such as 'False')
    frame = pd.DataFrame({c: [1, 2] for c in parsed.columns}, index=[0, 1])
    try:
        mask = parsed.evaluate(frame)
    except InputError:
        return
    assert mask.dtype == bool and len(mask) == 2


def test_nullable_columns_compare_missing_values_as_false():
    """What merge gives: string and nullable columns (``{output}_model`` is a string
    column, a structured field may be missing on a failed row)."""
    frame = pd.DataFrame(
        {
            "response_model": pd.array(["gpt-4o-mini", None, "gpt-4o"], dtype="string"),
            "stars": pd.array([1, None, 5], dtype="Int64"),
            "flag": pd.array([True, None, False], dtype="boolean"),
        }
    )
    assert choose("response_model == 'gpt-4o'", frame) == [False, False, True]
    assert choose("response_model in ['gpt-4o-mini']", frame) == [True, False, False]
    assert choose("stars * 2 > 4", frame) == [False, False, True]
    assert choose("stars is None", frame) == [False, True, False]
    assert choose("flag", frame) == [True, False, False]
    assert choose("flag or stars > 4", frame) == [True, False, True]
