"""Token counts and cost before submitting, with no network call ever."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
import tiktoken.registry

from nbbatch import _estimate as est
from nbbatch import pricing

# A tiny tiktoken encoding made here: one token per byte, no merges. Its file lives in a
# private cache folder under the URL below, which nothing can reach (.invalid).
TEST_URL = "https://nbbatch.invalid/nbbatch_test_base.tiktoken"
TEST_DATA = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)).encode()


def nbbatch_test_base():
    # Literal arguments, like tiktoken's own constructors: nbbatch reads them from source.
    ranks = tiktoken.load.load_tiktoken_bpe(
        "https://nbbatch.invalid/nbbatch_test_base.tiktoken",
        expected_hash="e66088df4cdb28fbad3c55ac5a7ae741bc402e732ed948eb096a8ed6f852768f",
    )
    return {
        "name": "nbbatch_test_base",
        "pat_str": r"\S+|\s+",
        "mergeable_ranks": ranks,
        "special_tokens": {},
    }


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise NetworkUsed(f"network call attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", lambda path: refuse(path))
    try:
        import requests

        monkeypatch.setattr(requests, "get", refuse)
        monkeypatch.setattr(requests.Session, "request", refuse)
    except ImportError:  # pragma: no cover - requests is not always there
        pass
    yield attempts
    assert attempts == [], f"network attempted: {attempts}"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    folder = tmp_path / "tiktoken-cache"
    folder.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    # Encodings another test may have built in this process would count exactly.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return folder


@pytest.fixture
def test_encoding(empty_cache, monkeypatch):
    """The tiny encoding, known to tiktoken for model 'nbbatch-test-model', file cached."""
    tiktoken.list_encoding_names()  # fills ENCODING_CONSTRUCTORS
    monkeypatch.setitem(
        tiktoken.registry.ENCODING_CONSTRUCTORS, "nbbatch_test_base", nbbatch_test_base
    )
    monkeypatch.setitem(tiktoken.model.MODEL_TO_ENCODING, "nbbatch-test-model", "nbbatch_test_base")
    path = empty_cache / hashlib.sha1(TEST_URL.encode()).hexdigest()
    path.write_bytes(TEST_DATA)
    return path


def test_import_and_count_make_no_network_call_in_a_fresh_interpreter(tmp_path):
    """A new process with every socket refused: importing nbbatch and counting tokens
    for every OpenAI model family in the price table must not even try to connect."""
    code = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise SystemExit(f"network call attempted: {args!r}")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import nbbatch
        from nbbatch import _estimate as estimate, pricing

        models = ["gpt-4o-mini", "gpt-4o", "gpt-5-mini", "text-embedding-3-small",
                  "claude-haiku-4-5", "gpt-3.5-turbo", "o3-mini"]
        for model in models:
            counts, method = estimate.count_tokens(["hello there"], model)
            assert method.startswith("approximate"), (model, method)
            # Prices come from genai-prices' bundled data: no network either.
            assert pricing.cost(model, 1000, 10, estimated=True).batch is not None, model
        assert pricing.source().startswith("genai-prices ")
        print("ok")
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok"


def test_uncached_openai_encoding_is_approximated_without_network(no_network, empty_cache):
    counts, method = est.count_tokens(
        ["hello world", "", None, "abcdefghi", "é" * 5], "gpt-4o-mini"
    )
    assert method == "approximate (4 characters per token)"
    assert counts.tolist() == [3, 0, 0, 3, 2]  # ceil(chars / 4), characters not bytes
    assert counts.dtype == np.int64


def test_cached_encoding_counts_exactly_without_network(no_network, test_encoding):
    counts, method = est.count_tokens(pa.array(["abc", "hi there", None]), "nbbatch-test-model")
    assert method == "exact (tiktoken nbbatch_test_base)"
    assert counts.tolist() == [3, 8, 0]  # one token per byte in this encoding
    # Special-token text is counted as text, not refused.
    assert est.count_tokens(["<|endoftext|>"], "nbbatch-test-model")[0].tolist() == [13]


def test_damaged_cache_file_is_not_used_nor_refetched(no_network, test_encoding):
    test_encoding.write_bytes(TEST_DATA[:-10])
    counts, method = est.count_tokens(["abc"], "nbbatch-test-model")
    assert method.startswith("approximate")
    assert counts.tolist() == [1]
    assert test_encoding.exists()  # tiktoken was never asked (it would delete and download)


def test_caching_switched_off_means_approximate(no_network, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert est.count_tokens(["abc"], "gpt-4o")[1].startswith("approximate")


def test_claude_is_always_approximate_and_says_why(no_network, test_encoding):
    counts, method = est.count_tokens(["abcdefgh"], "claude-haiku-4-5")
    assert counts.tolist() == [2]
    assert "approximate" in method and "Anthropic" in method


def test_unknown_model_is_approximate(no_network, empty_cache):
    assert est.count_tokens(["abc"], "my-own-model")[1] == "approximate (4 characters per token)"


# ------------------------------------------------------------------------------ estimates


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_cost_matches_hand_computed_figures(no_network, empty_cache, model):
    prompts = ["a" * 40, "b" * 41, "c" * 7]  # 10, 11 and 2 tokens by the approximation
    system = "s" * 20  # 5 tokens
    e = est.estimate(prompts, model=model, system=system, expected_output_tokens=50)
    per_row_overhead = 3 * 2 + 3  # two messages + the reply
    expected_input = (10 + 11 + 2) + 3 * 5 + 3 * per_row_overhead
    assert e.rows == 3
    assert e.input_tokens == expected_input == 65
    assert e.output_tokens == 150
    p_in, _, p_out = pricing.price_of(model)
    realtime = (65 * p_in + 150 * p_out) / 1e6
    assert e.cost.realtime == pytest.approx(realtime)
    assert e.cost.batch == pytest.approx(realtime / 2)
    assert e.cost.estimated is True
    assert e.saving == pytest.approx(realtime / 2)
    # Written out by hand for the two models in the table today.
    by_hand = {
        "gpt-4o-mini": (65 * 0.15 + 150 * 0.60) / 1e6,
        "claude-haiku-4-5": (65 * 1.00 + 150 * 5.00) / 1e6,
    }[model]
    assert e.cost.realtime == pytest.approx(by_hand)
    assert e.per_row_input.tolist() == [10 + 5 + 9, 11 + 5 + 9, 2 + 5 + 9]


def test_output_basis_max_tokens_then_default(no_network, empty_cache):
    upper = est.estimate(["x"], model="gpt-4o-mini", max_tokens=300)
    assert upper.output_tokens == 300 and "upper bound" in upper.output_basis
    guess = est.estimate(["x", "y"], model="gpt-4o-mini")
    assert guess.output_tokens == 2 * est.DEFAULT_OUTPUT_TOKENS
    assert "guess" in guess.output_basis
    # No system prompt: one message + the reply.
    assert guess.input_tokens == 2 * (1 + 3 + 3)


def test_embeddings_have_no_output_and_no_overhead(no_network, empty_cache):
    e = est.estimate(["abcdefgh"] * 4, model="text-embedding-3-small", endpoint="/v1/embeddings")
    assert e.input_tokens == 8
    assert e.output_tokens == 0
    assert e.cost.realtime == pytest.approx(8 * 0.02 / 1e6)


def test_summary_reads_well_and_unknown_price_is_said(no_network, empty_cache):
    text = str(est.estimate(["a" * 400] * 1000, model="gpt-4o-mini", expected_output_tokens=20))
    assert "Estimate for 1,000 rows on gpt-4o-mini" in text
    assert "approximate (4 characters per token)" in text
    assert "batch vs" in text and "real time" in text and "saves $" in text and "(50%)" in text
    unknown = est.estimate(["abc"], model="mystery-model")
    assert unknown.cost.batch is None
    assert "unknown price for 'mystery-model'" in unknown.summary()
    assert unknown.as_dict()["batch_cost"] is None


def test_preview_table():
    ids = pa.array(["a", "b", "c"])
    prompts = pa.array(["one", "two", "three"])
    counts, _ = est.count_tokens(prompts, "claude-haiku-4-5")
    rows = est.preview_table(ids, prompts, counts, n=2)
    assert rows == [
        {"custom_id": "a", "prompt": "one", "input_tokens": 1},
        {"custom_id": "b", "prompt": "two", "input_tokens": 1},
    ]


def test_approximation_is_vectorised_for_many_rows(empty_cache):
    texts = pa.array(["x" * (i % 50) for i in range(200_000)])
    counts, _ = est.count_tokens(texts, "claude-haiku-4-5")
    assert counts.tolist()[:6] == [math.ceil(i / 4) for i in range(6)]
