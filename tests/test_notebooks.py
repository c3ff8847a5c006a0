"""The example notebooks: stripped in git, and each one run top to bottom on the emulator.

Every notebook ends with a cell tagged ``summary`` whose value is a dict of the facts it
demonstrated (counts after ``wait()``, the columns an extraction adds, the vector length,
the ``max_cost`` refusal...). The tests execute each notebook in a fresh kernel, with no
API key and a private ledger, and check those facts, not only that the cells ran. They
read what cells return or print themselves: nbclient gives output that background threads
make after a cell finished to whichever cell runs then, so none of the checks depends on it.

The Binder test installs ``binder/requirements.txt`` and runs ``binder/postBuild`` in a
fresh venv, as mybinder.org does, and runs the quickstart with that venv as the kernel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

from nbbatch import emulator
from nbbatch.styling import ROW_COLOURS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BINDER = ROOT / "binder"
WIDGET = "application/vnd.jupyter.widget-view+json"
#: How much faster than in JupyterLab the emulator runs the notebooks' batches here.
DEMO_SPEED = "4"

EXPECTED = [
    "01-quickstart.ipynb",
    "02-classify-a-column.ipynb",
    "03-extract-with-pydantic.ipynb",
    "04-summarise-with-claude.ipynb",
    "05-embeddings.ipynb",
    "06-failures-and-resubmit.ipynb",
    "07-resume-after-restart.ipynb",
    "08-cost-preview-and-budget.ipynb",
    "09-polars-and-parquet.ipynb",
    "10-cheap-model-first.ipynb",
    "11-gemini.ipynb",
    "12-choose-model-and-pack.ipynb",
]


# ------------------------------------------------------------------------------ helpers


def read(name: str) -> NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(
    name: str, workdir: Path, *, kernel_name: str = "python3", timeout: int = 120
) -> NotebookNode:
    """Run a copy of notebook ``name`` in a fresh kernel started in ``workdir``."""
    notebook = read(name)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    nbformat.validate(notebook)
    return notebook


def text_of(output: NotebookNode) -> str:
    if output.output_type == "stream":
        return str(output.text)
    return str(output.get("data", {}).get("text/plain", ""))


def printed(cell: NotebookNode, stream: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == stream)


def summary_of(notebook: NotebookNode) -> dict[str, Any]:
    """The dict the notebook's last cell (tagged ``summary``) evaluates to."""
    cells = [c for c in notebook.cells if "summary" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "each notebook ends with exactly one cell tagged 'summary'"
    assert cells[0] is notebook.cells[-1]
    results = [o for o in cells[0].outputs if o.output_type == "execute_result"]
    assert len(results) == 1, cells[0].outputs
    return dict(ast.literal_eval(results[0].data["text/plain"]))


def cell_with(notebook: NotebookNode, source_part: str) -> NotebookNode:
    """The one code cell whose source contains ``source_part``."""
    found = [c for c in notebook.cells if c.cell_type == "code" and source_part in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {source_part!r}"
    return found[0]


def html_of(cell: NotebookNode) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def check_common(notebook: NotebookNode) -> None:
    """What holds for every notebook run on the emulator."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            assert output.output_type != "error", output
            if output.output_type == "stream" and output.name == "stderr":
                assert "Traceback" not in output.text, output.text
                assert "Error" not in output.text, output.text
    panels = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if WIDGET in o.get("data", {})
    ]
    assert panels, "a submit cell shows the live panel"
    setup = "".join(
        text_of(o) for c in notebook.cells[:4] if c.cell_type == "code" for o in c.outputs
    )
    assert "emulator" in setup.lower(), "with no API key the notebook says it uses the emulator"
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    if "responder=" in code:  # given a stand-in for the model, no answer shown is an echo
        shown = "".join(
            text_of(o) + o.get("data", {}).get("text/html", "")
            for c in notebook.cells
            if c.cell_type == "code"
            for o in c.outputs
        )
        assert emulator.echo_text("") not in shown


# -------------------------------------------------------------------- the claims, per notebook


def claims_quickstart(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "rows": 40,
        "status": "completed",
        "succeeded": 40,
        "pending": 0,
        "added columns": ["sentiment", "sentiment_status", "sentiment_error"],
        "batch cheaper than real time": True,
        # The stand-in for the model labels by telling words: every label, mostly right.
        "labels": ["negative", "neutral", "positive"],
        "agree with true_sentiment": s["agree with true_sentiment"],
    }
    assert s["agree with true_sentiment"] >= 0.8
    submit = cell_with(nb, "job = nb.submit(")
    assert sum(WIDGET in o.get("data", {}) for o in submit.outputs) == 1  # one panel
    # Saved as it ended, not as it was at submit: on GitHub and in nbconvert (no widgets)
    # the panel's output reads as the finished job.
    [panel] = [o for o in submit.outputs if WIDGET in o.get("data", {})]
    assert "completed: 40/40 rows done - 40 succeeded" in panel.data["text/plain"]
    assert "Done: all 40 rows succeeded" in panel.data["text/html"]
    assert "running" in printed(cell_with(nb, "rows pending"))  # the kernel was free at once
    cost = printed(cell_with(nb, "print(job.cost)"))
    assert " batch vs " in cost and "real time" in cost and "saved: $" in cost
    merged = html_of(cell_with(nb, "out = job.merge(df)"))
    assert emulator.echo_text("Classify") not in merged and "positive" in merged


def claims_classify(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s["rows"] == s["succeeded"] == 60
    assert s["labels"] and set(s["labels"]) <= {"positive", "negative", "neutral"}
    assert s["label counts add up"] is True
    assert s["labels"] == ["negative", "neutral", "positive"]
    assert s["agree with true_sentiment"] >= 0.8  # the crosstab is mostly on its diagonal
    assert s["added columns"] == ["sentiment", "label_status", "label_error", "label_raw"]


def claims_extract(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s["rows"] == s["succeeded"] == 30
    assert s["added columns"] == [
        "customer", "order_id", "product", "issue", "urgency", "location.city",
        "location.country", "ticket_status", "ticket_error", "ticket_raw",
    ]  # fmt: skip
    assert s["urgencies"] and set(s["urgencies"]) <= {"low", "medium", "high"}
    assert s["every city filled"] is True
    # The columns were known before anything came back.
    [cell] = [c for c in nb.cells if c.source == "job.output_columns()"]
    declared = ast.literal_eval(text_of(cell.outputs[0]))
    assert declared == s["added columns"]


def claims_claude(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "provider": "anthropic",
        "rows": 12,
        "succeeded": 12,
        "rows reading the cache": 11,  # the first request writes the cache, the rest read it
        "cache cheaper": True,
    }
    assert "ANTHROPIC_API_KEY" in printed(nb.cells[2])


def claims_gemini(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "provider": "gemini",
        "rows": 20,
        "succeeded": 20,
        "sentiments allowed": True,
        "batch is half": 0.5,
        "embeddings": 20,
        "vector length": 256,
    }
    assert "GEMINI_API_KEY" in printed(nb.cells[2])
    assert "cost:" in printed(cell_with(nb, "results = job.results()"))
    # gemini-embedding-001 is priced: the embeddings batch has a cost, not "unknown".
    embedded = printed(cell_with(nb, "emb.wait()"))
    assert "vector length: 256" in embedded and "batch vs" in embedded


def claims_embeddings(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "rows": 30,
        "succeeded": 30,
        "vector length": 256,
        "unit vectors": True,
        "best pair similarity": 1.0,  # the data has identical reviews: identical vectors
    }
    assert "vector length: 256" in printed(cell_with(nb, "out = job.merge(df)"))


def claims_polars(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "polars rows": 30,
        "merged kind": "DataFrame",
        "succeeded": 30,
        "parquet rows written": 30,
        # to_parquet writes each row's lineage after the result columns by default.
        "parquet columns": [
            "review_id",
            "summary",
            "summary_status",
            "summary_error",
            "summary_model",
            "summary_prompt_hash",
            "summary_batch_id",
            "summary_attempt",
            "summary_latency_s",
        ],
        "every file row answered": True,
        "catalogue rows written": 40_000,
        "catalogue succeeded": 40_000,
    }
    assert "DataFrame (30, 6)" in printed(cell_with(nb, "out = job.merge(tickets)"))
    files = text_of(cell_with(nb, "sorted(p.name for p in folder.iterdir())").outputs[0])
    assert "part-0.parquet" in files and "part-2.parquet" in files
    written = html_of(cell_with(nb, "file_job.to_parquet("))
    # The stand-in's five-word summaries (polars shortens long cells anyway).
    assert "…" in written and emulator.echo_text("") not in written


def claims_failures(nb: NotebookNode, s: dict[str, Any]) -> None:
    first = s["first attempt"]
    assert first["failed"] > 0 and first["expired"] > 0
    assert sum(first.values()) == s["rows"] == 40
    assert s["after resubmit"] == {"succeeded": 40, "failed": 0, "expired": 0}
    assert s["batches"] == 2  # the first batch and one with only the failed rows
    assert s["every row succeeded"] is True
    assert s["permanent failure"] == ["failed", 2]  # sent twice, rejected twice
    # Only the rows that failed were sent again.
    attempts = text_of(cell_with(nb, 'results["attempt"]').outputs[0])
    assert f"2    {first['failed'] + first['expired']}" in attempts
    # The failed rows are shown highlighted, failed and expired in their own tints.
    table = html_of(cell_with(nb, "nb.highlight(failed["))
    assert ROW_COLOURS["failed"] in table and ROW_COLOURS["expired"] in table
    assert "server_error" in table and "batch_expired" in table
    permanent = html_of(cell_with(nb, "[[emulator:fail]]"))
    assert ROW_COLOURS["failed"] in permanent and "invalid_request_error" in permanent
    assert "above the alert threshold" in printed(cell_with(nb, "first_counts = dict("))


def claims_resume(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "new process attached": True,
        "new process merged": True,
        "attach in this kernel": 30,
        "re-run attached to the same job": True,
        "new batches on re-run": 0,
        "job listed by nb.jobs()": True,
    }
    rerun = cell_with(nb, "batches_before = ")
    assert "attaching to it instead of paying again" in printed(rerun, "stderr")
    job_id = ast.literal_eval(text_of(cell_with(nb, "job_id = job.id").outputs[0]))
    assert f"attached to {job_id}" in printed(cell_with(nb, "new_kernel = "))
    ledger = text_of(cell_with(nb, "nb.ledger_path()").outputs[0])
    assert os.environ["NBBATCH_HOME"] in ledger  # the notebook shows where the ledger is


def claims_budget(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "preview rows": 5,
        "preview batch is half of real time": 0.5,
        "try_now rows": 5,
        "try_now succeeded": 5,
        "refused": True,
        "batches created by the refused submit": 0,
        "job succeeded": 2000,
        "job within budget": True,
    }
    refusal = printed(cell_with(nb, "max_cost=0.50, client=client)\n"))
    assert "above max_cost" in refusal and "nothing was sent" in refusal
    preview = html_of(cell_with(nb, "preview = nb.preview("))
    assert "Estimate for 621 requests on gpt-4o-mini (from 2,000 rows: 1,379 duplicate" in preview


def claims_cascade(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "rows": 200,
        "succeeded": 200,
        "stages": ["gpt-4o-mini", "gpt-4o"],
        # The stand-in is unsure of the reviews with no telling word, (as the small
        # model) fails on one in ten and gives a wrong label, less confidently, on about
        # one in eight: those went to the large one.
        "rows escalated by the cascade": 80,
        "rows on the large model": 80,
        "small model alone agrees with true_sentiment": s[
            "small model alone agrees with true_sentiment"
        ],
        "cascade agrees with true_sentiment": s["cascade agrees with true_sentiment"],
        "small-model answers reused, not sent again": s[
            "small-model answers reused, not sent again"
        ],
        "small-model rows all confident": True,
        "cascade cheaper than all on the large model": True,
        "cascade / all on the large model in real time": s[
            "cascade / all on the large model in real time"
        ],
        "preview states an upper bound": True,
    }
    assert s["cascade / all on the large model in real time"] < 0.3
    # A real gain: the cascade's labels are right more often than the small model's.
    alone, cascade = (s["small model alone agrees with true_sentiment"],
                      s["cascade agrees with true_sentiment"])  # fmt: skip
    assert alone < 0.9 < cascade
    assert s["small-model answers reused, not sent again"] >= 150
    stages = printed(cell_with(nb, "job.wait()"))
    assert "stage 1 of 2: 200 rows on gpt-4o-mini" in stages
    assert "stage 2 of 2: 80 rows on gpt-4o" in stages
    bars = printed(cell_with(nb, "print(job.cost)"))
    assert "all on gpt-4o in real time" in bars and "\u2588" in bars
    assert "cascade (batch)" in bars and "all on gpt-4o (real time)" in bars
    # The table shows each cost as the bars (and every view) do: nb.pricing.money.
    table = html_of(cell_with(nb, "costs.to_frame().style"))
    shown = re.findall(r"(\$[0-9][0-9,.]*)$", bars, flags=re.MULTILINE)
    assert len(shown) == 3 and all(f">{money}<" in table for money in shown), (shown, table)
    assert "upper bound" in printed(cell_with(nb, "preview = nb.preview("))
    merged = html_of(cell_with(nb, "out = job.merge(df)"))
    assert "answer_model" in merged and "gpt-4o-mini" in merged


def claims_pilot(nb: NotebookNode, s: dict[str, Any]) -> None:
    assert s == {
        "settings": ["gpt-4o-mini", "gpt-4o-mini pack=20", "gpt-4o", "gpt-4o pack=20"],
        "reference": "gpt-4o",
        "sample rows": 200,
        "small model agreement in its interval": True,
        "packing changed no answer": True,
        "recommended at 0.75": "gpt-4o-mini",
        "recommended at 0.95": "gpt-4o",
        "large beats small on human labels": True,
        "whole table succeeded": 2000,
        "sample rows not paid again": True,
    }
    shown = cell_with(nb, "pilot = nb.pilot(")
    assert any(WIDGET in o.get("data", {}) for o in shown.outputs)  # the pilot's widget
    page = html_of(shown)
    assert page.count("data:image/png;base64,") == 2 and "\u2605" in page
    assert "target 0.75: gpt-4o-mini" in printed(cell_with(nb, "for target in"))
    assert "human labels" in printed(cell_with(nb, "checked = nb.pilot("))


CLAIMS: dict[str, Callable[[NotebookNode, dict[str, Any]], None]] = {
    "01-quickstart.ipynb": claims_quickstart,
    "02-classify-a-column.ipynb": claims_classify,
    "03-extract-with-pydantic.ipynb": claims_extract,
    "04-summarise-with-claude.ipynb": claims_claude,
    "05-embeddings.ipynb": claims_embeddings,
    "06-failures-and-resubmit.ipynb": claims_failures,
    "07-resume-after-restart.ipynb": claims_resume,
    "08-cost-preview-and-budget.ipynb": claims_budget,
    "09-polars-and-parquet.ipynb": claims_polars,
    "10-cheap-model-first.ipynb": claims_cascade,
    "11-gemini.ipynb": claims_gemini,
    "12-choose-model-and-pack.ipynb": claims_pilot,
}


# ------------------------------------------------------------------------------------ tests


def test_every_notebook_is_there_and_checked() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED == sorted(CLAIMS)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    notebook = read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} has outputs; clear them: jupyter nbconvert --clear-output --inplace "
                f"notebooks/{name}"
            )
    assert "widgets" not in notebook.metadata, f"{name} stores widget state; clear it"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    # Every notebook says, in words, that the emulator echoes prompts (and, where it is
    # given a stand-in for the model, that it is one).
    prose = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert emulator.echo_text("") in prose and "not a model" in prose
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    if "responder=" in code:
        assert "stand-in for the model" in prose
    assert not re.search(r"\bsk-[\w-]{8,}", json.dumps(notebook)), "an API key pasted in?"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_writes_costs_as_every_view_does(name: str) -> None:
    # A fixed number of decimals ("${:.4f}") shows $0.0000077 as "$0.0000" and $0.25 as
    # "$0.2500": costs are written by nb.pricing.money, three significant digits.
    for cell in read(name).cells:
        if cell.cell_type == "code":
            fixed = re.findall(r"\$\{[^}]*:[^}]*\.\d+f\}", cell.source)
            assert not fixed, f"{name} formats a cost with {fixed}: use nb.pricing.money"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_on_the_emulator_and_shows_what_it_claims(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # conftest.py already gives each test its own NBBATCH_HOME and removes API keys; the
    # kernel inherits this environment.
    monkeypatch.setenv("NBBATCH_DEMO_SPEED", DEMO_SPEED)
    notebook = execute(name, tmp_path)
    check_common(notebook)
    CLAIMS[name](notebook, summary_of(notebook))


# ---------------------------------------------------------------------------------- Binder


@pytest.mark.timeout(1200)
def test_binder_setup_runs_the_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh venv set up from binder/ as repo2docker does, running the quickstart."""
    venv = tmp_path / "binder-venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # postBuild's `python`
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*cmd: str | Path) -> None:
        started = time.monotonic()
        done = subprocess.run(
            [str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True
        )
        took = time.monotonic() - started
        print(f"{took:6.1f} s  {' '.join(str(c) for c in cmd)}", file=sys.stderr)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    run(sys.executable, "-m", "venv", venv)
    run(python, "-m", "pip", "install", "-r", BINDER / "requirements.txt")
    run("bash", BINDER / "postBuild")

    # A kernel spec for that venv's python, found through JUPYTER_PATH.
    spec = tmp_path / "jupyter" / "kernels" / "binder-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Binder venv",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("NBBATCH_DEMO_SPEED", DEMO_SPEED)
    workdir = tmp_path / "notebooks"  # not the repository: `import nbbatch` must find the
    shutil.copytree(NOTEBOOKS, workdir)  # installed package, not the source tree

    notebook = read("01-quickstart.ipynb")
    notebook.cells.append(
        nbformat.v4.new_code_cell("import sys\n\nprint(sys.executable)\nprint(nb.__file__)")
    )
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="binder-venv",
        resources={"metadata": {"path": str(workdir)}},
    ).execute()
    where = printed(notebook.cells[-1]).split()
    assert where[0] == str(python)
    assert where[1].startswith(str(venv)) and "site-packages" in where[1]
    notebook.cells.pop()
    check_common(notebook)
    claims_quickstart(notebook, summary_of(notebook))
