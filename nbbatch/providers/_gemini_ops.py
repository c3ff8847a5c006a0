"""The Gemini batch read whole, as a long-running operation (a module of its own because
it subclasses the SDK's types: :mod:`.gemini` imports the SDK only when used)."""

from __future__ import annotations

from typing import Any

import pydantic
from google.genai import types


class BatchOperation(pydantic.BaseModel, types.Operation):
    """A batch as the API answers ``GET batches/<id>``: a long-running operation, kept
    whole. Read through the SDK's public ``client.operations.get(operation)``, which
    fetches ``GET {operation.name}`` and hands the JSON to :meth:`from_api_response`, so
    that what ``batches.get`` drops survives: ``metadata.batchStats`` (progress while
    the batch runs) and the operation's ``error`` (why a batch failed)."""

    # name, metadata, done and error are the fields types.Operation declares.
    response: dict[str, Any] | None = None

    @classmethod
    def from_api_response(cls, api_response: Any, is_vertex_ai: bool = False) -> Any:
        """The operation as received (REST JSON, camelCase)."""
        return cls.model_validate(api_response)

    def job(self) -> types.BatchJob:
        """The SDK's ``BatchJob`` for this operation, mapped as ``batches.get`` maps it
        (``BATCH_STATE_*`` becomes ``JOB_STATE_*``, ``output.responsesFile`` the
        ``dest.file_name``, ``inputConfig.fileName`` the ``src.file_name``), plus the
        operation's error."""
        meta = self.metadata or {}
        output = meta.get("output") or {}
        error = self.error or meta.get("error")
        state = str(meta.get("state") or "BATCH_STATE_UNSPECIFIED")
        return types.BatchJob(
            name=self.name or meta.get("name"),
            display_name=meta.get("displayName"),
            state=state.replace("BATCH_STATE_", "JOB_STATE_", 1),  # type: ignore[arg-type]
            create_time=meta.get("createTime"),
            update_time=meta.get("updateTime"),
            end_time=meta.get("endTime"),
            model=meta.get("model"),
            # The requests file, as batches.get maps inputConfig (deleted with the batch
            # when a local job is forgotten).
            src=types.BatchJobSource(file_name=source["fileName"])
            if (source := meta.get("inputConfig") or {}).get("fileName")
            else None,
            dest=types.BatchJobDestination(file_name=output["responsesFile"])
            if output.get("responsesFile")
            else None,
            error=types.JobError(code=error.get("code"), message=error.get("message"))
            if isinstance(error, dict)
            else None,
        )
