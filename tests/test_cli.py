"""The ``nbbatch`` command, run as a user runs it: in its own process, with the test's
``NBBATCH_HOME``, on jobs submitted through the public API to the emulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from urllib.parse import urlparse

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import cli, emulator

from ._helpers import modules_loaded
from ._helpers import run_cli as nbbatch
from .conftest import openai_client
from .this_machine import needs_remote_host, remote_host

HEAVY = ("openai", "anthropic", "uvicorn", "starlette", "ipywidgets", "tiktoken", "polars")


def reviews() -> pd.DataFrame:
    index = pd.Index([10, 20, 30], name="review_id")
    return pd.DataFrame({"text": ["good soup", "cold soup", "fine soup"]}, index=index)


@pytest.fixture
def done_job(emu) -> nb.BatchJob:
    """A finished three-row job on the session emulator."""
    job = nb.submit(reviews(), "Sentiment of: {text}", model="gpt-4o-mini",
                    client=openai_client(emu), output="answer")  # fmt: skip
    return job.wait(timeout=60, progress=False)


def _plain(result: subprocess.CompletedProcess[str]) -> str:
    """stderr of a command that must fail with a message, not a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


# ---------------------------------------------------------------- start-up and help


def test_import_loads_no_sdk_server_or_widgets():
    assert modules_loaded("import nbbatch, nbbatch.cli", HEAVY) == []


