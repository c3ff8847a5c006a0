"""A job inside a real notebook kernel, run headless with nbclient (no browser).

``job.wait()`` must block correctly inside a kernel (whose event loop is already
running) while the panel's background poller runs too, and ``nb.submit(...)`` as a
cell's last line must show one panel, not two. nbclient keeps output from threads but
attributes late output to finished cells, so the assertions read what later cells print
(see shared/reference/jupyterlab-browser-tests.md).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.slow

WIDGET = "application/vnd.jupyter.widget-view+json"

SETUP = """
import openai
import pandas as pd

import nbbatch as nb
from nbbatch import emulator

emu = emulator.start(processing_seconds=1.0, error_rate=0.25, seed=1)
client = openai.OpenAI(base_url=emu.openai_base_url, api_key="emulator")
df = pd.DataFrame({"text": [f"row {i}" for i in range(8)]})
"""
SUBMIT = """
nb.submit(df, "{text}", model="gpt-4o-mini", client=client, output="out", retries=0,
          alert_threshold=None)
"""
WAIT = """
job = _  # the job the previous cell returned
job.wait(timeout=60)
c = job.counts
print("COUNTS", c["succeeded"], c["failed"], c["pending"], job.status)
"""


def test_wait_works_inside_a_running_kernel(tmp_path: Path) -> None:
    notebook = new_notebook(
        cells=[new_code_cell(SETUP), new_code_cell(SUBMIT), new_code_cell(WAIT)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    client = NotebookClient(
        notebook, timeout=90, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    nbformat.validate(notebook)

    submit_outputs = notebook.cells[1].outputs
    panels = [o for o in submit_outputs if WIDGET in o.get("data", {})]
    assert len(panels) == 1, submit_outputs  # shown by submit; the result adds nothing
    assert not [o for o in submit_outputs if o.output_type == "execute_result"], submit_outputs

    printed = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    assert "COUNTS 6 2 0 completed" in printed  # round(0.25 * 8) rows failed, none pending

    # What the notebook saves is the job's last state, not the state at submit: the
    # panel's output was updated (by display id) while later cells ran.
    [saved] = panels
    text, html = saved["data"]["text/plain"], saved["data"]["text/html"]
    assert "[openai gpt-4o-mini] completed: 8/8 rows done - 6 succeeded, 2 failed" in text
    assert "running" not in text and "validating" not in text
    assert "Done: 6 of 8 rows succeeded (2 failed)" in html and 'data-done="8"' in html
    assert "<script" not in html
