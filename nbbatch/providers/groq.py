"""Groq's batch API through its official ``groq`` SDK.

Why ``groq`` and not ``openai`` with Groq's address: ``groq`` 1.x speaks the whole batch
API (``files.create(purpose="batch")``, ``batches.create/retrieve/list/cancel``,
``files.content``) under ``https://api.groq.com/openai/v1``, and it is the client Groq's
users already hold (``groq.Groq``), so ``client=`` takes it as it is.

The wire is OpenAI's: the same input lines, the same batch object (status names
``validating`` ... ``cancelled``, ``request_counts``, ``errors``), the same output and
error lines, and OpenAI-shaped error bodies (``{"error": {"message", "type", "code"}}``),
so only the SDK, the limits and the completion window differ from the OpenAI provider.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._compat import CompatProvider, part_file_name
from .base import BatchInfo, RequestSpec
from .openai import _info as _openai_info

#: The completion window nbbatch asks for. The SDK's ``batches.create`` docstring
#: (groq 1.7, groq/resources/batches.py) says "Durations from `24h` to `7d` are
#: supported"; nbbatch's deadlines are planned around 24 hours, as with OpenAI.
COMPLETION_WINDOW = "24h"


class GroqProvider(CompatProvider):
    """Groq's batch API (``groq.Groq``)."""

    name = "groq"
    label = "Groq"
    default_endpoint = "/v1/chat/completions"
    key_variables = ("GROQ_API_KEY",)
    base_url_variable = "GROQ_BASE_URL"
    client_types = ("groq:Groq", "groq:AsyncGroq")
    prices_provider = "groq"  # genai-prices' "groq" table
    # "Pricing is at a 25% cost discount compared to synchronous API pricing"
    # (console.groq.com/docs/batch): where genai-prices has no Groq batch rate (it has
    # one for the gpt-oss models only), a batch costs three quarters of real time.
    batch_price_share = 0.75
    emulator_prefix = "/groq"
    sdk_module = "groq"
    sync_class = "Groq"
    async_class = "AsyncGroq"
    sdk_error_class = "GroqError"

    # Limits per batch. The input file "can be up to 100 MB in size" (the SDK's
    # batches.create docstring, groq 1.7; the same figure in
    # https://leeroopedia.com/index.php/Principle:Groq_Groq_python_Batch_Input_Preparation).
    # No per-batch request count is published where we looked
    # (https://console.groq.com/docs/batch): 50,000 is nbbatch's own cap (OpenAI's
    # figure), so one part stays a size the emulator and the ledger handle well.
    max_requests = 50_000
    max_bytes = 95 * 1024 * 1024

    # -- hooks ---------------------------------------------------------------------------------
    def _create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> Any:
        name = part_file_name(metadata)
        uploaded = self.client.files.create(
            file=(name, jsonl, "application/jsonl"), purpose="batch"
        )
        return self.client.batches.create(
            input_file_id=uploaded.id,
            endpoint=spec.endpoint,
            completion_window=COMPLETION_WINDOW,
            metadata=metadata,
        )

    def _info(self, batch: Any) -> BatchInfo:
        # The batch object is OpenAI's, field for field (groq/types/batch_*_response.py).
        return _openai_info(batch)

    def _batches(self) -> Iterable[Any]:
        # One page, newest first (GET /openai/v1/batches takes no cursor in the SDK).
        batches = self.client.batches.list().data or []
        return sorted(batches, key=lambda b: -b.created_at)

    def _created_at(self, batch: Any) -> float:
        return float(batch.created_at)

    def _is_part(self, batch: Any, metadata: dict[str, str]) -> bool:
        meta = batch.metadata if isinstance(batch.metadata, dict) else {}
        return all(meta.get(k) == v for k, v in metadata.items())

    # -- models ----------------------------------------------------------------------------------
    def find_model(self, model: str) -> bool | list[str] | None:
        """``models.retrieve``; on a 404, ``models.list`` for the ids there are."""
        sdk = self.sdk()
        try:
            self.client.models.retrieve(model)
            return True
        except sdk.APIStatusError as exc:
            if exc.status_code not in (404, 405):
                raise self._error(exc, f"looking up model {model!r}") from exc
        except self._errors() as exc:
            raise self._error(exc, f"looking up model {model!r}") from exc
        try:
            ids = [m.id for m in self.client.models.list().data]
        except sdk.APIStatusError as exc:
            if exc.status_code in (404, 405):
                return None
            raise self._error(exc, "listing models") from exc
        except self._errors() as exc:
            raise self._error(exc, "listing models") from exc
        return True if model in ids else ids
