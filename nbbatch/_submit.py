"""``nb.submit``: check everything a user can get wrong *before* anything is sent, record
the job, then hand over to the plan, the provider and :class:`~nbbatch.job.BatchJob`.

Its steps are named: input → plan → checks → record → start (``_inputs.prepare``,
``_inputs.in_memory`` / ``_inputs.streamed`` / ``_inputs.distributed``,
``_check_before_sending``, ``_record_job``, ``_start``).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import (
    _checks,
    _deadline,
    _engines,
    _health,
    _pack,
    _plan,
    _planning,
    _prompt,
    _quota,
    _rowstore,
    _stream,
    _structured,
)
from . import _frames as frames
from . import providers as _providers
from ._calibrate import PILOT_ROWS
from ._console import in_notebook
from ._errors import InputError
from ._ledger import Ledger
from ._ledger import default as _default_ledger
from ._ledger import home as _ledger_home
from .job import (
    LOCAL_POLLING,
    REMOTE_POLLING,
    BatchJob,
    PollPolicy,
    is_loopback,
    new_job_id,
)
from .providers import credentials as _credentials
from .providers.base import Provider, RequestSpec, scored

if TYPE_CHECKING:
    from ._calibrate import Calibration
from . import _inputs

log = logging.getLogger("nbbatch")


def submit(
    data: Any,
    prompt: str,
    *,
    model: str | list[str],
    output: str = "response",
    provider: str | None = None,
    client: Any = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    response_format: Any = None,
    id_column: str | None = None,
    endpoint: str | None = None,
    missing: str = "skip",
    cache_system: bool = False,
    max_cost: float | None = None,
    retries: int = 2,
    fallback: str | None = None,
    alert_threshold: float | None = 0.05,
    deadline: Any = None,
    on_deadline: str = "wait",
    escalate_when: Any = None,
    target: float | None = None,
    score: str | None = None,
    pilot_rows: int = PILOT_ROWS,
    pilot_seed: int = 0,
    pack: int | None = None,
    reuse: bool = True,
    force: bool = False,
    wait: bool = False,
    progress: bool | str = "auto",
    display: bool | str = "auto",
    queue_limit: int | dict[str, int] | None = None,
    tier: str | None = None,
    **params: Any,
) -> BatchJob:
    """Send one request per row of ``data`` as a provider batch job; returns at once.

    Everything a user can get wrong is checked first, and the job and its row manifest
    are recorded; building, uploading and creating the batches then go on in a
    background thread (the panel and the console show "uploading k/n batches"), and an
    error there is the job's error, raised by :meth:`BatchJob.wait`. ``job.wait_sent()``
    blocks until every row is in a batch at the provider.

    ``data`` is a pandas DataFrame or Series, a polars DataFrame or LazyFrame, a
    pyarrow Table or Dataset, or the path, folder or glob of Parquet files (all checked
    and planned the same way; ``job.merge`` gives back the same kind; rows of the
    non-pandas kinds are named by position or by ``id_column``). Parquet files and
    Arrow datasets are read a record batch at a time, never whole, so they may be larger
    than memory; ``job.to_parquet`` writes their results back the same way. A Dask or
    PySpark DataFrame is planned partition by partition on its cluster's workers, which
    also build the request lines; ``job.merge`` gives back a lazy frame of that kind,
    merged partition by partition (see :mod:`nbbatch._engines`).
    Files of ``planning.BACKGROUND_ROWS`` rows or more are planned in the background
    (see :mod:`nbbatch._planning`): a problem only later rows show ends the job
    ``failed``, nothing sent, and ``job.wait()`` raises it.
    ``prompt`` is a template whose ``{column}`` placeholders name columns of ``data``
    (with a Series, ``{}`` or the Series' name). Literal braces are ``{{`` and ``}}``.
    ``provider`` is ``"openai"``, ``"anthropic"``, ``"gemini"`` or ``"local"`` (the
    embedded emulator, no key needed); omitted, it follows ``client`` or the model name
    (``claude-*`` is Anthropic, ``gemini-*`` Gemini). ``client`` is an official SDK client
    (``openai.OpenAI``, ``anthropic.Anthropic``, ``google.genai.Client``), for Azure, a
    proxy or an emulator.
    Rows with a missing value in a used column are not sent (status ``skipped``) unless
    ``missing="empty"``. ``response_format`` (a pydantic model or a JSON schema) asks
    for structured output: ``merge`` then adds one column per field, and a reply that
    does not match the schema fails ``invalid_output``, keeping the raw text.
    ``max_cost`` (dollars) refuses, before sending anything, a job whose estimated batch
    cost is above it. ``cache_system=True`` marks the system prompt for Anthropic's
    prompt cache (OpenAI caches long shared prefixes by itself). Extra keyword arguments
    go into every request body, once checked against the SDK's request type for the
    endpoint; the model is checked with the provider's models endpoint before sending.

    Money is never spent twice: running the same ``submit`` again (same data, prompt,
    model and parameters) attaches to the job already in the ledger (``force=True``
    submits anew); rows whose exact request already succeeded in an earlier job take
    that result (``reuse=False`` sends them again); identical requests within the job
    are sent once and fanned out. Transient failures (rate limits, overloaded, server
    errors, expiry, missing results) are resubmitted automatically up to ``retries``
    times; ``fallback="realtime"`` then sends rows still failing through the real-time
    API at full price. A failure rate above ``alert_threshold`` adds a note to the job
    (shown by the panel and the console, and logged as a warning on logger ``nbbatch``).
    ``deadline`` (a ``datetime.timedelta``, a duration such as ``"6h"`` or ``"1h30m"``,
    or a ``datetime``) is when every row should be done: a job still running then is
    flagged overdue in the panel, the log and ``nbbatch jobs`` / ``nbbatch check``.
    ``on_deadline`` says what happens then to rows not done: ``"wait"`` (the default)
    only flags it; ``"flex"`` (OpenAI) and ``"realtime"`` stop sending batches, cancel
    the open ones (their finished rows keep their results) and send the rest through the
    real-time API, with flex processing at batch prices or at full price (see
    :mod:`nbbatch._deadline`).
    The job's start (rows, estimated cost) and end (counts, cost, duration) are logged
    at INFO on logger ``nbbatch``, and an end with rows that got no result at WARNING.

    A list of models is a cascade: ``model=["gpt-4o-mini", "gpt-4o"]`` runs every row on
    the first, and when that pass has ended (retries included) sends the rows
    ``escalate_when`` chooses to the next, and so on, as stages of this one job (see
    :meth:`BatchJob.escalate`): ``"failed"`` (the default: rows that failed or expired),
    an expression on the merged DataFrame (``"confidence < 0.7"``) or a function of it
    (``lambda out: out["confidence"] < 0.7``; a function lives in this session only,
    so give it again to ``nb.attach`` after a restart). ``merge`` adds
    ``{output}_model``; ``max_cost`` checks the first stage in full plus every later
    stage as if it took every row (an upper bound).

    ``escalate_when="auto"`` calibrates a two-model cascade to a quality ``target``
    (e.g. ``0.95``) on a numeric ``score`` field of the structured output (e.g.
    ``score="confidence"``): a seeded sample of ``pilot_rows`` rows (``pilot_seed``) of a
    pandas DataFrame runs first on both models (submit waits for it), and the cascade
    escalates the rows scored below the threshold that keeps the small model's answers
    on the rows not escalated in agreement with the large model's on at least
    ``target`` of the pilot, escalating as few as possible. The threshold and what it
    expects are in ``job.calibration`` and the job's notes (see :mod:`nbbatch._calibrate`).

    ``wait=True`` blocks until every row is terminal. In a notebook (``display="auto"``)
    the live panel appears and polling runs in the background, so the kernel stays free;
    ``progress`` prints text progress while waiting (``"auto"``: outside a notebook).

    ``pack=N`` puts up to N rows in one request (see :mod:`nbbatch._pack`): the system
    prompt and the template's text around its placeholders are sent once per request,
    each row's own part as an item of a JSON list, and the reply, a structured list of
    answers keyed by item, is mapped back to the rows. A row the reply leaves out or
    gets wrong is sent again on its own (retries are never packed). Not for embeddings.

    A job bigger than what the account may have queued at once (the provider's batch
    queue limit) is sent in waves, each sized to the room left, the next as earlier
    batches end (see :mod:`nbbatch._quota`); a batch refused for that limit is never a
    row failure. ``queue_limit`` gives the limit (input tokens for OpenAI and Gemini,
    requests for Anthropic; an int, or a dict by model), ``tier`` the account's usage
    tier (``"tier-1"`` ... ``"tier-5"``: the provider's published limits); without
    either the limit is learned from the first refusal and kept in the ledger.

    Everything is validated before anything is sent; a job, its rows and each provider
    batch id are written to the ledger as soon as they exist.
    """
    # input: the arguments, the data and the provider, checked
    _checks.arguments(
        prompt=prompt, output=output, system=system, max_tokens=max_tokens,
        id_column=id_column, endpoint=endpoint, provider=provider, missing=missing,
        cache_system=cache_system, max_cost=max_cost, retries=retries,
        alert_threshold=alert_threshold, reuse=reuse, force=force, wait=wait,
        progress=progress, display=display,
    )  # fmt: skip
    _inputs.check_policy(fallback, deadline)
    _quota.check_options(queue_limit, tier)
    _deadline.check(on_deadline, deadline)
    calibration = None
    if isinstance(escalate_when, str) and escalate_when == "auto":
        if score == "logprobs":  # every request of the pilot and the job asks for them
            params = {**params, "logprobs": True}
        calibration = _calibrated(
            data, prompt, models=model, target=target, score=score, pilot_rows=pilot_rows,
            pilot_seed=pilot_seed, output=output, response_format=response_format,
            pack=pack, max_cost=max_cost, options=dict(
                provider=provider, client=client, system=system, max_tokens=max_tokens,
                temperature=temperature, id_column=id_column, endpoint=endpoint,
                missing=missing, cache_system=cache_system, retries=retries,
                fallback=fallback, reuse=reuse, **params,
            ),
        )  # fmt: skip
        escalate_when = calibration.expression(output)
        if max_cost is not None:  # the job has what the pilot left of the budget
            max_cost = max(0.0, max_cost - (calibration.pilot_cost or 0.0))
    elif target is not None or score is not None:
        raise InputError(
            "target= and score= calibrate a cascade: pass them with escalate_when='auto' "
            "and model=[small, large]."
        )
    models, when, when_fn = _inputs.cascade(model, escalate_when)
    engine = _engines.kind_of(data)  # a Dask or Spark frame: planned on its workers
    source = _stream.Source.of(data) if engine is None and frames.streamed(data) else None
    # A large table held in memory is planned in the background too (its first rows now).
    in_memory_rows = None if engine or source else _planning.memory_rows(data)
    head = (
        _engines.head(data)
        if engine
        else source.head()
        if source is not None
        else _inputs.memory_head(data)
        if in_memory_rows is not None
        else data
    )
    frame, is_series, template, impl, spec, local = _inputs.prepare(
        head, prompt, model=models[0], output=output,
        provider=provider, client=client, system=system, max_tokens=max_tokens,
        temperature=temperature, response_format=response_format, endpoint=endpoint,
        cache_system=cache_system, params=params,
    )  # fmt: skip
    _check_cascade_columns(data, frame, is_series, when, output, spec)
    # The first model's limit was checked with its parameters; a later stage's model
    # must take max_tokens too, or its stage would fail after the first one was paid.
    _inputs.check_output_limits(impl.name, spec, models[1:])
    _deadline.check(on_deadline, deadline, impl.name, models)
    pack = _pack.check(pack, spec)
    # plan: render, hash and deduplicate the rows (into a manifest file for files)
    ledger = _default_ledger()
    # The local emulator's address can change between its runs; its jobs are one place.
    salt = _inputs.request_salt(spec, impl.name, "local" if local else impl.base_url, pack)
    identity = _identity(output, prompt, models, when, pack)
    # Rows beyond the first model's context window are skipped, not paid for and refused.
    limit = _checks.ContextLimit.of(models[0], system, impl.name)
    checks = _inputs.plan_checks(
        impl, spec, models, max_cost, ledger if reuse else None, pack=pack, template=prompt
    )
    # A large table from files is planned in the background (see nbbatch._planning): its
    # first rows are checked now, the rest (with the checks below) before anything is sent.
    later = _later(engine, source, [salt, *identity, id_column, missing])
    rows: _inputs.Rows | None = None
    if later is not None:
        assert source is not None
        _check_head(source.head(), template, id_column, missing, impl, spec)
        _check_models(impl, models)
    elif in_memory_rows is not None:
        _check_head(frame, template, id_column, missing, impl, spec)
        _check_models(impl, models)
        # Its rows are read in the background, so its fingerprint is known only then:
        # until then it is a job of its own (the planner looks for the same job).
        later = f"planning-{secrets.token_hex(8)}"
    else:
        rows = _inputs.plan_rows(
            data, (engine, source), frame, prompt, template, id_column, missing, salt, spec,
            impl.name, identity, ledger.files, limit,
        )  # fmt: skip
        # checks: what the provider would refuse, and the budget, before anything is sent
        _check_before_sending(
            rows, impl, spec, models, max_cost, ledger if reuse else None, pack=pack,
            template=prompt,
        )  # fmt: skip
    # record: the job (and its manifest) in the ledger first, or the same job found again
    polling = LOCAL_POLLING if local or is_loopback(impl.base_url) else REMOTE_POLLING
    fingerprint = rows.fingerprint if rows is not None else later
    assert fingerprint is not None  # planned now, or in the background under `later`
    existing = None if force else ledger.find_job(fingerprint)
    if existing is not None:
        job = _same_job(existing, rows, impl, ledger, data, polling, when_fn, checks)
    else:
        policy = _policy(retries, fallback, alert_threshold, missing, models, when, pack, limit)
        policy.update(_quota.options(queue_limit, tier))
        if on_deadline != "wait":
            policy["on_deadline"] = on_deadline
        if calibration is not None:
            policy["cascade"]["calibration"] = calibration.as_dict()
            # Its stage on the large model takes the pilot's answers of that model.
            policy["cascade"]["reuse"] = reuse
        n_rows = (
            rows.n_rows if rows is not None else source.n_rows if source else in_memory_rows or 0
        )
        record = _new_record(
            n_rows, impl, spec, output=output, template=prompt, id_column=id_column
        )
        record.update(
            fingerprint=fingerprint, policy=policy, salt=salt,
            backend="local" if local else None,
            deadline=_health.deadline_at(deadline, record["created"]),
        )  # fmt: skip
        planner = None
        if in_memory_rows is not None:
            data = data.copy(deep=False) if frames.kind_of(data) == frames.PANDAS else data
            planner = _memory_planner(
                data, prompt, impl, spec, models, ledger,
                id_column=id_column, missing=missing, salt=salt, identity=identity,
                limit=limit, max_cost=max_cost, reuse=reuse, force=force, pack=pack,
            )  # fmt: skip
        made = _record_job(
            record, rows, source, impl, ledger, data, polling, when_fn, checks,
            reuse=reuse, max_cost=max_cost, planner=planner, force=force,
        )  # fmt: skip
        # The same job recorded by another submit since the look above: attached.
        job = made if isinstance(made, BatchJob) else _same_job(
            made, rows, impl, ledger, data, polling, when_fn, checks
        )  # fmt: skip
    # start: send in the background (or wait here), and show the panel in a notebook
    return _start(job, wait=wait, progress=progress, display=display)


def _check_cascade_columns(
    data: Any,
    frame: pd.DataFrame,
    is_series: bool,
    when: str | None,
    output: str,
    spec: RequestSpec,
) -> None:
    """A cascade's ``escalate_when`` expression refused now, not after the first stage is
    paid for, when it names a column the merged DataFrame will not have."""
    from . import _escalate

    # A Series merges as one column.
    shown_columns = [data.name if data.name is not None else 0] if is_series else frame.columns
    _escalate.check_when_columns(
        when, list(shown_columns), output, spec.response_format, scored(spec)
    )


def _identity(
    output: str, prompt: str, models: list[str], when: str | None, pack: int | None
) -> tuple[str, str]:
    """What, beside the rows and the request parameters, makes a job this job: its
    output name and template, and for a cascade its models and rule, for a packed job
    its pack size (the same rows on the first model alone, or one by one, are another)."""
    identity = (output, prompt if len(models) == 1 else f"{prompt}\x00{models}\x00{when}")
    if pack:
        identity = (output, f"{identity[1]}\x00pack={pack}")
    return identity


def _check_before_sending(
    rows: _inputs.Rows,
    impl: Provider,
    spec: RequestSpec,
    models: list[str],
    max_cost: float | None,
    ledger: Ledger | None,
    *,
    pack: int | None,
    template: str,
) -> None:
    """Everything the provider or the budget would refuse, before anything is recorded
    or sent: a row to send, the request (encoding one checks the endpoint and the
    parameters), every model, and ``max_cost`` (with reuse from ``ledger``). What was
    planned into a file is removed when it fails."""
    try:
        _inputs.check_sendable(rows)
        impl.check_job_size(len(rows.send_positions))
        impl.encode(*rows.head(1), spec)
        _check_models(impl, models)
        if max_cost is not None:
            _inputs.check_budget(
                rows, spec, max_cost, ledger, models[1:], pack=pack, template=template,
                provider=impl.name,
            )  # fmt: skip
    except BaseException:
        rows.discard()
        raise


def _check_models(impl: Provider, models: list[str]) -> None:
    """Every model of the job, checked at the provider."""
    for name in models:
        impl.check_model(name)


def _later(engine: str | None, source: _stream.Source | None, parts: list[Any]) -> str | None:
    """The fingerprint of a table planned in the background (files large enough, see
    :mod:`nbbatch._planning`), or None: planned now."""
    if engine or source is None or not _planning.in_background(source):
        return None
    return _planning.fingerprint(source, parts)


def _same_job(
    existing: str,
    rows: _inputs.Rows | None,
    impl: Provider,
    ledger: Ledger,
    data: Any,
    polling: PollPolicy,
    when_fn: Any,
    checks: _planning.Checks,
) -> BatchJob:
    """The job already submitted with these very rows and parameters, attached instead
    of paid for again (said on stderr and logged)."""
    if rows is not None:
        rows.discard()
    note = (
        f"nbbatch: this exact job was already submitted as {existing}; attaching to it "
        "instead of paying again (submit with force=True to send it anew)."
    )
    log.warning(note)
    print(note, file=sys.stderr)
    record = ledger.job(existing)
    assert record is not None
    return BatchJob(
        record, impl, ledger, data=data, polling=polling, escalate_when=when_fn,
        plan_checks=checks,
    )  # fmt: skip


def _policy(
    retries: int,
    fallback: str | None,
    alert_threshold: float | None,
    missing: str,
    models: list[str],
    when: str | None,
    pack: int | None,
    limit: _checks.ContextLimit | None,
) -> dict[str, Any]:
    """The job's failure policy as the ledger keeps it (with its cascade, packing and
    context window)."""
    policy: dict[str, Any] = {
        "retries": retries,
        "fallback": fallback,
        "alert_threshold": alert_threshold,
        "missing": missing,  # merge re-renders rows the same way to check them
    }
    if limit is not None:  # and skips the same rows as too long
        policy["context"] = limit.as_dict()
    if len(models) > 1:
        policy["cascade"] = {"models": models, "when": when}
    if pack:
        policy["pack"] = pack
        # The secret the pack's item ids are made from: no row's text can name them.
        policy["pack_secret"] = _pack.new_secret()
    return policy


def _record_job(
    record: dict[str, Any],
    rows: _inputs.Rows | None,
    source: _stream.Source | None,
    impl: Provider,
    ledger: Ledger,
    data: Any,
    polling: PollPolicy,
    when_fn: Any,
    checks: _planning.Checks,
    *,
    reuse: bool,
    max_cost: float | None,
    planner: _planning.Planner | None = None,
    force: bool = False,
) -> BatchJob | str:
    """Write the new job and its manifest to the ledger (rows answered in earlier jobs
    take their results when ``reuse``), or, for a table planned in the background, the
    job alone (its rows, reuse and budget come once planned); log its start.

    Unless ``force``, the ledger records it only if no job with its fingerprint is
    there, looking and recording in one transaction: two submits of the same rows at
    once (threads, notebooks, processes) make one job. That job's id is returned then."""
    record.update(hash_scheme=_plan.HASH_SCHEME)
    if rows is not None:
        twin = ledger.add_job(
            record, rows.manifest(), reuse=reuse, source=rows.source, unless_same=not force
        )
        if twin is not None:
            return twin
        rows.recorded(ledger.folder(record["id"]))
    else:
        record["policy"].update(reuse=reuse, max_cost=max_cost)  # checked once planned
        described = source.describe() if source else {"kind": "memory", "rows": record["n_rows"]}
        twin = ledger.add_planning_job(record, described, unless_same=not force)
        if twin is not None:
            return twin
    job = BatchJob(
        ledger.job(record["id"]) or record,
        impl,
        ledger,
        data=data,
        polling=polling,
        escalate_when=when_fn,
        plan_checks=checks,
        planner=planner,
    )
    due = record.get("deadline")
    log.info(
        "nbbatch job %s started: %d rows expected on %s %s, cost %s%s",
        job.id, record["n_rows"], impl.name, job.model, job.cost,
        f", deadline {_health.when(due)}" if due else "",
    )  # fmt: skip
    return job


def _start(job: BatchJob, *, wait: bool, progress: bool | str, display: bool | str) -> BatchJob:
    """Start the job: building and uploading in a background thread (control comes back
    at once), or with ``wait`` in this thread until every row is terminal; the panel
    shows it in a notebook."""
    shown = display is True or (display == "auto" and in_notebook())
    if wait:
        # Sent in this thread by wait()'s first refresh, with text progress outside a
        # notebook, as a script expects.
        if shown:
            _show(job)
        job.wait(progress=progress)
        return job
    job.start_sending(daemon=in_notebook())
    if _deadline.acts(job.context.policy):
        job.start_polling()  # so the deadline acts when it arrives, panel or not
    if shown:
        _show(job)
    return job


def _calibrated(
    data: Any,
    prompt: str,
    *,
    models: Any,
    target: Any,
    score: Any,
    pilot_rows: Any,
    pilot_seed: int,
    output: str,
    response_format: Any,
    pack: Any,
    max_cost: float | None,
    options: dict[str, Any],
) -> Calibration:
    """Run a calibrated cascade's pilot (a seeded sample of ``data`` on both models, as
    two jobs, waited for) and choose its threshold (see :mod:`nbbatch._calibrate`).
    With ``max_cost``, the pilot and the job together are checked against it first."""
    from . import _calibrate as calibrate

    name = None
    if isinstance(models, list | tuple) and models and isinstance(models[0], str):
        name, _ = _providers.infer(options.get("provider"), options.get("client"), models[0])
    calibrate.check_arguments(
        models, response_format, score, target, pilot_rows, provider=name or "openai",
        endpoint=options.get("endpoint"), pack=pack,
    )  # fmt: skip
    if not isinstance(data, pd.DataFrame):
        raise InputError(
            "escalate_when='auto' samples its pilot from a pandas DataFrame; found "
            f"{type(data).__name__}. Pass a pandas DataFrame (e.g. .to_pandas()), or give "
            "escalate_when an expression with a threshold of your own."
        )
    from ._agreement import sample_of

    small_model, large_model = models
    # The same seeded sampler as nb.pilot's (every row when there are no more than
    # pilot_rows), so a pilot and a calibrated cascade with one seed see the same rows.
    sample = sample_of(data, pilot_rows, pilot_seed)
    if max_cost is not None:
        from ._preview import preview

        calibrate.check_budget(
            data, sample, prompt, list(models), max_cost, options,
            response_format=response_format, pack=pack, preview=preview,
        )  # fmt: skip
    jobs = [
        submit(
            sample,
            prompt,
            model=m,
            output=output,
            response_format=response_format,
            display=False,
            progress=False,
            **options,
        )  # fmt: skip
        for m in (small_model, large_model)
    ]
    for job in jobs:
        job.wait(progress=False)
    small, large = (job.merge(sample) for job in jobs)
    status_small = small[f"{output}_status"].to_numpy(dtype=object)
    status_large = large[f"{output}_status"].to_numpy(dtype=object)
    measured = (status_large == "succeeded") & (status_small != "skipped")
    fields = (
        [output]
        if response_format is None
        else [
            f
            for f in _structured.columns_of(
                _structured.schema_of(_structured.response_format(response_format))
            )
            if f != score
        ]
    )
    agree = calibrate.agreement_mask(small, large, fields)
    column = f"{output}_score" if score == calibrate.LOGPROBS else score
    scores = pd.to_numeric(small[column], errors="coerce").to_numpy(dtype=float)
    failed = (status_small != "succeeded")[measured]
    threshold, agreement, escalated, reached = calibrate.pick_threshold(
        scores[measured], agree[measured], failed, float(target)
    )
    low, high = calibrate.agreement_interval(scores[measured], agree[measured], failed, threshold)
    calibration = calibrate.Calibration(
        score=str(score), target=float(target), threshold=threshold,
        expected_agreement=agreement, expected_escalation=escalated,
        pilot_rows=int(measured.sum()), reached=reached,
        pilot_jobs=tuple(job.id for job in jobs),
        pilot_cost=sum(job.cost.batch or 0.0 for job in jobs),
        agreement_low=low if reached else None, agreement_high=high if reached else None,
    )  # fmt: skip
    log.info("nbbatch: %s", calibration.text())
    return calibration


def _show(job: BatchJob) -> None:
    """The live panel, polled in the background."""
    from . import _panel as panel

    job.start_polling()
    panel.show(job)


def _memory_planner(
    data: Any,
    prompt: str,
    impl: Provider,
    spec: RequestSpec,
    models: list[str],
    ledger: Ledger,
    *,
    id_column: str | None,
    missing: str,
    salt: str,
    identity: tuple[str, str],
    limit: _checks.ContextLimit | None,
    max_cost: float | None,
    reuse: bool,
    force: bool,
    pack: int | None,
) -> _planning.Planner:
    """What plans a large in-memory table in the background (see nbbatch._planning):
    every row planned and checked as :func:`submit` checks a table planned at once, the
    same job looked for by content, and the manifest written to a file beside the
    ledger, for the job it is given (the one submit made, or the same job this session
    follows). Any failure raises: the job then ends failed with it, nothing sent."""

    def plan(job_id: str, advance: Callable[[int], None]) -> Path:
        advance(0)
        frame, _, template = _inputs.parse(data, prompt)
        rows = _inputs.in_memory(frame, template, id_column, missing, salt, identity, limit)
        del frame
        _check_before_sending(
            rows, impl, spec, models, max_cost, ledger if reuse else None, pack=pack,
            template=prompt,
        )  # fmt: skip
        _longest_fits(rows, impl, spec)
        # Looked for and recorded at once: a twin planned meanwhile is found, not missed.
        existing = ledger.claim_fingerprint(job_id, rows.fingerprint, force=force)
        if existing is not None:  # the session follows that job instead
            raise _planning.SameJob(existing)
        target = ledger.files / f".manifest-{job_id}-{secrets.token_hex(4)}.arrow"
        manifest = rows.manifest()
        assert isinstance(manifest, pa.Table)
        _rowstore.write_table(target, manifest)
        advance(rows.n_rows)
        return target

    return plan


def _longest_fits(rows: _inputs.Rows, impl: Provider, spec: RequestSpec) -> None:
    """Raise an InputError when the request of the longest prompt sent would be larger
    than a provider batch may be: found before anything is sent, not when the chunk
    holding it is built (see :func:`nbbatch._planning.longest_fits` for files)."""
    keep = np.ones(len(rows.send_positions), dtype=bool)
    lengths = [
        pc.fill_null(pc.binary_length(part), 0).to_numpy(zero_copy_only=False)
        for part in rows.prompts(keep)
    ]
    if not lengths or not sum(len(x) for x in lengths):
        return
    longest = int(np.concatenate(lengths).argmax())
    ids, prompts = rows.head(longest + 1)
    size = len(impl.encode(ids.slice(longest), prompts.slice(longest), spec))
    if size > impl.max_bytes:
        raise InputError(
            f"a row renders a request of {size:,} bytes, over the provider's batch limit "
            f"of {impl.max_bytes:,} bytes. Shorten that row's text."
        )


def _check_head(
    head: pd.DataFrame,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    impl: Provider,
    spec: RequestSpec,
) -> None:
    """What the first rows of a table planned in the background show: they plan, and
    (the first one sent) encode, so the endpoint and parameters are checked now."""
    rows = _plan.make_plan(head, template, id_column=id_column, missing=missing)
    if len(rows.send_positions):
        ids = rows.custom_ids.take(pa.array(rows.send_positions[:1], pa.int64()))
        impl.encode(ids, rows.prompts.slice(0, 1), spec)


def _new_record(
    n_rows: int,
    impl: Provider,
    spec: RequestSpec,
    *,
    output: str,
    template: str,
    id_column: str | None,
) -> dict[str, Any]:

    return {
        "id": new_job_id(),
        "created": time.time(),
        "provider": impl.name,
        "model": spec.model,
        "endpoint": spec.endpoint,
        "output": output,
        "template": template,
        "spec": spec.as_dict(),
        "base_url": impl.base_url,
        "n_rows": n_rows,
        "id_column": id_column,
        "status": "running",
        "origin": _origin(),
        # Where the key came from (never the key): later polls send only a key meant
        # for base_url.
        "credential": impl.credential,
        "key_hash": _credentials.key_hash(impl, _ledger_home()),
    }


def _origin() -> str | None:
    """The notebook or script submitting, as the ledger records it for the JupyterLab
    sidebar: Jupyter Server gives each notebook's kernel the notebook's path in
    ``JPY_SESSION_NAME``; a kernel started by ``jupyter nbconvert --execute`` or
    papermill is told no path, so the notebook is looked for on the command line of the
    process that started it (:func:`_kernel_notebook`); a script is ``sys.argv[0]``;
    None when nothing says (never the kernel's own ``ipykernel_launcher.py``)."""
    session = os.environ.get("JPY_SESSION_NAME")
    if session:
        return session
    script = sys.argv[0] if sys.argv else ""
    if "ipykernel" in os.path.basename(script) or "ipykernel" in Path(script).parts:
        return _kernel_notebook()
    if script.endswith(".py") and os.path.isfile(script):
        return os.path.abspath(script)
    return None


#: Options of nbconvert and papermill whose value is a notebook written, not run.
_OUTPUT_FLAGS = ("--output", "-o", "--output-dir", "--output_dir")


def _kernel_notebook() -> str | None:
    """The notebook a kernel without ``JPY_SESSION_NAME`` runs: the one ``.ipynb`` file
    named on its parent's command line (``jupyter nbconvert --execute x.ipynb``,
    ``papermill in.ipynb out.ipynb`` names the one it reads first), read from Linux's
    ``/proc``; else the only notebook in the kernel's working folder (nbclient starts a
    kernel in the notebook's folder); else None."""
    parent = os.environ.get("JPY_PARENT_PID") or str(os.getppid())
    try:
        args = Path(f"/proc/{int(parent)}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{int(parent)}/cwd")
    except (OSError, ValueError):
        args, cwd = [], os.getcwd()
    words = [a.decode(errors="replace") for a in args]
    # The notebook read, not the one written: `--output done.ipynb` names the latter.
    named = [
        w
        for before, w in zip(["", *words], words, strict=False)
        if w.endswith(".ipynb") and not w.startswith("-") and before not in _OUTPUT_FLAGS
    ]
    if named:
        return os.path.abspath(os.path.join(cwd, named[0]))
    here = sorted(Path.cwd().glob("*.ipynb"))
    return str(here[0].resolve()) if len(here) == 1 else None
