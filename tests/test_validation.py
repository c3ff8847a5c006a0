"""Bad request parameters, model typos and client mismatches are refused before sending;
prices only for known models."""

from __future__ import annotations

import logging
import uuid

import anthropic
import httpx
import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from .conftest import TIMEOUT, anthropic_client, batches_created, client_for, model_for

DF = pd.DataFrame({"text": ["a", "b", "c"]})


def refused(client, emu, match: str, **kwargs) -> str:
    """Submit, expect an InputError matching ``match``, and check nothing was sent."""
    before, uploads = batches_created(emu), emu.stats()["files_uploaded"]
    kwargs.setdefault("model", model_for(client))
    with pytest.raises(nb.InputError, match=match) as info:
        nb.submit(DF, "{text}", client=client, display=False, **kwargs)
    assert batches_created(emu) == before and emu.stats()["files_uploaded"] == uploads
    assert nb.jobs().empty
    return str(info.value)


# -- values ---------------------------------------------------------------------------------
def test_a_temperature_that_is_not_a_number_is_refused(client, emu):
    message = refused(client, emu, "temperature='hot'", temperature="hot")
    assert "valid number" in message


def test_sampling_parameters_out_of_range_are_refused(client, emu):
    assert "between 0 and 1" in refused(client, emu, "top_p=7", top_p=7)
    assert "at least 1" in refused(
        anthropic_client(emu), emu, "top_k=0", model="claude-haiku-4-5", top_k=0
    )
    # Anthropic's temperature ends at 1, OpenAI's and Gemini's at 2.
    if isinstance(client, anthropic.Anthropic):
        assert "between 0 and 1" in refused(client, emu, "temperature=1.5", temperature=1.5)
    else:
        assert "between -2 and 2" in refused(
            client, emu, "frequency_penalty=3", frequency_penalty=3
        )
        job = nb.submit(DF, "{text}", model=model_for(client), client=client, temperature=1.5)
        job.wait(timeout=30, progress=False)
        assert job.counts["succeeded"] == 3


def test_a_value_of_the_wrong_type_is_refused_with_the_fields_type(emu):
    client = client_for("openai", emu)
    message = refused(client, emu, "stop=5", stop=5)
    assert "Sequence[str]" in message
    assert "reasoning_effort='mega'" in refused(client, emu, "mega", reasoning_effort="mega")
    refused(client, emu, "max_tokens must be a positive integer", max_tokens=True)


def test_n_and_stream_are_refused_in_a_batch(client, emu):
    message = refused(client, emu, "n=2|unknown parameter .n.", n=2, stream=True)
    assert "stream is not available" in message


# -- keywords -------------------------------------------------------------------------------
def test_a_misspelt_keyword_is_refused_with_a_suggestion(client, emu):
    message = refused(client, emu, "unknown parameter 'temprature'", temprature=0.2)
    assert "Did you mean 'temperature'?" in message
    assert "Accepted:" in message and "top_p" in message


def test_keywords_follow_the_sdk_type_of_the_endpoint(emu):
    client = client_for("openai", emu)
    # reasoning_effort is a Chat Completions field, not a Responses API one.
    message = refused(
        client, emu, "'reasoning_effort'", endpoint="/v1/responses", reasoning_effort="low"
    )
    assert "/v1/responses" in message and "reasoning" in message
    refused(
        client,
        emu,
        "unknown parameter 'top_p'",
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        top_p=0.5,
    )


def test_keywords_nbbatch_sets_name_the_argument_to_use(client, emu):
    message = refused(client, emu, "'messages' is set by nbbatch", messages=[])
    assert "prompt template" in message
    if isinstance(client, openai.OpenAI):
        refused(client, emu, "use max_tokens=", max_completion_tokens=5)
    elif model_for(client).startswith("gemini"):
        schema = {"type": "object", "properties": {"x": {"type": "string"}}}
        refused(client, emu, "use response_format=", response_json_schema=schema)
    else:
        schema = {"type": "object", "properties": {"x": {"type": "string"}}}
        refused(
            client,
            emu,
            "use response_format=",
            response_format=schema,
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )


def test_arguments_an_embedding_cannot_use_are_refused(emu):
    message = refused(
        client_for("openai", emu),
        emu,
        "cannot be used with /v1/embeddings",
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        temperature=0.1,
        system="be brief",
    )
    assert "system" in message and "temperature" in message


def test_accepted_keywords_reach_every_request(emu):
    client = client_for("openai", emu)
    job = nb.submit(DF, "{text}", model="gpt-4o-mini", client=client, seed=7, stop=["zz"])
    job.wait(timeout=30, progress=False)
    assert job.counts["succeeded"] == 3
    batch = client.batches.retrieve(job.batch_ids[0])
    lines = client.files.content(batch.input_file_id).text.splitlines()
    assert all('"seed":7' in line and '"stop":["zz"]' in line for line in lines)


def test_try_now_checks_the_same_parameters(client, emu):
    before = emu.stats()["realtime_requests"]
    with pytest.raises(nb.InputError, match="Did you mean 'temperature'"):
        nb.try_now(DF, "{text}", model=model_for(client), client=client, temprature=0.2)
    assert emu.stats()["realtime_requests"] == before


