"""Property-based: any index pandas allows and any text go through a real job and back.

Each example is a whole job through the public API, the official SDK and HTTP to the
emulator: every row comes back exactly once with its own answer, the frame's index,
columns and order untouched; a re-indexed, shuffled or edited copy is refused.
``NBBATCH_PROPERTY_EXAMPLES`` sets the number of examples (10,000 for a long run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import emulator

from .conftest import client_for, model_for

EXAMPLES = int(os.environ.get("NBBATCH_PROPERTY_EXAMPLES", "200"))
PROMPT = "Label «{text}» ({n})"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}

pytestmark = pytest.mark.slow

SPECIAL = [
    "",
    "   ",
    "\x00",
    'say "hi"',
    "back\\slash \\n not a newline",
    "two\nlines\r\nand a tab\t",
    "emoji 🎉👍🏽 and ZWJ 👩‍💻",
    "{not a placeholder}",
    "x" * 3000,
]
texts = st.one_of(
    # Hypothesis also draws string constants from the code under test, the emulator's
    # fault markers among them ("[[emulator:fail]]" fails its row on purpose).
    st.text(max_size=30).filter(lambda t: "[[emulator:" not in t),
    st.sampled_from(SPECIAL),
    st.none(),
)
surrogate_text = st.builds(
    lambda a, s, b: a + s + b,
    st.text(max_size=5),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=5),
)
labels = st.one_of(
    st.integers(-5, 5), st.text(max_size=6), st.tuples(st.text(max_size=2), st.integers(0, 3))
)


@st.composite
def indexes(draw: st.DrawFn, n: int) -> pd.Index:
    """An index of ``n`` labels of one of the kinds pandas allows (duplicates included)."""
    kind = draw(
        st.sampled_from(
            ["range", "ints", "floats", "strings", "tuples", "mixed", "multi", "dates", "category"]
        )
    )
    if kind == "range":
        start, step = draw(st.integers(-100, 100)), draw(st.sampled_from([1, 2, -1, 7]))
        return pd.RangeIndex(start, start + step * n, step)
    if kind == "ints":
        return pd.Index(draw(st.lists(st.integers(-3, 3) | st.integers(), min_size=n, max_size=n)))
    if kind == "floats":
        values = draw(st.lists(st.floats(allow_nan=True) | st.just(np.nan), min_size=n, max_size=n))
        return pd.Index(values, dtype=float)
    if kind == "strings":
        values = draw(st.lists(st.text(max_size=8) | surrogate_text, min_size=n, max_size=n))
        return pd.Index(values, dtype=object)
    if kind == "tuples":
        values = draw(
            st.lists(st.tuples(st.text(max_size=3), st.integers(0, 2)), min_size=n, max_size=n)
        )
        return pd.Index(values, dtype=object, tupleize_cols=False)
    if kind == "mixed":
        return pd.Index(
            draw(st.lists(labels, min_size=n, max_size=n)), dtype=object, tupleize_cols=False
        )
    if kind == "multi":
        first = draw(st.lists(st.sampled_from(["a", "b", "ü"]), min_size=n, max_size=n))
        second = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        return pd.MultiIndex.from_arrays([first, second], names=["k", "j"])
    if kind == "dates":
        tz = draw(st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"]))
        offsets = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n))
        return pd.DatetimeIndex(pd.Timestamp("2026-01-01", tz=tz) + pd.to_timedelta(offsets, "min"))
    values = draw(st.lists(st.sampled_from(["red", "green", "blue"]), min_size=n, max_size=n))
    return pd.CategoricalIndex(values)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 12))
    index = draw(indexes(n))
    text = draw(st.lists(texts, min_size=n, max_size=n))
    if draw(st.sampled_from([False] * 19 + [True])):  # now and then, a lone surrogate
        text[draw(st.integers(0, n - 1))] = draw(surrogate_text)
    numbers = draw(st.lists(st.integers(-(10**12), 10**12), min_size=n, max_size=n))
    # pandas' own string dtype where it can; object where it must (it would not even hold
    # a lone surrogate), as a user's scraped data arrives
    try:
        column = pd.Series(text)
    except UnicodeEncodeError:
        column = pd.Series(text, dtype=object)
    frame = pd.DataFrame({"text": column, "n": numbers, "extra": range(n)})
    frame.index = index
    return frame


def expected(df: pd.DataFrame) -> list[str | None]:
    """The emulator's answer for each row, None for a row that is not sent."""
    out: list[str | None] = []
    for text, n in zip(df["text"], df["n"], strict=True):
        prompt = None if pd.isna(text) else PROMPT.format(text=text, n=n)
        out.append(None if prompt is None or not prompt.strip() else emulator.echo_text(prompt))
    return out


