"""The public entry points: submit, attach, jobs.

Each is thin: validate everything a user can get wrong *before* anything is sent, then
hand over to the plan, the provider and :class:`~nbbatch.job.BatchJob`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import checks as _checks
from . import deadline as _deadline
from . import engines as _engines
from . import estimate as _estimate_mod
from . import frames, pricing
from . import health as _health
from . import merge as _merge
from . import pack as _pack
from . import plan as _plan
from . import planning as _planning
from . import prompt as _prompt
from . import providers as _providers
from . import quota as _quota
from . import rowstore as _rowstore
from . import states as _states
from . import stream as _stream
from . import structured as _structured
from ._errors import ConfigError, InputError, JobNotFoundError
from .calibrate import PILOT_ROWS
from .console import in_notebook
from .job import (
    LOCAL_POLLING,
    REMOTE_POLLING,
    BatchJob,
    PollPolicy,
    is_loopback,
    new_job_id,
    output_columns,
)
from .ledger import Ledger
from .ledger import default as _default_ledger
from .ledger import home as _ledger_home
from .pricing import money
from .providers import credentials as _credentials
from .providers.base import Provider, RequestSpec, is_embeddings, scored

if TYPE_CHECKING:
    from .calibrate import Calibration
    from .comparison import Comparison

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
    merged partition by partition (see :mod:`nbbatch.engines`).
    Files of ``planning.BACKGROUND_ROWS`` rows or more are planned in the background
    (see :mod:`nbbatch.planning`): a problem only later rows show ends the job
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
    :mod:`nbbatch.deadline`).
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
    expects are in ``job.calibration`` and the job's notes (see :mod:`nbbatch.calibrate`).

    ``wait=True`` blocks until every row is terminal. In a notebook (``display="auto"``)
    the live panel appears and polling runs in the background, so the kernel stays free;
    ``progress`` prints text progress while waiting (``"auto"``: outside a notebook).

    ``pack=N`` puts up to N rows in one request (see :mod:`nbbatch.pack`): the system
    prompt and the template's text around its placeholders are sent once per request,
    each row's own part as an item of a JSON list, and the reply, a structured list of
    answers keyed by item, is mapped back to the rows. A row the reply leaves out or
    gets wrong is sent again on its own (retries are never packed). Not for embeddings.

    A job bigger than what the account may have queued at once (the provider's batch
    queue limit) is sent in waves, each sized to the room left, the next as earlier
    batches end (see :mod:`nbbatch.quota`); a batch refused for that limit is never a
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
    _check_policy(fallback, deadline)
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
    models, when, when_fn = _cascade(model, escalate_when)
    engine = _engines.kind_of(data)  # a Dask or Spark frame: planned on its workers
    source = _stream.Source.of(data) if engine is None and frames.streamed(data) else None
    # A large table held in memory is planned in the background too (its first rows now).
    in_memory_rows = None if engine or source else _planning.memory_rows(data)
    head = (
        _engines.head(data)
        if engine
        else source.head()
        if source is not None
        else _memory_head(data)
        if in_memory_rows is not None
        else data
    )
    frame, is_series, template, impl, spec, local = _prepare(
        head, prompt, model=models[0], output=output,
        provider=provider, client=client, system=system, max_tokens=max_tokens,
        temperature=temperature, response_format=response_format, endpoint=endpoint,
        cache_system=cache_system, params=params,
    )  # fmt: skip
    _check_cascade_columns(data, frame, is_series, when, output, spec)
    # The first model's limit was checked with its parameters; a later stage's model
    # must take max_tokens too, or its stage would fail after the first one was paid.
    _check_output_limits(impl.name, spec, models[1:])
    _deadline.check(on_deadline, deadline, impl.name, models)
    pack = _pack.check(pack, spec)
    # plan: render, hash and deduplicate the rows (into a manifest file for files)
    ledger = _default_ledger()
    # The local emulator's address can change between its runs; its jobs are one place.
    salt = _salt(spec, impl.name, "local" if local else impl.base_url, pack)
    identity = _identity(output, prompt, models, when, pack)
    # Rows beyond the first model's context window are skipped, not paid for and refused.
    limit = _checks.ContextLimit.of(models[0], system, impl.name)
    checks = _plan_checks(
        impl, spec, models, max_cost, ledger if reuse else None, pack=pack, template=prompt
    )
    # A large table from files is planned in the background (see nbbatch.planning): its
    # first rows are checked now, the rest (with the checks below) before anything is sent.
    later = _later(engine, source, [salt, *identity, id_column, missing])
    rows: _Rows | None = None
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
        if engine:
            rows = _distributed(data, prompt, id_column, missing, salt, impl.name, spec, identity)
        elif source is None:
            rows = _in_memory(frame, template, id_column, missing, salt, identity, limit)
        else:
            rows = _streamed(
                source, template, id_column, missing, salt, identity, ledger.files, limit
            )
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
                record["id"], data, prompt, impl, spec, models, ledger,
                id_column=id_column, missing=missing, salt=salt, identity=identity,
                limit=limit, max_cost=max_cost, reuse=reuse, force=force, pack=pack,
            )  # fmt: skip
        job = _record_job(
            record, rows, source, impl, ledger, data, polling, when_fn, checks,
            reuse=reuse, max_cost=max_cost, planner=planner,
        )  # fmt: skip
    # start: send in the background (or wait here), and show the panel in a notebook
    return _start(job, wait=wait, progress=progress, display=display)


def _check_policy(fallback: Any, deadline: Any) -> None:
    """The failure policy's arguments :func:`nbbatch.checks.arguments` leaves, refused
    before anything else is looked at."""
    if fallback not in (None, "realtime"):
        raise InputError(f"fallback must be None or 'realtime', found {fallback!r}.")
    _health.deadline_at(deadline, 0.0)  # a wrong deadline is refused now


def _check_output_limits(name: str, spec: RequestSpec, models: list[str]) -> None:
    """Refuse a ``max_tokens`` above any of ``models``' published output limits (each
    stage of a cascade): the provider would refuse every row of that stage. Needs no
    client or key, so ``preview`` checks it as ``submit`` does."""
    cls = _providers.provider_class(name)
    for model in models:
        cls.check_output_limit(dataclasses.replace(spec, model=model))


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
    from . import escalate as _escalate

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
    rows: _Rows,
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
        _check_sendable(rows)
        impl.check_job_size(len(rows.send_positions))
        impl.encode(*rows.head(1), spec)
        _check_models(impl, models)
        if max_cost is not None:
            _check_budget(rows, spec, max_cost, ledger, models[1:], pack=pack, template=template,
                          provider=impl.name)  # fmt: skip
    except BaseException:
        rows.discard()
        raise


def _check_models(impl: Provider, models: list[str]) -> None:
    """Every model of the job, checked at the provider."""
    for name in models:
        impl.check_model(name)


def _later(engine: str | None, source: _stream.Source | None, parts: list[Any]) -> str | None:
    """The fingerprint of a table planned in the background (files large enough, see
    :mod:`nbbatch.planning`), or None: planned now."""
    if engine or source is None or not _planning.in_background(source):
        return None
    return _planning.fingerprint(source, parts)


def _same_job(
    existing: str,
    rows: _Rows | None,
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
    rows: _Rows | None,
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
) -> BatchJob:
    """Write the new job and its manifest to the ledger (rows answered in earlier jobs
    take their results when ``reuse``), or, for a table planned in the background, the
    job alone (its rows, reuse and budget come once planned); log its start."""
    record.update(hash_scheme=_plan.HASH_SCHEME)
    if rows is not None:
        ledger.add_job(record, rows.manifest(), reuse=reuse, source=rows.source)
        rows.recorded(ledger.folder(record["id"]))
    else:
        record["policy"].update(reuse=reuse, max_cost=max_cost)  # checked once planned
        described = source.describe() if source else {"kind": "memory", "rows": record["n_rows"]}
        ledger.add_planning_job(record, described)
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
    if _deadline.acts(job.policy):
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
    two jobs, waited for) and choose its threshold (see :mod:`nbbatch.calibrate`).
    With ``max_cost``, the pilot and the job together are checked against it first."""
    from . import calibrate

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
    from .agreement import sample_of

    small_model, large_model = models
    # The same seeded sampler as nb.pilot's (every row when there are no more than
    # pilot_rows), so a pilot and a calibrated cascade with one seed see the same rows.
    sample = sample_of(data, pilot_rows, pilot_seed)
    if max_cost is not None:
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
    threshold, agreement, escalated, reached = calibrate.pick_threshold(
        scores[measured], agree[measured], (status_small != "succeeded")[measured], float(target)
    )
    calibration = calibrate.Calibration(
        score=str(score), target=float(target), threshold=threshold,
        expected_agreement=agreement, expected_escalation=escalated,
        pilot_rows=int(measured.sum()), reached=reached,
        pilot_jobs=tuple(job.id for job in jobs),
        pilot_cost=sum(job.cost.batch or 0.0 for job in jobs),
    )  # fmt: skip
    log.info("nbbatch: %s", calibration.text())
    return calibration


