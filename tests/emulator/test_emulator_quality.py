"""Models of different quality on the emulator: ``start(quality={model: share})``.

Each named model agrees with the responder on its share of rows and gives another
allowed answer, with a lower confidence, on the rest; the rows are the same on every
run, in every pack size and on every provider. Driven through ``nb.submit`` and the
official SDKs over HTTP.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any, Literal

import anthropic
import openai
import pandas as pd
import pydantic
import pytest
from google import genai
from google.genai import types as genai_types

import nbbatch as nb
from nbbatch import emulator
from nbbatch.emulator import __main__ as emulator_main

LABELS = ("positive", "negative", "neutral")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


class Sentiment(pydantic.BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = pydantic.Field(ge=0, le=1)
    stars: int = pydantic.Field(ge=1, le=5)


def truth(prompt: str) -> dict[str, Any]:
    """What the responder answers: a label, stars and confidence from the prompt."""
    n = sum(map(ord, prompt))
    return {"label": LABELS[n % 3], "confidence": 0.9, "stars": 1 + n % 5}


def responder(request: emulator.Request) -> str | dict[str, Any]:
    if request.schema is None:
        return truth(request.prompt)["label"]
    return truth(request.prompt)


def texts(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i}: it was fine" for i in range(n)]})


@pytest.fixture(scope="module")
def server() -> Iterator[emulator.Emulator]:
    quality = {"gpt-4o-mini": 0.8, "claude-haiku-4-5": 0.8, "gemini-2.5-flash": 0.8}
    with emulator.start(processing_seconds=0.05, responder=responder, quality=quality) as emu:
        yield emu


@pytest.fixture(scope="module")
def clients(server: emulator.Emulator) -> Iterator[dict[str, Any]]:
    made = {
        "openai": openai.OpenAI(base_url=server.openai_base_url, api_key="k", timeout=60),
        "anthropic": anthropic.Anthropic(
            base_url=server.anthropic_base_url, api_key="k", timeout=60
        ),
        "gemini": genai.Client(
            api_key="k", http_options=genai_types.HttpOptions(base_url=server.gemini_base_url)
        ),
    }
    yield made
    for client in made.values():
        client.close()


def run(df: pd.DataFrame, client: Any, model: str, **kwargs: Any) -> pd.DataFrame:
    job = nb.submit(
        df, "{text}", model=model, response_format=Sentiment, output="s", client=client,
        display=False, progress=False, wait=True, reuse=False, force=True, **kwargs,
    )  # fmt: skip
    out = job.merge(df)
    assert (out["s_status"] == "succeeded").all(), out["s_error"].dropna().head()
    return out


def agreeing(out: pd.DataFrame) -> pd.Series:
    return pd.Series([truth(t)["label"] for t in out["text"]], index=out.index) == out["label"]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_model_agrees_on_its_share_of_rows_the_same_ones_in_every_pack(
    provider: str, clients: dict[str, Any]
) -> None:
    df = texts(150)
    client, model = clients[provider], MODELS[provider]
    alone = run(df, client, model)
    packed = run(df, client, model, pack=8)
    agree = agreeing(alone)
    # 150 rows at a share of 0.8: about 120 agree (a binomial count, fixed by the hash).
    assert 0.68 <= agree.mean() <= 0.92
    # The same rows disagree, with the same answers, sent alone or eight to a request.
    pd.testing.assert_frame_equal(alone[["label", "confidence", "stars"]],
                                  packed[["label", "confidence", "stars"]])  # fmt: skip
    wrong = alone[~agree]
    right = alone[agree]
    # A disagreeing row has another allowed label and a lower confidence; the others
    # have exactly the responder's answer.
    assert wrong["label"].isin(LABELS).all()
    assert (wrong["confidence"] < 0.9).all() and (wrong["confidence"] >= 0).all()
    assert wrong["stars"].between(1, 5).all()
    assert (right["confidence"] == 0.9).all()
    assert (right["stars"] == [truth(t)["stars"] for t in right["text"]]).all()


def test_unnamed_models_always_agree_and_a_higher_share_only_adds_agreeing_rows(
    server: emulator.Emulator, clients: dict[str, Any]
) -> None:
    df = texts(120)
    client = clients["openai"]
    assert agreeing(run(df, client, "gpt-4.1-mini")).all()  # not named: quality 1.0
    low = agreeing(run(df, client, "gpt-4o-mini"))
    server.quality = {"gpt-4o-mini": 0.95}
    try:
        high = agreeing(run(df, client, "gpt-4o-mini"))
        # A dated snapshot takes its base name's quality.
        snapshot = agreeing(run(df, client, "gpt-4o-mini-2024-07-18"))
    finally:
        server.quality = {"gpt-4o-mini": 0.8, "claude-haiku-4-5": 0.8, "gemini-2.5-flash": 0.8}
    assert high.sum() > low.sum()
    assert (high | ~low).all()  # every row that agreed at 0.8 agrees at 0.95
    assert (snapshot == high).all()


def test_plain_text_labels_disagree_with_another_label() -> None:
    """A keyword responder's plain-text label: a disagreeing row gets another label."""
    fn = emulator.keyword_responder(
        {"positive": ["love"], "negative": ["broke"]}, default="neutral"
    )
    with (
        emulator.start(responder=fn, quality={"gpt-4o-mini": 0.5}) as emu,
        openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client,
    ):
        replies = []
        for i in range(40):
            prompt = f"I love it, review {i}"
            done = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
            replies.append(done.choices[0].message.content)
    assert set(replies) <= set(LABELS)
    assert 5 <= replies.count("positive") <= 35  # about half agree
    assert {"negative", "neutral"} & set(replies)


