"""Batch queue quotas: a job bigger than what its account may have queued goes in waves.

Every provider caps what an account may have waiting in its batch queue: OpenAI the
input tokens queued per model (a batch over it is created, then fails validation with
``token_limit_exceeded``), Anthropic the requests not yet processed, all models together
(a create over it is refused with 429), Gemini the input tokens queued per model (429
``RESOURCE_EXHAUSTED``). What each provider says and publishes is read by its module in
:mod:`nbbatch.providers`; this module decides.

Before each batch the sender asks :func:`room` how much the queue can take: batches are
sized to fit, and when the queue is full the rest of the rows wait, unsent, for the next
refresh (the poller's, or ``wait()``'s), which sends the next wave as earlier batches
end. What every open batch holds of its queue is recorded with it in the ledger, so two
jobs of one ledger (two notebooks) share the room rather than both filling it.

The limit comes from ``queue_limit=`` (the user's figure), else from ``tier=`` (the
provider's published figure) and what refusals taught (kept in the ledger per account
and model, so the next job starts at the right size): the smaller of those. With none
known a job is sent as if there were no limit, and a refusal is never a row failure:
its rows go back to be sent in a later wave, and the refusal teaches the limit.

OpenAI's refusal states the limit. Gemini's states none (nor, as far as is published,
does Anthropic's), and a refusal is the only thing the queue says, so a job whose limit
is unknown there fills the queue in steps (:func:`fill_room`, :func:`_fill_unknown`)
sent one after the other, without waiting: a twelfth of the job, then each next wave
boundary (the job divided by 11, 10 ... 1; fewer steps for a job of few rows). On an
account with room to spare every step is accepted (and the most the queue took is kept,
so the next job sends up to it in one batch); on a full one the step over the limit is
the one refused create, and the limit kept is the most the queue held at once, counted
by the provider's own creation and end times of the batches once their statuses are
refreshed (so a batch that ended unseen never makes it high). Each step is a wave
boundary, so the waves that follow are as few as the real limit allows, and none is
refused: they never fill beyond what the queue was seen to hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from ._errors import InputError, ProviderError
from ._ledger import QuotaClaim
from .providers import credentials
from .providers.base import TIERS, Refusal, RequestSpec

if TYPE_CHECKING:
    from ._context import JobContext
    from .providers.base import BatchInfo, Provider

log = logging.getLogger("nbbatch")

#: Share of a token limit a wave fills, for a figure from ``tier=`` or ``queue_limit=``:
#: tokens are estimated from the request bytes (about four characters a token), never
#: counted as the provider counts them. A limit a refusal stated is filled whole (see
#: :attr:`Queue.cap`).
FILL = 0.97
#: A batch smaller than this share of the limit waits for more room, unless it is all
#: that is left to send: many small batches would crowd the queue.
MIN_SHARE = 1 / 8
#: After a refusal the ledger did not see coming (batches outside it hold the room),
#: seconds before the next try when nothing of the ledger's is queued to end first.
HOLD_OFF = 60.0
#: Characters per token for the estimate (the emulator counts the same way).
CHARS_PER_TOKEN = 4
#: With no limit known where a refusal states none (Gemini), the queue is filled in steps
#: at the job's wave boundaries: a FILL_STEPS-th of the job, then each larger share
#: (1/(n-1), 1/(n-2) ... the whole job). More steps find the limit of jobs many times
#: over it in one refusal; fewer send fewer batches to an account with room to spare.
FILL_STEPS = 12
#: A job within the smallest published queue fills in steps of at least this many rows
#: (so one of fewer than twice that goes at once): enough to find the limit of an
#: account below every published tier with one refusal, few enough batches for a small
#: job on an account with room.
FILL_MIN_ROWS = 1_000


class QuotaRefused(ProviderError):
    """The provider refused a create call because the account's queue is full."""

    def __init__(self, refusal: Refusal, provider: str | None = None) -> None:
        super().__init__(
            f"the batch queue is full: {refusal.message}", provider=provider, transient=True
        )
        self.refusal = refusal


