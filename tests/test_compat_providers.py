"""Groq and Together: their own SDKs over HTTP to the emulator's variants of them.

Each test drives the public API (nb.submit, wait, merge) with a ``groq.Groq`` or
``together.Together`` client aimed at the emulator's ``/groq`` or ``/together`` prefix,
and checks the outcome and what reached the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import groq
import pandas as pd
import pytest
import together

import nbbatch as nb
from nbbatch import emulator
from nbbatch.providers.groq import GroqProvider
from nbbatch.providers.together import TogetherProvider

PROMPT = "Classify: {text}"
# Models of genai-prices' groq and together tables (what the variants serve).
GROQ_MODEL = "llama-3.1-8b-instant"
TOGETHER_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
SERVICES = ["groq", "together"]


@pytest.fixture(scope="module")
def emu() -> Iterator[emulator.Emulator]:
    with emulator.start(processing_seconds=0.05) as server:
        yield server


_OPEN: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def _close() -> Iterator[None]:
    yield
    for c in _OPEN:
        c.close()


def client_of(service: str, emu: emulator.Emulator) -> Any:
    """The service's own SDK client, aimed at its prefix on ``emu``."""
    if service == "groq":
        c: Any = groq.Groq(api_key="test-key", base_url=emu.url + GroqProvider.emulator_prefix)
    else:
        c = together.Together(
            api_key="test-key", base_url=emu.url + str(TogetherProvider.emulator_prefix)
        )
    _OPEN.append(c)
    return c


def model_of(service: str) -> str:
    return GROQ_MODEL if service == "groq" else TOGETHER_MODEL


def paths(emu: emulator.Emulator) -> list[str]:
    return [path for _, path in emu.request_log]


@pytest.mark.parametrize("service", SERVICES)
def test_submit_wait_merge_through_the_services_own_sdk(service, emu):
    emu.clear_log()
    df = pd.DataFrame({"text": [f"review {i}" for i in range(12)]}, index=range(100, 112))
    job = nb.submit(df, PROMPT, model=model_of(service), client=client_of(service, emu))
    out = job.wait(timeout=60, progress=False).merge(df)
    assert job.provider == service
    assert job.status == "completed"
    assert (out["response_status"] == "succeeded").all()
    expected = [emulator.echo_text(PROMPT.format(text=t)) for t in df["text"]]
    assert out["response"].tolist() == expected
    assert out.index.equals(df.index)
    # It went through the service's variant, never the OpenAI routes.
    prefix = "/groq/openai/v1/" if service == "groq" else "/together/v1/"
    sent = paths(emu)
    assert any(p.startswith(prefix + "batches") for p in sent)
    assert not any(p.startswith("/v1/") for p in sent)


