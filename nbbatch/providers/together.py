"""Together AI's batch API through its official ``together`` SDK.

Why ``together`` and not ``openai`` with Together's address: ``together`` 3.x speaks the
batch API (``files.upload(purpose="batch-api")``, ``batches.create/retrieve/list/
cancel``, ``files.content``), and Together's batch object is not OpenAI's, so the
``openai`` SDK would misread it. Its docs: https://docs.together.ai/docs/inference/batch/
overview (limits, discount) and .../batch/manage (status names, output and error files).

What differs from OpenAI:

- the input file is uploaded with purpose ``"batch-api"``, by the SDK's own upload
  flow (a redirect to storage, then a ``preprocess`` call), from a file on disk;
- a batch carries no metadata: the input file's name names the job part, so a batch
  whose create call went unrecorded is found again by it;
- the batch object is ``{id, status, progress, input_file_id, output_file_id,
  error_file_id, error, created_at (ISO time), ...}``, with the statuses
  ``VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED`` and no request
  counts; ``batches.create`` answers ``{"job": {...}, "warning": ...}``;
- the completion window is 24 hours and "cannot be changed" (overview page), so none is
  sent; the models list is ``GET /v1/models``, a JSON array
  (https://docs.together.ai/reference/models), which the 3.x SDK has no method for;
- the chat body's output limit is ``max_tokens`` (Together's chat API), not OpenAI's
  ``max_completion_tokens``; real-time requests go through the SDK's
  ``chat.completions.create`` with the same body.

Output lines are ``{"id": "br_...", "custom_id", "response": {"status_code", "body"}}``
with the chat completion in ``body``: the shape of a real output file loaded in
Together's own cookbook (togethercomputer/together-cookbook,
Evals/Batch_Inference_Evals.ipynb, "Step 3"). That is OpenAI's line without ``error``
and ``request_id``, which the OpenAI parser reads as it is (a missing ``error`` is no
error). Per-request failures are in the error file (manage page); its line shape is not
shown in what we read, so it is read as OpenAI's: the part least proven against the
real service.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._errors import ProviderError
from ._compat import CompatProvider, part_file_name
from .base import BatchInfo, RequestSpec

#: Statuses after which a batch no longer changes (the manage page's table).
ENDED = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})


class TogetherProvider(CompatProvider):
    """Together AI's batch API (``together.Together``)."""

    name = "together"
    label = "Together AI"
    default_endpoint = "/v1/chat/completions"
    key_variables = ("TOGETHER_API_KEY",)
    base_url_variable = "TOGETHER_BASE_URL"
    client_types = ("together:Together", "together:AsyncTogether")
    prices_provider = "together"  # genai-prices' "together" table
    emulator_prefix = "/together"
    sdk_module = "together"
    sync_class = "Together"
    async_class = "AsyncTogether"
    sdk_error_class = "TogetherError"

    # "Up to 50,000 requests per batch. Up to 100 MB per input file."
    # (https://docs.together.ai/docs/inference/batch/overview, "Rate limits"); less a
    # margin on the size, as for OpenAI.
    max_requests = 50_000
    max_bytes = 95 * 1024 * 1024

    # -- requests -------------------------------------------------------------------------------
    def body(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """OpenAI's chat body with Together's ``max_tokens`` for the output limit."""
        body = super().body(spec, prompt)
        if "max_completion_tokens" in body and "max_completion_tokens" not in spec.params:
            body["max_tokens"] = body.pop("max_completion_tokens")
        return body

    # -- hooks ----------------------------------------------------------------------------------
    def _create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> Any:
        # The SDK uploads from a path (it streams the file to the storage URL it is
        # given); check=False skips its local check of fine-tuning datasets, which is
        # not the format of a batch input.
        with tempfile.TemporaryDirectory(prefix="nbbatch-together-") as tmp:
            path = Path(tmp) / part_file_name(metadata)
            path.write_bytes(jsonl)
            uploaded = self.client.files.upload(file=path, purpose="batch-api", check=False)
        created = self.client.batches.create(input_file_id=uploaded.id, endpoint=spec.endpoint)
        if created.job is None:
            raise ProviderError(
                f"{self.label} created no batch job and said why not: "
                f"{created.warning or 'no reason given'}; nothing was recorded.",
                provider=self.name,
            )
        return created.job

    def _info(self, batch: Any) -> BatchInfo:
        status = str(batch.status or "VALIDATING")
        failure = None
        if status == "FAILED":
            failure = batch.error or "the provider failed the batch without saying why"
        return BatchInfo(
            batch_id=batch.id,
            status=status.lower(),
            ended=status in ENDED,
            # Together reports progress in percent, not request counts.
            total=0,
            done=0,
            failed=0,
            failure=failure,
            # Requests a cancelled or expired batch never ran may have no line at all:
            # they end cancelled / expired rather than lost.
            unfinished={"CANCELLED": "cancelled", "EXPIRED": "expired"}.get(status),
            raw=batch.model_dump(mode="json", by_alias=True),
        )

    def _batches(self) -> Iterable[Any]:
        return sorted(self.client.batches.list(), key=self._created_at, reverse=True)

    def _created_at(self, batch: Any) -> float:
        created = batch.created_at
        if isinstance(created, _dt.datetime):
            if created.tzinfo is None:
                created = created.replace(tzinfo=_dt.UTC)
            return created.timestamp()
        return 0.0

    def _is_part(self, batch: Any, metadata: dict[str, str]) -> bool:
        if not batch.input_file_id:
            return False
        return bool(
            self.client.files.retrieve(batch.input_file_id).filename == (part_file_name(metadata))
        )

    # -- models ---------------------------------------------------------------------------------
    def find_model(self, model: str) -> bool | list[str] | None:
        """``GET /v1/models`` (a JSON array of ``{id, type, ...}``) through the SDK."""
        sdk = self.sdk()
        try:
            found = self.client.get("/v1/models", cast_to=object)
        except sdk.APIStatusError as exc:
            if exc.status_code in (404, 405):
                return None
            raise self._error(exc, "listing models") from exc
        except self._errors() as exc:
            raise self._error(exc, "listing models") from exc
        if not isinstance(found, list):
            return None
        ids = [str(m.get("id")) for m in found if isinstance(m, dict) and m.get("id")]
        return True if model in ids else ids
