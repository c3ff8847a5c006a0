"""A newcomer's traps (tests/test_newcomer.py), driven again for the providers added
since: Azure OpenAI, Mistral, Groq, Together and Bedrock, each through its own SDK over
HTTP to the emulator's variant of that service (Bedrock's S3 at moto's server)."""

from __future__ import annotations

import re
import time
from typing import Any

import groq
import openai
import pandas as pd
import pytest
import together
from mistralai.client import Mistral

import nbbatch as nb
from nbbatch import _planning as planning
from nbbatch import _stream as stream
from nbbatch import emulator
from nbbatch.providers.azure import AzureProvider
from nbbatch.providers.groq import GroqProvider
from nbbatch.providers.mistral import MistralProvider
from nbbatch.providers.together import TogetherProvider

from ._helpers import interrupted_wait, modules_loaded
from ._helpers import parquet_files as _files
from ._helpers import run_cli as nbbatch
from .test_bedrock import aws, bedrock_emu, s3_url  # noqa: F401  (the Bedrock fixtures)

PROMPT = "Summarise: {body}"
#: Each service: its model, and the emulator's counter of batches created there.
SERVICES = {
    "azure": ("gpt-4o-mini", "openai_batches_created"),  # OpenAI's state
    "mistral": ("mistral-small-latest", "mistral_batches_created"),
    "groq": ("llama-3.1-8b-instant", "groq_batches_created"),
    "together": ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "together_batches_created"),
}
_OPEN: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients():
    yield
    for client in _OPEN:
        if isinstance(client, Mistral):
            client.sdk_configuration.client.close()  # type: ignore[union-attr]
        else:
            client.close()
    _OPEN.clear()


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    for name in ("MISTRAL_API_KEY", "AZURE_OPENAI_API_KEY", "GROQ_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def client_of(service: str, server: emulator.Emulator) -> Any:
    """The service's own SDK client on its routes of ``server``."""
    client: Any
    if service == "azure":
        client = openai.AzureOpenAI(
            base_url=server.url + AzureProvider.emulator_prefix,
            api_key="azure-key",
            api_version="2024-10-21",
        )
    elif service == "mistral":
        client = Mistral(
            api_key="test-key", server_url=server.url + MistralProvider.emulator_prefix
        )
    elif service == "groq":
        client = groq.Groq(api_key="test-key", base_url=server.url + GroqProvider.emulator_prefix)
    else:
        client = together.Together(
            api_key="test-key", base_url=server.url + str(TogetherProvider.emulator_prefix)
        )
    _OPEN.append(client)
    return client


def created(server: emulator.Emulator, service: str) -> int:
    return int(server.stats().get(SERVICES[service][1], 0))


@pytest.fixture
def small_background(monkeypatch):
    monkeypatch.setattr(planning, "BACKGROUND_ROWS", 10)
    monkeypatch.setattr(stream, "BATCH_ROWS", 7)


@pytest.mark.parametrize("service", ["azure", "mistral"])
def test_a_job_refused_by_max_cost_does_not_capture_the_next_submit(
    service, emu, tmp_path, small_background
):
    model = SERVICES[service][0]
    client = client_of(service, emu)
    glob = _files(tmp_path / "in")
    refused = nb.submit(glob, PROMPT, model=model, client=client, max_cost=1e-12, display=False)
    with pytest.raises(nb.InputError, match="raise max_cost"):
        refused.wait(timeout=60, progress=False)
    assert nb.attach(refused.id).status == "failed"
    again = nb.submit(glob, PROMPT, model=model, client=client, max_cost=100.0, display=False)
    assert again.id != refused.id
    assert again.wait(timeout=60, progress=False).counts["succeeded"] == 20


@pytest.mark.parametrize("service", ["azure", "mistral", "groq"])
def test_status_check_and_collect_never_send(service, emu, monkeypatch, tmp_path):
    model = SERVICES[service][0]
    data = pd.DataFrame({"body": [f"soup {i}" for i in range(20)]})
    with monkeypatch.context() as patched:  # the kernel dies before its upload starts
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(data, PROMPT, model=model, client=client_of(service, emu), display=False)
    before = created(emu, service)
    polled = nbbatch("status", job.id)
    assert polled.returncode == 0, polled.stderr
    assert "20 rows not sent yet; nothing was sent" in polled.stdout, polled.stdout
    collected = nbbatch("collect", job.id, "--out", str(tmp_path / "x.csv"))
    assert collected.returncode == 3, collected.stderr
    checked = nbbatch("check")
    assert checked.returncode == 5, checked.stdout + checked.stderr
    assert created(emu, service) == before  # nothing sent by any of the three
    sent = nbbatch("status", job.id, "--send")
    assert sent.returncode == 0, sent.stderr
    assert f"job {job.id}: sending 20 rows not sent yet (they are paid for)" in sent.stderr
    assert created(emu, service) == before + 1
    assert nb.attach(job.id).wait(timeout=60, progress=False).counts["succeeded"] == 20


@pytest.mark.parametrize("service", ["azure", "mistral", "groq", "together"])
def test_the_repr_names_the_provider_before_and_after_attach(
    service, emu, tmp_path, small_background, monkeypatch
):
    model = SERVICES[service][0]
    glob = _files(tmp_path / "in")
    with monkeypatch.context() as patched:  # still planning when looked at
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(glob, PROMPT, model=model, client=client_of(service, emu), display=False)
    assert f"[{service} {model}]" in repr(job)
    assert f"[{service} {model}]" in repr(nb.attach(job.id))


# ------------------------------------------------ 5. disk: forget and clean


@pytest.mark.parametrize("service", ["azure", "mistral"])
def test_forget_leaves_nothing_and_clean_finds_nothing(service, emu, nbbatch_home) -> None:
    """A finished job keeps no raw result file; forget removes its folder and says, when
    the job is used again, that it was forgotten; clean then has nothing to remove."""
    data = pd.DataFrame({"body": [f"soup {i}" for i in range(8)]})
    job = nb.submit(data, PROMPT, model=SERVICES[service][0], client=client_of(service, emu),
                    display=False).wait(timeout=60, progress=False)  # fmt: skip
    folder = nbbatch_home / "files" / job.id
    assert job.counts["succeeded"] == 8 and not list(folder.glob("*.jsonl"))
    job.forget()
    assert not folder.exists()
    with pytest.raises(nb.JobNotFoundError, match="forgotten"):
        job.merge(data)
    cleaned = nbbatch("clean", "--dry-run")
    assert cleaned.returncode == 0 and "nothing to clean" in cleaned.stdout, cleaned.stdout


# ------------------------------------------------ 10. the sidebar's own checks


@pytest.mark.parametrize("service", ["azure", "mistral", "groq", "together"])
def test_the_sidebar_check_finishes_a_job_of_the_service_and_sends_nothing(
    service, tmp_path
) -> None:
    """The server extension's sweep (``POST /nbbatch/api/check``) on a job no kernel
    polls: it is seen to its end, its failed rows are left failed (retries=1 would send
    them again if the check applied the job's policy), and a check after the emulator
    is gone marks it with why."""
    from nbbatch._ledger import default as ledger
    from nbbatch.labext import checks, views

    model = SERVICES[service][0]
    data = pd.DataFrame({"body": [f"review {i}" for i in range(12)]})
    sidebar = checks.Checks()
    with emulator.start(processing_seconds=0.3, error_rate=0.25, seed=1) as server:
        job = nb.submit(data, PROMPT, model=model, client=client_of(service, server),
                        output="label", retries=1, display=False)  # fmt: skip
        job.wait_sent()
        assert created(server, service) == 1
        deadline = time.monotonic() + 60
        while views.job_view(ledger(), job.id)["status"] == "running":
            assert time.monotonic() < deadline, views.job_view(ledger(), job.id)
            swept = sidebar.check_open(ledger(), fresh=0)
            assert swept["failed"] == [], sidebar.errors()
            time.sleep(0.2)
        (listed,) = views.jobs_view(ledger(), check_errors=sidebar.errors())["jobs"]
        assert listed["provider"] == service and listed["status"] == "completed"
        assert listed["counts"]["succeeded"] + listed["counts"]["failed"] == 12
        assert listed["counts"]["failed"] > 0  # the emulator's errors, not retried
        assert listed["checked"] is not None and not listed["stale"]
        # "check now" and "collect" in the sidebar only look and write, too.
        assert views.refresh(ledger(), job.id)["job"]["counts"]["failed"] > 0
        views.collect(ledger(), job.id, str(tmp_path))
        assert created(server, service) == 1  # only looked: nothing new was created

        # A second job, still running when its service goes away.
        server.configure(processing_seconds=600.0)
        running = nb.submit(data.head(2), PROMPT, model=model,
                            client=client_of(service, server), display=False)  # fmt: skip
        running.wait_sent()
        assert running.id in sidebar.check_open(ledger(), fresh=0)["checked"]
    assert sidebar.check_open(ledger(), fresh=0)["failed"] == [running.id]
    shown = {j["id"]: j for j in views.jobs_view(ledger(), check_errors=sidebar.errors())["jobs"]}
    assert shown[running.id]["stale"] and shown[running.id]["check_error"]
    assert "test-key" not in shown[running.id]["check_error"]


# ------------------------------------------------ 8. costs, at Groq's own batch share


def test_a_groq_cost_says_its_own_batch_share_to_three_significant_digits(emu) -> None:
    """Groq's batch price is 75% of its real-time price where genai-prices has no batch
    rate: the max_cost refusal says that share (not "half"), its advice stands on a
    line of its own, and every figure keeps three significant digits."""
    model = SERVICES["groq"][0]
    client = client_of("groq", emu)
    data = pd.DataFrame({"body": [f"a cold soup, review {i} " * 12 for i in range(40)]})
    with pytest.raises(nb.InputError) as refused:
        nb.submit(data, PROMPT, model=model, client=client, max_cost=1e-9, display=False)
    text = str(refused.value)
    assert "no batch rate there: 75% of the real-time price" in text, text
    assert "half" not in text
    assert text.splitlines()[-1] == "Lower max_tokens, send fewer rows, or raise max_cost."
    assert re.search(r"saves \$0\.000\d{3} \(25%\)", text), text
    job = nb.submit(data, PROMPT, model=model, client=client, display=False)
    job.wait(timeout=60, progress=False)
    listed = nbbatch("status", job.id)
    assert listed.returncode == 0, listed.stderr
    shown = re.search(r"cost: (\$\S+) batch vs (\$\S+) real time", listed.stdout)
    assert shown, listed.stdout
    batch, realtime = shown.groups()
    for figure in (batch, realtime):  # three significant digits, trailing zeros dropped
        assert re.fullmatch(r"\$0\.000\d{1,3}", figure), listed.stdout
    assert float(batch[1:]) / float(realtime[1:]) == pytest.approx(0.75, rel=0.01)


def test_a_price_set_for_a_groq_model_is_discounted_as_groq_discounts(emu, monkeypatch):
    """nb.pricing.set gives a real-time price; a Groq job's batch price is 75% of it,
    not the half that OpenAI and Anthropic charge."""
    from nbbatch import pricing

    model = SERVICES["groq"][0]
    monkeypatch.setattr(pricing, "_OVERRIDES", {})
    nb.pricing.set(model, input=400.0, output=800.0)
    groq_rates = pricing.rates_for("groq", model)
    assert groq_rates is not None and groq_rates.batch_input == pytest.approx(300.0)
    assert groq_rates.batch_output == pytest.approx(600.0)
    assert pricing.rates(model).batch_input == pytest.approx(200.0)  # no provider: half
    data = pd.DataFrame({"body": ["a cold soup"] * 3})
    with pytest.raises(nb.InputError, match=r"\(25%\)") as refused:
        nb.submit(data, PROMPT, model=model, client=client_of("groq", emu), max_cost=1e-9)
    assert "(50%)" not in str(refused.value)


# ------------------------------------------------ 7. Ctrl-C in job.wait()

WAITING_SCRIPT = """
import pandas as pd
from mistralai.client import Mistral

import nbbatch as nb

with nb.emulator.start(processing_seconds=600.0) as emu:
    client = Mistral(api_key="test-key", server_url=emu.url + "/mistral")
    job = nb.submit(pd.DataFrame({"body": ["a", "b"]}), "Summarise: {body}",
                    model="mistral-small-latest", client=client, display=False)
    job.wait_sent()  # its batch exists before the interrupt, however slow the machine
    print(job.id, flush=True)
    job.wait(progress=True)
"""


@pytest.mark.slow
def test_ctrl_c_in_wait_on_a_mistral_job_stops_at_once(tmp_path) -> None:
    """The interrupt lands in whatever the Mistral SDK is doing (a poll through its own
    retrying HTTP client): it still ends the wait in a few lines, the job going on."""
    job_id, error = interrupted_wait(WAITING_SCRIPT, tmp_path)
    assert f"KeyboardInterrupt: stopped waiting for job {job_id}" in error, error
    assert f"nb.attach('{job_id}').wait()" in error
    assert len(error.splitlines()) < 15, error
    assert nb.attach(job_id).batch_ids


# ------------------------------------------------ the command line's help


def test_the_help_names_the_key_variables_of_every_provider() -> None:
    """A shell user reads which variable holds each provider's key from ``nbbatch
    --help``: every registered provider's, not only the first three."""
    from nbbatch import providers

    helped = nbbatch("--help")
    assert helped.returncode == 0, helped.stderr
    for cls in providers.classes():
        for variable in cls.key_variables:
            assert variable in helped.stdout, (cls.name, variable)


# ------------------------------------------------ 4. Bedrock: looking never sends


@pytest.mark.slow
def test_status_check_and_collect_never_send_a_bedrock_job(
    aws,  # noqa: F811
    bedrock_emu,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    """Bedrock sends through S3 and a job of its own per batch: a job whose upload
    never started stays unsent through status, collect and check, until --send."""
    from . import test_bedrock as bedrock

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    data = bedrock.reviews(100)  # Bedrock's minimum
    with monkeypatch.context() as patched:  # the kernel dies before its upload starts
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(data, "Sentiment of: {text}", model=bedrock.CLAUDE, provider="bedrock",
                        client=bedrock.settings(aws), display=False)  # fmt: skip
    before = bedrock_emu.stats()["bedrock_batches_created"]
    polled = nbbatch("status", job.id)
    assert polled.returncode == 0, polled.stderr
    assert "100 rows not sent yet; nothing was sent" in polled.stdout, polled.stdout
    assert nbbatch("collect", job.id, "--out", str(tmp_path / "x.csv")).returncode == 3
    assert nbbatch("check").returncode == 5
    assert bedrock_emu.stats()["bedrock_batches_created"] == before
    assert bedrock.keys(aws) == []  # not even the input file went to S3
    sent = nbbatch("status", job.id, "--send")
    assert sent.returncode == 0, sent.stderr
    assert "sending 100 rows not sent yet (they are paid for)" in sent.stderr
    assert bedrock_emu.stats()["bedrock_batches_created"] == before + 1


# ------------------------------------------------ 6. `import nbbatch` stays light


def test_importing_nbbatch_loads_no_sdk_of_any_provider() -> None:
    """Each provider imports its SDK on first use: importing nbbatch, its command line
    and the provider registry loads none of the eight SDKs (nor boto3's botocore)."""
    sdks = ("openai", "anthropic", "google", "mistralai", "groq", "together", "boto3",
            "botocore", "httpx", "httpx2")  # fmt: skip
    imports = "import nbbatch, nbbatch.cli; from nbbatch import providers; providers.classes()"
    assert modules_loaded(imports, sdks) == []


# ------------------------------------------------ a model name nbbatch does not place


def test_no_openai_key_names_the_provider_whose_key_is_set(monkeypatch) -> None:
    """A Groq model's name (``llama-...``) is not one nbbatch places, so it is taken for
    OpenAI's; a newcomer with only GROQ_API_KEY set is told to say provider='groq'
    (the variable named, the key never quoted), and nothing is recorded."""
    monkeypatch.setenv("GROQ_API_KEY", "gsk-never-quoted")
    data = pd.DataFrame({"body": ["a cold soup"]})
    with pytest.raises(nb.ConfigError, match="OPENAI_API_KEY") as refused:
        nb.submit(data, PROMPT, model=SERVICES["groq"][0], display=False)
    text = str(refused.value)
    assert "GROQ_API_KEY is set: for a Groq model, pass provider='groq'" in text, text
    assert "gsk-never-quoted" not in text and "MISTRAL" not in text
    assert nb.jobs().empty
