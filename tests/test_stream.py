"""Parquet files and Arrow datasets are read in record batches, never whole: the jobs
they make are the jobs the same rows make in memory, row for row."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import nbbatch as nb
from nbbatch import _stream as stream
from nbbatch import emulator

from .conftest import model_for

PROMPT = "Summarise: {body}"
BODIES = ["plain", None, 'emoji 😀 and "quotes"', "two\nlines", "  ", "same", "same", "ünï"]


def _parts(n_files: int, rows: int, ids: str = "t{f}-{i}") -> list[pa.Table]:
    return [
        pa.table(
            {
                "ticket": [ids.format(f=f, i=i) for i in range(rows)],
                "body": [BODIES[(f + i) % len(BODIES)] for i in range(rows)],
                "n": pa.array([i if i % 5 else None for i in range(rows)], pa.int64()),
            }
        )
        for f in range(n_files)
    ]


def _write(folder, parts: list[pa.Table]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(part, folder / f"part-{i:02d}.parquet")
    return str(folder / "*.parquet")


@pytest.fixture
def small_batches(monkeypatch):
    """Record batches of 7 rows: every file is read in several, unevenly."""
    monkeypatch.setattr(stream, "BATCH_ROWS", 7)


@pytest.mark.parametrize("id_column", [None, "ticket"])
def test_files_read_in_batches_make_the_job_the_same_rows_make_in_memory(
    client, tmp_path, small_batches, id_column
):
    parts = _parts(3, 20)
    glob = _write(tmp_path / "in", parts)
    model = model_for(client)
    job = nb.submit(glob, PROMPT, model=model, client=client, id_column=id_column)
    job.wait(timeout=60, progress=False)
    whole = pa.concat_tables(parts).to_pandas()
    twin = nb.submit(whole, PROMPT, model=model, client=client, id_column=id_column, reuse=False)
    twin.wait(timeout=60, progress=False)

    assert job.counts == twin.counts
    nulls = int(whole["body"].isna().sum())
    assert job.counts["skipped"] == nulls > 0  # rows without a body are not sent
    assert job.counts["deduplicated"] > 0  # "same" twice per cycle is sent once
    out = pq.read_table(job.to_parquet(tmp_path / "out.parquet"))  # from the files again
    expected = twin.merge(whole)
    assert out.column_names == ["ticket", "body", "n", *job.output_columns(lineage=True)]
    assert out.column("ticket").to_pylist() == whole["ticket"].tolist()  # each row once
    assert out.column("n").type == pa.int64()  # the input's own types, untouched
    for name in job.output_columns():
        assert out.column(name).to_pylist() == [
            None if pd.isna(v) else v for v in expected[name].tolist()
        ]
    assert out.column("response").to_pylist()[0] == emulator.echo_text("Summarise: plain")
    # The job's custom_ids are unique across the files.
    ids = job.results().index
    assert ids.is_unique and len(ids) == 60


def test_ids_that_cannot_be_custom_ids_are_replaced_by_positions_across_files(
    client, tmp_path, small_batches
):
    glob = _write(tmp_path / "in", _parts(2, 10, ids="ticket #{f}/{i}"))
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client, id_column="ticket")
    job.wait(timeout=60, progress=False)
    ids = job.results().index.tolist()
    assert len(set(ids)) == 20
    assert ids[13] == "13-ticket_1_3"  # the position over all files, then the label
    assert job.results()["label"].tolist()[13] == "ticket #1/3"


def test_an_arrow_dataset_is_read_in_batches_and_written_back(client, tmp_path, small_batches):
    glob = _write(tmp_path / "in", _parts(2, 15))
    dataset = ds.dataset(sorted((tmp_path / "in").glob("*.parquet")), format="parquet")
    job = nb.submit(dataset, PROMPT, model=model_for(client), client=client, id_column="ticket")
    job.wait(timeout=60, progress=False)
    out = pq.read_table(job.to_parquet(tmp_path / "out.parquet", dataset, columns=["ticket"]))
    assert out.column_names == ["ticket", *job.output_columns(lineage=True)]
    same = job.merge(glob)  # the same rows, from the files, fit in memory
    assert out.column("response").to_pylist() == same.column("response").to_pylist()


def test_a_job_from_files_writes_back_in_a_new_session_and_refuses_changed_files(
    client, emu, tmp_path, small_batches
):
    folder = tmp_path / "in"
    parts = _parts(2, 12)
    glob = _write(folder, parts)
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)

    later = nb.attach(job.id, client=client)  # no data: the recorded files are read
    out = pq.read_table(later.to_parquet(tmp_path / "out.parquet"))
    assert out.num_rows == 24 and out.column("response_status").null_count == 0

    edited = parts[1].set_column(1, "body", pa.array(["edited"] * 12))
    pq.write_table(edited, folder / "part-01.parquet")
    with pytest.raises(nb.MergeError, match="do not hold the data"):
        later.to_parquet(tmp_path / "again.parquet")
    pq.write_table(parts[1].slice(0, 5), folder / "part-01.parquet")
    with pytest.raises(nb.MergeError, match="the files changed since submit"):
        later.to_parquet(tmp_path / "again.parquet")
    assert not (tmp_path / "again.parquet").exists()


def test_bad_ids_across_files_and_budgets_are_refused_before_anything_is_sent(
    client, emu, tmp_path, small_batches
):
    emu.clear_log()
    submit = lambda data, **kw: nb.submit(  # noqa: E731
        data, PROMPT, model=model_for(client), client=client, **kw
    )
    nulls = _parts(2, 10)
    nulls[1] = nulls[1].set_column(0, "ticket", pa.array(["x"] * 9 + [None]))
    with pytest.raises(nb.InputError, match=r"'ticket' has missing values \(first at row 19"):
        submit(_write(tmp_path / "nulls", nulls), id_column="ticket")
    with pytest.raises(nb.InputError, match="id_column 'nope' is not a column"):
        submit(_write(tmp_path / "ok", _parts(2, 10)), id_column="nope")
    with pytest.raises(nb.InputError, match="estimated batch cost, .* is above max_cost"):
        submit(str(tmp_path / "ok"), max_cost=1e-9)
    with pytest.raises(nb.TemplateError, match="which is not a column"):
        nb.submit(str(tmp_path / "ok"), "{nope}", model=model_for(client), client=client)
    assert [r for r in emu.request_log if r[0] != "GET"] == []  # only the model looked up
    assert nb.jobs().empty
    home_files = list((nb.ledger_path().parent / "files").glob(".*"))
    assert home_files == []  # no half-planned manifest left behind


def test_preview_of_files_counts_every_row_and_shows_the_first(tmp_path, small_batches):
    glob = _write(tmp_path / "in", _parts(3, 20))
    shown = nb.preview(glob, PROMPT, model="gpt-4o-mini", n=3)
    assert shown["prompt"].tolist() == ["Summarise: plain", 'Summarise: emoji 😀 and "quotes"',
                                        "Summarise: two\nlines"]  # fmt: skip
    assert "from 60 rows" in shown.estimate.note


def test_collect_to_a_folder_writes_the_files_columns_and_the_results(client, tmp_path):
    from .test_cli import nbbatch

    glob = _write(tmp_path / "in", _parts(2, 6))
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client, id_column="ticket")
    job.wait(timeout=60, progress=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = nbbatch("collect", job.id, "--out", str(out_dir))
    assert done.returncode == 0, done.stderr
    written = pq.read_table(out_dir / f"{job.id}.parquet")
    assert written.column_names == ["ticket", "body", "n", *job.output_columns(lineage=True)]
    assert written.column("ticket").to_pylist() == [f"t{f}-{i}" for f in range(2) for i in range(6)]
    assert f"12 rows written to {out_dir / job.id}.parquet" in done.stdout
