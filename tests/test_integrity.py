"""No answer on the wrong row, no input sent wrongly: the cases a new user hits first."""

from __future__ import annotations

import os
import stat
import warnings

import pandas as pd
import pyarrow as pa
import pytest

import nbbatch as nb
from nbbatch import _collect as collect
from nbbatch import emulator

from .conftest import batches_created, client_for, model_for

PROMPT = "Classify: {text}"


def run(df, client, prompt=PROMPT, **kwargs) -> nb.BatchJob:
    job = nb.submit(df, prompt, model=model_for(client), client=client, display=False, **kwargs)
    return job.wait(timeout=30, progress=False)


def answer(text: str, prompt: str = PROMPT) -> str:
    return emulator.echo_text(prompt.format(text=text))


# -- merge checks that each row still renders the request sent for it --------------------


def test_merge_refuses_another_frame_with_the_same_labels(client):
    sent = pd.DataFrame({"text": ["cats are great", "the stock fell", "rain again"]})
    other = pd.DataFrame({"text": ["the stock fell", "cats are great", "rain again"]})
    job = run(sent, client)
    with pytest.raises(nb.MergeError) as err:
        job.merge(other)
    message = str(err.value)
    assert "2 of the 3 rows" in message
    assert "'Classify: cats are great'" in message and "'Classify: the stock fell'" in message
    assert "verify=False" in message
    # The submitted frame and a sorted copy (labels kept) merge correctly.
    assert job.merge(sent)["response"].tolist() == [answer(t) for t in sent["text"]]
    shuffled = sent.sort_values("text")
    out = job.merge(shuffled)
    assert out["response"].tolist() == [answer(t) for t in shuffled["text"]]


def test_merge_refuses_a_sorted_and_reindexed_copy(client):
    df = pd.DataFrame({"text": [f"row {i}" for i in (3, 1, 2, 0)]})
    job = run(df, client)
    moved = df.sort_values("text").reset_index(drop=True)
    with pytest.raises(nb.MergeError, match="sorted, re-indexed or edited"):
        job.merge(moved)


def test_merge_refuses_an_edited_column_unless_told(client):
    df = pd.DataFrame({"text": ["alpha", "beta", "gamma"], "other": [1, 2, 3]})
    job = run(df, client)
    edited = df.copy()
    edited.loc[1, "text"] = "BETA (fixed by hand)"
    with pytest.raises(nb.MergeError, match="1 of the 3 rows"):
        job.merge(edited)
    out = job.merge(edited, verify=False)
    assert out["response"].tolist() == [answer("alpha"), answer("beta"), answer("gamma")]
    # A column the template does not use may change freely.
    changed = df.assign(other=[7, 8, 9])
    assert job.merge(changed)["response_status"].eq("succeeded").all()


#: Ways to change a frame's text in place, each leaving the index as it was.
IN_PLACE = {
    "a cell set": lambda df: df.loc.__setitem__((1, "text"), "BETA"),
    "a cell set by position": lambda df: df.iloc.__setitem__((2, 0), "GAMMA"),
    "replaced in place": lambda df: df.replace({"alpha": "ALPHA"}, inplace=True),
    "updated from another frame": lambda df: df.update(pd.DataFrame({"text": ["Z"]}, index=[0])),
    "a column recomputed": lambda df: df.__setitem__("text", df["text"].str.upper()),
    "sorted in place": lambda df: df.sort_values(
        "text", ascending=False, inplace=True, ignore_index=True
    ),
}


@pytest.mark.parametrize(
    "dtype", ["str", object, "string[pyarrow]", pd.ArrowDtype(pa.large_string())], ids=str
)
def test_merge_finds_a_frame_changed_in_place_since_submit(dtype):
    # Merging the very frame submitted is fast (its Arrow data is known unchanged), so
    # every way of changing it in place must still be seen, whatever the column type.
    df = pd.DataFrame({"text": pd.Series(["alpha", "beta", "gamma"], dtype=dtype)})
    job = nb.submit(df, PROMPT, model="gpt-4o-mini", provider="local", wait=True,
                    progress=False, display=False)  # fmt: skip
    assert job.merge(df)["response"].tolist() == [answer(t) for t in ["alpha", "beta", "gamma"]]
    for how, change in IN_PLACE.items():
        edited = df.copy()  # a copy shares the Arrow data it has not changed yet
        with warnings.catch_warnings():  # pandas 3.1 deprecates inplace=, still there
            warnings.simplefilter("ignore")
            change(edited)
        with pytest.raises(nb.MergeError, match="sorted, re-indexed or edited"):
            job.merge(edited)
            pytest.fail(f"{how}: not seen")
    change = IN_PLACE["a cell set"]
    change(df)
    with pytest.raises(nb.MergeError, match="1 of the 3 rows"):
        job.merge(df)