def _cascade(model: Any, escalate_when: Any) -> tuple[list[str], str | None, Any]:
    """The models of a submit (one, or a cascade's), and its ``escalate_when`` as the
    ledger keeps it (a string) and as this session keeps it (a function)."""
    from . import escalate as _escalate

    if isinstance(model, list | tuple):
        models = list(model)
        if len(models) < 2 or not all(isinstance(m, str) and m for m in models):
            raise InputError(
                "a cascade is a list of two or more model names, cheapest first, e.g. "
                f"model=['gpt-4o-mini', 'gpt-4o']; found {model!r}."
            )
        if len(set(models)) != len(models):
            raise InputError(f"a cascade names each model once; found {models}.")
        owners = {_providers.by_model_name(m) for m in models}
        if len(owners) > 1:  # one job talks to one provider
            raise InputError(
                f"the models of a cascade must all be of one provider; found {models}."
            )
        when, fn = _escalate.escalate_when_of("failed" if escalate_when is None else escalate_when)
        return models, when, fn
    if escalate_when is not None:
        raise InputError(
            "escalate_when chooses the rows a cascade sends to its next model: give model= "
            "a list of models, e.g. model=['gpt-4o-mini', 'gpt-4o'], or leave it out."
        )
    return [model], None, None


def _show(job: BatchJob) -> None:
    """The live panel, polled in the background."""
    from . import panel

    job.start_polling()
    panel.show(job)


