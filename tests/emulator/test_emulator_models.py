"""The models endpoints of both APIs, as the official SDKs call them (strict validation)."""

from __future__ import annotations

import anthropic
import openai
import pytest
from emu_helpers import anthropic_client, openai_client, raw

from nbbatch import emulator


def test_openai_lists_and_retrieves_real_models(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "text-embedding-3-small"):
        assert name in ids
    assert not any(i.startswith("claude") for i in ids)
    model = oai.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object) == ("gpt-4o-mini", "model") and model.created > 0


def test_openai_unknown_model_is_a_404_model_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gtp-4o-mini")
    assert info.value.code == "model_not_found"
    assert "gtp-4o-mini" in info.value.message


def test_anthropic_lists_pages_and_retrieves_real_models(ant: anthropic.Anthropic) -> None:
    first = ant.models.list(limit=2)
    assert len(first.data) == 2 and first.has_more and first.last_id == first.data[-1].id
    ids = [m.id for m in ant.models.list(limit=3)]  # the SDK follows after_id
    assert len(ids) == len(set(ids)) > 3
    for name in ("claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-4-5"):
        assert name in ids
    assert not any(i.startswith("gpt") for i in ids)
    info = ant.models.retrieve("claude-haiku-4-5")
    assert info.type == "model" and info.display_name and info.lifecycle == "active"


def test_anthropic_unknown_model_is_a_404_not_found_error(
    emu: emulator.Emulator, ant: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        ant.models.retrieve("claude-hiaku-4-5")
    assert info.value.type == "not_found_error"
    status, _, body = raw(
        f"{emu.anthropic_base_url}/v1/models/nope", headers={"anthropic-version": "2023-06-01"}
    )
    assert status == 404 and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and body["request_id"]


def test_models_knob_adds_names_to_both_apis() -> None:
    with emulator.start(models=["acme-1"]) as emu:
        with openai_client(emu) as oai, anthropic_client(emu) as ant:
            assert oai.models.retrieve("acme-1").id == "acme-1"
            assert ant.models.retrieve("acme-1").id == "acme-1"
            assert "acme-1" in [m.id for m in oai.models.list()]
        emu.configure(models=["acme-2"])
        with openai_client(emu) as oai:
            assert oai.models.retrieve("acme-2").id == "acme-2"
            with pytest.raises(openai.NotFoundError):
                oai.models.retrieve("acme-1")
    with pytest.raises(ValueError):
        emulator.start(models=[""])
