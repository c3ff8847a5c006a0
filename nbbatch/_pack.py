"""Row packing: up to N rows in one request, each row's answer mapped back to its row.

With ``nb.submit(..., pack=N)`` the first try of a job's rows goes out as *packs*: one
request per N leaders (duplicates are still sent once), whose custom_id names the pack
by the manifest position of its first row (``pack-<position>``). The shared part is
sent once per pack: the system prompt, and the template's literal text before its
first placeholder and after its last one, shown with :data:`ITEM` where the per-row
part goes. The per-row part (the rendered prompt without that prefix and suffix) is an
*item*, and the items go as a JSON list (so no row's text can pass for another item or
for the instructions), each with a short random id: an HMAC of the pack and the item's
place under a secret kept with the job (``policy["pack_secret"]``), so no row's text can
name another row's id, yet collecting finds the ids again. The reply is asked for
through the provider's structured outputs:
``{"answers": [{"id": ..., "check": ..., "answer": ...}]}``, the answer being text or,
with ``response_format``, one object of the user's schema, and ``check`` the item's
first words (:func:`first_words`), which nbbatch compares with the item the id names: an
answer put under another item's id (swapped answers) fails the check, and its row goes
again on its own. (Jobs packed before ids were random keep "1", "2", ... and no check.)

Packing puts rows side by side in one request, so one row's text can still sway the
model's answers to the others (it sees them all); the ids and checks catch answers
that land on the wrong row, not a model persuaded to answer another item differently.
Rows from untrusted sources that must not influence each other are not to be packed.

Which rows a pack holds is not stored: a batch's rows are its intent's positions, in
order, cut into runs of N, so collecting recomputes the packs exactly. Each row's
answer becomes its own result line; a row the answer leaves out, repeats or gets wrong
fails retryably and goes again *unpacked* (retries, ``resubmit_failed`` and escalation
stages are never packed), so a row the model cannot answer inside a pack is answered
on its own. A pack's tokens are shared out over the rows it answered (exactly: the sums
are the pack's), so ``job.cost`` is what was billed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from . import _prompt
from ._errors import InputError
from .providers.base import ROW_RESULT_SCHEMA, RequestSpec, is_embeddings

if TYPE_CHECKING:
    from ._context import JobContext

#: Stands for the item in the instruction shown once per pack.
ITEM = "<ITEM>"
#: The line that starts a pack's own part (after the instruction, if any).
MARK = "=== nbbatch pack ===\n"
#: What a pack asks of the model, before the items.
GUIDE = (
    "Each item below is a separate request: answer each one exactly as you would if it "
    f"had been sent alone (with {ITEM} in the instruction above, if any, replaced by the "
    'item\'s text). Reply with a JSON object {"answers": [{"id": "<the item\'s id>", '
    '"answer": <your answer to that item>}, ...]}: one entry per item, every id exactly '
    "once.\nItems (JSON):\n"
)
#: The error type of a row the pack's answer left out or got wrong (retried unpacked).
PACK_MISSING = "missing_from_pack"
#: What a pack with checks asks of the model (see :func:`first_words`).
GUIDE_CHECKED = (
    "Each item below is a separate request: answer each one exactly as you would if it "
    f"had been sent alone (with {ITEM} in the instruction above, if any, replaced by the "
    'item\'s text). Reply with a JSON object {"answers": [{"id": "<the item\'s id>", '
    '"check": "<the first five words of the item\'s text, copied exactly>", '
    '"answer": <your answer to that item>}, ...]}: one entry per item, every id exactly '
    "once.\nItems (JSON):\n"
)
#: Words of an item's text its answer's check repeats, and the most characters kept.
CHECK_WORDS, CHECK_CHARS = 5, 60
#: Largest pack: beyond it one reply would be too long to be reliable.
MAX_PACK = 500
#: Output tokens a pack's request may use per item, beyond the row's ``max_tokens``:
#: the item's id and the JSON around its answer.
ITEM_OVERHEAD_TOKENS = 16
#: And for its check (five words, at most 60 characters).
CHECK_TOKENS = 16


def check(pack: Any, spec: RequestSpec) -> int | None:
    """``pack`` as a submit takes it (None or 1: no packing), refused clearly when it
    cannot be used, before anything is sent."""
    if pack is None:
        return None
    if isinstance(pack, bool) or not isinstance(pack, int) or not 1 <= pack <= MAX_PACK:
        raise InputError(
            f"pack must be a whole number of rows per request between 1 and {MAX_PACK} "
            f"(e.g. pack=20), found {pack!r}."
        )
    if is_embeddings(spec.endpoint):
        raise InputError(
            "pack= cannot be used with embeddings: each row needs its own vector, which "
            "one request per row gives already. Drop pack=."
        )
    return None if pack == 1 else pack


def size_for(policy: dict[str, Any], stage: int, attempt: int) -> int:
    """Rows per request for a send of ``attempt`` in ``stage``: the job's ``pack`` for
    the first try of its own rows, else 1 (retries go unpacked)."""
    pack = policy.get("pack")
    return int(pack) if pack and stage == 0 and attempt <= 1 else 1


def split_template(template: str) -> tuple[str, str]:
    """The literal text before the template's first placeholder and after its last:
    what every row's prompt shares, sent once per pack."""
    parsed = _prompt.parse(template)
    if not parsed.fields:
        return "", ""
    return parsed.pieces[0], parsed.pieces[-1]


