"""``nb.pilot``: every setting on a seeded sample, compared with a reference, the
cheapest good-enough setting recommended, and the whole table run without paying for
the sample's rows twice. On the emulator with models of known quality
(``start(quality=...)``), through ``nb.submit``/``nb.try_now`` and the official SDK."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import openai
import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import _agreement as agreement
from nbbatch import emulator
from nbbatch.datasets import reviews, sentiment_responder

pytestmark = pytest.mark.slow

QUALITY = {"gpt-4o-mini": 0.8, "gpt-4o": 1.0}


class Sentiment(pydantic.BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = pydantic.Field(ge=0, le=1)


@pytest.fixture(scope="module")
def server() -> Iterator[emulator.Emulator]:
    with emulator.start(
        processing_seconds=0.05, responder=sentiment_responder(), quality=QUALITY
    ) as emu:
        yield emu


@pytest.fixture(scope="module")
def client(server: emulator.Emulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_base_url, api_key="k", timeout=60) as c:
        yield c


def requests_sent(client: openai.OpenAI, job: nb.BatchJob) -> int:
    """How many requests the provider received in the job's batches."""
    total = 0
    for batch_id in job.batch_ids:
        counts = client.batches.retrieve(batch_id).request_counts
        assert counts is not None
        total += counts.total
    return total


def test_settings_compared_with_the_strongest_and_the_cheapest_good_one_recommended(
    client: openai.OpenAI,
) -> None:
    df = reviews(600)
    p = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], pack=[1, 10], n=150,
                 seed=3, response_format=Sentiment, client=client)  # fmt: skip
    assert [s.name for s in p.settings] == [
        "gpt-4o-mini", "gpt-4o-mini pack=10", "gpt-4o", "gpt-4o pack=10",
    ]  # fmt: skip
    assert len(p.sample) == 150 and p.sample.index.isin(df.index).all()
    assert p.reference is not None and p.reference.name == "gpt-4o"  # dearest, unpacked
    t = p.table
    assert t.loc["gpt-4o", "agreement"] == 1.0 and t.loc["gpt-4o pack=10", "agreement"] == 1.0
    # The small model agrees on about 80% of rows; its interval holds the share measured
    # directly, and packing does not change which rows (the emulator's choice is per row).
    small = p.answers("gpt-4o-mini")
    large = p.answers("gpt-4o")
    share = float((small["label"] == large["label"]).mean())
    assert t.loc["gpt-4o-mini", "agreement"] == pytest.approx(share)
    assert t.loc["gpt-4o-mini", "agreement_low"] < share < t.loc["gpt-4o-mini", "agreement_high"]
    assert 0.65 < share < 0.92
    pd.testing.assert_series_equal(small["label"], p.answers("gpt-4o-mini pack=10")["label"])
    # Kappa is below agreement (chance agreement taken out) and has an interval.
    assert t.loc["gpt-4o-mini", "kappa_low"] < t.loc["gpt-4o-mini", "kappa"] < share
    # Costs: the sample's, and the whole table's projected from it.
    # Projected from every row's usage (a duplicate review counts again, though sent
    # once): about the sample's bill scaled to the table.
    assert t.loc["gpt-4o-mini", "projected_cost"] == pytest.approx(
        t.loc["gpt-4o-mini", "sample_cost"] * 600 / 150, rel=0.1
    )
    assert t.loc["gpt-4o", "projected_cost"] > t.loc["gpt-4o-mini", "projected_cost"]
    assert t.loc["gpt-4o-mini", "projected_tokens"] > 600 * 10  # at least 10 tokens a row
    assert t.loc["gpt-4o-mini pack=10", "requests"] == 60
    assert (t["waves"] == 1).all()  # no queue limit given: every batch at once
    # The label's confusion matrix, and the confidence compared as a number.
    matrix = p.confusion("gpt-4o-mini")
    assert int(matrix.to_numpy().sum()) == 150
    assert int(np.trace(matrix.to_numpy())) == round(share * 150)
    fields = p.fields()
    assert fields.loc[("gpt-4o-mini", "label"), "kind"] == "label"
    assert fields.loc[("gpt-4o-mini", "confidence"), "kind"] == "number"
    assert fields.loc[("gpt-4o-mini", "confidence"), "mean_abs_diff"] > 0
    assert -1 <= fields.loc[("gpt-4o-mini", "confidence"), "spearman"] <= 1
    # The cheapest setting whose lower bound clears the target.
    cheapest_small = t.loc[["gpt-4o-mini", "gpt-4o-mini pack=10"], "projected_cost"].idxmin()
    assert p.recommend(0.5).name == cheapest_small
    assert p.recommend(0.95).model == "gpt-4o"
    assert p.recommend(0.5, metric="kappa").model == "gpt-4o-mini"


