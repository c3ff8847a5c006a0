"""AWS Bedrock batch inference ("model invocation jobs") through ``boto3``.

A batch is one model invocation job: the request lines are uploaded to S3 as one
``.jsonl`` object, ``bedrock.create_model_invocation_job`` is pointed at it, and when the
job has ended the ``<input>.jsonl.out`` objects Bedrock wrote under the output prefix
are read back from S3 and normalised into the common row-result table.

Facts about the service (each cited where it is used):

- the wire calls and statuses are botocore's ``bedrock`` service model (2023-04-20,
  shipped with boto3 1.44): ``POST /model-invocation-job`` (CreateModelInvocationJob),
  ``GET /model-invocation-job/{jobIdentifier}``, ``POST .../{jobIdentifier}/stop``,
  ``GET /model-invocation-jobs``; statuses Submitted, Validating, Scheduled, InProgress,
  Completed, PartiallyCompleted, Failed, Stopping, Stopped, Expired; errors
  ValidationException, ServiceQuotaExceededException, ThrottlingException, ... as
  ``{"message": ...}`` bodies with the type in ``x-amzn-ErrorType``.
- input lines ``{"recordId", "modelInput"}`` where ``modelInput`` is the model's own
  InvokeModel body (Anthropic: Messages with ``anthropic_version: "bedrock-2023-05-31"``)
  or, for ``modelInvocationType="Converse"``, the Converse request body
  (docs.aws.amazon.com/bedrock/latest/userguide/batch-inference-data.html);
- output: one ``.jsonl.out`` per input file, each line ``{"recordId", "modelInput",
  "modelOutput"}`` or ``{"recordId", "modelInput", "error": {"errorCode",
  "errorMessage"}}``, in no particular order, and a ``manifest.json.out`` with the counts
  (docs.aws.amazon.com/bedrock/latest/userguide/batch-inference-results.html).

Bedrock needs more than an SDK client: an S3 location and an IAM service role that
Bedrock assumes to read and write it. :class:`BedrockBatch` holds them with the two
boto3 clients and is what ``client=`` takes; the job records the bucket, role, region
and endpoints in its address (``base_url``), so ``nb.attach`` and the command line
rebuild the same settings (AWS credentials themselves come from boto3's own chain).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import orjson
import pyarrow as pa

from .._errors import BatchFailedError, ConfigError, InputError, ProviderError
from . import _jsonl
from .base import (
    ROW_RESULT_SCHEMA,
    BatchInfo,
    Provider,
    RequestSpec,
    empty_results,
    failure_row,
    is_transient,
)
from .credentials import is_loopback

#: The environment variables the settings are read from when not given.
BUCKET_VARIABLE = "NBBATCH_BEDROCK_BUCKET"
ROLE_VARIABLE = "NBBATCH_BEDROCK_ROLE_ARN"
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")

# "Minimum number of records per batch inference job" is a Bedrock service quota set per
# model, whose default is 100 (the user guide's batch-inference-data page names the
# quota; its default of 100 per model is stated in the AWS quota listings quoted by
# projects that check it, e.g. "100 is the default of the Amazon Bedrock quota Minimum
# number of records per batch inference job, which is set per model", and measured as
# "minimum records per batch job | 100" in us-east-1). An account whose quota differs
# passes min_records= to BedrockBatch.
MIN_RECORDS = 100
# "Records per batch inference job" is also a per-model quota: 100,000 measured for
# Titan Text Embeddings V2 and Claude Sonnet 4.6 in us-east-1 by the same projects, and
# 50,000 the fallback one of them assumes when it cannot read the quota. nbbatch stays
# under the lower figure; "batch input file size" measured at 1 GB, kept under with a
# margin. AWS's own pages name these quotas without stating their values.
MAX_RECORDS = 50_000
MAX_INPUT_BYTES = 950 * 1000 * 1000

#: The Anthropic API version Bedrock's Messages body names
#: (docs.aws.amazon.com/bedrock/latest/userguide/batch-inference-data.html example).
ANTHROPIC_VERSION = "bedrock-2023-05-31"
#: Anthropic on Bedrock requires max_tokens; nbbatch's default when none is set.
DEFAULT_MAX_TOKENS = 1024

#: The two invocation types (botocore's ModelInvocationType enum), used as endpoints.
INVOKE = "InvokeModel"
CONVERSE = "Converse"

log = logging.getLogger("nbbatch")

#: Statuses after which a job changes no more (botocore's ModelInvocationJobStatus).
ENDED = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})

#: ``us.anthropic.claude-...``: a cross-Region inference profile of a model.
_PROFILE = re.compile(r"^(?:us|eu|apac|au|jp|ca|us-gov|global)\.")
#: What Bedrock takes as a role (botocore: RoleArn).
_ROLE_ARN = re.compile(r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$")
#: What a job name may be (botocore: ModelInvocationJobName).
_JOB_NAME = re.compile(r"[^a-zA-Z0-9+\-.]")


def base_model(model: str) -> str:
    """The model a Bedrock model id stands for: a cross-Region inference profile
    (``us.anthropic.claude-...``) or a model ARN reduced to the foundation model id."""
    name = model.rsplit("foundation-model/", 1)[-1]
    return _PROFILE.sub("", name)


def is_anthropic(model: str) -> bool:
    """Whether ``model`` is an Anthropic model on Bedrock (it takes the Messages body)."""
    return base_model(model).startswith("anthropic.")


class BedrockBatch:
    """What nbbatch needs to run Bedrock batch inference, passed as ``client=``.

    ``bucket``: ``"s3://bucket/prefix"`` where inputs are uploaded and outputs written
    (default ``$NBBATCH_BEDROCK_BUCKET``); ``role_arn``: the IAM service role Bedrock
    assumes to read and write it (default ``$NBBATCH_BEDROCK_ROLE_ARN``); ``region``
    (default ``$AWS_REGION``, ``$AWS_DEFAULT_REGION``, else the clients' own);
    ``bedrock`` and ``s3``: boto3 clients (default: made for ``region`` from boto3's
    credential chain); ``min_records``: your account's "Minimum number of records per
    batch inference job" quota for the model, when it is not Bedrock's default 100.
    """

    def __init__(
        self,
        bucket: str | None = None,
        role_arn: str | None = None,
        region: str | None = None,
        *,
        bedrock: Any = None,
        s3: Any = None,
        min_records: int = MIN_RECORDS,
    ) -> None:
        bucket = bucket or os.environ.get(BUCKET_VARIABLE)
        role_arn = role_arn or os.environ.get(ROLE_VARIABLE)
        if not bucket:
            raise ConfigError(
                f"Bedrock batch inference needs an S3 location for its input and output: "
                f"pass BedrockBatch(bucket='s3://my-bucket/prefix', ...) or set "
                f"{BUCKET_VARIABLE}.",
                provider="bedrock",
            )
        if not role_arn:
            raise ConfigError(
                "Bedrock batch inference needs the ARN of an IAM service role Bedrock "
                "assumes to read and write the bucket: pass BedrockBatch(role_arn="
                f"'arn:aws:iam::123456789012:role/...', ...) or set {ROLE_VARIABLE}.",
                provider="bedrock",
            )
        parsed = urlparse(bucket if "://" in bucket else f"s3://{bucket}")
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(
                f"bucket must look like 's3://my-bucket/prefix', got {bucket!r}.",
                provider="bedrock",
            )
        if not _ROLE_ARN.match(role_arn):
            raise ConfigError(
                f"role_arn must be an IAM role's ARN ('arn:aws:iam::123456789012:role/name'), "
                f"got {role_arn!r}.",
                provider="bedrock",
            )
        if not isinstance(min_records, int) or min_records < 1:
            raise ConfigError(f"min_records must be a positive int, got {min_records!r}.")
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.role_arn = role_arn
        self.min_records = min_records
        region = region or next(
            (os.environ[v] for v in REGION_VARIABLES if os.environ.get(v)), None
        )
        if bedrock is None or s3 is None:
            import boto3

            bedrock = bedrock or boto3.client("bedrock", region_name=region)
            s3 = s3 or boto3.client("s3", region_name=region)
        self.bedrock = bedrock
        self.s3 = s3
        self.region = region or bedrock.meta.region_name
        #: the loopback guard's check (see :meth:`with_options`, :meth:`guarding`)
        self.guard_check: Any = None

    @property
    def bucket(self) -> str:
        """The S3 location, as ``s3://bucket/prefix``."""
        return f"s3://{self.bucket_name}/{self.prefix}".rstrip("/")

    @property
    def base_url(self) -> str:
        """Where the job goes, with what rebuilds these settings (never a credential):
        the Bedrock endpoint, and bucket, role, region and a non-AWS S3 endpoint."""
        query = {"bucket": self.bucket, "role": self.role_arn, "region": self.region or ""}
        s3_url = str(self.s3.meta.endpoint_url)
        if not urlparse(s3_url).hostname or not str(urlparse(s3_url).hostname).endswith(
            "amazonaws.com"
        ):
            query["s3"] = s3_url
        if self.min_records != MIN_RECORDS:
            query["min_records"] = str(self.min_records)
        return f"{str(self.bedrock.meta.endpoint_url).rstrip('/')}/?{urlencode(query)}"

    @classmethod
    def from_url(cls, url: str) -> BedrockBatch:
        """The settings a job recorded in its ``base_url`` (see :attr:`base_url`), with
        clients from boto3's credential chain (a loopback address gets placeholder
        credentials: an emulator takes any)."""
        import boto3

        parsed = urlparse(url)
        query = dict(parse_qsl(parsed.query))
        endpoint = urlunparse(parsed._replace(query="", fragment="")).rstrip("/")
        region = query.get("region") or None
        host = parsed.hostname or ""
        local = is_loopback(endpoint)  # every spelling of this machine (127.0.0.2 too)
        keys: dict[str, Any] = {}
        if local:
            keys = {"aws_access_key_id": "nbbatch-emulator", "aws_secret_access_key": "unused"}
        aws = host.endswith("amazonaws.com")
        bedrock = boto3.client(
            "bedrock",
            region_name=region or "us-east-1",
            endpoint_url=None if aws else endpoint,
            **keys,
        )
        s3 = boto3.client(
            "s3", region_name=region or "us-east-1", endpoint_url=query.get("s3"), **keys
        )
        return cls(
            query.get("bucket"),
            query.get("role"),
            region,
            bedrock=bedrock,
            s3=s3,
            min_records=int(query.get("min_records", MIN_RECORDS)),
        )

    def with_options(self, *, http_client: Any) -> BedrockBatch:
        """A copy whose Bedrock calls first pass the loopback guard of ``http_client``
        (what nbbatch does for a loopback address: boto3 does not send through httpx,
        so the guard's check is asked before each call instead)."""
        copy = object.__new__(BedrockBatch)
        copy.__dict__.update(self.__dict__)
        # The guard is the transport of the httpx2 client nbbatch made for it.
        transport = getattr(http_client, "_transport", None)
        copy.guard_check = getattr(transport, "check", None)
        return copy

    @contextlib.contextmanager
    def guarding(self) -> Iterator[None]:
        """Within this block, each request of these boto3 clients (each retry too)
        first passes the loopback guard, if nbbatch set one (:meth:`with_options`):
        boto3 does not send through httpx, so the guard is asked from boto3's
        ``before-send`` hook. Outside it, the clients are the user's as they were."""
        if self.guard_check is None:
            yield
            return
        for client in (self.bedrock, self.s3):
            client.meta.events.register("before-send", _guard_request, unique_id=_HOOK_ID)
        token = _ACTIVE.set(self.guard_check)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    def __repr__(self) -> str:
        return (
            f"BedrockBatch(bucket={self.bucket!r}, role_arn={self.role_arn!r}, "
            f"region={self.region!r})"
        )


class BedrockProvider(Provider):
    """AWS Bedrock batch inference (model invocation jobs), through boto3."""

    name = "bedrock"
    label = "AWS Bedrock"
    default_endpoint = INVOKE
    key_variables = ("AWS_ACCESS_KEY_ID",)
    client_types = ("nbbatch.providers.bedrock:BedrockBatch",)
    model_prefixes = (
        "anthropic.",
        "amazon.",
        "meta.",
        "mistral.",
        "us.",
        "eu.",
        "apac.",
        "global.",
    )
    prices_provider = "aws"
    max_requests = MAX_RECORDS
    max_bytes = MAX_INPUT_BYTES
    # Bedrock batch inference has a per-model count of jobs in progress, not a token
    # queue nbbatch reads; none is modelled here.
    quota_unit = "requests"

    client: BedrockBatch

    def __init__(self, client: Any) -> None:
        if not isinstance(client, BedrockBatch):
            raise ConfigError(
                "provider='bedrock' takes client=nbbatch.providers.bedrock.BedrockBatch("
                "bucket='s3://...', role_arn='arn:aws:iam::...:role/...', region=...), got "
                f"{type(client).__name__}.",
                provider="bedrock",
            )
        super().__init__(client)

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """Settings from the environment, or from a job's recorded address."""
        return BedrockBatch.from_url(base_url) if base_url else BedrockBatch()

    @classmethod
    def address_of(cls, client: Any) -> str:
        """The settings' address: bucket, role, region (never a credential)."""
        return str(client.base_url)

    @classmethod
    def base_model(cls, model: str) -> str:
        """The foundation model a profile or ARN stands for (see :func:`base_model`)."""
        return base_model(model)

    # -- requests --------------------------------------------------------------------------
    def model_input(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """The ``modelInput`` of one record: the Anthropic Messages body (InvokeModel),
        or the Converse request body for any model."""
        if spec.endpoint == INVOKE:
            if not is_anthropic(spec.model):
                raise InputError(
                    f"nbbatch builds the InvokeModel body of Anthropic models only; for "
                    f"{spec.model!r} pass endpoint='Converse' (Bedrock's format for every "
                    "model).",
                    provider="bedrock",
                )
            body: dict[str, Any] = {
                "anthropic_version": ANTHROPIC_VERSION,
                "max_tokens": spec.max_tokens or DEFAULT_MAX_TOKENS,
                "messages": [{"role": "user", "content": prompt}],
            }
            if spec.system is not None:
                body["system"] = spec.system
            if spec.temperature is not None:
                body["temperature"] = spec.temperature
        elif spec.endpoint == CONVERSE:
            body = {"messages": [{"role": "user", "content": [{"text": prompt}]}]}
            if spec.system is not None:
                body["system"] = [{"text": spec.system}]
            config: dict[str, Any] = {}
            if spec.max_tokens is not None:
                config["maxTokens"] = spec.max_tokens
            if spec.temperature is not None:
                config["temperature"] = spec.temperature
            if config:
                body["inferenceConfig"] = config
        else:
            raise InputError(
                f"endpoint {spec.endpoint!r} is not a Bedrock invocation type; use "
                f"{INVOKE!r} (the default, Anthropic models) or {CONVERSE!r}.",
                provider="bedrock",
            )
        if spec.response_format is not None:
            raise InputError(
                "response_format is not sent to Bedrock batch inference by nbbatch; ask for "
                "JSON in the prompt, or use provider='anthropic' for structured output.",
                provider="bedrock",
            )
        body.update(spec.params)
        return body

    def validate(self, spec: RequestSpec) -> None:
        """The invocation type and the model's body can be built (sends nothing)."""
        self.model_input(spec, "")

    def find_model(self, model: str) -> bool | list[str] | None:
        """``ListFoundationModels``: True when the foundation model ``model`` stands for
        (itself, or the model of a cross-Region inference profile or of an ARN of
        either) is there, else the ids there are; asked before anything is uploaded,
        since Bedrock refuses an unknown id only once the input is in S3. Not checked
        (None) for other ARNs (custom and provisioned models, application inference
        profiles) nor when the listing is refused (a role without
        ``bedrock:ListFoundationModels``): the create call still reports a bad id."""
        name = model.rsplit(":inference-profile/", 1)[-1]
        name = base_model(name)
        if name.startswith("arn:"):
            return None
        try:
            with self.client.guarding():
                listed = self.client.bedrock.list_foundation_models()
        except Exception as exc:
            if _code(exc) is None:  # no answer at all (or the loopback guard's refusal)
                raise _aws_error(exc, f"checking model {model!r}") from exc
            log.info("nbbatch: model %r not checked: ListFoundationModels: %s", model, exc)
            return None
        ids = [m.get("modelId") for m in listed.get("modelSummaries") or []]
        known = [i for i in ids if isinstance(i, str)]
        return True if name in known else known

    @property
    def min_requests(self) -> int:
        """Bedrock's per-model minimum of records per job (``BedrockBatch.min_records``)."""
        return int(self.client.min_records)

    def check_job_size(self, n_requests: int) -> None:
        """Refuse a job of fewer records than Bedrock runs (its per-model minimum)."""
        minimum = self.client.min_records
        if 0 < n_requests < minimum:
            raise InputError(_too_few(n_requests, minimum), provider="bedrock")

    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        line = {
            "recordId": _jsonl.ID_SENTINEL,
            "modelInput": self.model_input(spec, _jsonl.PROMPT_SENTINEL),
        }
        return _jsonl.encode_lines(custom_ids, prompts, line)

    # -- jobs --------------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        n = jsonl.count(b"\n")
        if n < self.client.min_records:
            # A part this small (a resubmit of a few failed rows, the tail of a split)
            # would be refused by Bedrock after the upload: refused here instead.
            raise BatchFailedError(_too_few(n, self.client.min_records), provider="bedrock")
        name = _job_name(metadata)
        folder = "/".join(p for p in (self.client.prefix, "nbbatch", name) if p)
        key = f"{folder}/input.jsonl"
        bucket = self.client.bucket_name
        try:
            with self.client.guarding():
                self.client.s3.put_object(Bucket=bucket, Key=key, Body=jsonl)
        except Exception as exc:
            raise _aws_error(exc, f"uploading the input to s3://{bucket}/{key}") from exc
        tags = [{"key": k, "value": v} for k, v in metadata.items()]
        try:
            with self.client.guarding():
                made = self.client.bedrock.create_model_invocation_job(
                    jobName=name,
                    roleArn=self.client.role_arn,
                    modelId=spec.model,
                    modelInvocationType=spec.endpoint,
                    inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{key}"}},
                    outputDataConfig={
                        "s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/{folder}/out/"}
                    },
                    tags=tags,
                )
        except Exception as exc:
            raise _aws_error(exc, "creating a model invocation job") from exc
        return self.retrieve(_job_id(made["jobArn"]))

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            with self.client.guarding():
                job = self.client.bedrock.get_model_invocation_job(jobIdentifier=batch_id)
        except Exception as exc:
            raise _aws_error(exc, f"reading job {batch_id}") from exc
        return _info(job)

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            with self.client.guarding():
                self.client.bedrock.stop_model_invocation_job(jobIdentifier=batch_id)
        except Exception as exc:
            if _code(exc) not in ("ValidationException", "ConflictException"):
                raise _aws_error(exc, f"stopping job {batch_id}") from exc
            # already ended (or stopping): nothing to stop
        return self.retrieve(batch_id)

    def _jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        token = None
        try:
            while True:
                with self.client.guarding():
                    page = self.client.bedrock.list_model_invocation_jobs(
                        maxResults=100,
                        sortOrder="Descending",
                        **filters,
                        **({"nextToken": token} if token else {}),
                    )
                yield from page.get("invocationJobSummaries", [])
                token = page.get("nextToken")
                if not token:
                    return
        except Exception as exc:
            raise _aws_error(exc, "listing model invocation jobs") from exc

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        # The job name carries the job and part; a retried create makes a new name, so
        # the oldest unknown job of that part made since the attempt began is the one.
        stem = _job_stem(metadata)
        after = _dt.datetime.fromtimestamp(since - 60, _dt.UTC)
        found = None
        for job in self._jobs(submitTimeAfter=after, nameContains=stem[:63]):
            info = _info(job)
            # The name is the stem and 8 hex digits: part 1:1 is not part 1:10.
            mine = str(job.get("jobName", "")).rpartition("-")[0] == stem
            if info.batch_id not in known and mine:
                found = info
        return found

    def list_batches(self) -> Iterator[BatchInfo]:
        for job in self._jobs():
            yield _info(job)

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        out = info.raw.get("output_uri")
        if not out:
            return []
        parsed = urlparse(out)
        bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
        # Bedrock writes under <output>/<job id>/ (a folder per job).
        prefix = f"{prefix.rstrip('/')}/{info.batch_id}/".lstrip("/")
        try:
            with self.client.guarding():
                return self._read_outputs(info.batch_id, bucket, prefix, max_bytes)
        except BatchFailedError:
            raise
        except Exception as exc:
            raise _aws_error(exc, f"reading the output of job {info.batch_id}") from exc

    def _read_outputs(
        self, batch_id: str, bucket: str, prefix: str, max_bytes: int | None
    ) -> list[bytes]:
        """The ``.jsonl.out`` objects under ``prefix``, read whole, in key order."""
        s3 = self.client.s3
        files: list[bytes] = []
        size = 0
        keys: list[str] = []
        token = None
        while True:
            page = s3.list_objects_v2(
                Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {})
            )
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".jsonl.out")]
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        for key in sorted(keys):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            size += len(body)
            if max_bytes is not None and size > max_bytes:
                raise BatchFailedError(
                    f"the output of job {batch_id} is larger than {max_bytes:,} "
                    "bytes, more than any reply to the records sent could be; nothing "
                    "was recorded from it. Check the bucket's contents.",
                    provider="bedrock",
                )
            files.append(body)
        return files

    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        rows = [_row(line) for line in raw.splitlines() if line.strip()]
        if not rows:
            return empty_results()
        for r in rows:
            r.pop("truncated")
        return pa.Table.from_pylist(rows, schema=ROW_RESULT_SCHEMA)

    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """Not available: nbbatch does not call Bedrock's runtime API (InvokeModel) yet,
        so a row sent "in real time" (fallback=, on_deadline=) ends failed saying so."""
        return failure_row(
            custom_id,
            "not_supported",
            "nbbatch sends Bedrock rows through batch inference only (no real-time "
            "InvokeModel yet): resubmit them as a batch, or with provider='anthropic'.",
            False,
        )

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        rows = [_row(line) for line in raw.splitlines() if line.strip()]
        return pa.table(
            {
                "custom_id": pa.array([r["custom_id"] for r in rows], pa.string()),
                "truncated": pa.array([r["truncated"] for r in rows], pa.bool_()),
            }
        )


