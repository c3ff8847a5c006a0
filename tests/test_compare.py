"""``job.compare(other)`` / ``nb.compare(a, b)``: two jobs over the same rows, through the
OpenAI SDK and the emulator, with a responder whose answers depend on the model, so the
expected changes are known exactly."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import _comparison as compare_mod
from nbbatch import emulator

from .conftest import client_for

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "number"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


def responder(request: emulator.Request) -> dict | str:
    """Row ``i``: label "yes" for even i; the large model says "no" for rows divisible
    by 3 and scores every row 0.1 higher. Text answers repeat the prompt, the large
    model's in capitals for rows divisible by 5."""
    i = int(request.prompt.split()[-1])
    large = request.model == "gpt-4o"
    if request.schema is None:
        return request.prompt.upper() if large and i % 5 == 0 else request.prompt
    label = "no" if (large and i % 3 == 0) or i % 2 else "yes"
    return {"label": label, "score": i / 100 + (0.1 if large else 0.0)}


@pytest.fixture(scope="module")
def server():
    with emulator.start(processing_seconds=0.02, responder=responder) as s:
        yield s


def run(server, df, model="gpt-4o-mini", **kwargs):
    job = nb.submit(df, "Row {i}", model=model, client=client_for("openai", server),
                    display=False, **kwargs)  # fmt: skip
    job.wait(timeout=120, progress=False)
    return job


def rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"i": range(n)}, index=pd.Index([f"r{k}" for k in range(n)], name="rid"))


def test_another_model_changes_exactly_the_rows_it_answers_differently(server):
    df = rows(30)
    small = run(server, df, response_format=SCHEMA)
    large = run(server, df, model="gpt-4o", response_format=SCHEMA)
    c = small.compare(large)
    assert c.rows == 30 and "index label" in c.matched_by
    # Every row's score changed; the label changed on even rows divisible by 3.
    flipped = [i for i in range(30) if i % 3 == 0 and i % 2 == 0]
    assert list(c.changed.index) == [f"r{i}" for i in range(30)]
    assert c.churn["score"] == 1.0
    assert c.churn["label"] == pytest.approx(len(flipped) / 30)
    label = next(f for f in c.fields if f.name == "label")
    assert label.kind == "label"
    assert label.before == {"yes": 15, "no": 15}
    assert label.after == {"no": 15 + len(flipped), "yes": 15 - len(flipped)}
    assert label.statistic == "chi2" and label.value > 0
    score = next(f for f in c.fields if f.name == "score")
    assert score.kind == "number"
    assert score.after["mean"] == pytest.approx(score.before["mean"] + 0.1)
    assert c.changed.loc["r6", "label_before"] == "yes"
    assert c.changed.loc["r6", "label_after"] == "no"
    assert c.lineage_changes() == {"model": (("gpt-4o-mini",), ("gpt-4o",))}
    text = repr(c)
    assert "model gpt-4o-mini -> gpt-4o" in text and "prompt" in text and "(same)" in text
    assert "churn" in text and "label" in text and "cost:" in text and "time:" in text
    html = c._repr_html_()
    assert "<table" in html and "churn" in html
    assert c.summary().loc["label", "changed"] == len(flipped)
    assert nb.compare(small, large).churn.equals(c.churn)


def test_rows_are_matched_by_label_not_position_and_a_re_run_changes_nothing(server):
    df = rows(12)
    first = run(server, df, response_format=SCHEMA)
    shuffled = run(server, df.sample(frac=1, random_state=3), response_format=SCHEMA,
                   system="Answer carefully.")  # fmt: skip
    c = first.compare(shuffled)
    assert c.changed.empty  # same answers row for row, though in another order
    assert c.churn.tolist() == [0.0, 0.0]
    assert set(c.lineage_changes()) == {"prompt_hash"}  # a new prompt version


def test_an_id_column_matches_rows_and_text_outputs_compare(server):
    df = pd.DataFrame({"key": [f"k{i}" for i in range(10)], "i": range(10)})
    small = run(server, df, id_column="key")
    large = run(server, df.iloc[::-1].reset_index(drop=True), model="gpt-4o", id_column="key")
    c = nb.compare(small, large)
    assert "id_column 'key'" in c.matched_by
    assert list(c.changed.index) == ["k0", "k5"]
    field = c.fields[0]
    assert field.kind == "text" and field.statistic == "normalised match"
    assert field.value == 1.0  # only the case changed
    assert c.changed.loc["k5", "response_after"] == "ROW 5"


