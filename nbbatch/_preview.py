"""``nb.preview`` (what a submit would send and cost, nothing sent) and ``nb.try_now``
(a few rows answered at once, at the real-time price).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from . import (
    _checks,
    _deadline,
    _engines,
    _health,
    _pack,
    _plan,
    _quota,
    _stream,
    _structured,
    columns,
)
from . import _estimate as _estimate_mod
from . import _frames as frames
from . import providers as _providers
from ._calibrate import PILOT_ROWS
from ._errors import ConfigError
from ._ledger import Ledger
from ._ledger import default as _default_ledger
from .job import (
    output_columns,
)
from .providers.base import RequestSpec, is_embeddings, scored

if TYPE_CHECKING:
    pass
from . import _inputs
from ._jobs import ledger_path

log = logging.getLogger("nbbatch")


def preview(
    data: Any,
    prompt: str,
    *,
    model: str | list[str],
    n: int = 5,
    provider: str | None = None,
    client: Any = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    expected_output_tokens: int | None = None,
    response_format: Any = None,
    escalate_when: Any = None,
    target: float | None = None,
    score: str | None = None,
    pilot_rows: int = PILOT_ROWS,
    pilot_seed: int = 0,
    id_column: str | None = None,
    endpoint: str | None = None,
    missing: str = "skip",
    cache_system: bool = False,
    pack: int | None = None,
    queue_limit: int | dict[str, int] | None = None,
    tier: str | None = None,
    deadline: Any = None,
    on_deadline: str = "wait",
    **params: Any,
) -> Preview:
    """The first ``n`` rendered requests and, for the whole job, the estimated tokens and
    cost at batch and at real-time prices. Sends nothing and needs no key.

    The estimate counts what ``submit`` would send: identical requests once, and none
    whose identical request already succeeded in an earlier job in the ledger (those are
    reused). Reuse is recognised when the request would go to the same place with the
    same parameters as then: pass the ``provider``/``client`` and parameters you will
    submit with (without a key or client for a real provider it is not checked, and the
    summary says so).

    Input tokens are exact with tiktoken when its encoding is cached locally, else
    approximated (4 characters per token; always for Claude models); output tokens are
    ``expected_output_tokens``, else ``max_tokens`` as an upper bound, else a guess of
    100 per row. A system prompt long enough for the provider's prompt cache (OpenAI's
    automatic one; Anthropic's with ``cache_system=True``) is counted as read from the
    cache after the first request. Prices come from genai-prices' bundled data, whose
    date the summary states. The returned DataFrame shows the estimate above the rows;
    it is also ``.estimate``.

    For a cascade (``model=[...]``, as ``submit`` takes it) the first stage is
    estimated in full and each later stage as if every row went on to it, an upper
    bound the summary states as such (``.estimate.later``, ``.estimate.upper_bound``).
    A calibrated one (``escalate_when="auto"``, with ``target``, ``score``,
    ``pilot_rows`` and ``pilot_seed`` as ``submit`` takes them: accepted, not used) is
    estimated the same way; its pilot is not counted.

    With ``pack=N`` (as ``submit`` takes it) the rows shown are the first packed
    requests, and the estimate counts requests of N rows, beside the cost unpacked.

    ``response_format`` is taken as ``submit`` takes it (a pydantic model or a JSON
    schema), so that answers reusable from a structured job are recognised.
    With a batch queue limit known (``queue_limit=`` or ``tier=`` as ``submit`` takes
    them, or learned by an earlier job of the account in the ledger), the summary says
    how many waves the job needs and, from the account's last wave, roughly how long.
    With ``deadline`` and ``on_deadline`` (as ``submit`` takes them, and checked as it
    checks them), the summary says what the deadline would do and, for ``"flex"`` or
    ``"realtime"``, what the rows not done by then would cost that way at most (every
    row, if no batch had finished) beside the batch price (``.estimate.deadline``).
    """
    _quota.check_options(queue_limit, tier)
    _inputs.check_policy(None, deadline)
    _deadline.check(on_deadline, deadline)
    _checks.arguments(
        prompt=prompt, n=n, system=system, max_tokens=max_tokens, id_column=id_column,
        endpoint=endpoint, provider=provider, missing=missing, cache_system=cache_system,
        expected_output_tokens=expected_output_tokens,
    )  # fmt: skip
    # A calibrated cascade's threshold is not known before its pilot: any row may go on.
    auto = isinstance(escalate_when, str) and escalate_when == "auto"
    models, _, _ = _inputs.cascade(model, "failed" if auto else escalate_when)
    model = models[0]
    engine = _engines.kind_of(data)
    source = _stream.Source.of(data) if engine is None and frames.streamed(data) else None
    head = _engines.head(data) if engine else data if source is None else source.head()
    frame, _, template = _inputs.parse(head, prompt)
    name, local = _providers.infer(provider, client, model)
    _deadline.check(on_deadline, deadline, name, models)
    endpoint = endpoint or _providers.default_endpoint(name)
    spec = RequestSpec(
        model=model,
        endpoint=endpoint,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        # As submit records it (a JSON schema), so reuse is recognised the same way.
        response_format=None
        if response_format is None
        else _structured.response_format(response_format),
        cache_system=cache_system,
        params=params,
    )
    _inputs.check_output_limits(name, spec, models)
    pack = _pack.check(pack, spec)
    address = _address(name, client, local)
    salt = _inputs.request_salt(spec, name, address or "", pack)
    ledger = _default_ledger() if address is not None and ledger_path().exists() else None
    limit = _checks.ContextLimit.of(model, system, name)
    with tempfile.TemporaryDirectory(prefix="nbbatch-preview-") as folder:
        rows = _inputs.plan_rows(
            data, (engine, source), frame, prompt, template, id_column, missing, salt, spec,
            name, ("", ""), Path(folder), limit,
        )  # fmt: skip
        est = _inputs.estimate(
            rows, spec, ledger, expected_output_tokens=expected_output_tokens, pack=pack,
            template=prompt, provider=name,
        )  # fmt: skip
        est = _inputs.with_later(
            est, rows, spec, models[1:], expected_output_tokens=expected_output_tokens,
            provider=name,
        )  # fmt: skip
        ids, prompts = rows.head(n * (pack or 1))
        rows.discard()
    if pack:
        ids, prompts = _packed_head(ids, prompts, pack, prompt)
    if address is None:
        est = dataclasses.replace(
            est,
            note=(est.note + "; " if est.note else "")
            + "answers reusable from earlier jobs not checked (no client or key)",
        )
    est = _with_waves(est, name, client, address, ledger, model, queue_limit, tier)
    est = _with_deadline(est, deadline, on_deadline)
    # Tokens per shown row (the estimate above counts distinct requests, not rows).
    shown = _estimate_mod.estimate(prompts, model=model, system=system, endpoint=endpoint)
    table = _estimate_mod.preview_table(ids, prompts, shown.per_row_input, n)
    out = Preview(table, columns=["custom_id", "prompt", "input_tokens"])
    out.estimate = est
    return out


def _packed_head(ids: pa.Array, prompts: pa.Array, pack: int, prompt: str) -> tuple[Any, Any]:
    """The first packed requests, as they will be sent: ``pack`` rows' prompts in one,
    named by the first row of each."""
    prefix, suffix = _pack.split_template(prompt)
    texts = _pack.pack_prompts(prompts.to_pylist(), pack, prefix, suffix)
    named = pa.array([f"pack of {len(prompts[i : i + pack])} from row {ids[i]}"
                      for i in range(0, len(prompts), pack)], pa.string())  # fmt: skip
    return named, pa.array(texts, pa.large_string())


def _with_waves(
    est: _estimate_mod.Estimate,
    name: str,
    client: Any,
    address: str | None,
    ledger: Ledger | None,
    model: str,
    queue_limit: Any,
    tier: Any,
) -> _estimate_mod.Estimate:
    """``est`` with the waves the job needs under the limit known for its account."""
    cls = _providers.provider_class(name)
    learned = None
    if ledger is not None and address is not None and client is not None:
        account = _quota.account_of(name, address, client, ledger.path.parent)
        learned = ledger.quota_limit(account, model if cls.quota_per_model else "*")
    limit = _quota.known_limit(cls, model, queue_limit, tier, learned)
    total = est.rows if cls.quota_unit == "requests" else est.input_tokens
    seconds = learned.get("wave_seconds") if learned else None
    waves = _quota.plan(total, limit, cls.quota_unit, seconds)
    return dataclasses.replace(est, waves=waves) if waves else est


def _with_deadline(
    est: _estimate_mod.Estimate, deadline: Any, on_deadline: str
) -> _estimate_mod.Estimate:
    """``est`` with what the deadline would do (unchanged without one)."""
    if deadline is None:
        return est
    note = _estimate_mod.deadline_note(est, _deadline_words(deadline), on_deadline)
    return dataclasses.replace(est, deadline=note)


def _deadline_words(deadline: Any) -> str:
    """A deadline as the preview says it: a duration counts from submit."""
    if isinstance(deadline, str | dt.timedelta):
        return f"{deadline} after submit"
    due = _health.deadline_at(deadline, time.time())
    return "at " + _health.when(due) if due is not None else "none"


def _address(name: str, client: Any, local: bool) -> str | None:
    """Where ``submit`` would send, as its request hashes name it (None: unknown here)."""
    if local:
        return "local"
    if client is not None:
        return _providers.base_url_of(client)
    try:
        return _providers.base_url_of(_providers.default_client(name))
    except ConfigError:
        return None


class Preview(pd.DataFrame):
    """The first rendered requests, with the whole job's estimate (``.estimate``) shown
    above them."""

    _metadata = ["estimate"]
    estimate: _estimate_mod.Estimate

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame  # slices are plain frames

    def __repr__(self) -> str:
        return f"{self.estimate.summary()}\n\n{super().__repr__()}"

    def _repr_html_(self) -> str | None:
        from html import escape

        head = f"<p><b>{escape(self.estimate.summary())}</b></p>"
        return head + pd.DataFrame(self).to_html()


def try_now(
    data: Any,
    prompt: str,
    *,
    model: str,
    output: str = "response",
    provider: str | None = None,
    client: Any = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    response_format: Any = None,
    endpoint: str | None = None,
    missing: str = "skip",
    concurrency: int = 8,
    **params: Any,
) -> pd.DataFrame:
    """Send the same requests as :func:`submit` through the real-time API, concurrently,
    and return the merged DataFrame within seconds: for tuning a prompt on a few rows
    (``df.head(5)``) before paying for all of them at batch price. Real-time calls cost
    the full price; nothing is written to the ledger.
    """
    from . import _realtime as realtime
    from ._collect import realtime_checked

    _checks.arguments(
        prompt=prompt, output=output, system=system, max_tokens=max_tokens,
        endpoint=endpoint, provider=provider, missing=missing,
    )  # fmt: skip
    frame, is_series, template, impl, spec, _ = _inputs.prepare(
        data, prompt, model=model, output=output, provider=provider, client=client,
        system=system, max_tokens=max_tokens, temperature=temperature,
        response_format=response_format, endpoint=endpoint, cache_system=False,
        params=params,
    )  # fmt: skip
    rows = _plan.make_plan(
        frame, template, missing=missing, limit=_checks.ContextLimit.of(model, system)
    )
    ids = rows.custom_ids.take(pa.array(rows.send_positions, pa.int64()))
    table = realtime.run(
        impl, ids, rows.prompts, spec, concurrency=concurrency, with_truncated=True
    )
    table = realtime_checked(table, spec)
    out = _merge_table(_as_user_frame(data, frame, is_series), rows, table, output, spec)
    columns = output_columns(output, spec.response_format, scored=scored(spec))
    return frames.like(data, out, columns)


def _as_user_frame(
    data: pd.DataFrame | pd.Series, frame: pd.DataFrame, is_series: bool
) -> pd.DataFrame:
    """The user's data as a frame: a Series becomes its one column."""
    return data.to_frame() if isinstance(data, pd.Series) else frame


