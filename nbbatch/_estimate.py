"""Tokens and cost of a job before it is sent.

Token counting (:func:`count_tokens`) is exact when it can be and labelled when not:

- **exact** with ``tiktoken`` for OpenAI models whose encoding (``o200k_base``,
  ``cl100k_base``, ...) is already on this machine: loaded in this process, or its BPE
  file present in tiktoken's cache (``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``,
  else ``<tmp>/data-gym-cache``) with the checksum tiktoken expects. tiktoken would
  download a missing or damaged file on first use; nbbatch checks the cache itself
  first and never lets it, so counting makes no network call, ever (a notebook on a
  plane, a locked-down cluster or CI must not hang or leak). To get exact counts, load
  the encoding once where there is internet (``tiktoken.get_encoding("o200k_base")``)
  or copy the cache folder over.
- **approximate** otherwise: ``ceil(characters / 4)`` per text, OpenAI's rule of thumb
  for English. Claude models always use it, because Anthropic's tokenizer is not
  public (its counts for the same text are usually somewhat higher).

:func:`estimate` adds what every request carries besides the prompt - the system
prompt, once per row, and :data:`MESSAGE_OVERHEAD` tokens per message plus
:data:`REPLY_OVERHEAD` per request for the chat format (OpenAI's published accounting
for chat models; used for Claude as the same kind of rough figure) - guesses the
output, and prices both with :mod:`nbbatch.pricing` at batch and real-time rates.

Prompt caching is counted where the providers apply it to a prompt shared by every
row, the system prompt: OpenAI caches a prompt's prefix of :data:`CACHE_MIN_TOKENS` or
more by itself, in steps of :data:`CACHE_INCREMENT` tokens, so every request after the
first reads that much from the cache; with ``cache_system=True`` a Claude model writes
the system prompt once and every later request reads it. Other cache hits (a shared
start of the user message) are not assumed, so the estimate errs high.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import tempfile
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import pricing
from .pricing import Cost
from .providers.base import is_embeddings

#: Characters per token of the approximation.
CHARS_PER_TOKEN = 4
APPROXIMATE = "approximate (4 characters per token)"
APPROXIMATE_CLAUDE = "approximate (4 characters per token; Anthropic's tokenizer is not public)"
#: Tokens the chat format adds per message (role and separators) and per request (the
#: primed assistant reply), per OpenAI's accounting for chat models.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
#: Output tokens assumed per row when neither expected_output_tokens nor max_tokens is
#: given: a label, a sentence or a small JSON object.
DEFAULT_OUTPUT_TOKENS = 100
#: OpenAI's automatic prompt caching: a prefix of at least this many tokens, cached in
#: steps of CACHE_INCREMENT tokens. Anthropic's minimum is the same order (1,024 tokens
#: for most models).
CACHE_MIN_TOKENS = 1024
CACHE_INCREMENT = 128


def cacheable_prefix(shared_tokens: int, *, claude: bool) -> int:
    """Tokens of a prefix of ``shared_tokens`` shared by every request that the cache
    serves: OpenAI's in steps of :data:`CACHE_INCREMENT`; 0 below the minimum."""
    if shared_tokens < CACHE_MIN_TOKENS:
        return 0
    if claude:
        return shared_tokens
    return (
        CACHE_MIN_TOKENS + (shared_tokens - CACHE_MIN_TOKENS) // CACHE_INCREMENT * CACHE_INCREMENT
    )


# ----------------------------------------------------------------------- counting tokens


def _text_array(texts: Sequence[str | None] | pa.Array) -> pa.Array | pa.ChunkedArray:
    """``texts`` as an Arrow array of strings (an Arrow array as it is)."""
    if isinstance(texts, pa.Array | pa.ChunkedArray):
        return texts
    return pa.array(texts, pa.large_string())