def first_words(text: str) -> str:
    """An item's check: its first five words (at most 60 characters)."""
    return " ".join(text.split()[:CHECK_WORDS])[:CHECK_CHARS]


def _same_check(given: str, text: str) -> bool:
    """Whether a check ``given`` in an answer is that of item ``text`` (case and spacing
    aside: a model may not copy those exactly)."""
    want = " ".join(first_words(text).casefold().split())
    got = " ".join(given.casefold().split())
    return got == want or (len(want) >= CHECK_CHARS - 5 and got.startswith(want[:40]))


def new_secret() -> str:
    """A job's pack secret, from which its item ids are made."""
    return secrets.token_hex(16)


def item_ids(secret: str | None, pack_id: str, n: int) -> list[str]:
    """The ids of the ``n`` items of pack ``pack_id``: random-looking and unguessable
    without ``secret``, distinct within the pack ("1", "2", ... without a secret)."""
    if not secret:
        return [str(j + 1) for j in range(n)]
    out: list[str] = []
    for j in range(n):
        tag = hmac.new(secret.encode(), f"{pack_id}|{j}".encode(), hashlib.sha256)
        value = tag.hexdigest()[:10]
        out.append(value if value not in out else f"{value}{j}")
    return out


def packed_spec(spec: RequestSpec, size: int, *, checked: bool = False) -> RequestSpec:
    """The request parameters of a pack of ``size`` rows: the answers' schema as its
    structured output (with each answer's ``check`` when ``checked``), and room for
    ``size`` answers when ``max_tokens`` is set."""
    from . import _structured as structured

    answer: dict[str, Any] = {"type": "string"}
    defs: dict[str, Any] = {}
    if spec.response_format is not None:
        schema = dict(structured.schema_of(spec.response_format))
        # References (#/$defs/...) stay valid with the definitions at the root.
        defs = schema.pop("$defs", None) or {}
        answer = schema
    # The check before the answer: the model writes which item it answers first.
    fields = ["id", "check", "answer"] if checked else ["id", "answer"]
    props = {"id": {"type": "string"}, "check": {"type": "string"}, "answer": answer}
    item = {
        "type": "object",
        "properties": {name: props[name] for name in fields},
        "required": fields,
        "additionalProperties": False,
    }
    root: dict[str, Any] = {
        "type": "object",
        "properties": {"answers": {"type": "array", "items": item}},
        "required": ["answers"],
        "additionalProperties": False,
    }
    if defs:
        root["$defs"] = defs
    fmt = {"type": "json_schema", "json_schema": {"name": "nbbatch_pack", "schema": root,
                                                  "strict": True}}  # fmt: skip
    max_tokens = spec.max_tokens
    if max_tokens is not None:
        overhead = ITEM_OVERHEAD_TOKENS + (CHECK_TOKENS if checked else 0)
        max_tokens = size * (max_tokens + overhead)
    return dataclasses.replace(spec, response_format=fmt, max_tokens=max_tokens)


