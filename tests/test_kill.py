"""A process killed while its batches upload in the background, or while it collects
results, resumes in a new one: every row ends once, exactly the batches that were needed
exist at the provider, and no result is lost.

The client runs as a real subprocess against an emulator in its own process, and kills
itself (``os._exit``) at the chosen moment, as a crash or ``kill -9`` would.
"""

from __future__ import annotations

import time

import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import run_until_killed
from .conftest import batch_ids_at, client_for
from .test_durable import _Url, assert_every_row_terminal_once, emu_process, frame  # noqa: F401

ROWS = 50

CHILD = """
    import os, sys, openai, anthropic, pandas as pd, nbbatch as nb
    from nbbatch import _ledger as ledger
    from nbbatch.providers.anthropic import AnthropicProvider
    from nbbatch.providers.gemini import GeminiProvider
    from nbbatch.providers.openai import OpenAIProvider

    url, provider, mode, data = os.environ["ARGS"].split()
    # Small chunks, so 50 rows are 5 batches (the real limits are 50,000 and 100,000).
    OpenAIProvider.max_requests = AnthropicProvider.max_requests = 10
    GeminiProvider.max_requests = 10
    if provider == "openai":
        client, model = openai.OpenAI(base_url=url + "/v1", api_key="k"), "gpt-4o-mini"
    elif provider == "gemini":
        from google import genai
        client = genai.Client(api_key="k", http_options={"base_url": url + "/gemini"})
        model = "gemini-2.5-flash"
    else:
        client, model = anthropic.Anthropic(base_url=url, api_key="k"), "claude-haiku-4-5"

    def die_on(name, call, before):
        original = getattr(ledger.Ledger, name)
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == call and before:
                os._exit(9)
            result = original(*args, **kwargs)
            if len(calls) == call:
                os._exit(9)
            return result

        setattr(ledger.Ledger, name, wrapper)

    if mode == "between-chunks":  # two batches created and recorded, three not sent
        die_on("confirm_batch", 2, before=False)
    elif mode == "inside-create":  # the third batch exists at the provider, unrecorded
        die_on("confirm_batch", 3, before=True)
    elif mode == "collecting":  # the second batch downloaded, its results not recorded
        die_on("record_results", 2, before=True)
    if data == "frame":
        data = pd.DataFrame({"text": [f"row {i}" for i in range(50)]})
    job = nb.submit(data, "{text}", model=model, client=client, display=False)
    print(job.id, flush=True)
    job.wait(progress=False)
    print("finished", flush=True)
"""


def _killed_child(url: str, provider: str, mode: str, data: str, home) -> str:
    """Run CHILD in a new process until it kills itself at ``mode``; the job's id."""
    printed = run_until_killed(CHILD, f"{url} {provider} {mode} {data}", home)
    assert "finished" not in printed
    return printed.split()[0]


def _at_provider(client) -> list[str]:
    return batch_ids_at(client)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["between-chunks", "inside-create", "collecting"])
def test_a_process_killed_mid_upload_or_mid_collection_resumes_exactly(
    emu_process,  # noqa: F811
    provider,
    nbbatch_home,
    mode,
):
    job_id = _killed_child(emu_process, provider, mode, "frame", nbbatch_home)

    client = client_for(provider, _Url(emu_process))
    before = len(_at_provider(client))
    assert before == {"between-chunks": 2, "inside-create": 3, "collecting": 5}[mode]

    job = nb.attach(job_id, client=client)
    job.wait(timeout=120, progress=False)
    assert_every_row_terminal_once(job, ROWS)
    assert job.counts["succeeded"] == ROWS
    # Exactly the batches needed: the rows not sent go in one more batch (this process
    # has the real limits), the batch created inside the dead process is found instead
    # of sent again, and none is re-created while collecting.
    at_provider = _at_provider(client)
    assert len(at_provider) == {"between-chunks": 3, "inside-create": 4, "collecting": 5}[mode]
    assert sorted(job.batch_ids) == sorted(at_provider)
    merged = job.merge(frame(ROWS))
    assert merged["response"].tolist() == [emulator.echo_text(f"row {i}") for i in range(ROWS)]