def _merge_table(
    frame: pd.DataFrame, rows: _plan.Plan, table: pa.Table, output: str, spec: RequestSpec
) -> pd.DataFrame:
    """A result table merged into ``frame`` by position, like ``BatchJob.merge``."""
    n = rows.n_rows
    status = np.full(n, "skipped", dtype=object)
    text = np.full(n, None, dtype=object)
    error = np.full(n, None, dtype=object)
    for pos, reason in zip(rows.skip_positions, rows.skip_reasons, strict=True):
        error[pos] = f"skipped: {reason}"
    sent = rows.send_positions
    status[sent] = table.column("status").to_pylist()
    text[sent] = table.column("output").to_pylist()
    kinds = table.column("error_type").to_pylist()
    messages = table.column("error_message").to_pylist()
    error[sent] = [None if k is None else f"{k}: {m}" for k, m in zip(kinds, messages, strict=True)]
    if spec.response_format is None and is_embeddings(spec.endpoint):
        vectors = np.empty(n, dtype=object)  # a list per cell, not a 2-D array
        vectors[:] = [None if t is None else orjson.loads(t) for t in text]
        text = vectors
    scores = None
    if scored(spec):  # logprobs=True: each reply's score, as a job's merge has it
        scores = np.full(n, None, dtype=object)
        if "score" in table.column_names:
            scores[sent] = table.column("score").to_pylist()
    out = frame.copy()
    rows_out = columns.Rows(output, spec.response_format, status, text, error, scores=scores)
    for name, column in columns.build(rows_out, scored=scores is not None).items():
        out[name] = column
    return out
