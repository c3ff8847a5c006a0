"""An inconclusive pilot and its sequential extension: a cheaper setting whose interval
straddles the target is reported (not silently passed over for the dearer one), and
``pilot.extend()`` runs more rows for it and the reference, keeping the rows paid for,
and decides again on a wider interval (the error of looking twice is bounded). On the
emulator with models of known quality, through ``nb.pilot`` and the OpenAI SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch.piloting import look_level

from ._helpers import LABEL_SCHEMA as SCHEMA
from ._helpers import LABELS

pytestmark = pytest.mark.slow

SMALL, LARGE = "gpt-4o-mini", "gpt-4o"


def responder(request: emulator.Request) -> dict:
    return {"label": LABELS[sum(map(ord, request.prompt)) % 3]}


def table(rows: int) -> pd.DataFrame:
    words = ["sturdy", "late", "fine", "broken", "lovely", "noisy", "cheap", "heavy"]
    texts = [
        f"Review {i}: it was {words[i % 8]} and {words[(i * 7 + 3) % 8]}, order {i * 31 % 997}."
        for i in range(rows)
    ]
    return pd.DataFrame({"review": texts}, index=[f"R{i}" for i in range(rows)])


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    quality = {SMALL: 0.99, LARGE: 1.0}
    with (
        emulator.start(processing_seconds=0.02, responder=responder, quality=quality) as emu,
        openai.OpenAI(base_url=emu.openai_base_url, api_key="k", timeout=60) as c,
    ):
        yield c


def requests_sent(client: openai.OpenAI) -> int:
    return sum(b.request_counts.total for b in client.batches.list(limit=100) if b.request_counts)


def test_an_inconclusive_setting_is_said_and_an_extension_decides(client: openai.OpenAI) -> None:
    df = table(2000)
    # At 100 rows the small model (right on 99% of rows) disagrees once on this sample:
    # 0.99 [0.946, 0.998] holds the target 0.95, so the sample cannot tell.
    with pytest.warns(UserWarning, match="inconclusive for gpt-4o-mini"):
        p = nb.pilot(df, "{review}", model=[SMALL, LARGE], n=100, seed=1,
                     response_format=SCHEMA, client=client)  # fmt: skip
    assert p.recommended is not None and p.recommended.model == LARGE
    assert [s.name for s in p.inconclusive] == [SMALL]
    low, high = p.table.loc[SMALL, ["agreement_low", "agreement_high"]]
    assert low < 0.95 <= high
    assert "inconclusive: gpt-4o-mini" in repr(p) and "pilot.extend()" in repr(p)
    before = requests_sent(client)

    q = p.extend()
    # 300 more rows (three times the first sample) for the small model and the
    # reference; the 100 rows paid for are kept, not sent again.
    assert requests_sent(client) - before == 2 * 300
    assert len(q.sample) == 400 and q.sample.index[:100].equals(p.sample.index)
    assert q.sample.index.is_unique and q.sample.index.isin(df.index).all()
    assert q.table.loc[SMALL, "rows"] == 400 and q.table.loc[LARGE, "rows"] == 400
    # The second look decides on a 99% interval, and it clears the target.
    assert q.table.loc[SMALL, "level"] == pytest.approx(0.99)
    assert q.table.loc[SMALL, "agreement_low"] >= 0.95
    assert q.recommended is not None and q.recommended.model == SMALL and not q.inconclusive
    assert "at 99.0%" in repr(q)
    # The first pilot is as it was.
    assert len(p.sample) == 100 and p.recommended.model == LARGE
    # Its answers are those of the same rows run on their own: the whole sample's
    # agreement is the first rows' and the new rows' together.
    assert q.answers(SMALL).index.equals(q.sample.index)


def test_extend_is_refused_when_there_is_nothing_to_decide(client: openai.OpenAI) -> None:
    df = table(2000)
    p = nb.pilot(df, "{review}", model=[SMALL, LARGE], n=100, seed=2,
                 response_format=SCHEMA, client=client)  # fmt: skip
    assert not p.inconclusive and p.recommended is not None and p.recommended.model == SMALL
    before = requests_sent(client)
    with pytest.raises(nb.InputError, match="no setting is inconclusive"):
        p.extend()
    with pytest.raises(nb.InputError, match="n is a number of rows"):
        p.extend(0, settings=[SMALL])
    assert requests_sent(client) == before  # nothing sent


def test_each_later_look_spends_less_of_the_error() -> None:
    assert look_level(1) == 0.95 and look_level(2) == pytest.approx(0.99)
    assert look_level(3) == pytest.approx(0.995)
    # One-sided error of the lower bound summed over many looks stays under 3.5%.
    assert sum((1 - look_level(k)) / 2 for k in range(1, 60)) < 0.035