@dataclass(frozen=True)
class Queue:
    """One account's batch queue for one model, as far as it is known."""

    key: str  # the account: provider, address, key fingerprint
    model: str  # the model, or "*" where every model shares the queue
    label: str  # what the views call it: the model, or "all models"
    unit: str  # "tokens" or "requests"
    limit: int | None  # what may be queued at once (None: not known)
    source: str | None  # "queue_limit=", "tier=", "provider" (a refusal), "probe"
    ceiling: int | None = None  # the least queued amount a refusal was seen at
    refused_at: float | None = None  # a refusal the ledger did not see coming
    wave_seconds: float | None = None  # how long a wave took, last seen
    accepted: int | None = None  # with no limit known: the most the queue took at once

    @property
    def probing(self) -> bool:
        """A refusal that stated no limit came with nothing of the ledger's queued: the
        limit is somewhere below what was refused, and is found by filling the queue
        in steps below that (see :func:`fill_room`) until the next refusal."""
        return (
            self.source == "probe" and self.ceiling is not None and self.limit == self.ceiling - 1
        )

    @property
    def piece(self) -> int | None:
        """The largest batch to send (in the queue's unit): what the queue may hold."""
        return self.cap

    @property
    def cap(self) -> int | None:
        """What the sender lets the queue hold: the limit, less a margin for token
        estimates where the figure was never checked against them."""
        if self.limit is None:
            return None
        # Requests are counted exactly; a probed limit is in the estimate's own terms.
        # A limit the provider's refusal stated (OpenAI's) is filled whole: should the
        # estimate run below the provider's count, the wave at it is refused in review
        # (nothing runs, nothing is paid, its input is deleted) and the limit is learned
        # again from what was asked (:func:`refused`), once for the account. A margin
        # would cost a wave (hours) to every job just over a whole number of limits,
        # and still miss an estimate off by more than it (chars/4 is, for code or other
        # languages than English). Measured on the emulator at a job of ten limits: 10
        # waves, not 11.
        if self.unit == "requests" or self.source in ("probe", "provider"):
            return self.limit
        return max(1, int(self.limit * FILL))


def account(ctx: JobContext) -> str:
    """The account a job's batches queue in: its provider, address and key (as a keyed
    fingerprint, never the key)."""
    provider = ctx.provider
    return account_of(ctx.provider_name, provider.base_url, provider.client, ctx.ledger.path.parent)


def account_of(name: str, base_url: str, client: Any, home: Any) -> str:
    """:func:`account` from its parts: provider ``name``, address, SDK client (its
    key, fingerprinted with the secret kept in the ledger folder ``home``)."""
    key = credentials.key_of(client)
    mark = credentials.fingerprint(key, home)[:16] if key else "-"
    return f"{name}|{base_url}|{mark}"


def known_limit(
    cls: type[Provider], model: str, queue_limit: Any, tier: Any, learned: dict[str, Any] | None
) -> int | None:
    """The limit a job would start with (see :func:`queue`), before it has a context."""
    given = user_limit(queue_limit, model)
    if given is not None:
        return given
    known = [int(learned["limit"])] if learned and _learned_limit(learned) else []
    if tier:
        published = cls.tier_limit(str(tier), model)
        if published is not None:
            known.append(published)
    return min(known) if known else None


def check_options(queue_limit: Any, tier: Any) -> None:
    """Refuse ``queue_limit=`` / ``tier=`` values nbbatch cannot use, before anything is
    sent."""
    if tier is not None and tier not in TIERS:
        raise InputError(
            f"tier={tier!r} is not a usage tier; pass one of {', '.join(map(repr, TIERS))} "
            "(the tier your provider account is on), or leave it out."
        )
    values = queue_limit.values() if isinstance(queue_limit, dict) else [queue_limit]
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"queue_limit={queue_limit!r}: give what the account may have queued as a "
                "positive whole number (input tokens for OpenAI and Gemini, requests for "
                "Anthropic), or a dict of them by model, e.g. {'gpt-4o-mini': 2_000_000}."
            )


def options(queue_limit: Any, tier: Any) -> dict[str, Any]:
    """``queue_limit=`` and ``tier=`` as the job's policy keeps them (only those given)."""
    kept: dict[str, Any] = {}
    if queue_limit is not None:
        kept["queue_limit"] = queue_limit
    if tier is not None:
        kept["tier"] = tier
    return kept