def _too_few(n: int, minimum: int) -> str:
    return (
        f"Bedrock batch inference runs jobs of at least {minimum} records (its per-model "
        f"quota 'Minimum number of records per batch inference job'); this one has {n}. "
        "Nothing was sent. Send these rows with provider='anthropic' (Message Batches take "
        "any number), or through the real-time API, or add rows; if your account's quota "
        "is lower, pass BedrockBatch(min_records=...)."
    )


def _job_stem(metadata: dict[str, str]) -> str:
    """The start of the job names of one job part: ``nbb-...-p3``."""
    job = metadata.get("nbbatch_job", "nbbatch")
    part = metadata.get("nbbatch_part", "")
    return _JOB_NAME.sub("-", f"{job}-p{part}")[:50]


def _job_name(metadata: dict[str, str]) -> str:
    """A job name unique to this create call (botocore: at most 63 characters)."""
    return f"{_job_stem(metadata)}-{secrets.token_hex(4)}"


def _job_id(arn: str) -> str:
    """The job id (the ARN's last part): what get/stop take, and a batch id nbbatch can
    name files by (an ARN has ``/`` in it)."""
    return arn.rsplit("/", 1)[-1]


def _info(job: dict[str, Any]) -> BatchInfo:
    status = str(job.get("status") or "Submitted")
    total = int(job.get("totalRecordCount") or 0)
    unfinished = {"Stopped": "cancelled", "Expired": "expired", "PartiallyCompleted": "expired"}
    out = ((job.get("outputDataConfig") or {}).get("s3OutputDataConfig") or {}).get("s3Uri")
    raw = {
        k: (v.isoformat() if isinstance(v, _dt.datetime) else v)
        for k, v in job.items()
        if k != "ResponseMetadata"
    }
    raw["output_uri"] = out
    return BatchInfo(
        batch_id=_job_id(str(job["jobArn"])),
        status=status,
        ended=status in ENDED,
        total=total,
        done=int(job.get("processedRecordCount") or 0),
        failed=int(job.get("errorRecordCount") or 0),
        failure=str(job.get("message") or "the job failed") if status == "Failed" else None,
        failure_code="Failed" if status == "Failed" else None,
        unfinished=unfinished.get(status),
        raw=orjson.loads(orjson.dumps(raw, default=str)),
    )