@dataclasses.dataclass
class _Rows:
    """A submit call's planned rows, whether held in memory (a :class:`plan.Plan`) or
    written batch by batch to a manifest file (:mod:`nbbatch.stream`): what ``submit``
    and ``preview`` need of them, the same for both."""

    n_rows: int
    hashes: np.ndarray  # request hash per row (0: not sent)
    send_positions: np.ndarray
    first_skip: str | None  # why the first row not sent is not
    head: Callable[[int], tuple[pa.Array, pa.Array]]  # custom_ids, prompts: first rows sent
    fingerprint: str
    # The prompts of the sent rows where a mask (over the sent rows) holds, in parts.
    prompts: Callable[[np.ndarray], Iterator[pa.Array]]
    manifest: Callable[[], pa.Table | Path]  # the manifest, or its finished file
    discard: Callable[[], None] = lambda: None  # drop what was written for a job not made
    source: dict[str, Any] | None = None  # where the rows came from (files), if recorded
    too_long: int = 0  # rows not sent: over the model's context window
    recorded: Callable[[Path], None] = lambda folder: None  # the job's folder, once recorded


def _in_memory(
    frame: pd.DataFrame,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    salt: str,
    identity: tuple[str, str],
    limit: _checks.ContextLimit | None = None,
) -> _Rows:
    """Plan a table held in memory."""
    rows = _plan.make_plan(frame, template, id_column=id_column, missing=missing, limit=limit)
    hashes = _plan.request_hashes(rows, salt)
    return _Rows(
        n_rows=rows.n_rows,
        hashes=hashes,
        send_positions=rows.send_positions,
        first_skip=rows.skip_reasons[0] if rows.skip_reasons else None,
        too_long=rows.too_long,
        head=lambda n: (
            rows.custom_ids.take(pa.array(rows.send_positions[:n], pa.int64())),
            rows.prompts.slice(0, n),
        ),
        fingerprint=_plan.fingerprint(rows, hashes, salt, *identity, id_column),
        prompts=lambda keep: iter([rows.prompts.filter(pa.array(keep))]),
        manifest=lambda: rows.manifest(hashes),
    )


def _memory_head(data: Any, n: int = 100) -> Any:
    """The first ``n`` rows of an in-memory table, of the same kind (for the checks
    submit makes before a table planned in the background is read)."""
    kind = frames.kind_of(data)
    if kind == frames.PANDAS:
        return data.iloc[:n]
    if kind == frames.ARROW:
        return data.slice(0, n)
    return data.head(n)  # polars


