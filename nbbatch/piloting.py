"""``nb.pilot``: is the cheaper setting good enough? Try every setting on a sample first.

``nb.pilot(df, prompt, model=["gpt-4o-mini", "gpt-4o"], pack=[1, 20], n=200)`` draws a
seeded sample of ``n`` rows (``stratify="column"``: in proportion to that column's
values), runs it for every setting (the cartesian product of the models, pack sizes
and prompts given as lists) as small batch jobs through :func:`nbbatch.submit`
(``realtime=True``: through the real-time API, :func:`nbbatch.try_now`), and compares
each setting with a reference: the strongest setting (the most expensive model, then the
smallest pack, then the first prompt; ``reference=`` names another), or a column of
human labels (``truth="label"``). The figures are in :mod:`nbbatch._agreement`.

:meth:`Pilot.recommend` names the cheapest setting (by the projected cost of the whole
table) whose agreement with the reference has a 95% interval whose lower bound clears
the target. Agreement, not kappa, by default: "the same answer as the large model on at
least 95% of rows" is what a target means to most people and what a cascade keeps, and
kappa's scale moves with how unbalanced the labels are (``metric="kappa"`` uses it).
:meth:`Pilot.submit` then runs the whole table with that setting; the sample's rows are
not sent again (the ledger reuses the answer of an identical request that succeeded).

A cheaper setting whose interval straddles the target (its lower bound under it, its
upper bound above) is neither shown good enough nor shown not to be: the sample is too
small to say. The recommendation then falls on a dearer setting that is shown good
enough, and says so (:attr:`Pilot.inconclusive`, a warning, the headline);
:meth:`Pilot.extend` runs more rows for those settings (and the reference), keeping the
rows already paid for, and decides again. Looking twice at the data must not make a
wrong pick likelier, so each later look decides on a wider interval (see
:func:`look_level`): over every look, the chance of recommending a setting whose true
agreement is under the target stays under 3.5% (2.5% for a single look).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import _agreement, columns
from ._agreement import sample_of  # the sampler of a pilot and of a calibrated cascade
from ._errors import InputError

#: Keywords of submit that the pilot sets itself.
_OWN = ("wait", "display", "progress", "escalate_when")
#: An extension runs this many times the rows of the first sample (the whole sample is
#: then 4 times as large, and an interval about half as wide).
EXTEND_FACTOR = 3


def look_level(look: int) -> float:
    """The two-sided level of the intervals that decide at ``look`` (1: the first
    sample). Each look spends a share of the chance of recommending a setting that is
    in truth under the target (the lower bound's one-sided error): 2.5% at the first
    (a 95% interval), then 0.5%, 0.25%, ... halving (99%, 99.5%, ...), so that over any
    number of looks it stays under 3.5% (a union bound: Bonferroni's inequality over
    the looks)."""
    if look <= 1:
        return _agreement.LEVEL
    return 1.0 - 2 * 0.005 / 2 ** (look - 2)


@dataclass(frozen=True)
class Setting:
    """One combination of model, pack size and prompt that a pilot tries."""

    model: str
    pack: int | None
    prompt: str
    prompt_name: str | None = None  # "prompt 2" when several prompts are compared

    @property
    def name(self) -> str:
        """How tables and charts name it: ``gpt-4o-mini pack=20 prompt 2``."""
        parts = [self.model]
        if self.pack is not None:
            parts.append(f"pack={self.pack}")
        if self.prompt_name is not None:
            parts.append(self.prompt_name)
        return " ".join(parts)

    def __str__(self) -> str:
        return self.name


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _frame(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.Series):
        return data.to_frame()
    if isinstance(data, pd.DataFrame):
        return data
    to_pandas = getattr(data, "to_pandas", None)
    if callable(to_pandas):  # polars, pyarrow
        frame = to_pandas()
        if isinstance(frame, pd.DataFrame):
            return frame
    raise InputError(
        f"pilot takes a pandas DataFrame or Series (or a polars/Arrow table), not "
        f"{type(data).__name__}; sample a file yourself and pass the frame."
    )


def settings_of(model: Any, pack: Any, prompt: Any) -> list[Setting]:
    """Every combination of the models, pack sizes and prompts (each one or a list; a
    dict of prompts names them), in that order; InputError for anything else."""
    models = _listed(model)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise InputError(
            "pilot: model must be a model name or a list of them, e.g. "
            "model=['gpt-4o-mini', 'gpt-4o'] (a cascade is not a setting to compare)."
        )
    packs = _listed(pack)
    for p in packs:
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise InputError(f"pilot: pack sizes must be whole numbers from 1, found {p!r}.")
    packs = [None if p in (None, 1) else p for p in packs]
    prompts: list[tuple[str | None, Any]]
    if isinstance(prompt, Mapping):
        prompts = [(str(k), v) for k, v in prompt.items()]
    else:
        listed = _listed(prompt)
        names: list[str | None] = [f"prompt {i + 1}" for i in range(len(listed))]
        if len(listed) == 1:
            names = [None]
        prompts = list(zip(names, listed, strict=True))
    if not prompts or not all(isinstance(p, str) and p for _, p in prompts):
        raise InputError("pilot: prompt must be a template, a list of them or a dict of them.")
    out = [
        Setting(m, p, text, name)
        for m, p, (name, text) in itertools.product(models, dict.fromkeys(packs), prompts)
    ]
    return list(dict.fromkeys(out))


@dataclass
class _Run:
    setting: Setting
    out: pd.DataFrame
    job: Any  # BatchJob, None in real time
    cost: float | None  # dollars for the sample
    seconds: float
    max_requests: int | None
    tokens: int | None = None  # input and output tokens the sample used
    usage_cost: float | None = None  # those tokens at the batch price (reused rows too)

    def joined(self, more: _Run) -> _Run:
        """This run with ``more`` rows of the same setting after its own (an extension)."""

        def plus(a: Any, b: Any) -> Any:
            return None if a is None or b is None else a + b

        return _Run(
            self.setting, pd.concat([self.out, more.out]), more.job, plus(self.cost, more.cost),
            self.seconds + more.seconds, self.max_requests, plus(self.tokens, more.tokens),
            plus(self.usage_cost, more.usage_cost),
        )  # fmt: skip


class Pilot:
    """The outcome of :func:`pilot`: every setting's answers on the sample and how they
    agree with the reference. Shown in a notebook as a table, a chart and a confusion
    matrix (:mod:`nbbatch._pilotview`); ``str(pilot)`` is the same as text."""

    def __init__(
        self,
        data: pd.DataFrame,
        sample: pd.DataFrame,
        runs: list[_Run],
        reference: Setting | None,
        truth: dict[str, str],
        fields: dict[str, str],
        kwargs: dict[str, Any],
        realtime: bool,
        seed: int,
        target: float,
        queue_tokens: int | None = None,
        looks: dict[Setting, int] | None = None,
    ) -> None:
        self.data = data
        self.sample = sample
        #: How many looks each setting's figures come from (1: the first sample; an
        #: extension adds one for the settings it ran more rows of); its interval is at
        #: :func:`look_level` of it.
        self.looks = {r.setting: (looks or {}).get(r.setting, 1) for r in runs}
        #: Cheaper settings than the recommended one whose interval straddles the target
        #: (set by :meth:`recommend`): :meth:`extend` runs more rows of them.
        self.inconclusive: list[Setting] = []
        self._metric = "agreement"  # of the last recommendation
        self.settings = [r.setting for r in runs]
        self.reference = reference
        self.truth = truth
        self.realtime = realtime
        self.seed = seed
        self._runs = {r.setting: r for r in runs}
        self._kwargs = kwargs
        self.kinds = fields
        self.queue_tokens = queue_tokens
        self._figures = {r.setting: self._compare(r) for r in runs}
        self.table = self._table()
        self.target = target
        self.recommended = self.recommend(target)

    # ----------------------------------------------------------------- comparing

    def _reference_frame(self) -> pd.DataFrame:
        if self.truth:
            return pd.DataFrame({f: self.sample[c] for f, c in self.truth.items()})
        assert self.reference is not None
        return self._runs[self.reference].out

    def _compare(self, run: _Run) -> dict[str, Any]:
        ref = self._reference_frame()
        out = run.out
        if len(out) != len(ref):  # a setting not extended: the first sample's rows
            ref = ref.iloc[: len(out)]
        answered, agree = _agreement.row_agreement(ref, out, self.kinds)
        per_field = {
            f: _agreement.compare(ref[f], out[f], kind=k, seed=self.seed)
            for f, k in self.kinds.items()
        }
        return {
            "agreement": _agreement.share_interval(
                int(agree.sum()), int(answered.sum()), look_level(self.looks[run.setting])
            ),
            "rows": int(answered.sum()),
            "fields": per_field,
        }

    def _table(self) -> pd.DataFrame:
        rows = []
        total = len(self.data)
        for s, run in self._runs.items():
            fig = self._figures[s]
            kappa = next((f["kappa"] for f in fig["fields"].values() if f["kind"] == "label"), None)
            n = len(run.out)
            requests = math.ceil(total / (s.pack or 1))
            batches = math.ceil(requests / run.max_requests) if run.max_requests else None
            tokens = None if run.tokens is None else run.tokens * total // n
            # Batches run side by side unless a queue limit holds them back: then the
            # table goes in waves of at most queue_tokens tokens, each taking about as
            # long as the sample took.
            waves = 1
            if self.queue_tokens and tokens:
                waves = max(1, math.ceil(tokens / self.queue_tokens))
            rows.append(
                {
                    "setting": s.name,
                    "model": s.model,
                    "pack": s.pack or 1,
                    "prompt": s.prompt_name or "",
                    "reference": s == self.reference,
                    "rows": fig["rows"],
                    "agreement": fig["agreement"].value,
                    "agreement_low": fig["agreement"].low,
                    "agreement_high": fig["agreement"].high,
                    "level": look_level(self.looks[s]),
                    "kappa": np.nan if kappa is None else kappa.value,
                    "kappa_low": np.nan if kappa is None else kappa.low,
                    "kappa_high": np.nan if kappa is None else kappa.high,
                    "failed": int((run.out[self._status] != "succeeded").sum()),
                    "sample_cost": run.cost,
                    "projected_cost": None
                    if run.usage_cost is None
                    else run.usage_cost * total / n,
                    "projected_tokens": tokens,
                    "requests": requests,
                    "batches": batches,
                    "sample_seconds": round(run.seconds, 1),
                    "waves": waves,
                    "projected_seconds": round(waves * run.seconds, 1),
                }
            )
        return pd.DataFrame(rows).set_index("setting")

    @property
    def _status(self) -> str:
        return columns.name_of(columns.Role.STATUS, self._kwargs.get("output", "response"))

    def fields(self) -> pd.DataFrame:
        """One row per setting and output field: the figures of its kind (labels:
        accuracy and kappa with their intervals; numbers: mean absolute difference,
        Spearman's rho, share exactly equal; text: exact and normalised match)."""
        rows = []
        for s, fig in self._figures.items():
            for name, f in fig["fields"].items():
                row: dict[str, Any] = {"setting": s.name, "field": name, "kind": f["kind"]}
                row["rows"] = f["rows"]
                for key, value in f.items():
                    if isinstance(value, _agreement.Interval):
                        row[key], row[f"{key}_low"] = value.value, value.low
                        row[f"{key}_high"] = value.high
                    elif isinstance(value, float):
                        row[key] = value
                rows.append(row)
        return pd.DataFrame(rows).set_index(["setting", "field"])

    def confusion(self, setting: Setting | str | None = None, field: str | None = None) -> Any:
        """The confusion matrix of a label field (rows: the reference's labels, columns:
        the setting's), for ``setting`` (default: the recommended one, else the first
        that is not the reference) and ``field`` (default: the first label field).
        None when there is no label field."""
        s = self._setting(setting) if setting is not None else self.shown_setting()
        labels = [f for f, k in self.kinds.items() if k == "label"]
        name = field or (labels[0] if labels else None)
        if name is None:
            return None
        found = self._figures[s]["fields"][name]
        return found.get("confusion")

    def shown_setting(self) -> Setting:
        """The setting whose confusion matrix is shown: the recommended one, else the
        first that is not the reference."""
        if self.recommended is not None and self.recommended != self.reference:
            return self.recommended
        others = [s for s in self.settings if s != self.reference]
        return others[0] if others else self.settings[0]

    def _setting(self, setting: Setting | str) -> Setting:
        for s in self.settings:
            if s == setting or s.name == setting:
                return s
        raise InputError(
            f"no setting {setting!r} in this pilot; settings: {[s.name for s in self.settings]}."
        )

    def answers(self, setting: Setting | str) -> pd.DataFrame:
        """The sample with ``setting``'s answers merged in."""
        return self._runs[self._setting(setting)].out

    # ----------------------------------------------------------------- choosing

    def recommend(self, target: float = 0.95, *, metric: str = "agreement") -> Setting | None:
        """The cheapest setting (by projected cost of the whole table; an unknown price
        counts as the dearest) whose ``metric`` has a 95% interval whose lower bound is
        at least ``target``; the reference when no cheaper one does (None only against
        human labels, when no setting does). ``metric`` is ``"agreement"`` (the
        share of rows with the reference's answer, Wilson interval) or ``"kappa"`` (the
        first label field's Cohen's kappa, bootstrap interval). Also shown marked."""
        if metric not in ("agreement", "kappa"):
            raise InputError(f"metric must be 'agreement' or 'kappa', not {metric!r}.")
        if not 0 <= target <= 1:
            raise InputError(f"target is a share between 0 and 1, found {target!r}.")
        low = self.table[f"{metric}_low"]
        # The reference is the yardstick: it meets any target (its agreement with itself
        # is no evidence, and at a small n its lower bound would fall short of 1).
        ok = self.table[(low.fillna(-np.inf) >= target) | self.table["reference"]]
        self.target = target
        if ok.empty:
            self.recommended = None
            return None
        order = self._cheapest_first(ok, low)
        best = self._setting(str(order.index[0]))
        self.recommended = best
        self.inconclusive = self._straddling(best, metric, target)
        self._metric = metric
        if self.inconclusive:
            warnings.warn(self.inconclusive_text(), stacklevel=2)
        return best

    def _cheapest_first(self, rows: pd.DataFrame, low: pd.Series) -> pd.DataFrame:
        cost = rows["projected_cost"].astype(float).fillna(np.inf)
        # Ties (unknown prices): the model with the lower list price, then the surer one.
        price = rows["model"].map(_list_price)
        order = rows.assign(_cost=cost, _price=price, _low=-low[rows.index])
        return order.sort_values(["_cost", "_price", "_low"], kind="stable")

    def _straddling(self, best: Setting, metric: str, target: float) -> list[Setting]:
        """The settings cheaper than ``best`` whose interval holds the target: the
        sample cannot tell whether they are good enough."""
        t = self.table
        low, high = t[f"{metric}_low"], t[f"{metric}_high"]
        order = list(self._cheapest_first(t, low).index)
        cheaper = order[: order.index(best.name)]
        return [
            self._setting(str(name))
            for name in cheaper
            if not t.loc[name, "reference"] and low[name] < target <= high[name]
        ]

    def inconclusive_text(self) -> str:
        """Why the recommendation may be dearer than it need be, and what to do."""
        t = self.table
        parts = []
        for setting in self.inconclusive:
            name = setting.name
            metric = self._metric
            cols = [metric, f"{metric}_low", f"{metric}_high", "rows"]
            value, low, high, rows = t.loc[name, cols].to_numpy(dtype=float)
            parts.append(f"{name} ({value:.3f} [{low:.3f}, {high:.3f}] on {rows:.0f} rows)")
        chosen = self.recommended.name if self.recommended is not None else "none"
        return (
            f"pilot: inconclusive for {', '.join(parts)}: the interval holds the target "
            f"{self.target:g}, so the sample cannot say whether it is good enough; "
            f"recommending {chosen}, which is. pilot.extend() runs "
            f"{EXTEND_FACTOR}x more rows for it and the reference (the rows paid for are "
            "kept) and decides again."
        )

    def extend(self, n: int | None = None, *, settings: Sequence[str] | None = None) -> Pilot:
        """A sequential extension of the sample: ``n`` more rows (default
        :data:`EXTEND_FACTOR` times the first sample's), drawn with the pilot's seed from
        the rows not yet sampled (at random: a ``stratify=`` column is not kept), run
        for the :attr:`inconclusive` settings (or those named in ``settings``) and the
        reference; the answers already paid for are kept.
        Returns a new :class:`Pilot` whose extended settings are measured on the whole,
        larger sample at the next look's level (:func:`look_level`), the other settings
        as before, and whose recommendation is made again at the same target. (The
        wider interval is the agreement's; kappa's bootstrap interval stays at 95%, so
        ``recommend(metric="kappa")`` after an extension has no such bound.)"""
        chosen = (
            [self._setting(name) for name in settings]
            if settings is not None
            else list(self.inconclusive)
        )
        if not chosen:
            raise InputError(
                "pilot.extend(): no setting is inconclusive at the target "
                f"{self.target:g}; name the ones to extend: pilot.extend(settings=[...])."
            )
        if self.realtime:
            raise InputError(
                "pilot.extend() runs batch jobs; a real-time pilot keeps no answers to "
                "extend. Run nb.pilot(..., realtime=False) to extend it."
            )
        if not self.data.index.is_unique:
            raise InputError(
                "pilot.extend() draws rows not yet sampled by their index; the data's index "
                "has repeated labels. Give it a unique index (df.reset_index())."
            )
        extra = EXTEND_FACTOR * len(self.sample) if n is None else n
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 1:
            raise InputError(f"pilot.extend(): n is a number of rows, found {n!r}.")
        rest = self.data[~self.data.index.isin(self.sample.index)]
        if rest.empty:
            raise InputError("pilot.extend(): the sample holds every row of the data already.")
        behind = [s.name for s in chosen if len(self._runs[s].out) < len(self.sample)]
        if behind:
            raise InputError(
                f"pilot.extend(): {behind} were not run on the rows a later extension added; "
                "extend them from the pilot they were last measured in."
            )
        look = 1 + max(self.looks[s] for s in chosen)
        more = rest.sample(n=min(extra, len(rest)), random_state=self.seed + 1000 * look)
        if self.reference is not None and self.reference not in chosen:
            chosen.append(self.reference)
        new = {r.setting: r for r in _batch_runs(more, chosen, self._kwargs)}
        # An extended setting's rows: the sample's, then the new ones; another keeps
        # the rows it had (a prefix of the sample, which grows at its end).
        runs = [self._runs[s].joined(new[s]) if s in new else self._runs[s] for s in self.settings]
        looks = {s: (look if s in new else self.looks[s]) for s in self.settings}
        kwargs = {**self._kwargs}
        return Pilot(
            self.data, pd.concat([self.sample, more]), runs, self.reference, dict(self.truth),
            self.kinds, kwargs, self.realtime, self.seed, self.target, self.queue_tokens,
            looks=looks,
        )  # fmt: skip

    def submit(
        self, data: Any = None, setting: Setting | str | None = None, **overrides: Any
    ) -> Any:
        """Run the whole table (``data``, default: the frame the sample came from) with
        ``setting`` (default: the recommended one) and the pilot's other arguments
        (``overrides`` change them). The sample's rows are not paid for again: their
        requests already succeeded, so the ledger gives their answers back (not after a
        real-time pilot, whose answers are not kept)."""
        from . import _submit

        chosen = self._setting(setting) if setting is not None else self.recommended
        if chosen is None:
            raise InputError(
                f"no setting reached the target {self.target:g}; pass one: "
                f"pilot.submit(df, setting={self.settings[-1].name!r}), or lower the target "
                "with pilot.recommend(...)."
            )
        kwargs = {**self._kwargs, **overrides}
        kwargs.setdefault("pack", chosen.pack)
        return _submit.submit(
            self.data if data is None else data, chosen.prompt, model=chosen.model, **kwargs
        )

    # ----------------------------------------------------------------- display

    def __repr__(self) -> str:
        from . import _pilotview as pilotview

        return pilotview.plain_text(self)

    def _repr_html_(self) -> str:
        from . import _pilotview as pilotview

        return pilotview.static_html(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from . import _pilotview as pilotview

        return pilotview.mimebundle(self)


def pilot(
    data: Any,
    prompt: str | Sequence[str] | Mapping[str, str],
    *,
    model: str | Sequence[str],
    n: int = 200,
    seed: int = 0,
    stratify: str | None = None,
    truth: str | Mapping[str, str] | None = None,
    realtime: bool = False,
    pack: int | None | Sequence[int | None] = None,
    reference: str | None = None,
    target: float = 0.95,
    queue_tokens: int | None = None,
    **kwargs: Any,
) -> Pilot:
    """Try every setting on a seeded sample of ``data`` and compare them (see the module
    docstring); the same arguments as :func:`nbbatch.submit`, plus:

    - ``n``, ``seed``, ``stratify``: the sample (``n`` rows; ``stratify`` a column whose
      values keep their proportions);
    - lists to compare: ``model=[...]``, ``pack=[1, 20]``, ``prompt=[...]`` (or a dict
      naming each prompt): every combination is a setting;
    - ``truth``: a column of human labels to compare with (a dict ``{field: column}``
      for several fields), instead of the strongest setting; ``reference``: the name of
      the setting to compare with;
    - ``realtime=True``: the sample through the real-time API (answers in seconds, at
      real-time prices, not kept in the ledger);
    - ``target``: the agreement the displayed recommendation must clear;
    - ``queue_tokens``: the tokens the provider lets you have queued at once (your
      tier's batch queue limit for the model), to project the whole table's waves and
      time; without it every batch is taken to run at once (one wave).

    Waits for every setting's answers, then returns the :class:`Pilot`.
    """
    for key in _OWN:
        if key in kwargs:
            raise InputError(f"pilot runs its sample itself: {key}= is not taken.")
    frame = _frame(data)
    settings = settings_of(model, pack, prompt)
    if realtime and any(s.pack for s in settings):
        raise InputError("pilot: realtime=True sends one row per request; leave out pack=.")
    if queue_tokens is not None and (
        isinstance(queue_tokens, bool) or not isinstance(queue_tokens, int) or queue_tokens < 1
    ):
        raise InputError(f"pilot: queue_tokens is a number of tokens, found {queue_tokens!r}.")
    truths = _truth_columns(truth, frame)
    if reference is not None:
        _reference(settings, [], reference)  # a name that is no setting fails now
    sample = sample_of(frame, n, seed, stratify)
    _agreement.optional("scipy.stats")  # a missing extra fails before anything is sent
    _agreement.optional("sklearn.metrics")
    output = kwargs.get("output", "response")

    if realtime:
        runs = [_realtime(sample, s, kwargs) for s in settings]
    else:
        runs = _batch_runs(sample, settings, kwargs)

    fields = _fields(runs[0].out, sample, output)
    if truths:
        fields = _truth_fields(truths, fields, output)
        kinds = {f: _agreement.kind_of(sample[c], runs[0].out[f]) for f, c in truths.items()}
        ref = None
    else:
        ref = _reference(settings, runs, reference)
        kinds = {f: _agreement.kind_of(_runs_of(runs, ref).out[f], runs[0].out[f]) for f in fields}
    return Pilot(
        frame, sample, runs, ref, truths, kinds, kwargs, realtime, seed, target, queue_tokens
    )


def _batch_runs(
    sample: pd.DataFrame, settings: list[Setting], kwargs: dict[str, Any]
) -> list[_Run]:
    """Every setting on ``sample``, as small batch jobs run side by side and waited for."""
    from . import _submit, pricing
    from .providers import provider_class

    started = time.monotonic()
    jobs = [
        _submit.submit(
            sample,
            s.prompt,
            model=s.model,
            pack=s.pack,
            display=False,
            progress=False,
            **kwargs,
        )  # fmt: skip
        for s in settings
    ]

    def wait(job: Any) -> float:
        job.wait(progress=False)
        return time.monotonic() - started

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        seconds = list(pool.map(wait, jobs))
    runs = []
    for s, job, took in zip(settings, jobs, seconds, strict=True):
        max_requests = getattr(provider_class(job.provider), "max_requests", None)
        out = job.merge(sample)
        # Priced from the usage every row reports (a row reused from an earlier job
        # reports its usage but costs nothing now), so the projection does not
        # depend on what the ledger already held.
        usage = job.results()
        ins, outs, cached = (
            int(usage[c].fillna(0).sum())
            for c in ("input_tokens", "output_tokens", "cached_tokens")
        )
        priced = pricing.cost(s.model, ins, outs, cached, estimated=False, provider=job.provider)
        runs.append(_Run(s, out, job, job.cost.batch, took, max_requests, ins + outs, priced.batch))
    return runs


def _runs_of(runs: list[_Run], setting: Setting) -> _Run:
    return next(r for r in runs if r.setting == setting)


def _realtime(sample: pd.DataFrame, s: Setting, kwargs: dict[str, Any]) -> _Run:
    from . import _preview

    started = time.monotonic()
    out = _preview.try_now(sample, s.prompt, model=s.model, **kwargs)
    took = time.monotonic() - started
    # try_now keeps no token counts: the sample's real-time cost is preview's estimate.
    asked = {k: v for k, v in kwargs.items() if k not in ("output", "concurrency")}
    estimate = _preview.preview(sample, s.prompt, model=s.model, **asked).estimate
    tokens = estimate.input_tokens + estimate.output_tokens
    cost = estimate.cost.realtime
    return _Run(s, out, None, cost, took, None, tokens, cost)


def _fields(out: pd.DataFrame, sample: pd.DataFrame, output: str) -> list[str]:
    """The answer's columns in a merged frame: one per structured field, or ``output``."""
    own = {f"{output}_{k}" for k in ("status", "error", "raw", "model")}
    return [c for c in out.columns if c not in sample.columns and c not in own]


def _truth_columns(truth: Any, frame: pd.DataFrame) -> dict[str, str]:
    if truth is None:
        return {}
    mapping = {"": truth} if isinstance(truth, str) else dict(truth)
    for column in mapping.values():
        if column not in frame.columns:
            raise InputError(
                f"pilot: truth column {column!r} is not in the data; columns: "
                f"{list(frame.columns)}."
            )
    return mapping


def _truth_fields(truths: dict[str, str], fields: list[str], output: str) -> list[str]:
    """Which answer field each truth column is compared with ("" = the only field)."""
    if "" in truths:
        column = truths.pop("")
        if len(fields) != 1:
            raise InputError(
                f"pilot: the answer has several fields {fields}; say which one the truth "
                f"column is for: truth={{'{fields[0]}': {column!r}}}."
            )
        truths[fields[0]] = column
    for f in truths:
        if f not in fields:
            raise InputError(f"pilot: truth names field {f!r}; the answer's fields: {fields}.")
    return list(truths)


def _reference(settings: list[Setting], runs: list[_Run], name: str | None) -> Setting:
    """The named setting, else the strongest: the dearest model (by its price for a
    million input and output tokens), then the smallest pack, then the first prompt."""
    if name is not None:
        for s in settings:
            if s.name == name:
                return s
        raise InputError(
            f"pilot: reference={name!r} is not a setting; settings: {[s.name for s in settings]}."
        )

    def price(model: str) -> float:
        value = _list_price(model)
        return -1.0 if value == np.inf else value  # an unknown price is not the strongest

    order = sorted(enumerate(settings), key=lambda p: (-price(p[1].model), p[1].pack or 1, p[0]))
    return order[0][1]


def _list_price(model: str) -> float:
    """Batch dollars for a million input and a million output tokens (inf: unknown)."""
    from . import pricing

    value = pricing.cost(model, 1_000_000, 1_000_000, 0, estimated=True).batch
    return np.inf if value is None else float(value)