def test_jobs_over_different_rows_are_refused_with_counts(server):
    a = run(server, rows(6))
    b = run(server, rows(8))
    with pytest.raises(nb.InputError, match=r"different rows.*0 of the 6 rows.*2 of the 8"):
        a.compare(b)
    with pytest.raises(nb.InputError, match="another job"):
        a.compare("not a job")  # type: ignore[arg-type]
    structured = run(server, rows(6), response_format=SCHEMA)
    with pytest.raises(nb.InputError, match="free text"):
        a.compare(structured)


def test_repeated_labels_compare_only_in_the_same_order(server):
    df = pd.DataFrame({"i": range(4)}, index=[0, 0, 1, 1])
    a = run(server, df)
    assert a.compare(run(server, df, model="gpt-4o")).rows == 4
    with pytest.raises(nb.InputError, match="repeated labels"):
        a.compare(run(server, df.iloc[::-1]))


def test_a_failed_row_counts_as_changed(server):
    df = rows(4)
    a = run(server, df)
    flaky = emulator.start(
        processing_seconds=0.02,
        responder=lambda r: (_ for _ in ()).throw(ValueError("no")) if r.prompt.endswith("2")
        else responder(r),
    )  # fmt: skip
    with flaky as s2:
        job = nb.submit(df, "Row {i}", model="gpt-4o-mini", client=client_for("openai", s2),
                        display=False, retries=0)  # fmt: skip
        job.wait(timeout=120, progress=False)
    c = a.compare(job)
    assert list(c.changed.index) == ["r2"]
    assert c.changed.loc["r2", "status_after"] == "failed"
    assert c.fields[0].compared == 3


# -- the statistics, on values of any kind ------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-5, 5)), min_size=1),
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-5, 5)), min_size=1),
)
def test_numeric_shift_statistics_are_bounded(before, after):
    import numpy as np

    b = np.array(before, dtype=object)
    a = np.array(after, dtype=object)
    shift = compare_mod._shift("x", compare_mod._comparable(b), compare_mod._comparable(a), 0)
    if shift.kind == "number" and shift.value is not None:
        assert 0.0 <= shift.value <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=40))
def test_label_counts_and_chi2_of_identical_columns(values):
    import numpy as np

    v = compare_mod._comparable(np.array(values, dtype=object))
    shift = compare_mod._shift("x", v, v, 0)
    assert sum(shift.before.values()) == sum(x is not None for x in values)
    assert shift.before == shift.after
    assert shift.value is None or shift.value == pytest.approx(0.0)


def test_the_html_shows_a_churn_chart_when_matplotlib_is_installed(server):
    pytest.importorskip("matplotlib")
    import base64

    df = rows(6)
    c = run(server, df, response_format=SCHEMA).compare(
        run(server, df, model="gpt-4o", response_format=SCHEMA)
    )
    png = compare_mod.churn_chart(c)
    assert png is not None and base64.b64decode(png).startswith(b"\x89PNG")
    assert '<img alt="churn per field"' in c._repr_html_()
    bundle = c._repr_mimebundle_()
    assert bundle["text/plain"] == repr(c) and "text/html" in bundle


# -- matching rows, whatever their labels ---------------------------------------------------
def _side(job_id, keys, id_column=None):
    """What match_rows reads of a job: its id, id_column and row keys (no emulator can
    give rows of arbitrary labels faster)."""
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa

    manifest = pa.table({"key": pa.array(np.asarray(keys, dtype=np.uint64))})
    ctx = SimpleNamespace(id=job_id, record={"id_column": id_column})
    return ctx, SimpleNamespace(manifest=manifest)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=50), st.randoms())
def test_rows_in_any_order_match_by_key_and_other_rows_are_refused(keys, random):

    shuffled = list(keys)
    random.shuffle(shuffled)
    before, after = _side("a", keys), _side("b", shuffled)
    take, _ = compare_mod.match_rows(before[0], before[1], after[0], after[1])
    assert [shuffled[t] for t in take] == keys
    if keys:
        fewer = _side("b", shuffled[1:])
        with pytest.raises(nb.InputError, match="different rows"):
            compare_mod.match_rows(before[0], before[1], fewer[0], fewer[1])
        repeated = _side("b", [*keys, keys[0]])
        with pytest.raises(nb.InputError, match="repeated labels|different rows"):
            compare_mod.match_rows(before[0], before[1], repeated[0], repeated[1])