def check_merge(job: nb.BatchJob, df: pd.DataFrame) -> None:
    out = job.merge(df)
    pd.testing.assert_index_equal(out.index, df.index, exact=True)
    assert list(out.columns) == [*df.columns, "label", "label_status", "label_error"]
    pd.testing.assert_frame_equal(out[list(df.columns)], df)
    want = expected(df)
    statuses = out["label_status"].tolist()
    for got, status, answer in zip(out["label"], statuses, want, strict=True):
        if answer is None:
            assert status == "skipped"
        else:
            assert status == "succeeded" and got == answer
    assert sum(job.counts[s] for s in ("succeeded", "skipped", "failed", "expired")) == len(df)


def check_refusals(job: nb.BatchJob, df: pd.DataFrame, data: st.DataObject) -> None:
    """A copy whose rows moved under the same labels, or was edited, is refused (or, if
    the move changed no request, still gives each row its own answer)."""
    perm = data.draw(st.permutations(range(len(df))))
    moved = df.iloc[list(perm)].set_axis(df.index)
    try:
        out = job.merge(moved)
    except nb.MergeError:
        pass
    else:
        assert [
            a if s == "succeeded" else None
            for a, s in zip(out["label"], out["label_status"], strict=True)
        ] == expected(moved)
    edited = df.copy()
    row = data.draw(st.integers(0, len(df) - 1))
    edited.iloc[row, edited.columns.get_loc("text")] = f"edited: {df['text'].iloc[row]!r}"
    with pytest.raises(nb.MergeError):
        job.merge(edited)
    if df.index.is_unique and len(df) > 1:  # a pure shuffle keeps labels: it merges
        shuffled = df.iloc[list(perm)]
        got = job.merge(shuffled)
        pd.testing.assert_index_equal(got.index, shuffled.index, exact=True)
        assert [
            a if s == "succeeded" else None
            for a, s in zip(got["label"], got["label_status"], strict=True)
        ] == expected(shuffled)


def has_surrogate(df: pd.DataFrame) -> bool:
    return any(
        isinstance(t, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in df["text"]
    )


def sendable(df: pd.DataFrame) -> bool:
    return any(a is not None for a in expected(df))


@pytest.fixture(scope="module")
def fast_local() -> Iterator[None]:
    """``provider="local"`` runs on the background emulator; make its batches quick."""
    old = os.environ.get("NBBATCH_EMULATOR_SPEED")
    os.environ["NBBATCH_EMULATOR_SPEED"] = "1000"
    yield
    if old is None:
        os.environ.pop("NBBATCH_EMULATOR_SPEED", None)
    else:
        os.environ["NBBATCH_EMULATOR_SPEED"] = old


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(df=frames(), data=st.data())
def test_any_frame_round_trips_on_the_local_backend(fast_local, provider, df, data):
    submit = dict(model=MODELS[provider], provider="local", output="label", display=False)
    if has_surrogate(df):
        event("refused: a lone surrogate")
        with pytest.raises(nb.InputError, match="surrogate"):
            nb.submit(df, PROMPT, **submit)
        return
    if not sendable(df):
        event("refused: no row to send")
        with pytest.raises(nb.InputError, match="would be sent"):
            nb.submit(df, PROMPT, **submit)
        return
    event("a job ran")
    job = nb.submit(df, PROMPT, wait=True, progress=False, **submit)
    check_merge(job, df)
    check_refusals(job, df, data)


@pytest.fixture(scope="module")
def faulty() -> Iterator[emulator.Emulator]:
    with emulator.start(processing_seconds=0.0, error_rate=0.3, expire_rate=0.1) as server:
        yield server


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@settings(
    max_examples=max(10, EXAMPLES // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(df=frames())
def test_failed_rows_resubmitted_end_with_their_own_answers(faulty, provider, df):
    if has_surrogate(df) or not sendable(df):
        return
    client = client_for(provider, faulty)
    job = nb.submit(
        df, PROMPT, model=model_for(client), client=client, output="label", retries=0,
        force=True, reuse=False, display=False,
    )  # fmt: skip
    job.wait(timeout=60, progress=False)
    first = job.merge(df)
    # Each row once: its own answer, or a failure; never another row's answer.
    for got, status, answer in zip(
        first["label"], first["label_status"], expected(df), strict=True
    ):
        assert status in ("succeeded", "failed", "expired", "skipped")
        if status == "succeeded":
            assert got == answer
    job.resubmit_failed().wait(timeout=60, progress=False)
    check_merge(job, df)