@pytest.mark.parametrize("pack", [None, 10])
def test_the_whole_table_reuses_the_sample_answers(client: openai.OpenAI, pack: int | None) -> None:
    df = reviews(160, seed=21 if pack is None else 22)
    p = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], n=40, seed=1, pack=pack,
                 response_format=Sentiment, client=client)  # fmt: skip
    chosen = p.recommend(0.5)
    assert chosen is not None and chosen.model == "gpt-4o-mini" and chosen.pack == pack
    # A second pilot on an overlapping sample pays only for its new rows, but projects
    # the same cost per row: the projection is priced from every row's usage.
    again = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], n=60, seed=2, pack=pack,
                     response_format=Sentiment, client=client)  # fmt: skip
    first, second = p.table.loc[chosen.name], again.table.loc[chosen.name]
    assert second["sample_cost"] < second["projected_cost"] * 60 / 160
    assert second["projected_cost"] == pytest.approx(first["projected_cost"], rel=0.2)
    job = p.submit(df, wait=True, progress=False, display=False)
    assert job.model == "gpt-4o-mini"
    assert job.counts["succeeded"] == 160
    # The sample's rows were answered, not paid again (nor are rows elsewhere in the
    # table whose review is word for word one of the sample's): only the other distinct
    # reviews reach the provider.
    sampled = set(p.sample["review"]) | set(again.sample["review"])  # both pilots' rows
    assert job.counts["reused"] == int(df["review"].isin(sampled).sum()) >= 40
    rows_to_send = len(set(df["review"]) - sampled)
    assert requests_sent(client, job) == -(-rows_to_send // (pack or 1))
    merged = job.merge(df)
    sample_answers = p.answers(chosen)["label"]
    assert (merged.loc[sample_answers.index, "label"] == sample_answers).all()


def test_human_labels_stratified_sample_and_plain_text(client: openai.OpenAI) -> None:
    df = reviews(900, seed=5)
    prompts = {
        "short": "Classify: {review}",
        "long": "Classify the sentiment of this review as positive, negative or neutral:\n{review}",
    }
    p = nb.pilot(df, prompts, model="gpt-4o-mini", n=90, stratify="true_sentiment",
                 truth="true_sentiment", client=client)  # fmt: skip
    shares = p.sample["true_sentiment"].value_counts(normalize=True)
    whole = df["true_sentiment"].value_counts(normalize=True)
    assert (shares - whole).abs().max() < 0.03  # proportions kept
    assert p.reference is None and p.truth == {"response": "true_sentiment"}
    assert p.kinds == {"response": "label"}  # plain-text answers with few values
    assert [s.name for s in p.settings] == ["gpt-4o-mini short", "gpt-4o-mini long"]
    for name in ("gpt-4o-mini short", "gpt-4o-mini long"):
        out = p.answers(name)
        share = float((out["response"] == out["true_sentiment"]).mean())
        assert p.table.loc[name, "agreement"] == pytest.approx(share)
    assert "human labels" in repr(p)


def test_real_time_pilot(server: emulator.Emulator, client: openai.OpenAI) -> None:
    before = server.stats().get("realtime_requests", 0)
    df = reviews(100, seed=8)
    p = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], n=20, realtime=True,
                 response_format=Sentiment, client=client)  # fmt: skip
    assert server.stats()["realtime_requests"] - before == 40
    assert p.table.loc["gpt-4o", "agreement"] == 1.0
    # The sample's cost at real-time prices (estimated: real-time answers keep no usage).
    costs = p.table["sample_cost"]
    assert costs.notna().all() and costs["gpt-4o-mini"] < costs["gpt-4o"]
    low = p.table.loc["gpt-4o-mini", "agreement_low"]
    assert p.recommend(float(low)).model == "gpt-4o-mini", p.table  # the cheaper one
    assert p.realtime and "real time" in repr(p)


def test_mistakes_are_refused_before_anything_is_sent(
    server: emulator.Emulator, client: openai.OpenAI
) -> None:
    df = reviews(50)
    before = server.stats()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 1}, "at least 2"),
        ({"stratify": "colour"}, "not a column"),
        ({"truth": "label"}, "truth column 'label'"),
        ({"pack": [0, 5]}, "whole numbers from 1"),
        ({"realtime": True, "pack": [1, 5]}, "leave out pack"),
        ({"wait": True}, "wait= is not taken"),
        ({"model": [["gpt-4o-mini", "gpt-4o"]]}, "cascade"),
        ({"reference": "gpt-5"}, "not a setting"),
    ]
    for extra, message in cases:
        kwargs: dict[str, Any] = {"model": ["gpt-4o-mini", "gpt-4o"], "n": 10,
                                  "client": client, **extra}  # fmt: skip
        with pytest.raises(nb.InputError, match=message):
            nb.pilot(df, "{review}", **kwargs)
    stats = server.stats()
    assert stats.get("openai_batches_created", 0) == before.get("openai_batches_created", 0)
    assert stats.get("requests", 0) == before.get("requests", 0)  # not even a models call