def items_of(prompts: list[str], prefix: str, suffix: str) -> list[str]:
    """Each row's item: its prompt without the template's shared prefix and suffix."""
    cut = len(suffix)
    return [p[len(prefix) : len(p) - cut if cut else None] for p in prompts]


def pack_prompts(
    prompts: list[str],
    size: int,
    prefix: str,
    suffix: str,
    ids: list[list[str]] | None = None,
) -> list[str]:
    """The prompt of each pack of ``size`` rows, in order (the last may be shorter);
    ``ids``: each pack's item ids (random ones when not given), with checks asked for."""
    items = items_of(prompts, prefix, suffix)
    head = f"{prefix}{ITEM}{suffix}\n" if prefix or suffix else ""
    out = []
    for k, start in enumerate(range(0, len(items), size)):
        chunk = items[start : start + size]
        names = ids[k] if ids is not None else item_ids(new_secret(), "preview", len(chunk))
        checked = not all(n == str(j + 1) for j, n in enumerate(names))
        listed = [{"id": n, "text": t} for n, t in zip(names, chunk, strict=True)]
        guide = GUIDE_CHECKED if checked else GUIDE
        out.append(head + MARK + guide + orjson.dumps(listed).decode())
    return out


def pack_item_ids(secret: str | None, positions: np.ndarray, size: int) -> list[list[str]]:
    """The item ids of each pack of the rows at ``positions`` (see :func:`item_ids`)."""
    names = pack_ids(positions, size).to_pylist()
    n = len(positions)
    return [
        item_ids(secret, name, min(size, n - start))
        for name, start in zip(names, range(0, n, size), strict=True)
    ]


def pack_ids(positions: np.ndarray, size: int) -> pa.Array:
    """Each pack's custom_id: ``pack-`` and the manifest position of its first row
    (unique within a job, and found again from the batch's positions alone)."""
    return pa.array([f"pack-{int(p)}" for p in positions[::size]], pa.string())


def encode(
    ctx: JobContext, positions: np.ndarray, spec: RequestSpec, size: int
) -> tuple[bytes, pa.Array]:
    """The request lines of the packs of the leaders at ``positions``, and their ids."""
    state = ctx.ledger.row_state(ctx.id)
    prompts = state.manifest_column("prompt", positions).to_pylist()
    prefix, suffix = split_template(str(ctx.record["template"]))
    ids = pack_ids(positions, size)
    secret = ctx.policy.get("pack_secret")
    names = pack_item_ids(secret, positions, size)
    texts = pa.array(pack_prompts(prompts, size, prefix, suffix, names), pa.large_string())
    packed = packed_spec(spec, size, checked=bool(secret))
    return ctx.provider.encode(ids, texts, packed), ids


def item_texts(ctx: JobContext, positions: np.ndarray) -> list[str]:
    """The items of the rows at ``positions`` as they were packed (to verify checks)."""
    prompts = ctx.ledger.row_state(ctx.id).manifest_column("prompt", positions).to_pylist()
    prefix, suffix = split_template(str(ctx.record["template"]))
    return items_of(prompts, prefix, suffix)


def n_requests(n_rows: int, size: int) -> int:
    """How many requests ``n_rows`` rows make in packs of ``size``."""
    return math.ceil(n_rows / max(size, 1))


# -- collecting ---------------------------------------------------------------------------


