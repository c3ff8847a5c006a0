"""Polars and Arrow tables in and out: one validation path, the same kind given back."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import nbbatch as nb
from nbbatch import emulator

from .conftest import model_for

PROMPT = "Say {text} about {n}"
AWKWARD = {
    "ticket": ["t-1", "t-2", "t-3", "t-4", "t-5"],
    "text": ["plain", None, 'emoji 😀 and "quotes"', "two\nlines", "tab\tand \\ back"],
    "n": [1, 2, None, 4, 5],
}


def kinds() -> dict[str, object]:
    polars = pl.DataFrame(AWKWARD)
    table = polars.to_arrow()
    return {
        "polars": polars,
        "polars-lazy": polars.lazy(),
        "arrow": table,
        "arrow-dataset": ds.dataset(table),
    }


def expected(text: str | None, n: int | None) -> str | None:
    if text is None or n is None:
        return None
    return emulator.echo_text(PROMPT.format(text=text, n=n))


@pytest.mark.parametrize("kind", list(kinds()))
def test_each_kind_round_trips_and_merges_back_as_itself(client, kind):
    data = kinds()[kind]
    job = nb.submit(data, PROMPT, model=model_for(client), client=client, id_column="ticket")
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 3 and job.counts["skipped"] == 2
    out = job.merge(data)
    if kind == "polars-lazy":  # a LazyFrame in, a LazyFrame out
        assert isinstance(out, pl.LazyFrame)
        out = out.collect()
    if kind.startswith("polars"):
        assert isinstance(out, pl.DataFrame)
        rows = out.to_dicts()
    else:
        assert isinstance(out, pa.Table)
        rows = out.to_pylist()
    assert [r["ticket"] for r in rows] == AWKWARD["ticket"]  # every row once, in order
    assert [r["response"] for r in rows] == [
        expected(t, n) for t, n in zip(AWKWARD["text"], AWKWARD["n"], strict=True)
    ]
    assert [r["response_status"] for r in rows] == [
        "succeeded", "skipped", "skipped", "succeeded", "succeeded"
    ]  # fmt: skip
    # Integers render as integers ("about 1", not "about 1.0").
    assert rows[0]["response"].endswith("about 1")


def test_polars_and_pandas_merge_to_the_same_values(client):
    polars = pl.DataFrame(AWKWARD)
    pandas = pd.DataFrame(AWKWARD).astype({"n": "Int64"})
    job_pl = nb.submit(polars, PROMPT, model=model_for(client), client=client)
    job_pd = nb.submit(pandas, PROMPT, model=model_for(client), client=client, force=True)
    out_pl = job_pl.wait(timeout=60, progress=False).merge(polars)
    out_pd = job_pd.wait(timeout=60, progress=False).merge(pandas)
    for column in ("response", "response_status", "response_error"):
        left = out_pl[column].to_list()
        right = [None if v is None or v != v else v for v in out_pd[column].tolist()]
        assert left == right, column


def test_failed_rows_of_a_polars_job_come_back_in_polars(client):
    data = pl.DataFrame({"text": ["fine", f"bad {emulator.FAIL_MARKER}", "also fine"]})
    job = nb.submit(data, "{text}", model=model_for(client), client=client, retries=0)
    failed = job.wait(timeout=60, progress=False).failed()
    assert isinstance(failed, pl.DataFrame)
    assert failed["text"].to_list() == [f"bad {emulator.FAIL_MARKER}"]
    assert failed["response_status"].to_list() == ["failed"]


def test_bad_input_is_refused_the_same_way_for_every_kind(client, emu):
    emu.clear_log()
    for data in kinds().values():
        with pytest.raises(nb.TemplateError, match=r"\{missing\}"):
            nb.submit(data, "{missing}", model=model_for(client), client=client)
        with pytest.raises(nb.InputError, match="id_column 'nope'"):
            nb.submit(data, "{text}", model=model_for(client), client=client, id_column="nope")
    with pytest.raises(nb.InputError, match="duplicated"):
        nb.submit(pl.DataFrame({"id": [1, 1], "text": ["a", "b"]}), "{text}",
                  model=model_for(client), client=client, id_column="id")  # fmt: skip
    with pytest.raises(nb.InputError, match="matches no Parquet file"):
        nb.submit("tickets/*.parquet", "{text}", model=model_for(client), client=client)
    assert emu.request_log == []  # nothing was sent
    assert nb.jobs().empty


# -- Parquet files ----------------------------------------------------------------------
def _write_parts(folder, parts: list[dict]) -> None:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(pa.table(part), folder / f"part-{i}.parquet")


def test_a_glob_of_parquet_files_is_one_job_and_comes_back_as_parquet(client, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "tickets"
    _write_parts(folder, [
        {"ticket_id": ["a1", "a2"], "body": ["first 😀", "second \"q\""]},
        {"ticket_id": ["b1", "b2"], "body": [None, "two\nlines"]},
    ])  # fmt: skip
    glob = str(folder / "*.parquet")
    job = nb.submit(glob, "Summarise: {body}", model=model_for(client), client=client,
                    id_column="ticket_id")  # fmt: skip
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 3 and job.counts["skipped"] == 1
    merged = job.merge(glob)
    assert isinstance(merged, pa.Table)
    assert merged.column("ticket_id").to_pylist() == ["a1", "a2", "b1", "b2"]
    out = job.to_parquet(tmp_path / "out.parquet", glob, columns=["ticket_id"])
    written = pq.read_table(out)
    assert written.column_names == ["ticket_id", *job.output_columns(lineage=True)]
    bodies = ["first 😀", 'second "q"', None, "two\nlines"]
    assert written.column("response").to_pylist() == [
        None if b is None else emulator.echo_text(f"Summarise: {b}") for b in bodies
    ]
    # The same files submitted again attach to the same job; a changed file is a new job.
    assert nb.submit(glob, "Summarise: {body}", model=model_for(client), client=client,
                     id_column="ticket_id").id == job.id  # fmt: skip
    _write_parts(folder, [{"ticket_id": ["a1", "a2"], "body": ["first 😀", "changed"]}])
    changed = nb.submit(glob, "Summarise: {body}", model=model_for(client), client=client,
                        id_column="ticket_id")  # fmt: skip
    assert changed.id != job.id
    changed.wait_sent()


def test_bad_parquet_inputs_are_refused_before_anything_is_sent(client, emu, tmp_path):
    emu.clear_log()
    submit = lambda data, **kw: nb.submit(  # noqa: E731
        data, "{body}", model=model_for(client), client=client, **kw
    )
    with pytest.raises(nb.InputError, match="neither a table nor an existing file"):
        submit(str(tmp_path / "missing.parquet"))
    with pytest.raises(nb.InputError, match="matches no Parquet file"):
        submit(str(tmp_path / "*.parquet"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(nb.InputError, match="cannot read .*broken.parquet as Parquet"):
        submit(str(tmp_path / "broken.parquet"))
    _write_parts(tmp_path / "cols", [{"id": [1], "body": ["x"]}, {"id": [2]}])
    with pytest.raises(nb.InputError, match=r"do not have the same columns.*\['body'\]"):
        submit(str(tmp_path / "cols"))
    _write_parts(tmp_path / "types", [{"id": [1], "body": ["x"]}, {"id": ["2"], "body": ["y"]}])
    with pytest.raises(nb.InputError, match="column 'id' is string .* but int64"):
        submit(str(tmp_path / "types"))
    _write_parts(tmp_path / "dups", [{"id": [1], "body": ["x"]}, {"id": [1], "body": ["y"]}])
    with pytest.raises(nb.InputError, match="id_column 'id' has duplicated values"):
        submit(str(tmp_path / "dups"), id_column="id")
    assert emu.request_log == []
    assert nb.jobs().empty
