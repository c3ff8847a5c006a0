"""What the entry points share (``submit``, ``preview``, ``attach``, ``try_now``): the
arguments parsed, the table read and planned (in memory, streamed from files, or on Dask
and Spark workers), and the cost estimated and held to ``max_cost``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from . import _checks, _engines, _health, _pack, _plan, _planning, _prompt, _stream, _structured
from . import _estimate as _estimate_mod
from . import _frames as frames
from . import providers as _providers
from ._errors import InputError
from ._ledger import Ledger
from ._ledger import default as _default_ledger
from .job import (
    output_columns,
)
from .pricing import money
from .providers.base import Provider, RequestSpec

if TYPE_CHECKING:
    pass

log = logging.getLogger("nbbatch")


def check_policy(fallback: Any, deadline: Any) -> None:
    """The failure policy's arguments :func:`nbbatch._checks.arguments` leaves, refused
    before anything else is looked at."""
    if fallback not in (None, "realtime"):
        raise InputError(f"fallback must be None or 'realtime', found {fallback!r}.")
    _health.deadline_at(deadline, 0.0)  # a wrong deadline is refused now


def check_output_limits(name: str, spec: RequestSpec, models: list[str]) -> None:
    """Refuse a ``max_tokens`` above any of ``models``' published output limits (each
    stage of a cascade): the provider would refuse every row of that stage. Needs no
    client or key, so ``preview`` checks it as ``submit`` does."""
    cls = _providers.provider_class(name)
    for model in models:
        cls.check_output_limit(dataclasses.replace(spec, model=model))


def cascade(model: Any, escalate_when: Any) -> tuple[list[str], str | None, Any]:
    """The models of a submit (one, or a cascade's), and its ``escalate_when`` as the
    ledger keeps it (a string) and as this session keeps it (a function)."""
    from . import _escalate

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


@dataclasses.dataclass
class Rows:
    """A submit call's planned rows, whether held in memory (a :class:`plan.Plan`) or
    written batch by batch to a manifest file (:mod:`nbbatch._stream`): what ``submit``
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


def in_memory(
    frame: pd.DataFrame,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    salt: str,
    identity: tuple[str, str],
    limit: _checks.ContextLimit | None = None,
) -> Rows:
    """Plan a table held in memory."""
    rows = _plan.make_plan(frame, template, id_column=id_column, missing=missing, limit=limit)
    hashes = _plan.request_hashes(rows, salt)
    return Rows(
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


def memory_head(data: Any, n: int = 100) -> Any:
    """The first ``n`` rows of an in-memory table, of the same kind (for the checks
    submit makes before a table planned in the background is read)."""
    kind = frames.kind_of(data)
    if kind == frames.PANDAS:
        return data.iloc[:n]
    if kind == frames.ARROW:
        return data.slice(0, n)
    return data.head(n)  # polars


def streamed(
    source: _stream.Source,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    salt: str,
    identity: tuple[str, str],
    folder: Path,
    limit: _checks.ContextLimit | None = None,
) -> Rows:
    """Plan a table read in record batches (Parquet files, an Arrow dataset) into a
    manifest file in ``folder`` (beside the ledger), never holding the whole table."""
    planned = _stream.plan_to_file(
        source, template, folder, id_column=id_column, missing=missing, salt=salt,
        fingerprint_of=[salt, *identity], limit=limit,
    )  # fmt: skip
    return file_rows(planned, folder, source.describe())


def distributed(
    data: Any,
    prompt: str,
    id_column: str | None,
    missing: str,
    salt: str,
    provider: str,
    spec: RequestSpec,
    identity: tuple[str, str],
    folder: Path | None = None,
) -> Rows:
    """Plan a Dask or Spark frame on its workers (:mod:`nbbatch._engines`), which also
    encode the request lines that sending then uploads; the plan file goes to
    ``folder`` (by default beside the ledger)."""
    folder = folder or _default_ledger().files
    done = _engines.plan(
        data, prompt, id_column=id_column, missing=missing, salt=salt, provider=provider,
        spec=spec, folder=folder, fingerprint_of=[salt, *identity],
    )  # fmt: skip
    rows = file_rows(done.plan, folder, done.source)
    return dataclasses.replace(rows, discard=done.discard, recorded=done.move_requests)


def plan_rows(
    data: Any,
    kind: tuple[str | None, _stream.Source | None],
    frame: pd.DataFrame,
    prompt: str,
    template: _prompt.Template,
    id_column: str | None,
    missing: str,
    salt: str,
    spec: RequestSpec,
    provider: str,
    identity: tuple[str, str],
    folder: Path,
    limit: _checks.ContextLimit | None,
) -> Rows:
    """Plan every row now, the way its kind is planned: a Dask or Spark frame on its
    workers (``kind``'s engine), files or a dataset a record batch at a time into
    ``folder`` (``kind``'s source), else ``frame`` in memory."""
    engine, source = kind
    if engine:
        return distributed(data, prompt, id_column, missing, salt, provider, spec, identity, folder)
    if source is None:
        return in_memory(frame, template, id_column, missing, salt, identity, limit)
    return streamed(source, template, id_column, missing, salt, identity, folder, limit)


def file_rows(planned: _stream.StreamPlan, folder: Path, source: dict[str, Any]) -> Rows:
    """The rows of a plan written to a file (see :func:`streamed`), its manifest
    finished into ``folder`` when the job is recorded."""

    def manifest() -> Path:
        target = folder / f".manifest-{planned.path.stem}.arrow"
        _stream.finish_manifest(planned, target)
        return target

    return rows_of(planned, source, manifest)


def rows_of(
    planned: _stream.StreamPlan,
    source: dict[str, Any] | None,
    manifest: Callable[[], Path] | None = None,
) -> Rows:
    """A plan written to a manifest file, as submit and preview use it (``manifest``:
    what gives the finished file; by default the plan's file as it is)."""
    return Rows(
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


def plan_checks(
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
    and the budget (of ``pack`` rows a request, see :mod:`nbbatch._pack`)."""

    def checks(planned: _stream.StreamPlan, source: _stream.Source) -> None:
        rows = rows_of(planned, source.describe())
        check_sendable(rows)
        impl.check_job_size(len(rows.send_positions))
        impl.encode(*rows.head(1), spec)
        _planning.longest_fits(planned, lambda i, p: impl.encode(i, p, spec), impl.max_bytes)
        if max_cost is not None:
            check_budget(rows, spec, max_cost, ledger, models[1:], pack=pack, template=template,
                         provider=impl.name)  # fmt: skip

    return checks


def check_sendable(rows: Rows) -> None:
    """Refuse a job in which no row would be sent: it would only record a ledger entry."""
    if len(rows.send_positions) == 0:
        raise InputError(
            f"none of the {rows.n_rows:,} rows would be sent: {rows.first_skip}. "
            "Nothing was recorded."
        )


def parse(
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


def prepare(
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
    frame, is_series, template = parse(data, prompt)
    if not isinstance(model, str) or not model:
        raise InputError("model must be a non-empty string, e.g. model='gpt-4o-mini'.")
    rf = None if response_format is None else _structured.response_format(response_format)
    check_output_name(output, rf, frame, is_series)
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


def check_output_name(
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


def request_salt(spec: RequestSpec, provider: str, address: str, pack: int | None) -> str:
    """The request-hash salt: what every request of the job shares. A packed answer is
    its own kind (it was given beside other rows), reused only by jobs packed alike."""
    shared = spec.as_dict() if not pack else {**spec.as_dict(), "pack": pack}
    return _plan.spec_hash(shared, provider, address)


def estimate(
    rows: Rows,
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
        return packed_estimate(rows, spec, keep, unpacked, pack, template, **kwargs)
    return unpacked


def packed_estimate(
    rows: Rows,
    spec: RequestSpec,
    keep: np.ndarray,
    unpacked: _estimate_mod.Estimate,
    pack: int,
    template: str,
    **kwargs: Any,
) -> _estimate_mod.Estimate:
    """:func:`estimate` for a job sent in packs of ``pack`` rows (its first try), with
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


def with_later(
    est: _estimate_mod.Estimate, rows: Rows, spec: RequestSpec, later: list[str], **kwargs: Any
) -> _estimate_mod.Estimate:
    """``est`` (a cascade's first stage) with each later model's stage estimated as if
    every row went on to it: an upper bound (nothing is reused on another model)."""
    if not later:
        return est
    stages = tuple(
        estimate(rows, dataclasses.replace(spec, model=m), None, **kwargs) for m in later
    )
    return dataclasses.replace(est, later=stages)


def check_budget(
    rows: Rows,
    spec: RequestSpec,
    max_cost: float,
    ledger: Ledger | None,
    later: list[str] | None = None,
    *,
    pack: int | None = None,
    template: str = "",
    provider: str | None = None,
) -> None:
    est = estimate(rows, spec, ledger, pack=pack, template=template, provider=provider)
    est = with_later(est, rows, spec, later or [], provider=provider)
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
            # The estimate is a table of lines: the advice gets a line of its own, not
            # the end of the table's last line.
            f"{what} is above max_cost={money(max_cost)}; nothing was sent. {est.summary()}\n"
            "Lower max_tokens, send fewer rows, or raise max_cost."
        )