@pytest.mark.parametrize("service", SERVICES)
def test_failed_rows_end_failed_with_the_services_error(service, emu):
    df = pd.DataFrame({"text": ["fine", f"broken {emulator.FAIL_MARKER}", "also fine"]})
    job = nb.submit(df, PROMPT, model=model_of(service), client=client_of(service, emu))
    out = job.wait(timeout=60, progress=False).merge()
    assert out["response_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert out["response"].iloc[1] is None or pd.isna(out["response"].iloc[1])
    assert emulator.FAIL_MARKER in out["response_error"].iloc[1]
    assert job.counts["failed"] == 1 and job.counts["succeeded"] == 2


@pytest.mark.parametrize("service", SERVICES)
def test_a_bad_parameter_is_refused_before_anything_is_sent(service, emu):
    client = client_of(service, emu)
    df = pd.DataFrame({"text": ["a", "b"]})
    emu.clear_log()
    with pytest.raises(nb.InputError, match="temperature"):
        nb.submit(df, PROMPT, model=model_of(service), client=client, temperature=5.0)
    with pytest.raises(nb.InputError, match="frobnicate"):
        nb.submit(df, PROMPT, model=model_of(service), client=client, frobnicate=1)
    # Their batches take chat completions only: an embeddings job is refused here.
    with pytest.raises(nb.InputError, match="/v1/chat/completions"):
        nb.submit(df, "{text}", model=model_of(service), client=client, endpoint="/v1/embeddings")
    assert not any("batches" in p or "files" in p for p in paths(emu))


@pytest.mark.parametrize("service", SERVICES)
def test_an_unknown_model_is_refused_with_the_services_own_models(service, emu):
    client = client_of(service, emu)
    typo = model_of(service)[:-2]  # "llama-3.1-8b-insta", ".../Llama-3.3-70B-Instruct-Tur"
    emu.clear_log()
    with pytest.raises(nb.InputError, match="did you mean") as err:
        nb.submit(pd.DataFrame({"text": ["a"]}), PROMPT, model=typo, client=client)
    assert model_of(service) in str(err.value)
    assert not any("batches" in p for p in paths(emu))
    # An OpenAI model with their client is a mistake caught by its name; said to be
    # meant (provider= given), the service is asked, and has no such model.
    one = pd.DataFrame({"text": ["a"]})
    with pytest.raises(nb.ConfigError, match="model of openai"):
        nb.submit(one, PROMPT, model="gpt-4o-mini", client=client)
    with pytest.raises(nb.InputError, match="unknown model"):
        nb.submit(one, PROMPT, model="gpt-4o-mini", client=client, provider=service)
    assert not any("batches" in p for p in paths(emu))


def test_the_async_clients_become_their_synchronous_twins(emu):
    # nbbatch polls from a thread: an AsyncGroq / AsyncTogether given on client= is
    # used as the synchronous client with the same key and address.
    for cls, aclient in (
        (GroqProvider, groq.AsyncGroq(api_key="k1", base_url=emu.url + "/groq")),
        (TogetherProvider, together.AsyncTogether(api_key="k2", base_url=emu.url + "/together")),
    ):
        twin = cls.sync_client(aclient)
        _OPEN.append(twin)
        assert type(twin).__name__ == cls.sync_class
        assert (twin.api_key, str(twin.base_url)) == (aclient.api_key, str(aclient.base_url))
        assert cls.sync_client(twin) is twin


def test_another_sdks_client_is_refused_for_them(emu):
    import openai

    other = openai.OpenAI(api_key="k", base_url=emu.url + "/groq/openai/v1")
    _OPEN.append(other)
    with pytest.raises(nb.ConfigError, match=r"groq\.Groq"):
        nb.submit(
            pd.DataFrame({"text": ["a"]}), PROMPT, model=GROQ_MODEL, client=other, provider="groq"
        )


def test_the_key_and_address_come_from_the_services_variables(emu, monkeypatch):
    df = pd.DataFrame({"text": ["x"]})
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with pytest.raises(nb.ConfigError, match="GROQ_API_KEY"):
        nb.submit(df, PROMPT, model=GROQ_MODEL, provider="groq")
    monkeypatch.setenv("GROQ_API_KEY", "from-the-environment")
    monkeypatch.setenv("GROQ_BASE_URL", emu.url + "/groq")
    job = nb.submit(df, PROMPT, model=GROQ_MODEL, provider="groq")
    assert job.wait(timeout=60, progress=False).merge()["response_status"].tolist() == ["succeeded"]


# -- the variants' own rules, asked through the SDKs directly ---------------------------------
def _upload_groq(client: groq.Groq) -> str:
    line = (
        b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "' + GROQ_MODEL.encode() + b'", "messages": [{"role": "user", '
        b'"content": "hi"}]}}\n'
    )
    return client.files.create(file=("in.jsonl", line, "application/jsonl"), purpose="batch").id


def test_groq_takes_completion_windows_from_24h_to_7d(emu):
    client = client_of("groq", emu)
    file_id = _upload_groq(client)
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="7d"
    )
    assert batch.completion_window == "7d"
    assert batch.status in ("validating", "in_progress")
    for window in ("8d", "12h", "soon"):
        with pytest.raises(groq.BadRequestError, match="24h to 7d"):
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window=window
            )
    # Its batches are its own: the OpenAI routes do not know them.
    assert all(b.id != batch.id for b in emu.store.list_batches("openai"))


def test_together_speaks_its_own_batch_object(emu, tmp_path):
    client = client_of("together", emu)
    path = tmp_path / "in.jsonl"
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": TOGETHER_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    }
    path.write_text(json.dumps(line) + "\n")
    uploaded = client.files.upload(file=path, purpose="batch-api", check=False)
    assert uploaded.purpose == "batch-api"
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    assert created.job is not None
    assert created.job.status in ("VALIDATING", "IN_PROGRESS")  # Together's words
    with pytest.raises(together.BadRequestError, match="cannot be changed"):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="48h"
        )
    listed = client.batches.list()
    assert created.job.id in [b.id for b in listed]