def test_built_in_answers_disagree_too() -> None:
    """Without a responder the built-in answers stand for the truth: structured values
    change, plain text changes, a json_object reply stays a JSON object."""
    schema = Sentiment.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    with (
        emulator.start(quality={"gpt-4o-mini": 0.0}) as emu,
        openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client,
    ):

        def ask(model: str, prompt: str = "a row", **kw: Any) -> str:
            done = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], **kw
            )
            return done.choices[0].message.content or ""

        assert ask("gpt-4o") == emulator.echo_text("a row")
        assert ask("gpt-4o-mini") != emulator.echo_text("a row")
        exact = Sentiment.model_validate_json(ask("gpt-4o", response_format=fmt))
        changed = Sentiment.model_validate_json(ask("gpt-4o-mini", response_format=fmt))
        assert changed.label != exact.label and changed.confidence < exact.confidence
        reply = ask("gpt-4o-mini", "a row, as json", response_format={"type": "json_object"})
        assert list(pydantic.TypeAdapter(dict).validate_json(reply)) == ["reply"]


def test_bad_quality_is_refused_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        emulator.start(quality={"gpt-4o-mini": 1.5})
    with pytest.raises(SystemExit):
        emulator_main.main(["--quality", "gpt-4o-mini:0.9"])
    assert "is not model=share" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_quality() -> None:
    """``python -m nbbatch.emulator --quality gpt-4o-mini=0`` serves a model that never
    agrees."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--quality", "gpt-4o-mini=0,gpt-4o=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ")[1].strip()
        with openai.OpenAI(base_url=url + "/v1", api_key="k") as client:
            got = {
                model: client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "two words"}]
                )
                .choices[0]
                .message.content
                for model in ("gpt-4o-mini", "gpt-4o")
            }
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert got["gpt-4o"] == emulator.echo_text("two words")
    assert got["gpt-4o-mini"] != got["gpt-4o"]


def test_malformed_environment_quality_fails_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBBATCH_EMULATOR_QUALITY", "gpt-4o-mini=lots")
    with pytest.raises(ValueError, match="NBBATCH_EMULATOR_QUALITY"):
        nb.submit(pd.DataFrame({"text": ["a"]}), "{text}", model="gpt-4o-mini",
                  provider="local", display=False, progress=False)  # fmt: skip


@pytest.mark.slow
def test_background_emulator_takes_quality_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBBATCH_EMULATOR_QUALITY", "gpt-4o-mini=0")
    monkeypatch.setenv("NBBATCH_EMULATOR_SPEED", "10")
    df = texts(20)
    outs = {}
    for model in ("gpt-4o-mini", "gpt-4o"):
        job = nb.submit(df, "{text}", model=model, response_format=Sentiment, output="s",
                        provider="local", display=False, progress=False, wait=True)  # fmt: skip
        outs[model] = job.merge(df)
    assert (outs["gpt-4o-mini"]["label"] != outs["gpt-4o"]["label"]).all()


def test_the_seed_chooses_the_rows() -> None:
    """Another seed (``start(seed=...)`` or ``configure(seed=...)``) disagrees on other
    rows; ``with_quality(...).agrees`` says which, as the emulator answers."""
    prompts = [f"row {i}" for i in range(60)]

    def labels(emu: emulator.Emulator) -> list[str]:
        with openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client:
            return [
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": p}]
                )
                .choices[0]
                .message.content
                or ""
                for p in prompts
            ]

    with emulator.start(responder=responder, quality={"gpt-4o-mini": 0.5}, seed=1) as emu:
        first = labels(emu)
        emu.configure(seed=2)
        second = labels(emu)
    for seed, got in ((1, first), (2, second)):
        chooser = emulator.with_quality(responder, {"gpt-4o-mini": 0.5}, seed=seed)
        expected = [chooser.agrees("gpt-4o-mini", p) for p in prompts]
        assert [g == truth(p)["label"] for g, p in zip(got, prompts, strict=True)] == expected
    assert first != second


def test_models_err_on_the_same_rows_more_often_than_chance() -> None:
    """Real models' errors are correlated: a stronger model errs mostly where a weaker
    one errs too, so a cascade's most confident rows agree more than the large model's
    quality alone would allow. Each model still agrees on its own share of rows."""
    quality = {"gpt-4o-mini": 0.8, "gpt-4o": 0.95}
    prompts = [f"review {i}" for i in range(20_000)]
    with emulator.start(responder=responder, quality=quality) as emu:
        with openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client:
            sample = prompts[:40]  # the emulator answers as with_quality(...) says
            for model in quality:
                got = [
                    client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": p}]
                    )
                    .choices[0]
                    .message.content
                    for p in sample
                ]
                chooser = emulator.with_quality(responder, quality)
                assert [g == truth(p)["label"] for g, p in zip(got, sample, strict=True)] == [
                    chooser.agrees(model, p) for p in sample
                ]
    chooser = emulator.with_quality(responder, quality)
    small = pd.Series([chooser.agrees("gpt-4o-mini", p) for p in prompts])
    large = pd.Series([chooser.agrees("gpt-4o", p) for p in prompts])
    assert abs(small.mean() - 0.8) < 0.015 and abs(large.mean() - 0.95) < 0.01
    both_wrong = (~small & ~large).mean()
    independent = (1 - small.mean()) * (1 - large.mean())  # 1% if drawn apart
    assert both_wrong > 2 * independent
    # Where the small model is right, the large one errs less than on average.
    assert (~large[small]).mean() < 0.8 * (~large).mean()
