"""Embedded emulator of the OpenAI Batch API and the Anthropic Message Batches API.

A real HTTP server on loopback that the official ``openai`` and ``anthropic`` SDKs talk
to through ``base_url``, with the full batch life cycle, output/error files and results
streams, deterministic fault injection, and a deterministic responder that is honest
about being a simulator. It shares no code with the rest of nbbatch on purpose: it is an
independent reading of both wire protocols, so a misreading on one side shows up as a
failure on the other.

>>> from nbbatch import emulator
>>> with emulator.start(processing_seconds=0.1) as emu:       # doctest: +SKIP
...     client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")

The text reply to a last user message ``prompt`` is exactly :func:`echo_text` of it:
``"[nbbatch emulator] echo: " + prompt``. Embeddings have 256 dimensions unless the
request sets ``dimensions``.
"""

from ._emulator import SHARED_TIMINGS, Emulator, shared, start
from ._faults import FAIL_MARKER, TRANSIENT_MARKER
from ._responder import DEFAULT_EMBEDDING_DIMENSIONS, echo_text

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "FAIL_MARKER",
    "SHARED_TIMINGS",
    "TRANSIENT_MARKER",
    "Emulator",
    "echo_text",
    "shared",
    "start",
]