def test_prices_of_the_variants_models_are_in_genai_prices():
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    for cls, model in ((GroqProvider, GROQ_MODEL), (TogetherProvider, TOGETHER_MODEL)):
        _, info = snapshot.find_provider_model(model, None, cls.prices_provider, None)
        assert info.id == model


@pytest.mark.parametrize("service", SERVICES)
def test_a_cancelled_job_ends_every_row_cancelled_and_none_lost(service):
    # Nothing finishes in 600 s: every row must end cancelled, by the service's lines
    # for the requests it never ran (Together: or by the batch's CANCELLED status).
    with emulator.start(processing_seconds=600.0) as slow:
        client = client_of(service, slow)
        df = pd.DataFrame({"text": [f"r{i}" for i in range(6)]})
        job = nb.submit(df, PROMPT, model=model_of(service), client=client)
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.5, progress=False)
        job.cancel()
        job.wait(timeout=60, progress=False)
        assert job.counts["cancelled"] == 6 and job.counts["pending"] == 0
        assert job.merge()["response_status"].tolist() == ["cancelled"] * 6
        assert job.status == "cancelled"
        client.close()


@pytest.mark.parametrize("service", SERVICES)
def test_a_batch_whose_create_went_unrecorded_is_found_again(service, emu):
    # What a resumed job asks when a create call's outcome was never recorded: the
    # batch of that job part, if the service has it, so its rows are not sent twice.
    # Together's batches carry no metadata: its input file's name says the part.
    import time

    import pyarrow as pa

    from nbbatch.providers import build
    from nbbatch.providers.base import RequestSpec

    provider = build(service, client_of(service, emu))
    spec = RequestSpec(model=model_of(service), endpoint="/v1/chat/completions")
    jsonl = provider.encode(pa.array(["a", "b"]), pa.array(["x", "y"]), spec)
    since = time.time() - 1
    meta = {"nbbatch_job": f"nbb-find-{service}", "nbbatch_part": "3"}
    made = provider.create(jsonl, spec, meta)
    found = provider.find_batch(meta, 2, since, set())
    assert found is not None and found.batch_id == made.batch_id
    assert provider.find_batch(meta, 2, since, {made.batch_id}) is None
    other = {**meta, "nbbatch_part": "4"}
    assert provider.find_batch(other, 2, since, set()) is None


@pytest.mark.parametrize("service", SERVICES)
def test_attach_rebuilds_the_services_own_client(service):
    with emulator.start(processing_seconds=1.0) as slow:
        df = pd.DataFrame({"text": ["p", "q"]})
        client = client_of(service, slow)
        job = nb.submit(df, PROMPT, model=model_of(service), client=client)
        # No client=: rebuilt from the record (the service's SDK, at its address).
        again = nb.attach(job.id)
        assert again.provider == service
        out = again.wait(timeout=60, progress=False).merge(df)
        expected = [emulator.echo_text(PROMPT.format(text=t)) for t in df["text"]]
        assert out["response"].tolist() == expected
        client.close()


def test_groq_variant_fails_a_batch_of_a_model_it_does_not_serve(emu):
    # The emulator's choice where Groq's behaviour is not published: the batch fails
    # in validation, naming the model (nbbatch itself refuses it before sending).
    client = client_of("groq", emu)
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    up = client.files.create(
        file=("in.jsonl", json.dumps(line).encode() + b"\n", "application/jsonl"),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(200):
        batch = client.batches.retrieve(batch.id)
        if batch.status == "failed":
            break
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "model_not_found"


def test_a_groq_batch_is_priced_at_groqs_own_discount_not_the_half_price_rule(emu):
    # Groq publishes 25% off for batches: where genai-prices has no Groq batch rate, a
    # job's batch price is three quarters of real time; Together keeps the half rule.
    df = pd.DataFrame({"text": ["alpha beta gamma", "delta epsilon"]})
    for service, share in (("groq", 0.75), ("together", 0.5)):
        cost = nb.preview(df, PROMPT, model=model_of(service), client=client_of(service, emu))
        assert cost.estimate.cost.batch == pytest.approx(share * cost.estimate.cost.realtime)
    rates = nb.pricing.rates_for("groq", GROQ_MODEL)
    assert rates is not None and rates.batch_rule
    assert rates.batch_input == pytest.approx(0.75 * rates.input)
    # A model genai-prices lists a Groq batch rate for is priced from the data.
    assert not nb.pricing.rates_for("groq", "openai/gpt-oss-20b").batch_rule