def _memory_planner(
    job_id: str,
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
    """What plans a large in-memory table in the background (see nbbatch.planning):
    every row planned and checked as :func:`submit` checks a table planned at once, the
    same job looked for by content, and the manifest written to a file beside the
    ledger. Any failure raises: the job then ends failed with it, nothing sent."""

    def plan(advance: Callable[[int], None]) -> Path:
        advance(0)
        frame, _, template = _parse(data, prompt)
        rows = _in_memory(frame, template, id_column, missing, salt, identity, limit)
        del frame
        _check_before_sending(
            rows, impl, spec, models, max_cost, ledger if reuse else None, pack=pack,
            template=prompt,
        )  # fmt: skip
        _longest_fits(rows, impl, spec)
        # Looked for and recorded at once: a twin planned meanwhile is found, not missed.
        existing = ledger.claim_fingerprint(job_id, rows.fingerprint, force=force)
        if existing is not None:
            raise InputError(
                f"this exact job was already submitted as {existing}, so this one sends "
                f"nothing: follow that one with nb.attach({existing!r}), or submit with "
                "force=True to send it anew.",
                job_id=job_id,
            )
        target = ledger.files / f".manifest-{job_id}-{secrets.token_hex(4)}.arrow"
        manifest = rows.manifest()
        assert isinstance(manifest, pa.Table)
        _rowstore.write_table(target, manifest)
        advance(rows.n_rows)
        return target

    return plan


def _longest_fits(rows: _Rows, impl: Provider, spec: RequestSpec) -> None:
    """Raise an InputError when the request of the longest prompt sent would be larger
    than a provider batch may be: found before anything is sent, not when the chunk
    holding it is built (see :func:`nbbatch.planning.longest_fits` for files)."""
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


def _streamed(
    source: _stream.Source,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    salt: str,
    identity: tuple[str, str],
    folder: Path,
    limit: _checks.ContextLimit | None = None,
) -> _Rows:
    """Plan a table read in record batches (Parquet files, an Arrow dataset) into a
    manifest file in ``folder`` (beside the ledger), never holding the whole table."""
    planned = _stream.plan_to_file(
        source, template, folder, id_column=id_column, missing=missing, salt=salt,
        fingerprint_of=[salt, *identity], limit=limit,
    )  # fmt: skip
    return _file_rows(planned, folder, source.describe())


def _distributed(
    data: Any,
    prompt: str,
    id_column: str | None,
    missing: str,
    salt: str,
    provider: str,
    spec: RequestSpec,
    identity: tuple[str, str],
    folder: Path | None = None,
) -> _Rows:
    """Plan a Dask or Spark frame on its workers (:mod:`nbbatch.engines`), which also
    encode the request lines that sending then uploads; the plan file goes to
    ``folder`` (by default beside the ledger)."""
    folder = folder or _default_ledger().files
    done = _engines.plan(
        data, prompt, id_column=id_column, missing=missing, salt=salt, provider=provider,
        spec=spec, folder=folder, fingerprint_of=[salt, *identity],
    )  # fmt: skip
    rows = _file_rows(done.plan, folder, done.source)
    return dataclasses.replace(rows, discard=done.discard, recorded=done.move_requests)


def _file_rows(planned: _stream.StreamPlan, folder: Path, source: dict[str, Any]) -> _Rows:
    """The rows of a plan written to a file (see :func:`_streamed`), its manifest
    finished into ``folder`` when the job is recorded."""

    def manifest() -> Path:
        target = folder / f".manifest-{planned.path.stem}.arrow"
        _stream.finish_manifest(planned, target)
        return target

    return _rows_of(planned, source, manifest)


def _rows_of(
    planned: _stream.StreamPlan,
    source: dict[str, Any] | None,
    manifest: Callable[[], Path] | None = None,
) -> _Rows:
    """A plan written to a manifest file, as submit and preview use it (``manifest``:
    what gives the finished file; by default the plan's file as it is)."""
    return _Rows(
        n_rows=planned.n_rows,
        hashes=planned.hashes,
        send_positions=planned.send_positions,
        first_skip=planned.first_skip,
        head=planned.head,
        fingerprint=planned.fingerprint,
        prompts=lambda keep: _stream.sent_prompts(planned, keep),
        manifest=manifest or (lambda: planned.path),
        discard=planned.discard,
        source=source,
        too_long=planned.too_long,
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


def _plan_checks(
    impl: Provider,
    spec: RequestSpec,
    models: list[str],
    max_cost: float | None,
    ledger: Ledger | None,
    *,
    pack: int | None = None,
    template: str = "",
) -> _planning.Checks:
    """The checks submit makes once a table planned in the background is planned:
    rows to send, the first request encodes, none is over the provider's size limit,
    and the budget (of ``pack`` rows a request, see :mod:`nbbatch.pack`)."""

    def checks(planned: _stream.StreamPlan, source: _stream.Source) -> None:
        rows = _rows_of(planned, source.describe())
        _check_sendable(rows)
        impl.check_job_size(len(rows.send_positions))
        impl.encode(*rows.head(1), spec)
        _planning.longest_fits(planned, lambda i, p: impl.encode(i, p, spec), impl.max_bytes)
        if max_cost is not None:
            _check_budget(rows, spec, max_cost, ledger, models[1:], pack=pack, template=template,
                          provider=impl.name)  # fmt: skip

    return checks


def _check_sendable(rows: _Rows) -> None:
    """Refuse a job in which no row would be sent: it would only record a ledger entry."""
    if len(rows.send_positions) == 0:
        raise InputError(
            f"none of the {rows.n_rows:,} rows would be sent: {rows.first_skip}. "
            "Nothing was recorded."
        )


def _parse(
    data: pd.DataFrame | pd.Series, prompt: str
) -> tuple[pd.DataFrame, bool, _prompt.Template]:
    """The data as a frame, whether it was a Series, and the checked template."""
    frame, is_series = _plan.as_frame(frames.to_pandas(data))
    template = _prompt.parse(prompt, frame.columns)
    _prompt.check_columns(
        template, [c for c in frame.columns if isinstance(c, str)], series=is_series
    )
    if not template.columns:
        raise InputError(
            f"the prompt {_prompt.shown(prompt)} names no column, so every row would send the "
            "same request. Put the row's value in it with a placeholder, e.g. "
            "'Classify: {review}' (a Series' values are {}); write literal braces as {{ }}."
        )
    return frame, is_series, template


def _prepare(
    data: pd.DataFrame | pd.Series,
    prompt: str,
    *,
    model: str,
    output: str,
    provider: str | None,
    client: Any,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    response_format: Any,
    endpoint: str | None,
    cache_system: bool,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, bool, _prompt.Template, Provider, RequestSpec, bool]:
    """Everything ``submit`` and ``try_now`` check before sending, and what they build:
    (frame, is_series, template, provider, request spec, runs on the local emulator)."""
    frame, is_series, template = _parse(data, prompt)
    if not isinstance(model, str) or not model:
        raise InputError("model must be a non-empty string, e.g. model='gpt-4o-mini'.")
    rf = None if response_format is None else _structured.response_format(response_format)
    _check_output_name(output, rf, frame, is_series)
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InputError(f"max_tokens must be a positive integer, found {max_tokens!r}.")
    name, local = _providers.infer(provider, client, model)
    impl = _providers.build(name, client, local=local)
    spec = RequestSpec(
        model=model,
        endpoint=endpoint or impl.default_endpoint,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        response_format=rf,
        cache_system=cache_system,
        params=params,
    )
    impl.validate(spec)
    return frame, is_series, template, impl, spec, local


def _check_output_name(
    output: str, response_format: dict[str, Any] | None, frame: pd.DataFrame, is_series: bool
) -> None:
    if not isinstance(output, str) or not output:
        raise InputError("output must be a non-empty column name, e.g. output='sentiment'.")
    if is_series:
        return
    clash = [n for n in output_columns(output, response_format) if n in frame.columns]
    if clash:
        raise InputError(
            f"output={output!r} would overwrite column(s) {clash} when merging; choose "
            "another output= name (or rename the schema's fields)."
        )


def _salt(spec: RequestSpec, provider: str, address: str, pack: int | None) -> str:
    """The request-hash salt: what every request of the job shares. A packed answer is
    its own kind (it was given beside other rows), reused only by jobs packed alike."""
    shared = spec.as_dict() if not pack else {**spec.as_dict(), "pack": pack}
    return _plan.spec_hash(shared, provider, address)


def _estimate(
    rows: _Rows,
    spec: RequestSpec,
    ledger: Ledger | None,
    *,
    pack: int | None = None,
    template: str = "",
    **kwargs: Any,
) -> _estimate_mod.Estimate:
    """The estimate of what will actually be sent: each distinct request once, and (with
    a ``ledger``) none whose identical request already succeeded in an earlier job; with
    ``pack``, in requests of ``pack`` rows, beside what the rows would cost unpacked."""
    sent = rows.hashes[rows.send_positions]
    _, first = np.unique(sent, return_index=True)
    keep = np.zeros(len(sent), dtype=bool)
    keep[first] = True
    duplicates = len(sent) - len(first)
    reused = 0
    if ledger is not None:
        done = ledger.succeeded_hashes(sent[first])
        reused = int(done.sum())
        keep[first[done]] = False
    parts = []
    if duplicates:
        parts.append(f"{duplicates:,} duplicate rows are sent once")
    if reused:
        parts.append(f"{reused:,} requests already answered in earlier jobs are reused")
    skipped = rows.n_rows - len(rows.send_positions)
    if skipped:
        over = f" ({rows.too_long:,} over {spec.model}'s context window)" if rows.too_long else ""
        parts.append(f"{skipped:,} {'row is' if skipped == 1 else 'rows are'} skipped{over}")
    note = ""
    if parts:
        note = f"from {rows.n_rows:,} rows: " + "; ".join(parts)
    estimates = [
        _estimate_mod.estimate(
            prompts,
            model=spec.model,
            system=spec.system,
            max_tokens=spec.max_tokens,
            endpoint=spec.endpoint,
            cache_system=spec.cache_system,
            **kwargs,
        )
        for prompts in rows.prompts(keep)
    ]
    unpacked = _estimate_mod.combine(estimates, note)
    if pack:
        return _packed_estimate(rows, spec, keep, unpacked, pack, template, **kwargs)
    return unpacked


def _packed_estimate(
    rows: _Rows,
    spec: RequestSpec,
    keep: np.ndarray,
    unpacked: _estimate_mod.Estimate,
    pack: int,
    template: str,
    **kwargs: Any,
) -> _estimate_mod.Estimate:
    """:func:`_estimate` for a job sent in packs of ``pack`` rows (its first try), with
    what the same requests cost ``unpacked`` in its note."""
    packed = _pack.packed_spec(spec, pack, checked=True)
    prefix, suffix = _pack.split_template(template)
    expected = kwargs.pop("expected_output_tokens", None)
    per_pack = None if expected is None else expected * pack
    estimates, n_rows = [], 0
    for prompts in rows.prompts(keep):
        n_rows += len(prompts)
        texts = _pack.pack_prompts(prompts.to_pylist(), pack, prefix, suffix)
        estimates.append(
            _estimate_mod.estimate(
                pa.array(texts, pa.large_string()),
                model=spec.model,
                system=spec.system,
                max_tokens=packed.max_tokens,
                endpoint=spec.endpoint,
                cache_system=spec.cache_system,
                expected_output_tokens=per_pack,
                **kwargs,
            )
        )
    if not n_rows:
        return unpacked
    was = unpacked.cost.batch
    told = f"packed {pack} rows a request: {n_rows:,} rows in "
    told += f"{sum(e.rows for e in estimates):,} requests"
    told += "" if was is None else f", vs {money(was)} batch unpacked"
    note = unpacked.note
    return _estimate_mod.combine(estimates, f"{note}; {told}" if note else told)


def _with_later(
    est: _estimate_mod.Estimate, rows: _Rows, spec: RequestSpec, later: list[str], **kwargs: Any
) -> _estimate_mod.Estimate:
    """``est`` (a cascade's first stage) with each later model's stage estimated as if
    every row went on to it: an upper bound (nothing is reused on another model)."""
    if not later:
        return est
    stages = tuple(
        _estimate(rows, dataclasses.replace(spec, model=m), None, **kwargs) for m in later
    )
    return dataclasses.replace(est, later=stages)


def _check_budget(
    rows: _Rows,
    spec: RequestSpec,
    max_cost: float,
    ledger: Ledger | None,
    later: list[str] | None = None,
    *,
    pack: int | None = None,
    template: str = "",
    provider: str | None = None,
) -> None:
    est = _estimate(rows, spec, ledger, pack=pack, template=template, provider=provider)
    est = _with_later(est, rows, spec, later or [], provider=provider)
    if est.rows == 0 and not est.later:
        return  # everything is reused: nothing will be paid for
    unknown = [e.model for e in (est, *est.later) if e.cost.batch is None]
    if unknown:
        raise InputError(
            f"max_cost={max_cost} cannot be checked: nbbatch has no price for model "
            f"{unknown[0]!r}. Set one with nb.pricing.set({unknown[0]!r}, input=..., "
            "output=...) or drop max_cost."
        )
    total = est.upper_bound
    assert total is not None
    if total > max_cost:
        what = (
            f"The estimated batch cost, {money(total)},"
            if not est.later
            else f"The cascade's batch cost, at most {money(total)} (the first stage in full, "
            "the later ones as if every row were escalated: an upper bound),"
        )
        raise InputError(
            f"{what} is above max_cost={money(max_cost)}; nothing was sent. {est.summary()} "
            "Lower max_tokens, send fewer rows, or raise max_cost."
        )


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


def attach(
    job_id: str,
    *,
    client: Any = None,
    data: pd.DataFrame | pd.Series | None = None,
    escalate_when: Any = None,
) -> BatchJob:
    """Rebuild a job from the ledger (also in a new kernel) and carry on with it.

    The job talks to the same provider endpoint as before, with ``client`` if given, else
    with a key meant for that endpoint only: the environment variable its key came from
    at submit, or, for a job whose key was given on ``client=``, the environment's key
    when it is that same key (a private emulator on a loopback address gets a placeholder
    key); otherwise :class:`ConfigError` asks for ``client=``. A ``provider="local"`` job
    talks to nbbatch's background emulator wherever it answers now (started if it does
    not run).
    ``data`` (optional) is the DataFrame the job was submitted with, so ``merge()`` works
    without arguments. A cascade goes on by itself where it was left (its next stage
    starts when the current one ends); one whose ``escalate_when`` was a function needs
    it again here, ``escalate_when=fn`` (a function is not kept in the ledger).
    """
    ledger = _default_ledger()
    record = ledger.job(job_id)
    if record is None:
        raise JobNotFoundError(
            f"No job {job_id!r} in the ledger ({ledger.path}): `nbbatch jobs` (or nb.jobs()) "
            "lists the jobs it holds; set NBBATCH_HOME if the job was submitted with another "
            "ledger."
        )
    name = record["provider"]
    background = record.get("backend") == "local"
    local = background or is_loopback(record.get("base_url"))
    if client is None:
        # Only a key meant for the recorded address (or the emulator's placeholder).
        client = _providers.rebuild_client(record, _ledger_home())
    impl = _providers.build(name, client)
    when_fn = None
    plan_checks = None
    if record["status"] == _planning.PLANNING:  # planned again here if its planner died
        policy = record["policy"]
        plan_checks = _plan_checks(
            impl, RequestSpec(**record["spec"]), (policy.get("cascade") or {}).get("models")
            or [record["model"]], policy.get("max_cost"),
            ledger if policy.get("reuse", True) else None, pack=policy.get("pack"),
            template=record["template"],
        )  # fmt: skip
    if escalate_when is not None:
        from . import escalate as _escalate

        if not record["policy"].get("cascade"):
            raise InputError(
                f"job {job_id} is not a cascade: escalate_when has nothing to do; use "
                "job.escalate(model=..., where=...) to send rows on another model."
            )
        _, when_fn = _escalate.escalate_when_of(escalate_when)
        if when_fn is None:
            raise InputError(
                "escalate_when given to nb.attach must be a function (a string one is "
                "kept in the ledger already)."
            )
    polling = LOCAL_POLLING if local else REMOTE_POLLING
    return BatchJob(
        record, impl, ledger, data=data, polling=polling, escalate_when=when_fn,
        plan_checks=plan_checks,
    )  # fmt: skip


def ledger_path() -> Path:
    """The ledger file this process uses: ``$NBBATCH_HOME/ledger.sqlite3``, else in the
    user data directory (``~/.local/share/nbbatch`` on Linux)."""
    return _ledger_home() / "ledger.sqlite3"


def jobs(ledger: Ledger | None = None) -> pd.DataFrame:
    """Every job in the ledger, newest first: id, created, provider, model, rows, status,
    the row counts per state, ``cost``: dollars paid so far at the batch price, from
    the token usage the results reported (NaN for a model with no known price), the
    ``deadline`` given to submit (NaT for none) and whether the job is ``overdue``
    (rows still pending after it). ``model`` names each stage's model in order for a
    job that escalates (``gpt-4o-mini -> gpt-4o``); ``status`` is ``failed`` for a
    cascade that could not choose the rows of its next stage."""

    ledger = ledger or _default_ledger()
    records = ledger.jobs()
    now = time.time()
    table = []
    for r in records:
        try:
            table.append(_listed(ledger, r, now))
        except Exception as exc:  # one broken record must not hide the others
            table.append(_unreadable(r, exc))
    columns = ["id", "created", "provider", "model", "rows", "status", *_states.SHOWN, "cost",
               "deadline", "overdue"]  # fmt: skip
    return pd.DataFrame(table, columns=columns)


#: The status ``nb.jobs()``, ``nbbatch jobs`` and the sidebar give a job whose ledger
#: record cannot be read (a damaged file, or a value an older version let through).
UNREADABLE = "unreadable"


def unreadable_text(job_id: str, exc: BaseException) -> str:
    """Why a job cannot be handled, and what to do, for the CLI and the sidebar."""
    return (
        f"the ledger's record of job {job_id} cannot be read ({type(exc).__name__}: {exc}); "
        f"the other jobs are not affected. Remove it with `nbbatch forget {job_id} --force`."
    )


def _unreadable(record: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A listing row for a job whose record is broken: what can be read of it."""
    log.warning("nbbatch: %s", unreadable_text(str(record.get("id")), exc))
    created = record.get("created")
    return {
        "id": record.get("id"),
        "created": pd.Timestamp(created, unit="s", tz="UTC")
        if isinstance(created, int | float)
        else pd.NaT,
        "provider": _shown_provider(record) if isinstance(record.get("provider"), str) else None,
        "model": record.get("model"),
        "rows": record.get("n_rows") if isinstance(record.get("n_rows"), int) else 0,
        "status": UNREADABLE,
        **dict.fromkeys(_states.SHOWN, 0),
        "cost": float("nan"),
        "deadline": pd.NaT,
        "overdue": False,
    }


def _listed(ledger: Ledger, r: dict[str, Any], now: float) -> dict[str, Any]:
    """One job's row of :func:`jobs`."""
    c = r["summary"].get("counts", {})
    paid = r["summary"].get("usage", {}).get("batch", (0, 0, 0, 0))
    pending = c.get("pending", 0)
    ended = r["status"] if r["status"] in ("cancelled", "failed") else "completed"
    status = "running" if pending else ended
    from . import escalate as _escalate
    from .snapshot import models_text as _models_text

    staged = "stages" in r["summary"] or "cascade" in orjson.loads(r.get("policy") or "{}")
    stages = ledger.stages(r["id"]) if staged else []
    return {
        "id": r["id"],
        "created": pd.Timestamp(r["created"], unit="s", tz="UTC"),
        "provider": _shown_provider(r),
        # A job that escalates: each stage's model in order (gpt-4o-mini -> gpt-4o).
        "model": _models_text(_escalate.job_models(r, stages)) if staged else r["model"],
        "rows": r["n_rows"],
        "status": status,
        **{s: c.get(s, 0) for s in _states.TERMINAL},
        "pending": pending,
        "cost": _paid(r["provider"], r["model"], tuple(paid[:3]))
        if "stages" not in r["summary"]
        else _paid_stages(ledger, r),
        "deadline": pd.Timestamp(r["deadline"], unit="s", tz="UTC")
        if r.get("deadline") is not None
        else pd.NaT,
        "overdue": _health.overdue_text(r.get("deadline"), pending, now) is not None,
    }


def _shown_provider(record: dict[str, Any]) -> str:
    """The provider as people should read it: ``local`` for a job run on nbbatch's
    emulator (its wire format is still the named provider's), so emulator runs are never
    taken for real spending."""
    return "local" if record.get("backend") == "local" else str(record["provider"])


def estimated_cost(ledger: Ledger, job_id: str) -> float | None:
    """A running job's batch cost as its panel shows it: what its finished rows paid plus
    an estimate for the rows still pending. Reads the ledger only (no provider call);
    None when the price or the job is unknown."""
    record = ledger.job(job_id)
    if record is None:
        return None
    # No client: the snapshot reads the ledger alone.
    return BatchJob(record, cast("Provider", None), ledger).snapshot().cost.batch


def _paid_stages(ledger: Ledger, record: dict[str, Any]) -> float:
    """Dollars paid at batch price by a job that escalates: each stage on its model."""
    models = {0: record["model"]}
    models.update({s["stage"]: s["spec"]["model"] for s in ledger.stages(record["id"])})
    return sum(
        _paid(
            record["provider"], models.get(int(stage), record["model"]), tuple(usage["batch"][:3])
        )
        for stage, usage in record["summary"]["stages"].items()
    )


def _paid(provider: str, model: str, usage: tuple[int, ...]) -> float:
    batch = pricing.cost(model, *usage[:3], estimated=False, provider=provider).batch
    return float("nan") if batch is None else batch


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
    _check_policy(None, deadline)
    _deadline.check(on_deadline, deadline)
    _checks.arguments(
        prompt=prompt, n=n, system=system, max_tokens=max_tokens, id_column=id_column,
        endpoint=endpoint, provider=provider, missing=missing, cache_system=cache_system,
        expected_output_tokens=expected_output_tokens,
    )  # fmt: skip
    # A calibrated cascade's threshold is not known before its pilot: any row may go on.
    auto = isinstance(escalate_when, str) and escalate_when == "auto"
    models, _, _ = _cascade(model, "failed" if auto else escalate_when)
    model = models[0]
    engine = _engines.kind_of(data)
    source = _stream.Source.of(data) if engine is None and frames.streamed(data) else None
    head = _engines.head(data) if engine else data if source is None else source.head()
    frame, _, template = _parse(head, prompt)
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
    _check_output_limits(name, spec, models)
    pack = _pack.check(pack, spec)
    address = _address(name, client, local)
    salt = _salt(spec, name, address or "", pack)
    ledger = _default_ledger() if address is not None and ledger_path().exists() else None
    limit = _checks.ContextLimit.of(model, system, name)
    with tempfile.TemporaryDirectory(prefix="nbbatch-preview-") as folder:
        if engine:
            rows = _distributed(
                data, prompt, id_column, missing, salt, name, spec, ("", ""), Path(folder)
            )
        elif source is None:
            rows = _in_memory(frame, template, id_column, missing, salt, ("", ""), limit)
        else:
            rows = _streamed(
                source, template, id_column, missing, salt, ("", ""), Path(folder), limit
            )
        est = _estimate(
            rows, spec, ledger, expected_output_tokens=expected_output_tokens, pack=pack,
            template=prompt, provider=name,
        )  # fmt: skip
        est = _with_later(
            est, rows, spec, models[1:], expected_output_tokens=expected_output_tokens,
            provider=name,
        )  # fmt: skip
        ids, prompts = rows.head(n * (pack or 1))
        rows.discard()
    if pack:  # the first packed requests, as they will be sent
        prefix, suffix = _pack.split_template(prompt)
        texts = _pack.pack_prompts(prompts.to_pylist(), pack, prefix, suffix)
        ids = pa.array([f"pack of {len(prompts[i : i + pack])} from row {ids[i]}"
                        for i in range(0, len(prompts), pack)], pa.string())  # fmt: skip
        prompts = pa.array(texts, pa.large_string())
    if address is None:
        est = dataclasses.replace(
            est,
            note=(est.note + "; " if est.note else "")
            + "answers reusable from earlier jobs not checked (no client or key)",
        )
    est = _with_waves(est, name, client, address, ledger, model, queue_limit, tier)
    if deadline is not None:
        note = _estimate_mod.deadline_note(est, _deadline_words(deadline), on_deadline)
        est = dataclasses.replace(est, deadline=note)
    # Tokens per shown row (the estimate above counts distinct requests, not rows).
    shown = _estimate_mod.estimate(prompts, model=model, system=system, endpoint=endpoint)
    table = _estimate_mod.preview_table(ids, prompts, shown.per_row_input, n)
    out = Preview(table, columns=["custom_id", "prompt", "input_tokens"])
    out.estimate = est
    return out


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
    from . import realtime
    from .collect import realtime_checked

    _checks.arguments(
        prompt=prompt, output=output, system=system, max_tokens=max_tokens,
        endpoint=endpoint, provider=provider, missing=missing,
    )  # fmt: skip
    frame, is_series, template, impl, spec, _ = _prepare(
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
    return frames.like(data, out, output_columns(output, spec.response_format))


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
    out = frame.copy()
    for name, column in _merge.result_columns(
        output, spec.response_format, status, text, error
    ).items():
        out[name] = column
    return out


def compare(before: BatchJob, after: BatchJob) -> Comparison:
    """Job ``before`` against job ``after`` over the same rows (a re-run, a new prompt
    version, another model): the changed rows, per-field churn and distribution shift,
    cost and time side by side, and what changed in lineage. The same as
    ``before.compare(after)``; see :meth:`BatchJob.compare`."""
    if not isinstance(before, BatchJob):
        raise InputError(
            f"compare() takes two jobs (nb.attach(job_id) gives one), found "
            f"{type(before).__name__}."
        )
    return before.compare(after)