def _code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (``ValidationException``, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "") or None
    return None


#: The loopback guard's check for the boto3 calls nbbatch is making now, in this thread
#: or task (see :meth:`BedrockBatch.guarding`); None outside them.
_ACTIVE: ContextVar[Any] = ContextVar("nbbatch_bedrock_guard", default=None)
#: The name the ``before-send`` hook is registered under (once per boto3 client).
_HOOK_ID = "nbbatch-loopback-guard"


def _guard_request(request: Any, **_: Any) -> None:
    """boto3's ``before-send`` hook: the active loopback check is asked about each request
    (``request``: botocore's prepared request, signed, not sent yet); a refusal raises
    instead of sending, so the listener gets neither the signed headers (the access key
    id, a session token) nor the body (the prompts)."""
    check = _ACTIVE.get()
    if check is None:
        return None
    import httpx2

    try:
        refusal = check(httpx2.Request(request.method, request.url))
    except httpx2.ConnectError as exc:
        where = urlparse(request.url).netloc
        raise ProviderError(
            f"could not reach {where}: {exc}", provider="bedrock", transient=True
        ) from None
    if refusal is not None:
        raise ProviderError(refusal, provider="bedrock")
    return None


def _aws_error(exc: Exception, doing: str) -> ProviderError:
    """Our error for a boto3 error: what we were doing, the AWS code and message, and
    whether the same call may work later (throttling, 5xx, no answer)."""
    if isinstance(exc, ProviderError):  # the loopback guard's refusal, said as it is
        return exc
    code = _code(exc)
    response = getattr(exc, "response", None) or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    transient = code in (
        "ThrottlingException",
        "InternalServerException",
        "ServiceUnavailable",
    ) or (isinstance(status, int) and (status == 429 or status >= 500))
    if code is None:
        # No AWS answer: a connection error, or credentials boto3 could not find.
        name = type(exc).__name__
        if "Credential" in name:
            return ProviderError(
                f"boto3 found no AWS credentials while {doing} ({exc}); set them as for "
                "the AWS CLI (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) or pass clients made "
                "with them: BedrockBatch(bedrock=boto3.client(...), s3=boto3.client(...)).",
                provider="bedrock",
            )
        return ProviderError(
            f"could not reach AWS while {doing}: {name}: {exc}", provider="bedrock", transient=True
        )
    message = f"AWS refused the request while {doing}: {code}: {exc}"
    if code in ("ValidationException", "ResourceNotFoundException") and "creating" in doing:
        return BatchFailedError(message, provider="bedrock")
    return ProviderError(message, provider="bedrock", transient=transient)