@pytest.mark.slow
def test_a_job_from_parquet_files_killed_mid_upload_resumes_and_writes_back(
    emu_process,  # noqa: F811
    provider,
    nbbatch_home,
    tmp_path,
):
    """Three Parquet files, five batches of ten: killed with two batches sent, the job
    resumes from its manifest in a new process (without the files' help) and writes
    every row back to Parquet from the files it recorded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "in"
    folder.mkdir()
    texts = [f"row {i}" for i in range(ROWS)]
    for i, (a, b) in enumerate([(0, 20), (20, 35), (35, ROWS)]):
        pq.write_table(pa.table({"text": texts[a:b]}), folder / f"part-{i}.parquet")
    glob = str(folder / "*.parquet")
    job_id = _killed_child(emu_process, provider, "between-chunks", glob, nbbatch_home)
    client = client_for(provider, _Url(emu_process))
    assert len(_at_provider(client)) == 2

    job = nb.attach(job_id, client=client)
    job.wait(timeout=120, progress=False)
    assert_every_row_terminal_once(job, ROWS)
    assert len(job.batch_ids) == 3  # the 30 rows not sent go in one batch, once
    out = pq.read_table(job.to_parquet(tmp_path / "out.parquet"))
    assert out.column("text").to_pylist() == texts
    assert out.column("response").to_pylist() == [emulator.echo_text(t) for t in texts]


def test_an_upload_refused_mid_job_is_the_jobs_error_and_the_rest_is_sent_later(emu, monkeypatch):
    """A key revoked between two chunks (a 401 the emulator cannot be asked for, so the
    SDK's own upload call raises it): the panel and wait() say why, nothing is lost, and
    the job resumed with a working client sends only what was not sent."""
    import httpx
    import openai

    from nbbatch import _panel as panel
    from nbbatch.providers.openai import OpenAIProvider

    from .test_panel import wait_for

    monkeypatch.setattr(OpenAIProvider, "max_requests", 10)  # 30 rows: 3 chunks
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
    # Patched on the class: nbbatch sends through a guarded copy of a loopback client
    # (see providers/loopback.py), which shares the SDK's classes, not this instance.
    upload = openai.resources.files.Files.create
    calls = []

    def revoked_after_one(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            request = httpx.Request("POST", emu.openai_base_url + "files")
            raise openai.AuthenticationError(
                "Incorrect API key provided", response=httpx.Response(401, request=request),
                body=None,
            )  # fmt: skip
        return upload(self, *args, **kwargs)

    monkeypatch.setattr(openai.resources.files.Files, "create", revoked_after_one)
    job = nb.submit(frame(30), "{text}", model="gpt-4o-mini", client=client, display=False)
    wait_for(lambda: not job.sending)
    snap = job.refresh()
    assert snap.last_error.startswith("sending stopped:")
    assert "20 rows are not sent yet" in snap.last_error and "nb.attach(" in snap.last_error
    assert "sending stopped" in panel.plain_text(snap)
    with pytest.raises(nb.ProviderError) as raised:
        job.wait(timeout=30, progress=False)
    assert raised.value.job_id == job.id
    assert job.counts["pending"] == 20 and len(job.batch_ids) == 1

    client.close()
    resumed = nb.attach(job.id, client=client_for("openai", emu))
    resumed.wait(timeout=60, progress=False)
    assert_every_row_terminal_once(resumed, 30)
    assert resumed.counts["succeeded"] == 30
    print([(b.n_requests, b.attempt) for b in resumed.snapshot().batches])
    assert len(resumed.batch_ids) == 3  # the first chunk once, the other two sent now
    merged = resumed.merge(frame(30))
    assert merged["response"].tolist() == [emulator.echo_text(f"row {i}") for i in range(30)]


def test_a_second_session_never_sends_what_a_live_sender_is_sending(emu, monkeypatch):
    import openai

    from nbbatch.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "max_requests", 10)  # 50 rows: 5 chunks
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
    upload = openai.resources.files.Files.create

    def slow_upload(self, *args, **kwargs):
        time.sleep(0.3)  # a slow link: the second session looks in mid-upload
        return upload(self, *args, **kwargs)

    # On the class: nbbatch sends through a guarded copy of a loopback client.
    monkeypatch.setattr(openai.resources.files.Files, "create", slow_upload)
    job = nb.submit(frame(ROWS), "{text}", model="gpt-4o-mini", client=client, display=False)
    other = nb.attach(job.id, client=client_for("openai", emu))
    while job.sending:
        other.refresh()  # would send the unsent chunks again without the sending lease
        time.sleep(0.05)
    other.wait(timeout=60, progress=False)
    assert_every_row_terminal_once(other, ROWS)
    assert len(other.batch_ids) == ROWS // 10
    assert sum(b.n_requests for b in other.snapshot().batches) == ROWS
    client.close()
