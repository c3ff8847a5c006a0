"""Prompt templates are safe, and every bad input fails before any HTTP call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import _prompt as P

from .conftest import model_for


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{review.upper}", "attribute or index access"),
        ("{review[0]}", "attribute or index access"),
        ("{review!r}", "conversion"),
        ("{review:>20}", "format spec"),
        ("{0}", "positional"),
        ('Answer in JSON like {"label": 1}: {review}', "literal text in braces"),
        ("unbalanced {review", "malformed"),
        ("stray } brace", "malformed"),
        ("{nope}", "not a column"),
    ],
)
def test_bad_template_is_refused_before_any_http_call(client, emu, template, words):
    df = pd.DataFrame({"review": ["good", "bad"]})
    emu.clear_log()
    with pytest.raises(nb.TemplateError, match=words):
        nb.submit(df, template, model=model_for(client), client=client)
    assert emu.request_log == []


def test_unknown_placeholder_lists_the_columns(client):
    df = pd.DataFrame({"review": ["x"], "title": ["t"]})
    with pytest.raises(nb.TemplateError) as err:
        nb.submit(df, "{reveiw}", model=model_for(client), client=client)
    assert "{reveiw}" in str(err.value) and "['review', 'title']" in str(err.value)


def test_literal_braces_and_data_text_are_never_interpreted():
    t = P.parse('Reply as {{"label": "..."}} for: {text}')
    out = P.render(t, {"text": pd.Series(["{text} and {0} {{x}}", "plain"])}).to_pylist()
    assert out == [
        'Reply as {"label": "..."} for: {text} and {0} {{x}}',
        'Reply as {"label": "..."} for: plain',
    ]


def test_missing_values_render_as_null_and_numbers_as_text():
    t = P.parse("{a}-{b}")
    out = P.render(
        t,
        {
            "a": pd.Series(["x", None, "z", "w"]),
            "b": pd.Series([1, 2, np.nan, pd.NA], dtype=object),
        },
    ).to_pylist()
    assert out == ["x-1", None, None, None]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": ""}, "model must be"),
        ({"output": "review"}, "would overwrite"),
        ({"output": "dup"}, "would overwrite"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"id_column": "nope"}, "id_column 'nope' is not a column"),
        ({"id_column": "dup"}, "duplicated values"),
        ({"missing": "drop"}, "missing must be"),
        ({"endpoint": "/v1/completions"}, "not (supported|available)"),
        ({"provider": "acme"}, "Unknown provider"),
    ],
)
def test_bad_arguments_are_refused_before_any_http_call(client, emu, kwargs, words):
    df = pd.DataFrame({"review": ["good", "bad"], "dup": [1, 1]})
    emu.clear_log()
    args = {"model": model_for(client), "client": client, **kwargs}
    with pytest.raises(nb.NbbatchError, match=words):
        nb.submit(df, "{review}", **args)
    assert emu.request_log == []


def test_data_must_be_a_frame_or_series(client):
    with pytest.raises(nb.InputError, match="DataFrame or Series"):
        nb.submit(["a", "b"], "{}", model=model_for(client), client=client)  # type: ignore[arg-type]


def test_no_key_and_no_client_says_how_to_fix():
    with pytest.raises(nb.ConfigError, match="OPENAI_API_KEY.*provider='local'"):
        nb.submit(pd.DataFrame({"a": ["x"]}), "{a}", model="gpt-4o-mini")