def test_shown_as_a_widget_html_and_text(client: openai.OpenAI) -> None:
    df = reviews(300, seed=2)
    p = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], n=60, seed=4,
                 response_format=Sentiment, client=client, target=0.5)  # fmt: skip
    bundle = p._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert html.count("data:image/png;base64,") == 2  # the chart and the heatmap
    assert "\u2605" in html and "agreement [95%]" in html
    text = bundle["text/plain"]
    assert "recommended for agreement >= 0.5: gpt-4o-mini" in text
    assert "Confusion matrix of gpt-4o-mini" in text
    p.recommend(0.999)
    assert "no setting" in repr(p) or "recommended for agreement >= 0.999: gpt-4o" in repr(p)
    # With a queue limit, the table goes in waves.
    tokens = int(p.table.loc["gpt-4o", "projected_tokens"])
    limited = nb.pilot(df, "{review}", model=["gpt-4o-mini", "gpt-4o"], n=60, seed=4,
                       response_format=Sentiment, client=client,
                       queue_tokens=tokens // 3)  # fmt: skip
    assert limited.table.loc["gpt-4o", "waves"] in (3, 4)
    assert "waves" in repr(limited)
    # The widget's target slider recommends again and redraws.
    from nbbatch import _pilotview as pilotview

    view = pilotview.widget(p)
    slider = view.children[2].children[0]
    slider.value = 0.5
    assert p.recommended is not None and p.recommended.model == "gpt-4o-mini"
    assert "\u2605" in view.children[1].value and len(view.children[3].children[0].value) > 0


# ---------------------------------------------------------------------- the statistics


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=2, max_size=60
            ),  # fmt: skip
        )
    )
)
def test_bootstrap_kappa_is_scikit_learns(case: tuple[int, list[tuple[int, int]]]) -> None:
    from sklearn.metrics import cohen_kappa_score

    k, pairs = case
    x = np.array([a for a, _ in pairs])
    y = np.array([b for _, b in pairs])
    got = float(agreement.kappa_of_codes(x, y, k=k))
    if len(set(x) | set(y)) < 2:
        assert got == 1.0
        return
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = cohen_kappa_score(x, y)
    if np.isnan(expected):
        return
    assert got == pytest.approx(float(expected), abs=1e-9)


class Ticket(pydantic.BaseModel):
    label: Literal["a", "b", "c"]
    urgent: bool
    stars: int = pydantic.Field(ge=1, le=5)
    score: float = pydantic.Field(ge=0, le=1)
    summary: str = pydantic.Field(max_length=30)
    tags: list[Literal["x", "y"]]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5"]))
def test_a_disagreeing_answer_is_another_valid_one(prompt: str, model: str) -> None:
    """Whatever the row, a model that disagrees answers a value valid against the
    schema, with every label, flag and number changed and a lower score."""
    import jsonschema

    schema = Ticket.model_json_schema()

    def truth(request: emulator.Request) -> dict[str, Any]:
        return {"label": "a", "urgent": True, "stars": 3, "score": 0.9,
                "summary": "the customer wants a refund", "tags": ["x"]}  # fmt: skip

    never = emulator.with_quality(truth, {model: 0.0})
    request = emulator.Request("openai", "/v1/chat/completions", model, prompt, schema=schema)
    changed = never(request)
    assert isinstance(changed, dict)
    jsonschema.validate(changed, schema)
    assert changed["label"] != "a" and changed["urgent"] is False and changed["stars"] != 3
    assert changed["score"] < 0.9 and changed["summary"] != "the customer wants a refund"
    assert changed["tags"] == ["y"]
    always = emulator.with_quality(truth, {"some-other-model": 0.0})
    assert always(request) == truth(request)


@pytest.mark.parametrize(
    ("provider", "models"),
    [
        ("anthropic", ["claude-haiku-4-5", "claude-sonnet-4-5"]),
        ("gemini", ["gemini-2.5-flash-lite", "gemini-2.5-pro"]),
    ],
)
def test_pilot_on_anthropic_and_gemini(provider: str, models: list[str]) -> None:
    """The pilot goes through submit, so every provider works the same: here the small
    model is made to disagree on every row."""
    import anthropic
    from google import genai
    from google.genai import types as genai_types

    with emulator.start(
        processing_seconds=0.05, responder=sentiment_responder(None), quality={models[0]: 0.0}
    ) as emu:
        if provider == "anthropic":
            client: Any = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="k")
        else:
            options = genai_types.HttpOptions(base_url=emu.gemini_base_url)
            client = genai.Client(api_key="k", http_options=options)
        try:
            p = nb.pilot(reviews(80, seed=9), "{review}", model=models, n=20,
                         response_format=Sentiment, client=client, max_tokens=200)  # fmt: skip
        finally:
            client.close()
    assert p.reference is not None and p.reference.model == models[1]
    assert p.table.loc[models[0], "agreement"] == 0.0
    assert p.table.loc[models[1], "agreement"] == 1.0
    assert p.recommend(0.9) == p.reference
    assert p.table["batches"].tolist() == [1, 1]
