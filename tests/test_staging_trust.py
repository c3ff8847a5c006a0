"""NBBATCH_STAGING: where Dask workers and the driver exchange files is the user's alone,
its files are private and removed when the job no longer needs them, and a file that
changed after its writer wrote it is never used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nbbatch as nb
from nbbatch import _engines as engines

from ._helpers import PROMPT
from ._helpers import echoed as expected
from .conftest import model_for, openai_client

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

NOBODY = 65534
pytestmark = pytest.mark.filterwarnings(
    # the cluster's own shutdown and port choices are not ours to fix
    "ignore::DeprecationWarning",
    "ignore::ResourceWarning",
    "ignore:Port .* is already in use:UserWarning",
)


def frame(n: int = 20, parts: int = 2) -> tuple[pd.DataFrame, dd.DataFrame]:
    df = pd.DataFrame({"text": [f"review {i}" for i in range(n)], "stars": np.arange(n) % 5})
    return df, dd.from_pandas(df, npartitions=parts)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("how", ["another user's", "group-writable", "world-writable"])
def test_a_staging_folder_others_may_write_is_refused(
    dask_cluster, emu, monkeypatch, tmp_path, how
):
    if how == "another user's" and os.getuid() != 0:
        pytest.skip("needs root to make a folder of another user")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    if how == "another user's":
        os.chown(shared, NOBODY, NOBODY)
    else:
        shared.chmod(0o770 if how == "group-writable" else 0o777)
    monkeypatch.setenv("NBBATCH_STAGING", str(shared))
    _, ddf = frame()
    client = openai_client(emu)
    match = "another user" if how == "another user's" else "may be written by others"
    with pytest.raises(nb.InputError, match=f"NBBATCH_STAGING.*{match}"):
        nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    assert nb.jobs().empty and not list(shared.iterdir())


def test_staging_files_are_private_checked_and_removed(dask_cluster, emu, monkeypatch, tmp_path):
    shared = tmp_path / "missing" / "shared"  # made 0700 under any umask
    monkeypatch.setenv("NBBATCH_STAGING", str(shared))
    old = os.umask(0)
    try:
        df, ddf = frame()
        client = openai_client(emu)
        job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
        job.wait(timeout=60, progress=False)
        out = job.merge(ddf)
        (results,) = shared.iterdir()
        assert mode(shared) == 0o700 and mode(results) == 0o600
        assert out.compute()["response"].tolist() == expected(df["text"])
        # The request files the workers wrote, kept in the job's folder, are 0600 too.
        requests = list(Path(os.environ["NBBATCH_HOME"]).rglob("requests-*.arrow"))
        assert requests and all(mode(p) == 0o600 for p in requests)
        target = job.to_parquet(tmp_path / "out")
        assert mode(target) == 0o700
        assert all(mode(p) == 0o600 for p in target.rglob("*") if p.is_file())
        # Someone rewrites the answers in the results file: the frame refuses it.
        table = pq.read_table(results)
        forged = table.set_column(
            table.schema.get_field_index("response"),
            "response",
            pa.array(["forged"] * table.num_rows, table.schema.field("response").type),
        )
        pq.write_table(forged, results)
        with pytest.raises(Exception, match="changed"):
            out.compute()
        job.forget()
        assert not list(shared.iterdir())  # removed with the job
    finally:
        os.umask(old)


def test_a_worker_file_changed_before_the_driver_reads_it_is_not_used(
    dask_cluster, emu, monkeypatch, tmp_path
):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBBATCH_STAGING", str(shared))
    real = engines._assemble

    def tampered(summaries, counts, staging, *args):
        # Between the workers writing and the driver reading, a request file is
        # replaced by one asking something else.
        other = staging / "requests-000001.arrow"
        reader = pa.ipc.open_file(pa.OSFile(str(other)))
        column = reader.read_all().column("request").to_pylist()
        forged = [None if v is None else v.replace(b"review", b"FORGED") for v in column]
        with pa.OSFile(str(other), "wb") as sink:
            with pa.ipc.new_file(sink, engines.REQUEST_SCHEMA) as writer:
                writer.write_table(pa.table({"request": pa.array(forged, pa.large_binary())}))
        return real(summaries, counts, staging, *args)

    monkeypatch.setattr(engines, "_assemble", tampered)
    df, ddf = frame()
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)
    # The driver dropped the changed file and encoded those rows itself.
    assert job.merge(ddf).compute()["response"].tolist() == expected(df["text"])

    def tampered_plan(summaries, counts, staging, *args):
        (staging / "plan-000000.arrow").write_bytes(b"not what the worker wrote")
        return real(summaries, counts, staging, *args)

    monkeypatch.setattr(engines, "_assemble", tampered_plan)
    with pytest.raises(nb.InputError, match="not the one the worker wrote"):
        nb.submit(ddf, "Again: {text}", model=model_for(client), client=client)