def user_limit(value: Any, model: str) -> int | None:
    """The ``queue_limit=`` figure for ``model`` (an int for every model, or a dict by
    model), or None."""
    if isinstance(value, dict):
        found = value.get(model, value.get(model.removeprefix("models/")))
        return int(found) if found is not None else None
    return int(value) if value is not None else None


def queue(ctx: JobContext, spec: RequestSpec) -> Queue:
    """The queue the batches of ``spec`` go to, with the limit known for it."""
    provider = ctx.provider
    key = account(ctx)
    model = spec.model if provider.quota_per_model else "*"
    label = spec.model if provider.quota_per_model else "all models"
    policy = ctx.policy
    learned = ctx.ledger.quota_limit(key, model) or {}
    given = user_limit(policy.get("queue_limit"), spec.model)
    base: dict[str, Any] = {
        "key": key,
        "model": model,
        "label": label,
        "unit": provider.quota_unit,
        "ceiling": learned.get("ceiling"),
        "refused_at": learned.get("refused_at"),
        "wave_seconds": learned.get("wave_seconds"),
        "accepted": None if _learned_limit(learned) else learned.get("limit"),
    }
    if given is not None:  # the user's figure: they know their account
        return Queue(limit=given, source="queue_limit=", **base)
    known: list[tuple[int, str]] = []
    tier = policy.get("tier")
    if tier:
        published = provider.tier_limit(str(tier), spec.model)
        if published is not None:
            known.append((published, "tier="))
    if _learned_limit(learned):
        known.append((int(learned["limit"]), str(learned.get("source") or "provider")))
    if not known:
        return Queue(limit=None, source=None, **base)
    limit, source = min(known)
    return Queue(limit=limit, source=source, **base)


def _learned_limit(learned: dict[str, Any] | None) -> bool:
    """Whether the ledger's record of a queue holds a limit: not only the most the
    queue was seen to take at once while no limit was known (source ``accepted``)."""
    return bool(learned and learned.get("limit") and learned.get("source") != "accepted")