@pytest.mark.parametrize("first", ["pandas", "nbbatch"])
def test_the_accessor_is_there_whichever_is_imported_first(first):
    second = "nbbatch" if first == "pandas" else "pandas"
    code = (
        f"import sys, {first}, {second}; import pandas as pd; "
        "print('pandas' in sys.modules, hasattr(pd.DataFrame({'a': [1]}), 'nbbatch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
    # A library that only asks whether pandas is installed does not use the hook up.
    asked = (
        "import importlib.util, nbbatch; importlib.util.find_spec('pandas'); "
        "import pandas as pd; print(hasattr(pd.DataFrame({'a': [1]}), 'nbbatch'))"
    )
    done = subprocess.run([sys.executable, "-c", asked], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr
    alone = "import sys, nbbatch, nbbatch.cli; print('pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr  # `nbbatch --help` starts at once


def test_lazily_registered_providers_name_their_own_endpoints():
    from nbbatch import providers

    for name in providers.names():
        assert providers.default_endpoint(name) == providers.provider_class(name).default_endpoint


def test_help_is_plain_text_with_exit_codes_and_a_version():
    top = nbbatch("--help")
    assert top.returncode == 0
    assert "exit codes:" in top.stdout and "3    the job still has pending rows" in top.stdout
    sub = nbbatch("collect", "--help")
    assert sub.returncode == 0 and "--timeout SECONDS" in sub.stdout
    for text in (top.stdout, sub.stdout):
        assert not re.search(r"``|:func:|:class:|:meth:", text), text
    version = nbbatch("--version")
    assert version.stdout == f"nbbatch {nb.__version__}\n"


def test_every_argument_has_help():
    top = cli.parser()
    parsers = [top] + [
        p
        for a in top._subparsers._group_actions
        for p in a.choices.values()  # type: ignore[union-attr]
    ]
    for parser in parsers:
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.dest} has no help"


# ---------------------------------------------------------------------------- collect


@pytest.mark.slow
def test_collect_writes_the_user_facing_columns_in_every_format(done_job, tmp_path):
    merged = done_job.merge(reviews())
    readers = {
        ".parquet": pd.read_parquet,
        ".csv": pd.read_csv,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".ndjson": lambda p: pd.read_json(p, lines=True),
        ".json": lambda p: pd.DataFrame(json.loads(p.read_text())),
    }
    runs = {
        suffix: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nbbatch.cli",
                "collect",
                done_job.id,
                "--out",
                str(tmp_path / f"results{suffix}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for suffix in readers
    }
    for suffix, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert "3 rows written" in out
        frame = readers[suffix](tmp_path / f"results{suffix}")
        # What merge(lineage=True) and to_parquet add, after the id and the position.
        assert list(frame.columns) == ["id", "row", *done_job.output_columns(lineage=True)]
        assert frame["id"].tolist() == [10, 20, 30]
        assert frame["answer"].tolist() == merged["answer"].tolist()
        assert frame["answer_status"].tolist() == ["succeeded"] * 3
        assert frame["answer_error"].isna().all()


@pytest.mark.slow
def test_collect_names_the_id_column_and_one_column_per_field(emu, tmp_path):
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string"}, "stars": {"type": "integer"}},
        "required": ["sentiment", "stars"],
    }
    data = pd.DataFrame({"sku": ["007", "A-1"], "text": ["good", "bad"]})
    job = nb.submit(data, "Review: {text}", model="gpt-4o-mini", client=openai_client(emu),
                    response_format=schema, id_column="sku", output="review")  # fmt: skip
    job.wait(timeout=60, progress=False)
    out = tmp_path / "r.parquet"
    result = nbbatch("collect", job.id, "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["sku", "row", *job.output_columns(lineage=True)]
    assert job.output_columns()[:2] == ["sentiment", "stars"]  # one column per field
    assert frame["sku"].tolist() == ["007", "A-1"]  # text ids stay text
    merged = job.merge(data)
    assert frame["stars"].tolist() == merged["stars"].tolist()
    assert frame["sentiment"].tolist() == merged["sentiment"].tolist()


def test_collect_refuses_a_file_it_cannot_write_before_anything_else(done_job, tmp_path):
    bad = nbbatch("collect", done_job.id, "--out", str(tmp_path / "report.txt"))
    assert bad.returncode == 1
    assert ".parquet, .csv, .jsonl (or .ndjson), .json or .xlsx" in _plain(bad)
    missing = nbbatch("collect", done_job.id, "--out", str(tmp_path / "no" / "such" / "r.csv"))
    assert missing.returncode == 1
    assert "does not exist" in _plain(missing)
    assert list(tmp_path.iterdir()) == [tmp_path / "nbbatch-home"]  # nothing written


def test_collect_xlsx_is_written_or_clearly_refused(done_job, tmp_path):
    out = tmp_path / "report.xlsx"
    result = nbbatch("collect", done_job.id, "--out", str(out))
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        assert result.returncode == 1
        assert "pip install openpyxl" in _plain(result)
        assert not out.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert pd.read_excel(out)["answer_status"].tolist() == ["succeeded"] * 3


@pytest.mark.slow
def test_collect_wait_gives_up_after_timeout_and_writes_what_is_done(tmp_path):
    with emulator.start(processing_seconds=600.0) as server:
        job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=openai_client(server))
        out = tmp_path / "partial.csv"
        result = nbbatch("collect", job.id, "--wait", "--timeout", "1", "--out", str(out))
        assert result.returncode == 3, result.stderr
        assert "still has 3 pending rows after 1 s" in result.stderr
        assert f"nbbatch collect {job.id} --wait" in result.stderr
        assert "nb.attach" not in result.stderr and "Traceback" not in result.stderr
        assert "requests done at the provider" in result.stderr  # progress while waiting
        assert pd.read_csv(out)["response_status"].tolist() == ["pending"] * 3
        job.cancel()


def test_timeout_without_wait_is_refused(done_job):
    result = nbbatch("collect", done_job.id, "--timeout", "5")
    assert result.returncode == 1
    assert "--timeout needs --wait" in _plain(result)


# ------------------------------------------------------------------- status and jobs


@pytest.mark.slow
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", pytest.param(remote_host(), marks=needs_remote_host)],
    ids=["emulator", "remote"],
)
def test_status_says_when_the_provider_cannot_be_reached(host, monkeypatch):
    # remote_host() is this machine too, but not loopback: nbbatch takes it for a remote
    # provider.
    with emulator.start(host=host, processing_seconds=600.0) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
        address = urlparse(server.openai_base_url).netloc
        client.close()
    monkeypatch.setenv("OPENAI_API_KEY", "k")  # a remote provider needs a key to attach
    result = nbbatch("status", job.id)  # the server is gone: connection refused
    assert result.returncode == 4
    message = _plain(result)
    assert address in message
    if host == "127.0.0.1":
        assert "the emulator at" in message and "is not running" in message
    else:
        assert "could not reach OpenAI" in message


def test_unknown_job_names_the_command_that_lists_jobs():
    result = nbbatch("status", "nbb-nope")
    assert result.returncode == 1
    message = _plain(result)
    assert "No job 'nbb-nope'" in message and "`nbbatch jobs`" in message


def test_jobs_shows_times_to_the_second_and_money(done_job):
    result = nbbatch("jobs")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert "created (UTC)" in header
    assert done_job.id in row
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", row)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d|\+00:00", row)
    assert re.search(r" \$\d+\.\d+$", row)  # cost as money, e.g. $0.0000077
