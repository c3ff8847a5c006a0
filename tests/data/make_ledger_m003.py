"""Write the ledger-m003 fixture: a small ledger recorded by the m003 release of nbbatch.

Run it with the release that has migrations m001..m003 on the path, and ``NBBATCH_HOME``
set to the folder that should receive the ledger, e.g.::

    git clone /work/main /tmp/nbb-old   # at the m003 release
    NBBATCH_HOME=tests/data/ledger-m003/home PYTHONPATH=/tmp/nbb-old \\
        .venv/bin/python tests/data/make_ledger_m003.py > tests/data/ledger-m003/expected.json

It starts an in-process emulator, records four jobs (OpenAI with skipped, duplicated and
failing rows; Anthropic with awkward text; OpenAI reusing rows of the first job; OpenAI
with a JSON-schema response format), prints a JSON summary of each (id, provider, rows,
counts, merged results and the submitted data) to stdout, and stops the emulator. The
summary is what a test of a later migration compares against.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import anthropic
import openai
import pandas as pd

import nbbatch as nb

PROMPT = "Answer briefly: {text}"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars unwrapped, NaN and NA as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def records(frame: pd.DataFrame | pd.Series) -> list[dict[str, Any]]:
    """The frame's rows as dicts, its index as ``"index"`` first."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    out = []
    for label, row in zip(frame.index, frame.to_dict(orient="records"), strict=True):
        out.append({"index": plain(label), **{str(k): plain(v) for k, v in row.items()}})
    return out


def summary(name: str, job: Any, data: pd.DataFrame | pd.Series) -> dict[str, Any]:
    return {
        "name": name,
        "id": job.id,
        "provider": job.provider,
        "model": job.model,
        "output": job.output,
        "n_rows": len(data),
        "index_name": data.index.name,
        "counts": plain(dict(job.counts)),
        "data": records(data),
        "merged": records(job.merge(data)),
    }


def main() -> None:
    if not os.environ.get("NBBATCH_HOME"):
        sys.exit("set NBBATCH_HOME to the folder that should receive the ledger")
    print(f"nbbatch from {nb.__file__}", file=sys.stderr)
    fail = nb.emulator.FAIL_MARKER

    texts_a: list[str | None] = [f"question number {i}" for i in range(12)]
    texts_a[7] = texts_a[3]  # deduplicated onto row 3
    texts_a[5] = None  # skipped
    texts_a[9] = f"please fail {fail}"  # invalid_request_error
    data_a = pd.DataFrame({"text": texts_a}, index=[f"r{i}" for i in range(12)])

    data_b = pd.Series(
        [
            "plain text",
            "an emoji \N{GRINNING FACE WITH SMILING EYES} here",
            'she said "hi"\nand left',
            "tabs\tand backslash \\ too",
            "accented: café, naïve",
            "last one",
        ],
        name="text",
    )

    # Four texts of job a (answered there), two new ones.
    texts_c = [texts_a[0], texts_a[1], texts_a[2], texts_a[4], "a new question", "another"]
    data_c = pd.DataFrame({"text": texts_c}, index=[f"c{i}" for i in range(6)])

    data_d = pd.DataFrame(
        {"text": ["I love it", "I hate it", "it is fine", "not great"]},
        index=pd.Index([10, 20, 30, 40], name="review_id"),
    )

    emu = nb.emulator.start(processing_seconds=0.05)
    oai = openai.OpenAI(base_url=emu.openai_base_url, api_key="k")
    ant = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="k")
    try:
        job_a = nb.submit(
            data_a, PROMPT, model="gpt-4o-mini", client=oai, output="answer", retries=0,
            display=False,
        )  # fmt: skip
        job_a.wait(progress=False)
        job_b = nb.submit(
            data_b, "Reply to: {}", model="claude-haiku-4-5", client=ant, output="response",
            display=False,
        )  # fmt: skip
        job_b.wait(progress=False)
        job_c = nb.submit(
            data_c, PROMPT, model="gpt-4o-mini", client=oai, output="answer", retries=0,
            display=False,
        )  # fmt: skip
        job_c.wait(progress=False)
        job_d = nb.submit(
            data_d, "Sentiment of: {text}", model="gpt-4o-mini", client=oai, output="sentiment",
            response_format=SCHEMA, display=False,
        )  # fmt: skip
        job_d.wait(progress=False)
        result = {
            "jobs": [
                summary("a", job_a, data_a),
                summary("b", job_b, data_b),
                summary("c", job_c, data_c),
                summary("d", job_d, data_d),
            ],
        }
    finally:
        oai.close()
        ant.close()
        emu.stop()
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