def count_tokens(texts: Sequence[str | None] | pa.Array, model: str) -> tuple[np.ndarray, str]:
    """Tokens of each text for ``model`` and how they were counted.

    Returns an ``int64`` array (0 for a missing text) and the method label: ``"exact
    (tiktoken <encoding>)"`` or an ``"approximate (...)"`` label; see the module
    docstring. Never makes a network call.
    """
    arr = _text_array(texts)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    encoding = local_encoding(model)
    if encoding is None:
        return approximate_tokens(arr), APPROXIMATE_CLAUDE if is_claude(model) else APPROXIMATE
    values = [t or "" for t in arr.to_pylist()]
    # encode_ordinary: a prompt that happens to contain "<|endoftext|>" is text here,
    # not a special token (plain encode() would raise on it).
    counts = np.fromiter(
        (len(ids) for ids in encoding.encode_ordinary_batch(values)),
        dtype=np.int64,
        count=len(values),
    )
    return counts, f"exact (tiktoken {encoding.name})"


def approximate_tokens(texts: pa.Array) -> np.ndarray:
    """``ceil(characters / 4)`` per text, vectorised; 0 for a missing text."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    chars = pc.fill_null(pc.utf8_length(pc.cast(texts, pa.large_string())), 0)
    n = chars.to_numpy(zero_copy_only=False).astype(np.int64)
    return -(-n // CHARS_PER_TOKEN)


def is_claude(model: str) -> bool:
    """Whether ``model`` names an Anthropic model."""
    return model.lower().startswith(("claude", "anthropic."))


_ENCODINGS: dict[tuple[str, str | None], Any] = {}
_LOCK = threading.Lock()


def local_encoding(model: str) -> Any | None:
    """The tiktoken ``Encoding`` for ``model`` if it can be had without the network.

    None for Claude models, models tiktoken does not know, when tiktoken is not
    installed, and when the encoding's files are not (intact) in the local cache.
    """
    if is_claude(model):
        return None
    try:
        import tiktoken
        import tiktoken.model
        import tiktoken.registry
    except ImportError:
        return None
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return None
    loaded = tiktoken.registry.ENCODINGS.get(name)
    if loaded is not None:  # already built in this process: no files needed
        return loaded
    key = (name, _cache_dir())
    with _LOCK:
        if key in _ENCODINGS:
            return _ENCODINGS[key]
        encoding = None
        if _files_cached(name):
            try:
                encoding = tiktoken.get_encoding(name)
            except Exception:  # a damaged plugin or file: fall back, never fail
                encoding = None
        _ENCODINGS[key] = encoding
        return encoding


def _cache_dir() -> str | None:
    """tiktoken's cache folder, by its own rules; None when caching is switched off."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        folder = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        folder = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        folder = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return folder or None


def _files_cached(name: str) -> bool:
    """Whether every file encoding ``name`` loads is local and has the expected hash.

    The file names and hashes are read from the source of tiktoken's own constructor
    for the encoding (calling it would download); anything unexpected there means
    "not cached", so a future tiktoken costs exactness, never a network call.
    """
    import tiktoken
    import tiktoken.registry

    tiktoken.list_encoding_names()  # imports the plugins' constructors; no network
    constructor = (tiktoken.registry.ENCODING_CONSTRUCTORS or {}).get(name)
    files = _constructor_files(constructor) if constructor is not None else None
    if not files:
        return False
    folder = _cache_dir()
    for location, expected in files:
        if "://" not in location:  # a local file: tiktoken reads it directly
            path = location
        elif folder is None:  # caching switched off: tiktoken would always download
            return False
        else:
            path = os.path.join(folder, hashlib.sha1(location.encode()).hexdigest())
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return False
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            return False  # tiktoken would delete it and download again
    return True


# The loader calls in tiktoken's constructors, and which of their arguments name a file
# and its sha256.
_LOADERS = {
    "load_tiktoken_bpe": [("tiktoken_bpe_file", 0, "expected_hash")],
    "data_gym_to_mergeable_bpe_ranks": [
        ("vocab_bpe_file", 0, "vocab_bpe_hash"),
        ("encoder_json_file", 1, "encoder_json_hash"),
    ],
}