# -- model and client -----------------------------------------------------------------------
def test_a_model_of_the_other_provider_names_both_and_the_fix(emu):
    with pytest.raises(nb.ConfigError) as info:
        nb.submit(DF, "{text}", model="claude-haiku-4-5", client=client_for("openai", emu))
    text = str(info.value)
    assert "'claude-haiku-4-5'" in text and "anthropic" in text and "openai.OpenAI" in text
    assert "provider='openai'" in text
    for model in ("gpt-4o-mini", "o1-mini", "text-embedding-3-small"):
        with pytest.raises(nb.ConfigError, match="anthropic.Anthropic"):
            nb.submit(DF, "{text}", model=model, client=client_for("anthropic", emu))


@pytest.mark.parametrize(
    ("provider", "typo", "meant"),
    [
        ("openai", "gtp-4o-mini", "gpt-4o-mini"),
        ("anthropic", "claude-hiaku-4-5", "claude-haiku-4-5"),
    ],
)
def test_an_unknown_model_is_refused_before_anything_is_created(emu, provider, typo, meant):
    client = client_for(provider, emu)
    message = refused(client, emu, f"unknown model '{typo}'", model=typo)
    assert f"did you mean '{meant}'?" in message


def test_a_typo_sharing_a_prefix_is_not_a_known_model(emu):
    refused(client_for("openai", emu), emu, "did you mean 'gpt-4o-mini'", model="gpt-4o-mni")


def test_a_dated_snapshot_and_an_added_model_are_accepted(client, emu):
    model = model_for(client)
    if model.startswith("gemini"):
        snapshot = "gemini-2.0-flash-001"  # Gemini numbers its stable versions
    else:
        snapshot = model + ("-20251001" if "claude" in model else "-2024-07-18")
    job = nb.submit(DF, "{text}", model=snapshot, client=client, display=False)
    job.wait(timeout=30, progress=False)
    assert job.counts["succeeded"] == 3


def test_a_known_model_is_asked_about_once_per_address():
    name = f"own-model-{uuid.uuid4().hex[:8]}"  # never asked about before in this process
    with emulator.start(processing_seconds=0.05, models=[name]) as emu:
        client = client_for("openai", emu)
        for _ in range(2):
            nb.submit(DF, "{text}", model=name, client=client, force=True, display=False)
        asked = [p for m, p in emu.request_log if m == "GET" and p.startswith("/v1/models")]
        assert asked == [f"/v1/models/{name}"]


class _NoModelsRoute(httpx.BaseTransport):
    """A proxy in front of the emulator that answers ``status`` on the models routes."""

    def __init__(self, status: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.status = status

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "/models" in request.url.path:
            return httpx.Response(self.status, json={"detail": "not here"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("status", "logged"), [(404, "has no models endpoint"), (403, "failed (HTTP 403)")]
)
def test_a_proxy_without_a_models_endpoint_skips_the_check_and_logs_it(caplog, status, logged):
    # The proxy serves a model of its own (the emulator, like the service, refuses a
    # model it does not know), and hides the list nbbatch would check the name against.
    with (
        emulator.start(processing_seconds=0.05, models=["house-model-7"]) as emu,
        httpx.Client(transport=_NoModelsRoute(status), timeout=TIMEOUT) as http,
    ):
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", http_client=http)
        with caplog.at_level(logging.INFO, logger="nbbatch"):
            job = nb.submit(DF, "{text}", model="house-model-7", client=client, display=False)
        job.wait(timeout=30, progress=False)
        assert job.counts["succeeded"] == 3
    assert "model 'house-model-7' not checked" in caplog.text and logged in caplog.text


# -- prices ---------------------------------------------------------------------------------
def test_only_known_models_and_their_snapshots_have_a_price(monkeypatch):
    price = nb.pricing.price_of
    assert price("gpt-4o-mni") is None and price("gpt-4o-mini") != price("gpt-4o")
    assert price("gpt-4o-mini-2024-07-18") == price("gpt-4o-mini")
    assert price("claude-haiku-4-5-20251001") == price("claude-haiku-4-5")
    assert price("gpt-4o-turbo-max") is None and price("claude-verse-9") is None
    preview = nb.preview(DF, "{text}", model="gpt-4o-mni")
    assert str(preview.estimate.cost) == "unknown price"
    monkeypatch.setattr(nb.pricing, "_OVERRIDES", {})
    nb.pricing.set("gpt-4o-mni", input=1.0, output=1.0)
    assert price("gpt-4o-mni") == (1.0, 1.0, 1.0)


def test_max_cost_is_not_checked_against_a_guessed_price():
    name = f"own-model-{uuid.uuid4().hex[:8]}"
    with emulator.start(processing_seconds=0.05, models=[f"gpt-4o-{name}"]) as emu:
        client = client_for("openai", emu)
        with pytest.raises(nb.InputError, match="no price for model"):
            nb.submit(DF, "{text}", model=f"gpt-4o-{name}", client=client, max_cost=1.0)
        assert batches_created(emu) == 0


def test_a_temperature_gpt5_refuses_is_refused_before_sending(emu):
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k")
    message = refused(client, emu, "temperature=0.2", model="gpt-5-mini", temperature=0.2)
    assert "only the default temperature (1)" in message
    refused(client, emu, "temperature=0.5", model="o3-2025-04-16", temperature=0.5)
    # The default is sent as asked, and gpt-4.1 takes any temperature.
    for model, temperature in (("gpt-5-mini", 1), ("gpt-4.1", 0.2)):
        job = nb.submit(
            DF, "{text}", client=client, model=model, temperature=temperature, display=False
        )
        job.wait(timeout=30, progress=False)
        assert job.counts["succeeded"] == len(DF)