def _error_kind(code: Any) -> tuple[str, bool]:
    """nbbatch's error type for a record's ``errorCode``, and whether a retry may work."""
    status = code if isinstance(code, int) else int(code) if str(code).isdigit() else None
    if status == 429:
        return "rate_limit_error", True
    if status is not None and status >= 500:
        return "server_error", True
    return ("invalid_request_error" if status else f"bedrock_{code}"), is_transient(None, status)


def _row(raw: bytes) -> dict[str, Any]:
    """One output record in ROW_RESULT_SCHEMA terms, plus ``truncated``."""
    line = orjson.loads(raw)
    row: dict[str, Any] = {
        "custom_id": line.get("recordId"),
        "status": "failed",
        "output": None,
        "error_type": None,
        "error_message": None,
        "retryable": None,
        "input_tokens": None,
        "output_tokens": None,
        "cached_tokens": None,
        "truncated": False,
    }
    error = line.get("error")
    out = line.get("modelOutput")
    if error is not None or not isinstance(out, dict):
        error = error if isinstance(error, dict) else {}
        kind, retry = _error_kind(error.get("errorCode"))
        row.update(
            error_type=kind,
            error_message=str(
                error.get("errorMessage") or "Bedrock gave no output for this record"
            ),
            retryable=retry,
        )
        return row
    if "content" in out:  # Anthropic's Messages response
        usage = out.get("usage") or {}
        read = int(usage.get("cache_read_input_tokens") or 0)
        made = int(usage.get("cache_creation_input_tokens") or 0)
        text = "".join(
            b.get("text") or "" for b in out.get("content") or [] if b.get("type") == "text"
        )
        fresh = usage.get("input_tokens")
        row.update(
            input_tokens=None if fresh is None else int(fresh) + read + made,
            output_tokens=usage.get("output_tokens"),
            cached_tokens=None if fresh is None else read,
            truncated=out.get("stop_reason") == "max_tokens",
        )
    else:  # the Converse response
        message = ((out.get("output") or {}).get("message")) or {}
        usage = out.get("usage") or {}
        text = "".join(b.get("text") or "" for b in message.get("content") or [] if "text" in b)
        row.update(
            input_tokens=usage.get("inputTokens"),
            output_tokens=usage.get("outputTokens"),
            cached_tokens=usage.get("cacheReadInputTokens"),
            truncated=out.get("stopReason") == "max_tokens",
        )
    row.update(status="succeeded", output=text)
    return row
