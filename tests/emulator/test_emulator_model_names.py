"""Model names: the emulator accepts the names the services accept (current models,
documented aliases, dated snapshots), refuses the others per line, and takes names and a
responder of one's own from the command line too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anthropic
import openai
import pytest
from emu_helpers import anthropic_client, chat_line, openai_client, run_message_batch
from google import genai
from google.genai import types as genai_types
from test_emulator_fidelity import msg, openai_batch

from nbbatch import emulator


def gemini(base_url: str) -> genai.Client:
    return genai.Client(api_key="test", http_options=genai_types.HttpOptions(base_url=base_url))


# Names the issue lists as refused on main: the Gemini batch guide's own example model,
# OpenAI's o3 and a dated gpt-3.5-turbo snapshot, and Anthropic's claude-sonnet-4-0 alias.
OPENAI_NAMES = ["o3", "gpt-3.5-turbo-0125", "o3-2025-04-16", "gpt-4.1-2025-04-14"]
ANTHROPIC_NAMES = ["claude-sonnet-4-0", "claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"]
GEMINI_NAMES = ["gemini-3-flash-preview", "gemini-2.0-flash-001"]


def test_openai_accepts_current_models_aliases_and_snapshots(
    emu: emulator.Emulator, oai: openai.OpenAI
) -> None:
    for name in OPENAI_NAMES:
        assert oai.models.retrieve(name).id == name
        reply = oai.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
    assert "o3" in [m.id for m in oai.models.list()]
    for name in OPENAI_NAMES:  # a batch holds one model
        _, out, _ = openai_batch(oai, [chat_line("a", "hi", model=name)])
        assert out["a"]["response"]["status_code"] == 200
    rows = [chat_line("typo", "hi", model="gtp-4o-mini")]
    _, _, err = openai_batch(oai, rows)
    assert err["typo"]["response"]["body"]["error"]["code"] == "model_not_found"


def test_anthropic_accepts_current_models_aliases_and_snapshots(ant: anthropic.Anthropic) -> None:
    for name in ANTHROPIC_NAMES:
        assert ant.models.retrieve(name).id == name
    results = run_message_batch(
        ant, [msg(n, model=n) for n in ANTHROPIC_NAMES] + [msg("typo", model="claude-sonet-4-0")]
    )
    assert all(results[n].type == "succeeded" for n in ANTHROPIC_NAMES)
    assert results["typo"].type == "errored"


@pytest.mark.parametrize("typo", ["claude-haiku-4-5x", "claude-opus-4-50", "claude-sonnet-4-0b"])
def test_anthropic_refuses_a_known_name_with_letters_added(
    ant: anthropic.Anthropic, typo: str
) -> None:
    # genai-prices recognises Claude names by prefix (for prices any suffix is the same
    # model); the service knows only the name itself and its dated snapshots.
    with pytest.raises(anthropic.NotFoundError):
        ant.models.retrieve(typo)
    results = run_message_batch(ant, [msg("typo", model=typo)])
    assert results["typo"].type == "errored"


def test_gemini_accepts_the_batch_guides_model(emu: emulator.Emulator) -> None:
    g = gemini(emu.gemini_base_url)
    for name in GEMINI_NAMES:
        assert g.models.get(model=name).name == f"models/{name}"
        reply = g.models.generate_content(model=name, contents="hi")
        assert reply.text
    job = g.batches.create(
        model="gemini-3-flash-preview", src=[{"contents": [{"parts": [{"text": "x"}]}]}]
    )
    assert job.name
    with pytest.raises(genai.errors.ClientError) as info:
        g.models.get(model="gemini-3-flsh-preview")
    assert info.value.code == 404


def test_the_environment_variable_adds_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBBATCH_EMULATOR_MODELS", "acme-7, acme-8")
    with emulator.start() as emu, openai_client(emu) as oai, anthropic_client(emu) as ant:
        assert oai.models.retrieve("acme-7").id == "acme-7"
        assert ant.models.retrieve("acme-8").id == "acme-8"
        reply = oai.chat.completions.create(
            model="acme-8", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
    monkeypatch.delenv("NBBATCH_EMULATOR_MODELS")
    with emulator.start() as emu, openai_client(emu) as oai:
        with pytest.raises(openai.NotFoundError):
            oai.models.retrieve("acme-7")


def serve(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NBBATCH_EMULATOR_MODELS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(emulator.__file__).parents[2]), str(cwd)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first.startswith("nbbatch emulator serving on "):
        proc.wait(30)
        raise AssertionError(first + (proc.stderr.read() if proc.stderr else ""))
    return proc, first.split()[-1]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_the_command_line_takes_models_and_a_responder(tmp_path: Path) -> None:
    (tmp_path / "fake_answers.py").write_text(
        textwrap.dedent(
            """
            def answer(request):
                return f"{request.model} says {request.prompt.upper()}"
            """
        )
    )
    proc, url = serve(
        ["--models", "acme-1,acme-2", "--models", "acme-3", "--responder", "fake_answers:answer"],
        tmp_path,
    )
    try:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k") as oai:
            for name in ("acme-1", "acme-2", "acme-3"):
                assert oai.models.retrieve(name).id == name
            reply = oai.chat.completions.create(
                model="acme-2", messages=[{"role": "user", "content": "hello"}]
            )
            assert reply.choices[0].message.content == "acme-2 says HELLO"
    finally:
        stop(proc)


def test_a_responder_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(emulator.__file__).parents[2])}
    for spec, words in (
        ("no_colon", "module:function"),
        ("missing_module_xyz:f", "cannot import"),
        ("os:no_such_function", "has no"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "nbbatch.emulator", "--responder", spec],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert done.returncode != 0 and words in done.stderr, done.stderr
