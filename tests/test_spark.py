"""PySpark DataFrames: planned and encoded on Spark's executors (``mapInArrow``),
merged back partition by partition, through the real SDK over HTTP to the emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import nbbatch as nb

from ._helpers import PROMPT, count_row_encodes
from ._helpers import echoed as expected
from .conftest import model_for, openai_client

# The dev extra installs pyspark: under CI a missing pyspark fails the run instead of skipping.
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import pyspark
else:
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (nbbatch[spark])")


def _java() -> str | None:
    """Why Spark cannot run here, or None when a Java runtime answers."""
    java = shutil.which("java") or (
        os.path.join(os.environ["JAVA_HOME"], "bin", "java") if "JAVA_HOME" in os.environ else None
    )
    if java is None:
        return "no Java runtime (Spark needs Java 17): install one or set JAVA_HOME"
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"java -version failed ({exc}); Spark needs a working Java 17"
    return None


if (why := _java()) is not None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # CI must run them
        pytest.fail(f"{why} (CI=true: .ci/run installs Java)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


pytestmark = [
    pytest.mark.slow,  # a Spark session takes ~10 s to start on 2 cores
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning",
        "ignore::ResourceWarning",
        "ignore:PySpark does not yet fully support pandas:FutureWarning",
    ),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    # The executors' Python is this one (with nbbatch importable, as on a real cluster).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("nbbatch-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")  # several per partition
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def frame(spark, n: int, parts: int):
    texts = [f"review {i} " + "y" * (i % 5) for i in range(n)]
    texts[7] = texts[2]  # a duplicate request, sent once
    df = pd.DataFrame({"text": texts, "stars": (np.arange(n) % 5).astype("int64")})
    table = pa.Table.from_pandas(df, preserve_index=False)
    return df, spark.createDataFrame(table).repartition(parts).sortWithinPartitions("stars")


def test_spark_frame_is_planned_on_the_executors_and_merged_back(spark, emu, monkeypatch):
    df, sdf = frame(spark, 400, 3)
    sdf = sdf.cache()
    order = sdf.toArrow().to_pandas()  # the frame's own order, partition by partition
    client = openai_client(emu)
    with monkeypatch.context() as patch:
        encoded = count_row_encodes(patch)
        job = nb.submit(sdf, PROMPT, model=model_for(client), client=client, output="label")
        job.wait(timeout=120, progress=False)
    assert encoded == [1]  # the parameters' check; every request line came from Spark
    assert job.counts["succeeded"] == 400 and job.counts["deduplicated"] == 1

    source = job._ledger.source(job.id)
    assert source["kind"] == "spark" and sum(source["partitions"]) == 400
    assert len(source["partitions"]) == 3
    pids = {int(w.split(":")[1]) for w in source["workers"]}
    assert os.getpid() not in pids  # Spark's Python workers, not this process

    out = job.merge(sdf)
    assert type(out).__name__ == "DataFrame" and hasattr(out, "mapInArrow")
    got = out.toArrow().to_pandas()
    assert list(got.columns) == ["text", "stars", *job.output_columns()]
    pd.testing.assert_frame_equal(got[["text", "stars"]], order)
    assert got["label"].tolist() == expected(got["text"])
    assert (got["label_status"] == "succeeded").all()
    assert job.results().index.tolist() == [str(i) for i in range(400)]


def test_spark_merge_refuses_changed_rows_and_to_parquet_writes_a_folder(spark, emu, tmp_path):
    df, sdf = frame(spark, 60, 2)
    from pyspark.sql import functions as F

    # Cached, so the ids are made once.
    sdf = sdf.withColumn("rid", F.concat(F.lit("t-"), F.monotonically_increasing_id())).cache()
    client = openai_client(emu)
    job = nb.submit(sdf, PROMPT, model=model_for(client), client=client, id_column="rid")
    job.wait(timeout=120, progress=False)
    rids = [r["rid"] for r in sdf.select("rid").collect()]
    assert sorted(job.results().index) == sorted(rids)  # named by id_column

    target = job.to_parquet(tmp_path / "out", columns=["text"])
    # Private like every result file nbbatch writes, whatever Spark's own modes.
    assert target.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in target.rglob("*") if p.is_file())
    back = pd.read_parquet(target)
    assert sorted(back["response"]) == sorted(expected(df["text"]))
    assert back["response"].tolist() == expected(back["text"])

    edited = sdf.withColumn("text", F.concat(F.col("text"), F.lit("!")))
    with pytest.raises(Exception, match="do not hold the data"):
        job.merge(edited).collect()