def test_merge_checks_skipped_rows_too(client):
    df = pd.DataFrame({"text": ["a", None, "c"]})
    job = run(df, client)
    assert job.merge(df)["response_status"].tolist() == ["succeeded", "skipped", "succeeded"]
    filled = df.fillna("now present")
    with pytest.raises(nb.MergeError, match="nothing \\(row not sent\\)"):
        job.merge(filled)


# -- any index pandas allows ---------------------------------------------------------------


def test_an_index_mixing_labels_and_a_tuple(client):
    index = pd.Index(["a b", 42, ("t", 1)], dtype=object)
    df = pd.DataFrame({"text": ["first", "second", "third"]}, index=index)
    job = run(df, client)
    out = job.merge(df)
    assert out.index.equals(index)
    assert out["response"].tolist() == [answer(t) for t in df["text"]]
    part = df.iloc[[2, 0]]
    assert job.merge(part)["response"].tolist() == [answer("third"), answer("first")]


# -- input refused before anything is sent -------------------------------------------------


def test_a_lone_surrogate_is_named_before_sending(provider, emu):
    client = client_for(provider, emu)
    text = pd.Series(["fine", "scraped \ud800 text"], index=["r1", "r2"], dtype=object)
    before = batches_created(emu)
    with pytest.raises(nb.InputError) as err:
        nb.submit(pd.DataFrame({"text": text}), PROMPT, model=model_for(client), client=client)
    assert "'text'" in str(err.value) and "'r2'" in str(err.value)
    assert "surrogate" in str(err.value)
    assert batches_created(emu) == before
    assert nb.jobs().empty


def test_a_lone_surrogate_in_an_index_label_is_escaped_not_fatal(client):
    df = pd.DataFrame({"text": ["x", "y"]}, index=pd.Index(["ok", "bad\udcff"], dtype=object))
    job = run(df, client)
    assert job.merge(df)["response"].tolist() == [answer("x"), answer("y")]
    assert "bad\\udcff" in job.results()["label"].tolist()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"text": ["a", "b"]}, "pd.DataFrame(your_dict)"),
        (["a", "b"], "pd.Series(your_list)"),
        (pd.DataFrame({"text": pd.Series([], dtype=str)}), "no rows"),
        (pd.DataFrame({"text": [None, None]}), "none of the 2 rows would be sent"),
    ],
)
def test_unusable_data_is_refused_and_nothing_recorded(emu, data, words):
    client = client_for("openai", emu)
    before = batches_created(emu)
    with pytest.raises(nb.InputError) as err:
        nb.submit(data, PROMPT, model="gpt-4o-mini", client=client)
    assert words in str(err.value)
    assert batches_created(emu) == before
    assert nb.jobs().empty


def test_an_empty_prompt_is_skipped_with_its_reason(client):
    df = pd.DataFrame({"text": ["hello", "", "   \n", None]})
    job = run(df, client, prompt="{text}")
    out = job.merge(df)
    assert out["response_status"].tolist() == ["succeeded", "skipped", "skipped", "skipped"]
    assert "renders to empty text" in out["response_error"].iloc[1]
    assert "renders to empty text" in out["response_error"].iloc[2]
    assert "missing value" in out["response_error"].iloc[3]
    assert job.counts["skipped"] == 3 and job.counts["succeeded"] == 1
    # A skipped row still blank in other whitespace was not sent either way: it merges.
    assert job.merge(df.replace({"": "\t"}))["response_status"].iloc[1] == "skipped"
    # One filled in since submit would be sent now: its (missing) answer is not its own.
    filled = df.replace({"   \n": "now with text"})
    with pytest.raises(nb.MergeError, match="1 of the 4 rows"):
        job.merge(filled)


# -- a running job says so ------------------------------------------------------------------


def test_merge_and_failed_on_a_running_job_warn(provider):
    with emulator.start(processing_seconds=30) as slow:
        client = client_for(provider, slow)
        df = pd.DataFrame({"text": ["a", "b", "c"]})
        job = nb.submit(df, PROMPT, model=model_for(client), client=client, display=False)
        with pytest.warns(nb.JobRunningWarning, match="3 of 3 rows are pending"):
            out = job.merge()
        assert out["response_status"].eq("pending").all()
        with pytest.warns(nb.JobRunningWarning, match="failed\\(\\) shows only"):
            assert job.failed().empty
        job.cancel()


def test_a_finished_job_merges_without_warning(client):
    df = pd.DataFrame({"text": ["a"]})
    job = run(df, client)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        job.merge(df)
        job.failed()


# -- cost estimates count what is sent ------------------------------------------------------


