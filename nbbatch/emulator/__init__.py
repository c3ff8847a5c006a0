"""Embedded emulator of the OpenAI Batch API, the Anthropic Message Batches API and Gemini
Batch Mode.

A real HTTP server on loopback that the official ``openai``, ``anthropic`` and
``google-genai`` SDKs talk to through their base URL (Gemini's under ``/gemini``), with
the full batch life cycle, output/error files and results streams, deterministic fault
injection, and a deterministic responder that is honest about being a simulator. It
shares no code with the rest of nbbatch on purpose: it is an independent reading of the
wire protocols, so a misreading on one side shows up as a failure on the other.

>>> from nbbatch import emulator
>>> with emulator.start(processing_seconds=0.1) as emu:       # doctest: +SKIP
...     client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")

The text reply to a last user message ``prompt`` is exactly :func:`echo_text` of it:
``"[nbbatch emulator] echo: " + prompt``; structured replies are valid against their
schema, with numbers spread over their range and every enum value in use over a few
dozen rows. ``start(responder=fn)`` answers with ``fn(request) -> str | dict`` instead,
a test double of one's own (:func:`keyword_responder` is a small one for labels);
``start(quality={"gpt-4o-mini": 0.88})`` makes a model agree with it on that share of
rows only (:func:`with_quality` gives a responder a quality of its own).
Embeddings have each model's real size (:func:`embedding_dimensions`: 1536 for
``text-embedding-3-small``, 3072 for ``text-embedding-3-large`` and
``gemini-embedding-001``) unless the request sets ``dimensions`` /
``output_dimensionality``.

The background emulator takes no responder: it is one process shared by every kernel,
and a function cannot cross into it; test against answers of your own with ``start()``.

``provider="local"`` runs on :func:`background`, one detached emulator process per
ledger home that keeps its batches on disk, so jobs survive a kernel restart;
:func:`stop_background` stops it. It answers only requests carrying its home's key
(``Background.token``, kept owner-only in the home), so other users of the machine
cannot reach it.
"""

from typing import TYPE_CHECKING, Any

from ._faults import FAIL_MARKER, TRANSIENT_MARKER
from ._models import DEFAULT_EMBEDDING_DIMENSIONS, embedding_dimensions
from ._responder import (
    QualityResponder,
    Request,
    Responder,
    default_responder,
    echo_text,
    keyword_responder,
    with_quality,
)

if TYPE_CHECKING:
    from ._background import Background, background, stop_background
    from ._emulator import SHARED_TIMINGS, Emulator, shared, start

# The server (uvicorn, starlette) is imported when first used, not by ``import nbbatch``.
_LAZY = ("SHARED_TIMINGS", "Emulator", "shared", "start")
# Finding or starting the background emulator needs no server code in this process.
_BACKGROUND = ("Background", "background", "stop_background")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import _emulator

        return getattr(_emulator, name)
    if name in _BACKGROUND:
        from . import _background

        return getattr(_background, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "Background",
    "FAIL_MARKER",
    "QualityResponder",
    "Request",
    "Responder",
    "SHARED_TIMINGS",
    "TRANSIENT_MARKER",
    "Emulator",
    "background",
    "default_responder",
    "echo_text",
    "embedding_dimensions",
    "keyword_responder",
    "shared",
    "start",
    "stop_background",
    "with_quality",
]
