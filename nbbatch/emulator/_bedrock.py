"""AWS Bedrock batch inference (model invocation jobs) as boto3 sees it.

Served under ``/bedrock``: ``boto3.client("bedrock", endpoint_url=emu.url + "/bedrock")``
reaches it. The routes and shapes are botocore's ``bedrock`` service model (2023-04-20,
REST-JSON): ``POST /model-invocation-job`` answers ``{"jobArn"}``, ``GET
/model-invocation-job/{jobIdentifier}`` the job, ``POST .../{jobIdentifier}/stop``
nothing, ``GET /model-invocation-jobs`` ``{"invocationJobSummaries", "nextToken"}``;
errors are ``{"message"}`` with their type in ``x-amzn-ErrorType`` (ValidationException,
ResourceNotFoundException, ConflictException, ...).

Only the control plane is here: a job reads its ``.jsonl`` input from S3 and writes its
output there, through boto3 at the S3 endpoint the emulator was given (``s3_endpoint``,
else ``$AWS_ENDPOINT_URL_S3``; the tests run moto's S3 server). Output, as the user
guide's batch-inference-results page describes it: one ``<input>.jsonl.out`` per input
file with ``{"recordId", "modelInput", "modelOutput"}`` or ``{..., "error":
{"errorCode", "errorMessage"}}`` per record, and ``manifest.json.out`` with the counts,
under ``<output s3Uri>/<job id>/``. Anthropic models' records are answered in the
Messages shape (the InvokeModel body), other models' in the Converse shape, through
the emulator's responder and row faults, as the other APIs are.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import _models, _responder
from ._anthropic_replies import last_user, message, params_problem
from ._faults import FAIL_MARKER, Fate, RowInfo, int_hash
from ._state import BatchRecord, ResultsOutcome, Store, iter_lines, schedule, write_lines
from ._wire import ApiError, JSONResponse, creating, showing

PREFIX = "/bedrock"
#: A made-up account for the ARNs this emulator hands out.
ACCOUNT = "000000000000"
#: The error type (``x-amzn-ErrorType``) of each status this module answers with.
ERROR_TYPES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
# Patterns from botocore's service model (ModelInvocationJobName, RoleArn, S3Uri).
_JOB_NAME = re.compile(r"^[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$")
_S3_URI = re.compile(r"^s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+)*/?$")
_PROFILE = re.compile(r"^(?:us|eu|apac|au|jp|ca|us-gov|global)\.")


#: Bedrock's answer to a model id it does not have: 400 ValidationException. The API
#: reference lists ValidationException ("Input validation failed") among
#: CreateModelInvocationJob's errors (docs.aws.amazon.com/bedrock/latest/APIReference/
#: API_CreateModelInvocationJob.html); the wording is the one AWS's knowledge center
#: quotes for an incorrect model identifier (repost.aws/knowledge-center/
#: bedrock-validation-exception-errors, for InvokeModel: the batch page quotes none).
UNKNOWN_MODEL = "The provided model identifier is invalid."
#: genai-prices groups the models it prices on Bedrock under these prefixes (not
#: Bedrock's own): ``regional.anthropic.claude-3-haiku-20240307-v1:0`` is the foundation
#: model ``anthropic.claude-3-haiku-20240307-v1:0``.
_PRICES_GROUP = re.compile(r"^(?:regional|global)\.")


@functools.cache
def foundation_models() -> tuple[str, ...]:
    """The foundation model ids the emulator serves on Bedrock: those genai-prices
    prices on AWS Bedrock (maintained as models ship), without its grouping prefixes."""
    from genai_prices.data_snapshot import get_snapshot

    found: dict[str, None] = {}
    for provider in get_snapshot().providers:
        if provider.id == "aws":
            for model in provider.models:
                found[_PRICES_GROUP.sub("", model.id)] = None
    return tuple(found)


def known_model(model: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether Bedrock (as emulated) has ``model``: a foundation model id, a cross-Region
    inference profile of one (``us.anthropic...``) or the ARN of either, or a name
    added with ``start(models=...)``. Other ARNs (custom or provisioned models,
    application inference profiles) name resources the emulator does not have."""
    if model in extra:
        return True
    name = model
    if model.startswith("arn:"):
        kind, _, name = model.partition(":foundation-model/")
        if not name:
            kind, _, name = model.partition(":inference-profile/")
        if not name:
            return False
    return _PROFILE.sub("", name) in foundation_models() or name in extra


