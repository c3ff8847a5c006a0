"""Together's batch output lines in the shape its own cookbook shows a real output file
in (``{"id": "br_...", "custom_id", "response": {"status_code", "body"}}``, with no
``error`` key), served by the emulator's Together variant and read by nbbatch."""

from __future__ import annotations

import orjson
import pandas as pd
import together

import nbbatch as nb
from nbbatch import emulator
from nbbatch.providers.together import TogetherProvider

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def test_together_output_lines_have_togethers_shape_and_merge():
    with emulator.start(processing_seconds=0.05) as emu:
        client = together.Together(
            api_key="k", base_url=emu.url + str(TogetherProvider.emulator_prefix)
        )
        try:
            df = pd.DataFrame({"text": ["one", "two", f"three {emulator.FAIL_MARKER}"]})
            job = nb.submit(df, "Say {text}", model=MODEL, client=client, display=False)
            out = job.wait(timeout=60, progress=False).merge(df)
            assert out["response_status"].tolist() == ["succeeded", "succeeded", "failed"]
            assert out["response"].iloc[0] == emulator.echo_text("Say one")
            [batch] = client.batches.list()
            with client.files.with_streaming_response.content(batch.output_file_id) as resp:
                lines = [orjson.loads(x) for x in resp.read().splitlines()]
            assert len(lines) == 2
            for line in lines:
                assert set(line) == {"id", "custom_id", "response"}
                assert line["id"].startswith("br_")
                assert set(line["response"]) == {"status_code", "body"}
                assert line["response"]["status_code"] == 200
                assert line["response"]["body"]["choices"][0]["message"]["content"]
            # The tokens of the succeeded rows are read from the lines too.
            assert job.cost.batch is not None and job.cost.batch > 0
        finally:
            client.close()