def _constructor_files(constructor: Any) -> list[tuple[str, str | None]] | None:
    """[(file location, sha256 or None)] that ``constructor`` loads, or None if unsure."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(constructor)))
    except (OSError, TypeError, SyntaxError):
        return None
    files: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if fname not in _LOADERS:
            continue
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        for arg_name, position, hash_name in _LOADERS[fname]:
            arg = keywords.get(arg_name)
            if arg is None and position < len(node.args):
                arg = node.args[position]
            digest = keywords.get(hash_name)
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                return None  # a computed location: cannot check it without running it
            expected: str | None = None
            if digest is not None:
                if not (isinstance(digest, ast.Constant) and isinstance(digest.value, str)):
                    return None
                expected = digest.value
            files.append((arg.value, expected))
    return files or None


# ---------------------------------------------------------------------------- estimating


@dataclass(frozen=True)
class Estimate:
    """What a job should use and cost, before it is sent (see :func:`estimate`)."""

    model: str
    rows: int
    input_tokens: int
    output_tokens: int
    cost: Cost  # batch and real time, estimated=True
    method: str  # how input tokens were counted
    output_basis: str  # where the output figure comes from
    per_row_input: np.ndarray = field(repr=False, compare=False)  # input tokens per row
    note: str = ""  # how the rows became requests (duplicates, reuse, skipped), if not 1:1
    cached_tokens: int = 0  # of input_tokens, read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to the prompt cache
    cache_basis: str = ""  # why those are expected
    # A cascade's later stages, each as if every row went on to it: upper bounds (only
    # the rows escalate_when chooses will go).
    later: tuple[Estimate, ...] = ()
    # The waves the job needs under the account's batch queue limit, when one is known
    # (see nbbatch._quota.plan): e.g. "6 waves of at most 2M queued tokens (...)".
    waves: str = ""
    # What ``deadline=``/``on_deadline=`` would do, and what it could cost (see
    # :func:`deadline_note`); empty without a deadline.
    deadline: str = ""
    # The provider it is priced at (see nbbatch.pricing.rates_for); None: by the model.
    provider: str | None = None

    @property
    def saving(self) -> float | None:
        """Dollars the batch price saves over real time (None when the price is unknown)."""
        return self.cost.saving

    @property
    def upper_bound(self) -> float | None:
        """The batch cost of every stage: the first in full, each later one as if every
        row went on to it (what ``max_cost`` checks for a cascade; None if a price is
        unknown). Without later stages, the first stage's estimate."""
        parts = [self.cost.batch, *(e.cost.batch for e in self.later)]
        return None if any(p is None for p in parts) else sum(p or 0.0 for p in parts)

    def summary(self) -> str:
        """A few lines for a notebook or a log."""
        batch, live = self.cost.batch, self.cost.realtime
        if batch is None or live is None:
            cost = (
                f"unknown price for {self.model!r}; set one with "
                "nb.pricing.set(model, input=..., output=...)"
            )
        else:
            saving = live - batch
            pct = f" ({saving / live:.0%})" if live else ""
            cost = (
                f"{pricing.money(batch)} batch vs {pricing.money(live)} real time "
                f"(saves {pricing.money(saving)}{pct})"
            )
        counted = f"Estimate for {self.rows:,} rows on {self.model}"
        if self.note:
            counted = f"Estimate for {self.rows:,} requests on {self.model} ({self.note})"
        lines = [counted, f"  input tokens   {self.input_tokens:>12,}  {self.method}"]
        if self.cached_tokens or self.cache_write_tokens:
            lines.append(f"    from cache   {self.cached_tokens:>12,}  {self.cache_basis}")
        lines += [
            f"  output tokens  {self.output_tokens:>12,}  {self.output_basis}",
            f"  cost           {cost}",
            f"  prices         {self._prices()}",
        ]
        if self.waves:
            lines.append(f"  queue limit    {self.waves}")
        if self.deadline:
            lines.append(f"  deadline       {self.deadline}")
        for i, stage in enumerate(self.later, start=2):
            batch = stage.cost.batch
            at_most = "unknown price" if batch is None else f"at most {pricing.money(batch)} batch"
            lines.append(
                f"  stage {i} of {len(self.later) + 1}: {stage.model}, {at_most} (an upper "
                "bound: as if every row were escalated; only the rows escalate_when "
                "chooses go)"
            )
        if self.later:
            bound = self.upper_bound
            lines.append(
                "  cascade        "
                + ("unknown price" if bound is None else f"at most {pricing.money(bound)} batch")
            )
        return "\n".join(lines)

    def _prices(self) -> str:
        """Where the prices come from, and whether the batch price is the 50% rule."""
        rates = pricing.rates_for(self.provider, self.model)
        if rates is None:
            return f"{pricing.source()}, which does not know {self.model!r}"
        if rates.batch_rule:
            # The provider's own share of the real-time price (half for most; Groq's
            # is 75%): say the share that was applied, not always "half".
            share = rates.batch_input / rates.input if rates.input else 0.5
            said = "half" if abs(share - 0.5) < 1e-9 else f"{share:.0%} of"
            return f"{rates.source}; no batch rate there: {said} the real-time price"
        return rates.source

    def __str__(self) -> str:
        return self.summary()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (for the ledger, the panel, an error message)."""
        return {
            "model": self.model,
            "rows": self.rows,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "batch_cost": self.cost.batch,
            "realtime_cost": self.cost.realtime,
            "method": self.method,
            "output_basis": self.output_basis,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "prices": pricing.source(),
        }


def deadline_note(est: Estimate, when: str, on_deadline: str) -> str:
    """What a deadline (``when``, in words) means for a job estimated as ``est``, before
    it is sent: with ``"flex"`` or ``"realtime"``, what the rows not done by then would
    cost going that way, at most (every row, if no batch has finished), beside the batch
    price."""
    if on_deadline == "wait":
        return (
            f"{when}: only flags the job overdue (on_deadline='wait'); nothing is sent another way"
        )
    rows = f"{est.rows:,} rows" if est.rows != 1 else "1 row"
    batch, live = est.cost.batch, est.cost.realtime
    flex = on_deadline == "flex"
    way = (
        "through OpenAI flex processing, at batch prices"
        if flex
        else "through the real-time API, at full price"
    )
    text = f"{when}: rows not done by then go {way}"
    if batch is None or live is None:
        return f"{text} (price unknown for {est.model!r})"
    if flex:
        return (
            f"{text}: at most {pricing.money(batch)} if all {rows} go that way, as much as "
            f"the batch ({pricing.money(live)} in real time)"
        )
    return (
        f"{text}: at most {pricing.money(live)} if all {rows} go that way, "
        f"{pricing.money(live - batch)} more than the batch's {pricing.money(batch)}"
    )


def estimate(
    prompts: Sequence[str | None] | pa.Array,
    *,
    model: str,
    system: str | None = None,
    max_tokens: int | None = None,
    expected_output_tokens: int | None = None,
    endpoint: str | None = None,
    note: str = "",
    cache_system: bool = False,
    provider: str | None = None,
) -> Estimate:
    """Estimate the tokens and cost of sending one request per prompt to ``model`` (at
    ``provider``, which prices it: :func:`nbbatch.pricing.rates_for`).

    ``note`` says how the job's rows became these prompts (shown in the summary).

    Input per row: the prompt's tokens, the system prompt's (it is sent with every
    row), and the chat format's overhead (:data:`MESSAGE_OVERHEAD` per message plus
    :data:`REPLY_OVERHEAD`); embeddings (``endpoint="/v1/embeddings"``, Gemini's
    ``"embedContent"`` or a ``text-embedding-*`` model) count the text alone. Output per row: the
    ``expected_output_tokens`` given, else ``max_tokens`` (an upper bound), else
    :data:`DEFAULT_OUTPUT_TOKENS` (0 for embeddings). Cache reads and writes of the
    system prompt as the module docstring says (``cache_system``: Claude's opt-in).
    """
    arr = _text_array(prompts)
    rows = len(arr)
    embeddings = is_embeddings(endpoint or "") or model.startswith("text-embedding")
    per_row, method = count_tokens(arr, model)
    shared = 0  # tokens every request starts with: the system prompt
    if not embeddings:
        per_row, shared, method = _with_chat_overhead(per_row, method, system, model)
    out_per_row, basis = _output_per_row(embeddings, expected_output_tokens, max_tokens)
    input_tokens = int(per_row.sum())
    output_tokens = out_per_row * rows
    cached, written, cache_basis = _cache(shared, rows, model, cache_system)
    return Estimate(
        model=model,
        rows=rows,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=pricing.cost(
            model,
            input_tokens,
            output_tokens,
            cached,
            cache_write_tokens=written,
            estimated=True,
            provider=provider,
        ),
        method=method,
        output_basis=basis,
        per_row_input=per_row,
        note=note,
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_basis=cache_basis,
        provider=provider,
    )


def _with_chat_overhead(
    per_row: np.ndarray, method: str, system: str | None, model: str
) -> tuple[np.ndarray, int, str]:
    """A chat request's input per row: the prompt, the system prompt (sent with every
    row) and the messages' overhead. Returns it, the tokens every request starts with
    (the system prompt, 0 without one), and how it was counted."""
    messages = 1
    shared = 0
    if system:
        system_tokens, _ = count_tokens([system], model)
        shared = int(system_tokens[0]) + MESSAGE_OVERHEAD
        per_row = per_row + int(system_tokens[0])
        messages += 1
    overhead = MESSAGE_OVERHEAD * messages + REPLY_OVERHEAD
    per_row = per_row + overhead
    if system:
        method += f"; incl. the system prompt and {overhead} tokens of message overhead per request"
    else:
        method += f"; incl. {overhead} tokens of message overhead per request"
    return per_row, shared, method


def _output_per_row(
    embeddings: bool, expected: int | None, max_tokens: int | None
) -> tuple[int, str]:
    """Output tokens per row, and what that figure rests on."""
    if embeddings:
        return 0, "none (embeddings)"
    if expected is not None:
        return int(expected), f"{expected} per row, as given"
    if max_tokens is not None:
        return int(max_tokens), f"at most {max_tokens} per row (max_tokens; an upper bound)"
    return DEFAULT_OUTPUT_TOKENS, (
        f"a guess of {DEFAULT_OUTPUT_TOKENS} per row "
        "(pass expected_output_tokens= or max_tokens= for a better one)"
    )


def _cache(shared: int, rows: int, model: str, cache_system: bool) -> tuple[int, int, str]:
    """(cache-read tokens, cache-write tokens, why) for ``rows`` requests that all start
    with the same ``shared`` tokens: Claude caches them when asked (``cache_system``),
    OpenAI by itself above :data:`CACHE_MIN_TOKENS`."""
    claude = is_claude(model)
    prefix = cacheable_prefix(shared, claude=claude) if (cache_system or not claude) else 0
    if not prefix or rows <= 1:
        return 0, 0, ""
    if claude:
        return (
            prefix * (rows - 1),
            prefix,
            "the cached system prompt: written by the first request, read by the rest",
        )
    return (
        prefix * (rows - 1),
        0,
        f"the system prompt: OpenAI caches a shared prefix of {CACHE_MIN_TOKENS:,}+ "
        "tokens by itself; the first request writes it",
    )


def combine(parts: list[Estimate], note: str = "") -> Estimate:
    """One estimate for the requests of several (the batches of a table read in parts):
    rows and tokens added up, the cost of the sum. (Each part expects its own first
    write to a prompt cache: a few writes too many, an estimate on the safe side.)"""
    first = parts[0]
    input_tokens = sum(p.input_tokens for p in parts)
    output_tokens = sum(p.output_tokens for p in parts)
    cached = sum(p.cached_tokens for p in parts)
    written = sum(p.cache_write_tokens for p in parts)
    return Estimate(
        model=first.model,
        rows=sum(p.rows for p in parts),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=pricing.cost(
            first.model,
            input_tokens,
            output_tokens,
            cached,
            cache_write_tokens=written,
            estimated=True,
            provider=first.provider,
        ),  # fmt: skip
        method=first.method,
        output_basis=first.output_basis,
        per_row_input=np.concatenate([p.per_row_input for p in parts]),
        note=note,
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_basis=first.cache_basis,
        provider=first.provider,
    )


def preview_table(
    custom_ids: Sequence[str] | pa.Array,
    prompts: Sequence[str | None] | pa.Array,
    token_counts: Sequence[int] | np.ndarray,
    n: int = 5,
) -> list[dict[str, Any]]:
    """The first ``n`` requests as records: custom_id, the rendered prompt and its
    estimated input tokens (ready for ``pandas.DataFrame``)."""
    ids = custom_ids[:n].to_pylist() if isinstance(custom_ids, pa.Array) else list(custom_ids[:n])
    texts = prompts[:n].to_pylist() if isinstance(prompts, pa.Array) else list(prompts[:n])
    counts = [int(c) for c in list(token_counts[:n])]
    return [
        {"custom_id": i, "prompt": p, "input_tokens": c}
        for i, p, c in zip(ids, texts, counts, strict=False)
    ]