def is_bedrock(path: str) -> bool:
    """Whether ``path`` is one of this module's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_body(status: int, message: str, type: str | None) -> tuple[dict[str, Any], str]:
    """The REST-JSON error body and its ``x-amzn-ErrorType``."""
    kind = type if type and type.endswith("Exception") else ERROR_TYPES.get(status)
    return {"message": message}, kind or "InternalServerException"


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _s3(store: Store) -> Any:
    """A boto3 S3 client for the endpoint the emulator was given."""
    import boto3

    endpoint = store.knobs.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or None
    keys: dict[str, str] = {}
    if endpoint is not None and not os.environ.get("AWS_ACCESS_KEY_ID"):
        # A local S3 (moto, MinIO) takes placeholder credentials.
        keys = {"aws_access_key_id": "nbbatch-emulator", "aws_secret_access_key": "unused"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


#: What a finished job produced: its output lines (a local file) and counts.
Outcome = ResultsOutcome


@dataclass(eq=False)
class BedrockJob(BatchRecord):
    store: Store | None = None
    records_path: Path | None = None  # the input records, one JSON line each
    name: str = ""
    model: str = ""
    role: str = ""
    invocation: str = "InvokeModel"
    input_uri: str = ""
    output_uri: str = ""
    input_file: str = "input.jsonl"  # the name its output file is named after
    message: str | None = None  # why validation failed
    token: str = ""  # clientRequestToken: a create repeated with it makes no second job
    submitted: float = 0.0  # unix time
    published: bool = False
    _publish_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def arn(self) -> str:
        return f"arn:aws:bedrock:us-east-1:{ACCOUNT}:model-invocation-job/{self.id}"

    def generate(self, cut: int | None, reason: str) -> Outcome:
        """The output lines (in processing order) and the counts."""
        assert self.store is not None and self.records_path is not None
        stopped = self.stopped(cut)
        lines: list[bytes | None] = [None] * self.n
        counts = {"success": 0, "error": 0, "input_tokens": 0, "output_tokens": 0}
        cache: set[str] = set()
        for i, raw in enumerate(iter_lines(self.records_path)):
            fate = Fate(self.fates[i])
            record = orjson.loads(raw)
            if stopped[i] or fate == Fate.EXPIRE:
                continue  # not reached before the job stopped: no line
            suffix = f"{int_hash(self.id, i):016x}"
            line: dict[str, Any] = {"recordId": record["recordId"], "modelInput": record["body"]}
            problem = record.get("problem")
            if problem or fate == Fate.FAIL:
                text = problem or f"Request rejected by the nbbatch emulator ({FAIL_MARKER})."
                line["error"] = {"errorCode": 400, "errorMessage": text}
            elif fate == Fate.TRANSIENT_ERROR:
                code = (429, 500)[int_hash(self.id, i, "kind") % 2]
                line["error"] = {
                    "errorCode": code,
                    "errorMessage": f"Simulated HTTP {code} (nbbatch emulator); a retry may work.",
                }
            else:
                try:
                    line["modelOutput"] = self._answer(record, fate, suffix, cache)
                except _responder.ResponderError as exc:
                    line["error"] = {"errorCode": 400, "errorMessage": str(exc)}
            if "error" in line:
                counts["error"] += 1
            else:
                counts["success"] += 1
                usage = line["modelOutput"].get("usage") or {}
                counts["input_tokens"] += int(
                    usage.get("input_tokens") or usage.get("inputTokens") or 0
                )
                counts["output_tokens"] += int(
                    usage.get("output_tokens") or usage.get("outputTokens") or 0
                )
            if fate == Fate.MISSING and "modelOutput" in line:
                continue  # the simulated service bug: a record without a line
            lines[i] = orjson.dumps(line) + b"\n"
        path = self.store.new_path("bedrock-out-")
        write_lines(path, self.order, lines)
        return Outcome(path, counts)

    def _answer(self, record: dict[str, Any], fate: Fate, suffix: str, cache: set[str]) -> Any:
        assert self.store is not None
        body = record["body"]
        if self.invocation == "InvokeModel":
            return message(record["params"], fate, suffix, cache, "batch", self.store.responder)
        # Converse: {"output": {"message": ...}, "stopReason", "usage"}.
        prompt = record["prompt"]
        system = " ".join(
            b.get("text", "") for b in body.get("system") or [] if isinstance(b, dict)
        )
        config = body.get("inferenceConfig") or {}
        request = _responder.Request(
            "bedrock", "Converse", self.model, prompt, system or None, None, body
        )
        reply = _responder.respond(
            prompt,
            fate=fate,
            max_tokens=config.get("maxTokens"),
            responder=self.store.responder,
            request=request,
        )
        inputs = _responder.count_tokens(len(prompt) + len(system))
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
            "stopReason": "max_tokens" if reply.finish == "length" else "end_turn",
            "usage": {
                "inputTokens": inputs,
                "outputTokens": reply.output_tokens,
                "totalTokens": inputs + reply.output_tokens,
            },
        }

    def publish(self, outcome: Outcome) -> None:
        """Write the output file and the manifest to S3, once."""
        assert self.store is not None
        with self._publish_lock:
            if self.published:
                return
            bucket, prefix = _split(self.output_uri)
            folder = f"{prefix.rstrip('/')}/{self.id}".lstrip("/")
            s3 = _s3(self.store)
            s3.put_object(
                Bucket=bucket,
                Key=f"{folder}/{self.input_file}.out",
                Body=outcome.results.read_bytes(),
            )
            c = outcome.counts
            manifest = {
                "totalRecordCount": self.n,
                "processedRecordCount": c["success"] + c["error"],
                "successRecordCount": c["success"],
                "errorRecordCount": c["error"],
                "inputTokenCount": c["input_tokens"],
                "outputTokenCount": c["output_tokens"],
            }
            s3.put_object(
                Bucket=bucket, Key=f"{folder}/manifest.json.out", Body=orjson.dumps(manifest)
            )
            self.published = True


def _anthropic_name(model: str) -> str:
    """``anthropic.claude-3-haiku-20240307-v1:0`` -> ``claude-3-haiku-20240307``: the
    Anthropic model a Bedrock id stands for (its params are checked as Anthropic's)."""
    name = _PROFILE.sub("", model.rsplit("foundation-model/", 1)[-1]).removeprefix("anthropic.")
    return re.sub(r"-v\d+(?::\d+)?$", "", name)


def _prepare(
    line: Any, index: int, invocation: str, model: str, models: tuple[str, ...]
) -> dict[str, Any]:
    """One input record, checked: its id, body, the prompt, and why it would fail."""
    if not isinstance(line, dict) or not isinstance(line.get("modelInput"), dict):
        raise ValueError(f"line {index + 1}: each record needs a modelInput object")
    record_id = line.get("recordId")
    if record_id is None:
        record_id = f"{index:011d}"  # Bedrock adds one when it is left out
    body = line["modelInput"]
    out: dict[str, Any] = {"recordId": str(record_id), "body": body, "problem": None}
    if invocation == "InvokeModel":
        if "anthropic." not in model:
            raise ValueError(
                "the emulator answers InvokeModel records of Anthropic models only; use "
                "modelInvocationType Converse for other models"
            )
        if body.get("anthropic_version") != "bedrock-2023-05-31":
            out["problem"] = "anthropic_version: bedrock-2023-05-31 is required"
        params = {k: v for k, v in body.items() if k != "anthropic_version"}
        params["model"] = _anthropic_name(model)
        problem = params_problem(params, models)
        if problem is not None and out["problem"] is None:
            out["problem"] = problem.message
        out["params"] = params
        out["prompt"] = last_user(params) if problem is None else ""
    else:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        texts = [b.get("text", "") for b in content or [] if isinstance(b, dict)]
        out["prompt"] = "".join(t for t in texts if isinstance(t, str))
        if not users:
            out["problem"] = "messages: at least one user message is required"
    return out


def _check_create(body: Any) -> tuple[str, str, str]:
    """The synchronous checks of a create request (400 ValidationException); its input
    and output S3 URIs and its invocation type."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for name in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
        if not body.get(name):
            raise ApiError(400, f"1 validation error detected: {name} must not be null")
    if not _JOB_NAME.match(str(body["jobName"])) or len(str(body["jobName"])) > 63:
        raise ApiError(400, f"jobName {body['jobName']!r} does not match the pattern")
    if not _ROLE_ARN.match(str(body["roleArn"])):
        raise ApiError(400, f"roleArn {body['roleArn']!r} is not an IAM role ARN")
    source = (body["inputDataConfig"].get("s3InputDataConfig") or {}).get("s3Uri", "")
    target = (body["outputDataConfig"].get("s3OutputDataConfig") or {}).get("s3Uri", "")
    for what, uri in (("input", source), ("output", target)):
        if not _S3_URI.match(str(uri)):
            raise ApiError(400, f"the {what} s3Uri {uri!r} is not an S3 URI (s3://bucket/key)")
    invocation = str(body.get("modelInvocationType") or "InvokeModel")
    if invocation not in ("InvokeModel", "Converse"):
        raise ApiError(400, f"modelInvocationType {invocation!r} is not InvokeModel or Converse")
    return source, target, invocation


def _added(store: Store) -> tuple[str, ...]:
    """The model names added to this emulator (``start(models=...)``, ``--models``,
    ``$NBBATCH_EMULATOR_MODELS``)."""
    return tuple(store.knobs.models) + _models.env_models()


def _check_model(store: Store, model: str) -> None:
    """Refuse a model Bedrock does not have when the job is created, as Bedrock does."""
    if not known_model(model, _added(store)):
        raise ApiError(400, UNKNOWN_MODEL)


def _earlier(store: Store, body: dict[str, Any], token: str) -> BedrockJob | None:
    """The job an earlier create with the same ``clientRequestToken`` made, if any; a
    second job of the same name is a 409."""
    with store.lock:
        jobs = [b for b in store.list_batches("bedrock") if isinstance(b, BedrockJob)]
        # "If this token matches a previous request, Amazon Bedrock ignores the request,
        # but does not return an error" (CreateModelInvocationJob, clientRequestToken).
        again = next((b for b in jobs if token and b.token == token), None)
        if again is None and any(b.name == body["jobName"] for b in jobs):
            raise ApiError(409, f"A job named {body['jobName']!r} already exists.")
        return again


def _read_records(
    store: Store, source: str, invocation: str, model: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The input records read from S3 and checked, and why the job fails validation
    (None when it does not): an unreadable input, a bad record, a repeated recordId, or
    fewer records than Bedrock's minimum."""
    records: list[dict[str, Any]] = []
    bucket, key = _split(source)
    try:
        raw = _s3(store).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        return records, f"the input at {source} could not be read: {exc}"
    problem: str | None = None
    for i, text in enumerate(x for x in raw.splitlines() if x.strip()):
        try:
            records.append(_prepare(orjson.loads(text), i, invocation, model, store.knobs.models))
        except (orjson.JSONDecodeError, ValueError) as exc:
            problem = f"invalid input record: {exc}"
            break
    seen: set[str] = set()
    for r in records:
        if r["recordId"] in seen:
            problem = f"recordId {r['recordId']!r} appears more than once"
        seen.add(r["recordId"])
    minimum = store.knobs.bedrock_min_records
    if problem is None and len(records) < minimum:
        problem = (
            f"The number of records in the input ({len(records)}) is below the minimum "
            f"number of records per batch inference job ({minimum})."
        )
    return records, problem


def create_job_sync(store: Store, body: Any) -> dict[str, Any]:
    """``CreateModelInvocationJob``: checked, its input read from S3, registered."""
    source, target, invocation = _check_create(body)
    model = str(body["modelId"])
    _check_model(store, model)
    token = str(body.get("clientRequestToken") or "")
    again = _earlier(store, body, token)
    if again is not None:
        return {"jobArn": again.arn}
    records, problem = _read_records(store, source, invocation, model)
    path = store.new_path("bedrock-in-")
    with path.open("wb") as out:
        for r in records:
            out.write(orjson.dumps(r) + b"\n")
    rows = [
        RowInfo(r["recordId"], 0, r["prompt"] or "", False, invalid=r["problem"] is not None)
        for r in records
    ]
    fates = store.fates("bedrock", rows, store.knobs) if rows else bytearray()
    t = store.now()
    job = BedrockJob(
        # botocore: a job id is 12 lowercase letters or digits; no finalizing step
        **schedule(store, os.urandom(6).hex(), len(records), t, finalizing=False),
        fates=fates,
        invalid=problem is not None,
        store=store,
        records_path=path,
        name=str(body["jobName"]),
        model=model,
        role=str(body["roleArn"]),
        invocation=invocation,
        input_uri=source,
        output_uri=target,
        input_file=_split(source)[1].rsplit("/", 1)[-1] or "input.jsonl",
        message=problem,
        token=token,
        submitted=store.clock.unix(t),
    )
    store.add_batch("bedrock", job)
    return {"jobArn": job.arn}


def _status(store: Store, job: BedrockJob, t: float) -> str:
    phase = job.phase(t)
    if phase == "expired":
        return "PartiallyCompleted" if job.done_rows(t) else "Expired"
    return {
        "validating": "Validating",
        "failed": "Failed",
        "in_progress": "InProgress",
        "finalizing": "InProgress",
        "completed": "Completed",
        "cancelling": "Stopping",
        "cancelled": "Stopped",
    }[phase]


def job_json(store: Store, job: BedrockJob, t: float) -> dict[str, Any]:
    """The job as ``GetModelInvocationJob`` answers it at clock time ``t`` (its output
    is in S3 before it says it has ended)."""
    status = _status(store, job, t)
    out: dict[str, Any] = {
        "jobArn": job.arn,
        "jobName": job.name,
        "modelId": job.model,
        "roleArn": job.role,
        "status": status,
        "submitTime": job.submitted,
        "lastModifiedTime": store.clock.unix(t),
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": job.input_uri}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": job.output_uri}},
        "modelInvocationType": job.invocation,
        "timeoutDurationInHours": 24,
        "jobExpirationTime": store.clock.unix(job.created) + 24 * 3600,
        "totalRecordCount": job.n,
    }
    if status == "Failed":
        out["message"] = job.message or "The job failed."
    outcome: Outcome | None = store.outcome(job, t)
    if outcome is not None:
        job.publish(outcome)
        c = outcome.counts
        out["endTime"] = store.clock.unix(job.ended_at(t) or t)
        out.update(
            processedRecordCount=c["success"] + c["error"],
            successRecordCount=c["success"],
            errorRecordCount=c["error"],
        )
    elif status not in ("Failed",):
        done, failed = job.progress_counts(t)
        out.update(
            processedRecordCount=done, successRecordCount=done - failed, errorRecordCount=failed
        )
    return out


