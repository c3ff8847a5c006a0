"""Jobs bigger than the account's batch queue go in waves, on every provider, through
the official SDKs to the emulator's quota models: no row ever fails for capacity."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import _console as console
from nbbatch import _panelview as panelview
from nbbatch import _quota as quota
from nbbatch import emulator
from nbbatch._ledger import default as default_ledger

from .conftest import client_for, model_for

PROVIDERS = ["openai", "anthropic", "gemini"]
ROWS = 300
#: ~40 tokens a row as the emulator counts them (150 characters, four a token).
TEXT = "x" * 140
FAST = nb.PollPolicy(first=0.05, most=0.2)


def frame(n: int = ROWS, tag: str = "") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i:05d}{tag} {TEXT}" for i in range(n)]})


def knobs(provider: str, share: float) -> dict[str, int]:
    """Emulator limits holding ``share`` of a ROWS-row job on ``provider``."""
    if provider == "anthropic":
        return {"anthropic_queue_limit": int(ROWS * share)}
    tokens = int(ROWS * 40 * share)
    key = "enqueued_token_limit" if provider == "openai" else "gemini_enqueued_token_limit"
    return {key: tokens}


@pytest.fixture
def small_tier(monkeypatch):
    """Gemini's smallest published queue (3M tokens at tier 1) as 4,000 tokens: the
    queue is filled in steps only for a job over it, and a 3M-token job is too big for
    a test."""
    from nbbatch.providers.gemini import GeminiProvider

    monkeypatch.setattr(GeminiProvider, "tier_limit", classmethod(lambda cls, tier, model: 4_000))


def run(df, client, **kwargs) -> nb.BatchJob:
    job = nb.submit(df, "{text}", model=model_for(client), client=client, **kwargs)
    job.polling = FAST
    return job.wait(timeout=120, progress=False)


def refusals(job: nb.BatchJob) -> int:
    """Refusals for the queue this job met (refused batches and refused creates)."""
    return int(default_ledger().waves(job.id).get("refusals") or 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_job_five_times_over_the_queue_limit_succeeds_in_waves(provider, small_tier):
    # Batches last long enough for the queue to fill (a faster one drains between creates).
    seconds = 0.5
    with emulator.start(processing_seconds=seconds, **knobs(provider, 0.2)) as server:
        client = client_for(provider, server)
        job = run(frame(), client)
        assert job.counts["succeeded"] == ROWS
        assert job.counts["failed"] == 0
        snap = job.snapshot()
        accepted = [b for b in snap.batches if b.status != "refused"]
        assert len(accepted) >= 5  # at least five waves of one batch
        assert sum(b.n_requests for b in accepted) == ROWS  # every row sent once
        waves = default_ledger().waves(job.id)
        # Gemini's waves are counted from its one refusal: the batches that filled the
        # queue before it may have drained meanwhile and taken more than a wave's rows.
        assert len(waves["starts"]) >= (2 if provider == "gemini" else 5)
        # OpenAI and the emulator's Anthropic state the limit: one refusal teaches it.
        # Gemini's refusal states none: the queue is filled in steps, and the one step
        # over the limit is the one refused create.
        assert refusals(job) <= 1
        # Learned for the account: the next job of the ledger is never refused.
        again = run(frame(tag="b"), client)
        assert again.counts["succeeded"] == ROWS
        assert refusals(again) == 0
        assert not [b for b in again.snapshot().batches if b.status == "refused"]


def test_a_probed_gemini_limit_is_what_the_queue_held_and_is_then_kept(small_tier):
    # Gemini's refusal states no limit: the limit kept is the most the queue held at
    # once (by the provider's creation and end times, so a batch that ended unseen
    # never makes it high), and no job after that is refused.
    with emulator.start(processing_seconds=0.5, **knobs("gemini", 0.2)) as server:
        client = client_for("gemini", server)
        first = run(frame(tag="a"), client)
        assert first.counts["succeeded"] == ROWS
        assert refusals(first) == 1
        [(limit, source)] = default_ledger().query("SELECT queue_limit, source FROM quota_limits")
        assert source == "probe"
        # In estimated tokens, which run about 1% above the emulator's count.
        assert 0 < limit <= knobs("gemini", 0.2)["gemini_enqueued_token_limit"] * 1.01
        for tag in ("b", "c"):
            job = run(frame(tag=tag), client)
            assert job.counts["succeeded"] == ROWS
            assert refusals(job) == 0


def test_a_gemini_account_with_room_gets_the_job_in_a_few_batches_then_one(small_tier):
    # No limit known and none at the provider, a job over the smallest published queue:
    # it is filled in at most FILL_STEPS batches, sent without waiting, none refused;
    # what it took is kept,
    # so the next job of that size goes in one batch, or two where some of the first
    # job's ended before its last was created (the queue was not seen to hold it all).
    with emulator.start(processing_seconds=5.0) as server:
        client = client_for("gemini", server)
        first = run(frame(tag="a"), client)
        assert first.counts["succeeded"] == ROWS
        assert refusals(first) == 0
        assert 1 < len(first.batch_ids) <= quota.FILL_STEPS
        second = run(frame(tag="b"), client)
        assert second.counts["succeeded"] == ROWS
        assert len(second.batch_ids) <= 2


@pytest.mark.slow
def test_a_gemini_account_below_every_published_tier_meets_one_refusal():
    # A job smaller than the smallest queue Google publishes for the model (3M tokens),
    # on an account whose queue holds a fifth of it: the queue is filled in steps all
    # the same, so the step over the limit is the job's one refused create (sent at
    # once, the whole job would be refused, and then a step of the fill). Batches last
    # long enough that the queue does not drain while it is filled.
    rows = quota.FILL_STEPS * quota.FILL_MIN_ROWS
    limit = rows * 40 // 5
    with emulator.start(processing_seconds=3.0, gemini_enqueued_token_limit=limit) as server:
        client = client_for("gemini", server)
        first = run(frame(rows, "a"), client)
        assert first.counts["succeeded"] == rows
        assert refusals(first) <= 1
        again = run(frame(rows, "b"), client)
        assert again.counts["succeeded"] == rows
        assert refusals(again) == 0


def test_a_small_gemini_job_goes_at_once():
    # 300 rows, 12k tokens: too few rows to cut into steps (fewer than twice
    # FILL_MIN_ROWS): one batch.
    with emulator.start(processing_seconds=0.05) as server:
        job = run(frame(), client_for("gemini", server))
        assert job.counts["succeeded"] == ROWS
        assert len(job.batch_ids) == 1


def test_openai_refused_batch_is_cleaned_up_and_its_rows_never_fail(oai):
    with emulator.start(processing_seconds=0.05, enqueued_token_limit=4_000) as server:
        client = client_for("openai", server)
        job = run(frame(), client)
        refused = [b for b in job.snapshot().batches if b.status == "refused"]
        assert len(refused) == 1 and refusals(job) == 1
        # Its input file was deleted at the provider; the accepted batches' are kept.
        files = {f.id for f in client.files.list()}
        raw = client.batches.retrieve(refused[0].batch_id)
        assert raw.input_file_id not in files
        assert job.counts["succeeded"] == ROWS
        assert (job.merge()["response_status"] == "succeeded").all()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_known_limit_means_no_refusal_at_all(provider):
    limit = next(iter(knobs(provider, 0.25).values()))
    with emulator.start(processing_seconds=0.05, **knobs(provider, 0.25)) as server:
        job = run(frame(), client_for(provider, server), queue_limit=limit)
        assert job.counts["succeeded"] == ROWS
        assert refusals(job) == 0
        assert len(default_ledger().waves(job.id)["starts"]) >= 3


def test_tier_presets_size_the_waves_before_any_refusal():
    # OpenAI's published tier-1 queue for gpt-4o is 90,000 tokens: a job of ~120k
    # tokens goes in two waves without a refusal.
    with emulator.start(processing_seconds=0.05, tier="tier-1") as server:
        client = client_for("openai", server)
        df = pd.DataFrame({"text": [f"row {i:05d} " + "y" * 1_590 for i in range(300)]})
        job = nb.submit(df, "{text}", model="gpt-4o", client=client, tier="tier-1")
        job.polling = FAST
        job.wait(timeout=120, progress=False)
        assert job.counts["succeeded"] == 300
        assert refusals(job) == 0
        assert len(default_ledger().waves(job.id)["starts"]) == 2


def test_two_jobs_at_once_share_the_queue():
    with emulator.start(processing_seconds=0.1, enqueued_token_limit=4_000) as server:
        client = client_for("openai", server)
        jobs: list[nb.BatchJob] = []
        submitted = threading.Barrier(2)

        def submit(tag: str) -> None:
            submitted.wait()
            jobs.append(
                nb.submit(frame(tag=tag), "{text}", model="gpt-4o-mini", client=client,
                          queue_limit=4_000)
            )  # fmt: skip

        threads = [threading.Thread(target=submit, args=(t,)) for t in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for job in jobs:
            job.polling = FAST
        for job in jobs:
            job.wait(timeout=120, progress=False)
        for job in jobs:
            assert job.counts["succeeded"] == ROWS
            assert refusals(job) == 0
            assert not [b for b in job.snapshot().batches if b.status == "refused"]


def test_a_new_session_attaching_the_job_continues_its_waves():
    # Batches long enough that the first wave still runs when wait_sent() returns.
    with emulator.start(processing_seconds=3.0, enqueued_token_limit=4_000) as server:
        client = client_for("openai", server)
        first = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=client,
                          queue_limit=4_000)  # fmt: skip
        first.wait_sent()  # the first wave only: the rest waits for room
        assert first.counts["pending"] == ROWS
        assert len(first.batch_ids) == 1
        # A new session (a new job object from the ledger) takes over and finishes.
        later = nb.attach(first.id, client=client)
        later.polling = FAST
        later.wait(timeout=120, progress=False)
        assert later.counts["succeeded"] == ROWS
        assert len(default_ledger().waves(later.id)["starts"]) >= 3


def test_the_views_say_which_wave_and_how_full_the_queue_is():
    with emulator.start(processing_seconds=3.0, enqueued_token_limit=4_000) as server:
        client = client_for("openai", server)
        job = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=client,
                        queue_limit=4_000)  # fmt: skip
        job.wait_sent()
        snap = job.refresh()
        assert snap.waves is not None
        assert snap.waves.wave == 1 and snap.waves.waves == 3  # ~11.4k tokens, 4k a wave
        line = snap.quota_line
        assert line is not None
        assert line.startswith("waiting for quota: wave 1 of ")
        assert "of 4,000 queued tokens in use for gpt-4o-mini" in line
        # Every text view renders the same line from the snapshot.
        assert line in snap.summary()
        assert line in console.progress_line(snap)
        assert line in panelview.plain_text(snap)
        assert panelview.esc(line) in panelview.counts_html(snap)
        job.polling = FAST
        job.wait(timeout=120, progress=False)
        assert job.snapshot().quota_line is None


def test_queue_options_are_checked_before_anything_is_sent(oai):
    with pytest.raises(nb.InputError, match="queue_limit"):
        nb.submit(frame(3), "{text}", model="gpt-4o-mini", client=oai, queue_limit=-5)
    with pytest.raises(nb.InputError, match="tier"):
        nb.submit(frame(3), "{text}", model="gpt-4o-mini", client=oai, tier="gold")


def test_nbbatch_jobs_and_the_sidebar_say_it_too():
    import subprocess
    import sys

    from nbbatch.labext import views

    with emulator.start(processing_seconds=5.0, enqueued_token_limit=4_000) as server:
        client = client_for("openai", server)
        job = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=client,
                        queue_limit=4_000)  # fmt: skip
        job.wait_sent()
        listed = views.job_view(default_ledger(), job.id)
        assert listed is not None
        assert listed["quota"].startswith("waiting for quota: wave 1 of 3 — ")
        assert "queued tokens in use for gpt-4o-mini" in listed["quota"]
        shown = subprocess.run(
            [sys.executable, "-m", "nbbatch.cli", "jobs"], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert f"{job.id}: waiting for quota: wave 1 of 3 — " in shown.stdout
        job.cancel()


def test_preview_says_how_many_waves_before_sending():
    df = pd.DataFrame({"text": [f"{i} " + "x" * 400 for i in range(50_000)]})
    est = nb.preview(df, "{text}", model="gpt-4o-mini", tier="tier-1").estimate
    # ~5.4M input tokens against OpenAI's published 2M for gpt-4o-mini at tier 1.
    assert est.waves.startswith("3 waves of at most 2M queued tokens")
    assert "queue limit    3 waves" in est.summary()
    est = nb.preview(df, "{text}", model="claude-haiku-4-5", queue_limit=20_000).estimate
    assert est.waves.startswith("3 waves of at most 20k queued requests")
    assert nb.preview(df, "{text}", model="gpt-4o-mini").estimate.waves == ""  # none known


def test_a_limit_openai_stated_is_filled_whole():
    # OpenAI's refusal states its limit: the waves fill it whole (no margin for the token
    # estimate), so a job of exactly five limits goes in five waves, not six, and
    # nothing more is refused.
    df = frame()
    job_tokens = sum(-(-len(text) // 4) for text in df["text"])
    with emulator.start(processing_seconds=0.3, enqueued_token_limit=job_tokens // 5) as server:
        client = client_for("openai", server)
        first = run(df, client)
        assert first.counts["succeeded"] == ROWS
        assert refusals(first) == 1
        again = run(frame(tag="b"), client)
        assert again.counts["succeeded"] == ROWS
        assert refusals(again) == 0
        assert len(default_ledger().waves(again.id)["starts"]) == 5