def unpack(
    packs: pa.Table,
    positions: np.ndarray,
    row_ids: pa.Array,
    size: int,
    *,
    structured: bool,
    secret: str | None = None,
    texts: list[str] | None = None,
) -> tuple[pa.Table, int]:
    """Per-row results from one result line per pack (``packs``: a line for every pack
    id, in any order, as :func:`results.reconcile` gives them; ``positions`` and
    ``row_ids``: the rows' positions and custom_ids in the order they were packed;
    ``secret``: the job's pack secret, and ``texts`` the rows' items, whose checks each
    answer must carry when there is one).

    Returns the rows' results (ROW_RESULT_SCHEMA) and how many rows the answers left
    out or got wrong. A failed pack fails each of its rows the same way."""
    by_id = {cid: i for i, cid in enumerate(packs.column("custom_id").to_pylist())}
    cols = {name: packs.column(name).to_pylist() for name in ROW_RESULT_SCHEMA.names}
    names = pack_ids(positions, size).to_pylist()
    ids = pack_item_ids(secret, positions, size)
    n = len(row_ids)
    out = _RowResults(n)
    wrong = 0
    for k, start in enumerate(range(0, n, size)):
        rows = range(start, min(n, start + size))
        i = by_id.get(names[k])
        if i is None:  # reconcile gives every pack a line: cannot happen
            raise InputError("internal error: a pack has no result line")
        if cols["status"][i] != "succeeded":
            out.fail_as_pack(rows, {name: values[i] for name, values in cols.items()})
            continue
        checks = None if not secret or texts is None else [texts[r] for r in rows]
        answers, why = _answers(cols["output"][i], ids[k], structured, checks)
        answered = out.answer(rows, answers, why)
        wrong += len(rows) - len(answered)
        out.charge(answered or list(rows), [cols[c][i] for c in _TOKEN_COLUMNS])
    return out.table(row_ids), wrong


_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cached_tokens")


class _RowResults:
    """The per-row result columns :func:`unpack` fills, one pack at a time."""

    def __init__(self, n: int) -> None:
        self.status: list[str] = [""] * n
        self.output: list[str | None] = [None] * n
        self.etype: list[str | None] = [None] * n
        self.message: list[str | None] = [None] * n
        self.retry: list[bool | None] = [None] * n
        self.tokens = np.zeros((n, 3), dtype=np.int64)
        self.has_tokens = np.zeros(n, dtype=bool)

    def fail_as_pack(self, rows: range, line: dict[str, Any]) -> None:
        """Each row of a failed pack fails the way its pack's result ``line`` did."""
        for r in rows:
            self.status[r], self.etype[r] = line["status"], line["error_type"]
            self.message[r], self.retry[r] = line["error_message"], line["retryable"]

    def answer(
        self, rows: range, answers: dict[int, str | tuple[None, str]], why: str
    ) -> list[int]:
        """Each row its answer (by item number); a row left out or answered wrongly
        fails as :data:`PACK_MISSING`, retryable, with the reason found (else ``why``).
        Returns the rows answered."""
        answered = []
        for j, r in enumerate(rows):
            value = answers.get(j)
            if isinstance(value, str):
                self.status[r], self.output[r] = "succeeded", value
                answered.append(r)
                continue
            self.status[r], self.etype[r], self.retry[r] = "failed", PACK_MISSING, True
            self.message[r] = value[1] if isinstance(value, tuple) else why
        return answered

    def charge(self, rows: list[int], paid: list[int | None]) -> None:
        """Split a pack's ``paid`` tokens (input, output, cached; None where not
        reported) over ``rows``."""
        if any(v is not None for v in paid):
            self.tokens[rows] = _split([v or 0 for v in paid], len(rows))
            self.has_tokens[rows] = True

    def table(self, row_ids: pa.Array) -> pa.Table:
        """The rows' results in ROW_RESULT_SCHEMA, named by ``row_ids``."""
        return pa.table(
            {
                "custom_id": row_ids.cast(pa.string()),
                "status": pa.array(self.status, pa.string()),
                "output": pa.array(self.output, pa.large_string()),
                "error_type": pa.array(self.etype, pa.string()),
                "error_message": pa.array(self.message, pa.large_string()),
                "retryable": pa.array(self.retry, pa.bool_()),
                **{
                    name: pa.array(self.tokens[:, c], pa.int64(), mask=~self.has_tokens)
                    for c, name in enumerate(_TOKEN_COLUMNS)
                },
            },
            schema=ROW_RESULT_SCHEMA,
        )