def test_estimates_count_distinct_requests_and_reuse(emu):
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": ["same"] * 90 + [f"t{i}" for i in range(10)]})
    preview = nb.preview(df, PROMPT, model="gpt-4o-mini", max_tokens=10)
    assert preview.estimate.rows == 11
    assert "from 100 rows: 89 duplicate rows are sent once" in preview.estimate.summary()
    single = nb.preview(df.head(1), PROMPT, model="gpt-4o-mini", max_tokens=10).estimate
    assert preview.estimate.cost.batch == pytest.approx(single.cost.batch * 11, rel=0.2)
    # max_cost uses the same count: 11 requests fit a budget 100 would not.
    budget = single.cost.batch * 30
    job = nb.submit(df, PROMPT, model="gpt-4o-mini", max_tokens=10, max_cost=budget, client=client)
    job.wait(timeout=30, progress=False)
    assert job.counts["deduplicated"] == 89
    # Everything already answered: reused, nothing to pay, so any budget passes.
    again = nb.submit(
        df, PROMPT, model="gpt-4o-mini", max_tokens=10, max_cost=1e-9, client=client, force=True
    )
    assert again.wait(timeout=30, progress=False).counts["reused"] == 100
    # preview sees the reuse too when told where the job would go; without a client or
    # key it cannot, and says so.
    more = pd.concat([df, pd.DataFrame({"text": ["new one"]})], ignore_index=True)
    seen = nb.preview(more, PROMPT, model="gpt-4o-mini", max_tokens=10, client=client)
    assert seen.estimate.rows == 1
    assert "11 requests already answered in earlier jobs are reused" in seen.estimate.note
    blind = nb.preview(more, PROMPT, model="gpt-4o-mini", max_tokens=10).estimate
    assert blind.rows == 12 and "not checked" in blind.note


# -- the ledger is owner-only ---------------------------------------------------------------


def test_result_files_are_owner_only_and_a_loose_home_is_tightened(tmp_path, monkeypatch, emu):
    home = tmp_path / "loose-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    monkeypatch.setenv("NBBATCH_HOME", str(home))
    # The raw downloads are streamed to disk and removed once their rows are recorded:
    # note their modes just before they go, as they lay on disk meanwhile.
    raw_modes: dict[str, int] = {}
    forget = collect.forget_result_files

    def noting_forget(ctx, info):
        for p in (ctx.ledger.files / ctx.id).glob("*.jsonl"):
            raw_modes[p.name] = stat.S_IMODE(p.stat().st_mode)
        forget(ctx, info)

    monkeypatch.setattr(collect, "forget_result_files", noting_forget)
    job = run(pd.DataFrame({"text": ["a", "b"]}), client_for("openai", emu))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert raw_modes and set(raw_modes.values()) == {0o600}, raw_modes
    files = [p for p in home.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".jsonl"]  # not kept beside the record
    assert list((home / "files" / job.id).glob("results-*.arrow"))  # the parsed results
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for p in [p for p in home.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p


def test_resubmit_overrides_are_checked_before_sending(client, emu):
    df = pd.DataFrame({"text": ["fine", f"bad {emulator.FAIL_MARKER}"]})
    job = run(df, client)
    assert job.counts["failed"] == 1
    before = batches_created(emu)
    with pytest.raises(nb.InputError, match="temperature"):
        job.resubmit_failed(temprature=0.2)
    with pytest.raises(nb.InputError, match="did you mean"):
        job.resubmit_failed(model=model_for(client) + "x")
    assert batches_created(emu) == before
    assert job.spec.params == {} and job.model == model_for(client)


def test_the_accessor_highlights_a_merged_frame(client):
    df = pd.DataFrame({"text": ["fine", f"bad {emulator.FAIL_MARKER}"]})
    out = run(df, client).merge(df)
    styled = out.nbbatch.highlight()
    html = styled.to_html()
    assert "invalid_request_error" in html or "invalid_argument" in html  # Gemini's word
    tint = "rgba(229, 57, 53"  # the failed-row tint
    assert tint in html and html.count(tint) == nb.highlight(out).to_html().count(tint)


def test_a_job_recorded_before_salts_were_kept_is_checked_by_its_prompts(client):
    sent = pd.DataFrame({"text": ["cats are great", "the stock fell"]})
    job = run(sent, client)
    # As a ledger from the previous release has it: no salt for the job.
    with job._ledger.transaction() as db:
        db.execute("UPDATE jobs SET salt = NULL WHERE id = ?", (job.id,))
    old = nb.attach(job.id, client=client)
    assert old.merge(sent)["response"].tolist() == [answer(t) for t in sent["text"]]
    with pytest.raises(nb.MergeError, match="2 of the 2 rows"):
        old.merge(sent.iloc[::-1].reset_index(drop=True))
