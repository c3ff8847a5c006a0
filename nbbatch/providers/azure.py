"""Azure OpenAI global batch through the official ``openai`` SDK's ``AzureOpenAI`` client.

Azure speaks OpenAI's Batch API under its own addresses: files and batches under
``{endpoint}/openai/`` with an ``api-version`` query on every request and the key in an
``api-key`` header (the SDK's ``AzureOpenAI`` does all three). What differs for nbbatch:

- the ``model`` of a request line is a *deployment* name, chosen by whoever deployed the
  model (often the model's own name). Prices, output limits and context windows are
  those of the model it serves: :meth:`AzureProvider.base_model`.
- a request line's ``url`` and the batch's ``endpoint`` are ``/chat/completions``, without
  ``/v1`` (the JSONL example of learn.microsoft.com/azure/ai-foundry/openai/how-to/batch,
  "Getting started with Azure OpenAI batch deployments", with the deployment name in
  ``"model"``; the batch is created with ``completion_window="24h"`` from a file uploaded
  with ``purpose="batch"``, as OpenAI's). Azure "aims to process batch requests within 24
  hours" and does not expire jobs that take longer (same page).
- the ``api-version`` is part of where a job's requests go: it is recorded with the job in
  its address (``https://x.openai.azure.com/openai/?api-version=2024-10-21``), so that
  ``nb.attach`` and ``nbbatch status`` rebuild the same client.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .._errors import ConfigError
from ._lazy import lazy_module
from .base import BatchInfo, Refusal
from .openai import OpenAIProvider

if TYPE_CHECKING:
    import openai
else:  # imported on first use: registering the provider imports no SDK
    openai = lazy_module("openai")

#: The form of an ``api-version``: a date, a preview of one, or the ``v1`` API. The
#: Azure batch page above notes that newer models need a newer version than
#: ``2024-10-21`` (the GA version); which model needs which is not checked here.
_API_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2}(-preview)?|v1|latest|preview)")
#: "the configured limit of 30K for the deployment 'gpt-4.1-batch'" in Azure's
#: ``token_limit_exceeded`` message (see :meth:`AzureProvider.quota_refusal`).
_STATED_LIMIT = re.compile(r"configured limit of\s*([\d.,]+)\s*([KMB]?)\b", re.IGNORECASE)
_SCALE = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}
#: ``NBBATCH_AZURE_DEPLOYMENTS="my-4o=gpt-4o,cheap=gpt-4o-mini"``: deployments named
#: otherwise than their model, for processes that did not set them in code.
DEPLOYMENTS_VARIABLE = "NBBATCH_AZURE_DEPLOYMENTS"


def deployment(name: str, model: str) -> None:
    """Say that Azure deployment ``name`` serves ``model`` (e.g. ``"gpt-4o-mini"``): it is
    priced, and its limits looked up, as that model. A deployment named like its model
    needs nothing."""
    AzureProvider.deployments[name] = model


class AzureProvider(OpenAIProvider):
    """Azure OpenAI global batch (an ``openai.AzureOpenAI`` client)."""

    name = "azure"
    label = "Azure OpenAI"
    default_endpoint = "/v1/chat/completions"
    # The SDK reads these when given no key / address / version (openai.lib.azure).
    key_variables = ("AZURE_OPENAI_API_KEY",)
    # A Microsoft Entra ID token in the environment (the SDK's variable); a key, when
    # both are set, is what nbbatch sends.
    token_variables = ("AZURE_OPENAI_AD_TOKEN",)
    base_url_variable = "AZURE_OPENAI_ENDPOINT"
    version_variable = "OPENAI_API_VERSION"
    client_types = ("openai.lib.azure:AzureOpenAI", "openai.lib.azure:AsyncAzureOpenAI")
    # A deployment may carry its model's name: OpenAI's names are Azure's too (so an
    # AzureOpenAI client with model="gpt-4o-mini" is not taken for a mistake).
    model_prefixes = OpenAIProvider.model_prefixes
    claims_unknown_models = False
    prices_provider = "azure"  # genai-prices' Azure table
    emulator_prefix = "/azure/openai"
    # The per-file limits of Azure's global batch were not found in the pages read (the
    # batch page's "Global batch limits" section); OpenAI's, with its margin, are kept.

    #: Deployment name -> the model it serves (see :func:`deployment`).
    deployments: ClassVar[dict[str, str]] = {}

    @classmethod
    def base_model(cls, model: str) -> str:
        """The model deployment ``model`` serves: set with :func:`deployment` or in
        ``NBBATCH_AZURE_DEPLOYMENTS``; else the deployment's own name."""
        if model in cls.deployments:
            return cls.deployments[model]
        for pair in os.environ.get(DEPLOYMENTS_VARIABLE, "").split(","):
            name, _, base = pair.partition("=")
            if name.strip() == model and base.strip():
                return base.strip()
        return model

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """Azure's enqueued-token quota is per subscription and region, not OpenAI's
        usage tiers: none is assumed."""
        return None

    # The queue is counted per deployment (``spec.model`` is the deployment): "the
    # total number of tokens across all enqueued and in-progress batch jobs" of the
    # deployment, against the limit configured for it (Microsoft's answer in
    # learn.microsoft.com/en-us/answers/questions/2285577). A batch over it is created
    # and fails validation with ``token_limit_exceeded``, as OpenAI's; quota_per_model,
    # under_review and discard_refused are OpenAI's.
    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """A batch that failed with ``token_limit_exceeded``; Azure's message states the
        deployment's limit rounded ("...the configured limit of 30K for the deployment
        'gpt-4.1-batch'. Please either increase the limit or try again once the current
        jobs have finished.", the page above), OpenAI's wording is read too."""
        refusal = super().quota_refusal(info=info, error=error)
        if refusal is None or refusal.limit is not None:
            return refusal
        found = _STATED_LIMIT.search(refusal.message)
        if found is None:
            return refusal
        try:
            amount = float(found.group(1).replace(",", ""))
        except ValueError:
            return refusal
        # "30K" may be a rounded figure: the waves fill a share of it, not all of it.
        return Refusal(refusal.message, int(amount * _SCALE[found.group(2).upper()]))

    @classmethod
    def wire_endpoint(cls, endpoint: str) -> str:
        """``/chat/completions``: Azure's lines and batches name the path without ``/v1``."""
        return endpoint.removeprefix("/v1")

    # -- clients ---------------------------------------------------------------------------
    @classmethod
    def address_of(cls, client: Any) -> str:
        """The client's base URL with its ``api-version``: both decide where requests go."""
        version = getattr(client, "_api_version", None)
        url = str(client.base_url)
        return f"{url}?api-version={version}" if version else url

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """An ``openai.AzureOpenAI`` client for an address :meth:`address_of` wrote (or,
        with none, from AZURE_OPENAI_ENDPOINT and OPENAI_API_VERSION)."""
        return openai.AzureOpenAI(api_key=api_key, **cls._where(base_url))

    @classmethod
    def make_token_client(cls, *, token: str, base_url: str | None) -> Any:
        """An ``openai.AzureOpenAI`` client sending a Microsoft Entra ID ``token`` (from
        ``AZURE_OPENAI_AD_TOKEN``, the variable the SDK reads) as ``Authorization:
        Bearer``, at the same address as :meth:`make_client`."""
        return openai.AzureOpenAI(azure_ad_token=token, **cls._where(base_url))

    @classmethod
    def _where(cls, base_url: str | None) -> dict[str, Any]:
        """``base_url`` and ``api_version`` keywords for an address :meth:`address_of`
        wrote; with none, the SDK reads AZURE_OPENAI_ENDPOINT."""
        version: str | None = None
        if base_url is not None:
            parts = urlsplit(base_url)
            found = parse_qs(parts.query).get("api-version")
            version = found[0] if found else None
            base_url = urlunsplit(parts._replace(query=""))
        version = version or os.environ.get(cls.version_variable)
        check_api_version(version)
        if base_url is None and not os.environ.get(cls.base_url_variable or ""):
            raise ConfigError(
                "No Azure OpenAI endpoint: set AZURE_OPENAI_ENDPOINT (https://<resource>"
                ".openai.azure.com), or pass client=openai.AzureOpenAI(...).",
                provider=cls.name,
            )
        if base_url is None:
            return {"api_version": version}
        return {"base_url": base_url, "api_version": version}

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """``openai.AzureOpenAI`` with an ``AsyncAzureOpenAI``'s key, address, api-version
        and settings (a plain ``openai.OpenAI`` would send neither the version nor the
        ``api-key`` header)."""
        if not isinstance(client, openai.AsyncAzureOpenAI):
            check_api_version(getattr(client, "_api_version", None))
            return client
        if client._azure_ad_token_provider is not None:
            raise ConfigError(
                "an AsyncAzureOpenAI client with an azure_ad_token_provider cannot be "
                "polled from a thread: pass an openai.AzureOpenAI client with a synchronous "
                "token provider instead.",
                provider=cls.name,
            )
        check_api_version(client._api_version)
        settings: dict[str, Any] = {
            "api_key": None if client._azure_ad_token else client.api_key,
            "azure_ad_token": client._azure_ad_token,
            "api_version": client._api_version,
            "base_url": str(client.base_url),
            "organization": client.organization,
            "project": client.project,
            "timeout": client.timeout,
            "max_retries": client.max_retries,
            "default_headers": client._custom_headers,
        }
        return openai.AzureOpenAI(**settings)


def check_api_version(version: str | None) -> None:
    """Refuse a missing or malformed ``api-version`` before anything is sent."""
    if version and _API_VERSION.fullmatch(version):
        return
    said = "no api-version" if not version else f"api-version {version!r} is not one"
    raise ConfigError(
        f"Azure OpenAI needs an api-version on every request, and {said} (a date such as "
        "'2024-10-21', the GA version Azure's batch guide uses, a '-preview' of one, or "
        "'v1'). Pass api_version= to openai.AzureOpenAI, or set OPENAI_API_VERSION.",
        provider="azure",
    )