def _answers(
    text: str | None, ids: list[str], structured: bool, checks: list[str] | None = None
) -> tuple[dict[int, str | tuple[None, str]], str]:
    """Each item's answer (index -> the answer as a row's output text, or (None, why) for
    an answer that is there but wrong), and why the items without one have none.
    ``ids``: the pack's item ids in order; ``checks``: the items' texts, whose first
    words each answer's ``check`` must repeat (None: no checks)."""
    place = {name: j for j, name in enumerate(ids)}
    missing = "the pack's answer has no entry for this row; it is sent again on its own"
    try:
        value = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return {}, "the pack's answer is not valid JSON (cut off?); the row is sent again"
    entries = value.get("answers") if isinstance(value, dict) else None
    if not isinstance(entries, list):
        return {}, 'the pack\'s answer has no "answers" list; the row is sent again'
    out: dict[int, str | tuple[None, str]] = {}
    seen: set[int] = set()
    for entry in entries:
        if not isinstance(entry, dict) or "answer" not in entry:
            continue
        key = entry.get("id")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        j = place.get(key) if isinstance(key, str) else None
        if j is None:  # an id not in this pack (made up, or named by a row's text)
            continue
        if j in seen:  # answered twice: which one is meant is unknown
            out[j] = (None, "the pack's answer has two entries for this row; sent again")
            continue
        seen.add(j)
        if checks is not None:
            check = entry.get("check")
            if not isinstance(check, str) or not _same_check(check, checks[j]):
                out[j] = (None, "the pack's answer for this row carries another item's check "
                                "(answers swapped or misplaced); sent again")  # fmt: skip
                continue
        answer = entry["answer"]
        if structured and isinstance(answer, dict):
            out[j] = orjson.dumps(answer).decode()
        elif not structured and isinstance(answer, str):
            out[j] = answer
        else:
            kind = "an object" if structured else "text"
            out[j] = (None, f"the pack's answer for this row is not {kind}; sent again")
    return out, missing


def _split(values: list[int], n: int) -> np.ndarray:
    """``values`` shared out over ``n`` rows in whole tokens, the sums unchanged."""
    out = np.zeros((n, len(values)), dtype=np.int64)
    for c, v in enumerate(values):
        base, extra = divmod(int(v), n)
        out[:, c] = base
        out[:extra, c] += 1
    return out


def packed_results(
    info: Any,
    tables: list[pa.Table],
    spec: RequestSpec,
    positions: np.ndarray,
    row_ids: pa.Array,
    size: int,
    *,
    secret: str | None = None,
    texts: list[str] | None = None,
) -> tuple[pa.Table, str, bool]:
    """One result per row of an ended batch of packs (``positions``: its rows, in the
    order they were packed; ``row_ids`` their custom ids), each row's answer taken from
    its pack's parsed result ``tables``. Returns the rows' results, the batch's note,
    and whether that note is worth a warning (packs missing, repeated or unknown, rows
    left out or answered wrongly)."""
    from . import _results
    from . import _structured as structured

    rec = _results.reconcile(
        pack_ids(positions, size),
        tables,
        batch_failure=info.failure,
        failure_code=info.failure_code,
        unfinished=info.unfinished,
    )
    is_structured = spec.response_format is not None
    table, wrong = unpack(
        rec.table, positions, row_ids, size, structured=is_structured, secret=secret, texts=texts
    )
    if spec.response_format is not None:
        schema = structured.schema_of(spec.response_format)
        table = _results.check_structured(table, schema, set())
    note = f"{rec.note(info.batch_id)} (packs of {size}: {len(positions):,} rows)"
    if wrong:
        note += (
            f"; {wrong:,} rows left out or answered wrongly in their pack's answer (sent "
            "again on their own)"
        )
    return table, note, bool(rec.unknown or rec.duplicates or rec.missing or wrong)


def batch_size(ctx: JobContext, intent: str, stage: int) -> int:
    """Rows per request in the batch recorded as ``intent`` (1: not packed)."""
    if not ctx.policy.get("pack"):
        return 1
    rows = ctx.ledger.query("SELECT attempt FROM batches WHERE intent = ?", (intent,))
    attempt = int(rows[0][0]) if rows else 1
    return size_for(ctx.policy, stage, attempt)