def line_units(
    provider: Provider, spec: RequestSpec, jsonl: bytes, ends: np.ndarray, ids: Any = None
) -> np.ndarray:
    """What each request line takes of the queue: 1 where the queue counts requests;
    else its input tokens, estimated from the line's bytes less what every line carries
    besides the prompt (the model, parameters) and, given its custom ``ids`` (an Arrow
    string array), the line's own id. A line's estimate then depends on its prompt
    alone, as the provider's count does: what one wave was seen to hold means the same
    in the next, whatever rows and ids it carries."""
    if provider.quota_unit == "requests":
        return np.ones(len(ends), dtype=np.int64)
    sizes = np.diff(np.concatenate(([0], ends))).astype(np.int64)
    overhead = _overhead(provider, spec)
    if ids is not None and len(ids) == len(ends):
        import pyarrow.compute as pc

        # Ids are ASCII (nbbatch makes and checks them): as many bytes in the line.
        lengths = pc.binary_length(pc.cast(ids, pa.large_string())).to_numpy(zero_copy_only=False)
        sizes = sizes - (np.asarray(lengths, dtype=np.int64) - 1)
    return np.maximum(1, -(-(sizes - overhead) // CHARS_PER_TOKEN))


def _overhead(provider: Provider, spec: RequestSpec) -> int:
    """The bytes of a request line with an empty prompt and a one-character custom id:
    what is not prompt in every line. 0 when it cannot be encoded."""
    try:
        empty = provider.encode(pa.array(["0"]), pa.array([""]), spec)
    except Exception:  # noqa: BLE001 - an estimate: count every byte then
        return 0
    return len(empty)


def room(ctx: JobContext, q: Queue, rest: int, step: int = 1, sent: int = 0) -> int | None:
    """How much may be sent now to queue ``q`` (in its unit), with ``rest`` still to
    send in this pass and ``sent`` sent in it (``step``: a row's share): None when no
    limit is known and the job goes as usual, 0 to wait."""
    ledger = ctx.ledger
    in_use = ledger.quota_in_use(q.key, q.model)
    if q.cap is None:
        if not states_limit(ctx.provider):
            return _fill_unknown(ctx.provider, q, sent, rest, step)
        return _unknown_room(ctx, q, rest, in_use)
    if q.probing and q.ceiling is not None:
        # Refused with nothing of ours queued: fill at the boundaries of the refused
        # amount (the whole job, when that was it), never up to it.
        step_to = fill_room(sent, min(sent + rest, q.ceiling), step, None)
        return max(0, min(step_to, q.cap - sent))
    if q.refused_at is not None and ctx.clock() - q.refused_at < HOLD_OFF and not in_use:
        return 0  # the room is taken by batches this ledger does not know
    need = min(rest, max(1, int(q.cap * MIN_SHARE)))
    if q.cap - in_use < need and _release_ended(ctx, q):
        in_use = ledger.quota_in_use(q.key, q.model)
    free = q.cap - in_use
    if free < need:
        return 0
    return max(0, free)


def states_limit(provider: Provider) -> bool:
    """Whether the provider's refusal for its queue states the limit (OpenAI's does,
    Gemini's does not: see ``quota_limit_stated`` on the provider class)."""
    return bool(getattr(provider, "quota_limit_stated", True))


def _fill_unknown(provider: Provider, q: Queue, sent: int, rest: int, step: int) -> int | None:
    """With no limit known where a refusal states none, the queue is filled in steps
    (see :func:`fill_room`), so that an account below its limit meets one refused
    create, not two (a job sent at once and refused whole teaches only that the limit
    is below the job, and the fill that follows meets a second refusal). A job over the
    smallest queue the provider publishes for the model (its lowest usage tier) fills
    in FILL_STEPS steps. A smaller one goes at once where every account queues at least
    that (Anthropic: no account below its tier 1 is published); where accounts below it
    exist (Gemini's
    free tier: ``quota_below_tiers`` on the provider class), and for a model with no
    published figure, it fills in as many steps as give each FILL_MIN_ROWS rows, at
    most FILL_STEPS: a job of fewer than twice that goes at once (a handful of rows is
    not cut into a dozen batches).
    The steps are sent one after the other without waiting, so an account with room is
    not slowed; what it took is kept, and the next job goes at once up to it."""
    floor = provider.tier_limit(TIERS[0], q.label)
    top = sent + rest
    if floor is not None and top > floor:
        return fill_room(sent, top, step, q.accepted)
    if floor is not None and not getattr(provider, "quota_below_tiers", False):
        return None  # every account queues at least the lowest tier's figure
    steps = min(FILL_STEPS, top // (max(1, step) * FILL_MIN_ROWS))
    if steps < 2:
        return None
    return fill_room(sent, top, step, q.accepted, steps)


def fill_room(sent: int, top: int, step: int, accepted: int | None, steps: int = FILL_STEPS) -> int:
    """The next step while a queue of unknown limit is filled towards ``top`` (what
    this pass ``sent`` and has left to send): up to the least of the job's wave
    boundaries (``top`` divided by ``steps``, then by one less ... 1) above ``sent`` by
    at least a row's ``step``, or at once up to the largest boundary the queue was seen to take
    (``accepted``, by an earlier job's fill). Sent one after the other without
    waiting, so a job with room to spare is never slowed (and goes in at most
    FILL_STEPS batches); a full queue refuses the first step over its limit, and what
    it held then is the limit kept."""
    step = max(1, step)
    bounds = sorted({max(1, top // n) for n in range(1, max(1, steps) + 1)})
    above = [b for b in bounds if b - sent >= step] or [top]
    target = above[0]
    if accepted:
        held = [b for b in above if b <= accepted]
        target = held[-1] if held else target
    return max(0, target - sent)


def _release_ended(ctx: JobContext, q: Queue) -> bool:
    """Ask the provider about the open batches in the queue, before waiting: those that
    ended are recorded so (their job still collects them), so the next wave goes before
    the last one's results are downloaded, and a job nobody polls (its kernel gone)
    never holds the room for ever. True if any had ended."""
    released = False
    for batch_id, _job_id in ctx.ledger.quota_batches(q.key, q.model):
        try:
            info = ctx.provider.retrieve(batch_id)
        except ProviderError:
            continue  # asked again next time
        if info.ended:
            ctx.ledger.update_batch(batch_id, info.status, True, info.failure, info.raw, info.done)
            released = True
    return released


def _held(ctx: JobContext, q: Queue) -> int:
    """The most queue ``q`` was seen to hold at once: with the open batches asked about
    first (a batch that ended since the last poll holds nothing now), the largest total
    queued when one of the job's batches was accepted, by the provider's own times
    (:func:`_most_queued`); where those are missing, what still runs (all of it was
    queued at once, when the last of it was accepted)."""
    if ctx.ledger.quota_in_use(q.key, q.model):
        _release_ended(ctx, q)
    running = ctx.ledger.quota_in_use(q.key, q.model)
    most = _most_queued(ctx, q)
    return max(running, most or 0)


def _most_queued(ctx: JobContext, q: Queue) -> int | None:
    """The largest total of queue ``q`` the provider accepted at once, as far as the
    ledger knows: for each of the job's batches, what was queued when it was created
    (itself and the batches created before it that had not ended by then, by the
    provider's creation and end times); None when a batch lacks those times."""
    rows = ctx.ledger.query(
        "SELECT rowid, quota_units, ended, raw FROM batches WHERE quota_key = ? AND "
        "quota_model = ? AND quota_units > 0 AND batch_id NOT LIKE 'intent-%' AND "
        "(ended = 0 OR job_id = ?) ORDER BY rowid",
        (q.key, q.model, ctx.id),
    )
    spans: list[tuple[int, float, float]] = []  # units, created, ended (inf: running)
    for _rowid, units, ended, raw in rows:
        obj = orjson.loads(raw or "{}")
        start = _time_of(obj, ("create_time", "created_at", "createTime"))
        end = _time_of(obj, ("end_time", "ended_at", "endTime")) if ended else math.inf
        if start is None or end is None:
            return None
        spans.append((int(units), start, end))
    most = 0
    for k, (_units, created, _end) in enumerate(spans):
        # Created before it (in the ledger's order: one sender creates in turn) and not
        # ended by then; an end at the same instant counts as ended (the safe side).
        total = sum(u for u, _c, e in spans[: k + 1] if e > created)
        most = max(most, total)
    return most


def _time_of(obj: dict[str, Any], names: tuple[str, ...]) -> float | None:
    """The first of the timestamps ``names`` in a provider's batch object, in seconds."""
    for name in names:
        value = obj.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


def _unknown_room(ctx: JobContext, q: Queue, rest: int, in_use: int) -> int | None:
    """With no limit known everything goes at once, except where a refusal comes late
    (OpenAI, in validation) and the job is over what the lowest usage tier may queue:
    then the next batch waits until the first has passed review, so an account over
    its limit sees one refused batch rather than all of them."""
    provider = ctx.provider
    if not provider.refuses_late:
        return None
    floor = provider.tier_limit(TIERS[0], q.label) or 0
    if in_use + rest <= floor:
        return None
    reviewing = [
        s
        for s in ctx.ledger.quota_open(q.key, q.model)
        if s == "sending" or provider.under_review(s)
    ]
    return 0 if reviewing else None


def filled(ctx: JobContext, q: Queue) -> None:
    """A pass that filled a queue of unknown limit (see :func:`fill_room`) sent every
    row without a refusal: keep the most the queue took at once, so the next job sends
    up to it in one batch."""
    held = _held(ctx, q)
    if held > (q.accepted or 0):
        ctx.ledger.set_quota_limit(q.key, q.model, unit=q.unit, limit=held, source="accepted")


def refused(ctx: JobContext, q: Queue, refusal: Refusal, units: int, in_use: int) -> None:
    """Learn from a refusal of a batch of ``units`` while ``in_use`` (others) was
    queued: the stated limit, else the most the queue was seen to hold (the batches
    still running, asked about first; with none, the queue is filled in steps below
    the refused amount until the next refusal), in the ledger for every later job of
    the account."""
    now = ctx.clock()
    asked = in_use + units
    # A limit we were told (or were sure of) and still refused: batches this ledger
    # does not know hold the room, so the next try waits a while.
    seen = q.cap is not None and asked <= q.cap and q.source != "probe"
    values: dict[str, Any] = {"unit": q.unit, "refused_at": now if seen else None}
    if refusal.limit is not None:
        limit = refusal.limit
        if asked <= limit:
            # Our estimate of what was queued runs below the provider's count: keep the
            # limit in our estimate's terms, with room to spare.
            limit = max(1, int(asked * 0.9))
        values.update(limit=limit, source="provider", ceiling=None)
    else:
        # No limit stated: what was refused is above it, what the queue held below.
        # What it held counts only batches still running once asked (a batch that
        # ended unseen held nothing when the refusal came): all of those were queued
        # at once, when the last was accepted, so the limit is at least that much.
        held = _held(ctx, q)
        ceiling = min(asked, q.ceiling) if q.ceiling else asked
        known = q.limit if q.source == "probe" and not q.probing else None
        limit = max(held, q.accepted or 0, known or 0)
        if limit >= ceiling:
            limit = held  # others outside the ledger hold part of the queue
        limit = limit or ceiling - 1  # nothing held: probe below the refused amount
        values.update(limit=max(1, limit), source="probe", ceiling=ceiling)
        if held:
            _first_wave(ctx, q, max(1, limit), now)
    ctx.ledger.set_quota_limit(q.key, q.model, **values)
    waves = ctx.ledger.waves(ctx.id)
    waves["refusals"] = int(waves.get("refusals", 0)) + 1
    ctx.ledger.set_waves(ctx.id, waves)
    ctx.warn_once(
        f"the {q.label} batch queue is full ({refusal.message}); the rows wait for the next "
        f"wave, within {_amount(limit)} queued {q.unit}",
        "event",
    )


def _first_wave(ctx: JobContext, q: Queue, limit: int, now: float) -> None:
    """The queue filled before its limit was known: what it holds is the job's first
    wave, for the views (and ``limit`` what the next waves fill)."""
    waves = ctx.ledger.waves(ctx.id)
    if waves.get("starts"):
        return
    waves.update(
        starts=[now], in_wave=limit, model=q.label, unit=q.unit, limit=limit, source="probe",
        key=q.key, queue=q.model, cap=limit,
    )  # fmt: skip
    ctx.ledger.set_waves(ctx.id, waves)


def late_refusal(ctx: JobContext, batch: dict[str, Any], info: BatchInfo, refusal: Refusal) -> None:
    """A batch created, then refused while reviewed (OpenAI's validation): it ends
    ``refused``, its rows go back to be sent in a later wave, its input is deleted
    where the provider allows, and the limit is learned."""
    ctx.ledger.refuse_batch(info.batch_id, refusal.message, info.raw)
    ctx.infos.pop(info.batch_id, None)
    ctx.provider.discard_refused(info)
    key, model = batch.get("quota_key"), batch.get("quota_model")
    if not key or not model:
        return
    spec = ctx.stage_spec(int(batch.get("stage") or 0))
    q = queue(ctx, spec)
    if q.key != key or q.model != model:
        return  # the job's address or key changed since
    refused(
        ctx, q, refusal, int(batch.get("quota_units") or 0), ctx.ledger.quota_in_use(key, model)
    )
    log.info("job %s: batch %s refused for the queue quota", ctx.id, info.batch_id)


# -- waves, for the views --------------------------------------------------------------------
def batch_sent(ctx: JobContext, q: Queue, units: int, per_unit: float, unsent_rows: int) -> None:
    """A batch of ``units`` was accepted into a limited queue: record it in the job's
    waves (one that would not fit the last wave with it starts a new one), with what
    is left to send
    (for the count of waves) and how long the last wave took."""
    now = ctx.clock()
    waves = ctx.ledger.waves(ctx.id)
    starts = list(waves.get("starts", []))
    in_wave = int(waves.get("in_wave", 0))  # sent since the wave started
    if not starts or in_wave + units > (q.cap or 1):  # it would not fit the last wave
        starts.append(now)
        in_wave = 0
        if len(starts) >= 2:
            ctx.ledger.set_quota_limit(q.key, q.model, wave_seconds=starts[-1] - starts[-2])
    waves.update(
        starts=starts,
        in_wave=in_wave + units,
        model=q.label,
        unit=q.unit,
        limit=q.limit,
        source=q.source,
        key=q.key,
        queue=q.model,
        left=int(unsent_rows * per_unit),
        cap=q.cap,
    )
    ctx.ledger.set_waves(ctx.id, waves)


def waves_left(ctx: JobContext, per_unit: float, unsent_rows: int) -> None:
    """Record what is left to send after a pass (for the count of waves)."""
    waves = ctx.ledger.waves(ctx.id)
    if waves:
        waves["left"] = int(unsent_rows * per_unit)
        ctx.ledger.set_waves(ctx.id, waves)


@dataclass(frozen=True)
class WaveView:
    """Where a job sent in waves is: what every view shows of it."""

    wave: int  # waves started so far
    waves: int  # waves the job needs, as far as can be told
    in_use: int  # what the account's queue holds now (every job of the ledger)
    limit: int | None
    unit: str
    model: str
    waiting: bool  # rows wait, unsent, for room in the queue
    eta: float | None  # seconds until the last wave ends, from the waves so far
    refusals: int = 0

    def line(self) -> str:
        """E.g. ``waiting for quota: wave 3 of 12 - 1.9M of 2M queued tokens in use
        for gpt-4o-mini, about 45m to go``."""
        from ._health import format_seconds

        head = "waiting for quota" if self.waiting else "sent in waves"
        of = (
            f"{_amount(self.in_use)} of {_amount(self.limit)}"
            if self.limit
            else _amount(self.in_use)
        )
        text = f"{head}: wave {self.wave} of {self.waves} — {of} queued {self.unit} in use"
        text += f" for {self.model}"
        if self.eta is not None:
            text += f", about {format_seconds(self.eta)} to go"
        return text


def view(ledger: Any, job_id: str, waiting: bool, now: float) -> WaveView | None:
    """The wave view of a job from its ledger (None when it was never sent in waves)."""
    waves = ledger.waves(job_id)
    starts = waves.get("starts") or []
    if not starts:
        return None
    cap = waves.get("cap") or waves.get("limit")
    left = int(waves.get("left") or 0)
    more = math.ceil(left / cap) if cap and left else 0
    total = len(starts) + more
    in_use = ledger.quota_in_use(waves.get("key", ""), waves.get("queue", ""))
    learned = ledger.quota_limit(waves.get("key", ""), waves.get("queue", "")) or {}
    per_wave = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) >= 2 else None
    per_wave = per_wave or learned.get("wave_seconds")
    eta = None
    if per_wave:
        # The waves still to start, and the one running until it ends.
        eta = max(0.0, starts[-1] + per_wave * (more + 1) - now)
    return WaveView(
        wave=len(starts),
        waves=total,
        in_use=in_use,
        limit=waves.get("limit"),
        unit=str(waves.get("unit") or "tokens"),
        model=str(waves.get("model") or ""),
        waiting=waiting and more > 0,
        eta=eta,
        refusals=int(waves.get("refusals") or 0),
    )


def status_line(ledger: Any, job_id: str, now: float) -> str | None:
    """The wave line of a running job for views that read the ledger rather than a
    snapshot (``nbbatch jobs``, the JupyterLab sidebar); None when it was never sent
    in waves or has nothing left to send."""
    found = view(ledger, job_id, True, now)
    if found is None or not ledger.waves(job_id).get("left"):
        return None
    return found.line()


def plan(total_units: int, limit: int | None, unit: str, wave_seconds: float | None) -> str | None:
    """What the estimate says of waves before sending: e.g. ``3 waves of at most 2M
    queued tokens (about 2h 10m at the last wave's pace)``; None when one wave holds
    the job or no limit is known."""
    if not limit:
        return None
    cap = max(1, int(limit * FILL)) if unit == "tokens" else limit
    waves = math.ceil(total_units / cap) if total_units else 1
    if waves <= 1:
        return None
    from ._health import format_seconds

    text = f"{waves} waves of at most {_amount(limit)} queued {unit}"
    if wave_seconds:
        text += f" (about {format_seconds(waves * wave_seconds)} at the last wave's pace)"
    else:
        # Anthropic: "most batches finishing in less than 1 hour"
        # (https://platform.claude.com/docs/build-with-claude/batch-processing); every
        # provider's completion window is 24 h.
        text += " (each wave lasts as long as its batches: often under an hour, at most 24 h)"
    return text


def _amount(n: int | None) -> str:
    """``1.9M``, ``150k``, ``900``: an amount at a glance."""
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}".removesuffix(".0") + "M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def claim(q: Queue, units: int) -> QuotaClaim:
    """The ledger claim of a batch of ``units`` to queue ``q``."""
    return QuotaClaim(q.key, q.model, int(units), q.cap)