def _job_or_404(store: Store, identifier: str) -> BedrockJob:
    job = store.get_batch("bedrock", identifier.rsplit("/", 1)[-1])
    if not isinstance(job, BedrockJob):
        raise ApiError(404, f"Could not find a model invocation job {identifier!r}.")
    return job


def _stop_sync(store: Store, identifier: str) -> None:
    with store.lock:
        job = _job_or_404(store, identifier)
        t = store.now()
        if job.ended_at(t) is not None or job.invalid:
            raise ApiError(400, f"The job is {_status(store, job, t)} and cannot be stopped.")
        job.request_cancel(t)


async def stop_job(request: Request) -> Response:
    store = _store(request)
    await run_in_threadpool(_stop_sync, store, request.path_params["job"])
    return JSONResponse({})


async def list_jobs(request: Request) -> Response:
    store = _store(request)
    query = request.query_params
    raw = query.get("maxResults", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError(400, "maxResults must be between 1 and 1000")
    limit = int(raw)
    start = int(query["nextToken"]) if query.get("nextToken", "").isdigit() else 0
    after = query.get("submitTimeAfter")
    contains = query.get("nameContains")
    jobs = [j for j in store.list_batches("bedrock") if isinstance(j, BedrockJob)]  # newest first
    if query.get("sortOrder") == "Ascending":
        jobs.reverse()
    if contains:
        jobs = [j for j in jobs if contains in j.name]
    if after:
        from datetime import datetime

        try:
            floor = float(after)
        except ValueError:
            floor = datetime.fromisoformat(after.replace("Z", "+00:00")).timestamp()
        jobs = [j for j in jobs if j.submitted >= floor]
    page = jobs[start : start + limit]
    t = store.now()

    def render() -> list[dict[str, Any]]:
        return [job_json(store, j, t) for j in page]

    answer: dict[str, Any] = {"invocationJobSummaries": await run_in_threadpool(render)}
    if start + limit < len(jobs):
        answer["nextToken"] = str(start + limit)
    return JSONResponse(answer)


async def list_models(request: Request) -> Response:
    """``ListFoundationModels`` (``GET /foundation-models``): ``{"modelSummaries"}``, one
    summary per foundation model (botocore's FoundationModelSummary members that say
    which model it is)."""
    store = _store(request)
    known = foundation_models()
    ids = list(known) + [m for m in dict.fromkeys(_added(store)) if m not in known]
    summaries = [
        {
            "modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{model_id}",
            "modelId": model_id,
            "modelName": model_id,
            "providerName": model_id.partition(".")[0] if "." in model_id else "emulator",
        }
        for model_id in ids
    ]
    return JSONResponse({"modelSummaries": summaries})


routes = [
    Route(PREFIX + "/foundation-models", list_models, methods=["GET"]),
    Route(PREFIX + "/model-invocation-job", creating(create_job_sync), methods=["POST"]),
    Route(PREFIX + "/model-invocation-job/{job:path}/stop", stop_job, methods=["POST"]),
    Route(
        PREFIX + "/model-invocation-job/{job:path}",
        showing(_job_or_404, job_json, "job"),
        methods=["GET"],
    ),
    Route(PREFIX + "/model-invocation-jobs", list_jobs, methods=["GET"]),
]
