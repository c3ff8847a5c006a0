"""Keep API keys out of every text nbbatch shows or keeps.

An SDK error can quote the key it was given (masked or not), and a hostile or broken
endpoint can echo it back in an error body. Every message that reaches a user-visible
place (errors, the job's ``last_error``, the ledger's events, the log, the JupyterLab
sidebar's JSON) goes through :func:`scrub` first.

Three kinds of secret are removed: the values of the environment variables a provider
key is read from (AWS's secret key and session token, Azure's Entra ID token
included), keys and tokens this process was handed on a ``client=`` (remembered in
memory only, see :func:`remember`), and anything shaped like a provider key (OpenAI
``sk-...``, Anthropic ``sk-ant-...``, Google ``AIza...``, Groq ``gsk_...``, AWS access
key ids), masked or not, a bearer token or JWT, and AWS request signatures (SigV4
headers and presigned S3 URLs).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

#: Environment variables that hold a provider credential (never written anywhere).
KEY_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AZURE_OPENAI_API_KEY",
    # The SDKs of the providers added later read these too (openai.lib.azure reads the
    # Entra ID token from AZURE_OPENAI_AD_TOKEN; boto3 the AWS keys and session token,
    # AWS_SECURITY_TOKEN being the older name of the latter).
    "AZURE_OPENAI_AD_TOKEN",
    "GROQ_API_KEY",
    "TOGETHER_API_KEY",
    "MISTRAL_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)

#: Key variables of providers registered later (see nbbatch.providers.register).
_variables: set[str] = set()

#: What a provider key looks like, masked (``sk-proj-abc***xyz``) or not.
_KEYISH = (
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*.]{6,}"), "sk-***"),
    (re.compile(r"(?<![A-Za-z0-9])AIza[A-Za-z0-9_\-*.]{8,}"), "AIza***"),
    # Groq's keys start gsk_ (https://codeslick.dev/learn/groq-api-key-format: "gsk_"
    # and 52 alphanumerics).
    (re.compile(r"(?<![A-Za-z0-9])gsk_[A-Za-z0-9_*]{8,}"), "gsk_***"),
    # AWS access key ids: AKIA long-term, ASIA temporary (STS), ABIA a bearer token
    # (the "unique identifiers" prefixes of the IAM user guide, as listed in
    # https://docs.amazonaws.cn/goto/WebAPI/sts-2011-06-15/GetAccessKeyInfo and
    # hackingthe.cloud's iam-key-identifiers page); 20 characters in all.
    (re.compile(r"(?<![A-Z0-9])A[KSB]IA[A-Z0-9]{16}(?![A-Z0-9])"), "AKIA***"),
    # A bearer token in a header an endpoint echoes (Azure's Entra ID tokens, any
    # proxy's), and a JWT anywhere (Entra ID tokens are JWTs: header.payload.sig).
    (re.compile(r"(?i)\bBearer\s+(?=\S*[0-9])[A-Za-z0-9._~+/\-]{8,}=*"), "Bearer ***"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), "eyJ***"),
    # AWS Signature Version 4 in an Authorization header (Credential=..., Signature=...)
    # and in a presigned URL's query (X-Amz-Credential, X-Amz-Signature,
    # X-Amz-Security-Token), and a session token in its header: a signature is no key,
    # but it lets whoever holds it replay the request while it is valid.
    (
        re.compile(
            r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)\s*[=:]\s*)[^\s&,;\"'<>]+"
        ),
        r"\1***",
    ),
    (re.compile(r"\b((?:Signature|Credential)=)[^\s&,;\"'<>]+"), r"\1***"),
)
#: Shorter values are not replaced: a placeholder such as "k" would mangle every text.
_MIN_SECRET = 8

_lock = threading.Lock()
_remembered: set[str] = set()


def remember(key: str | None) -> None:
    """Scrub ``key`` (a key given on a ``client=``) from every later message of this
    process. Kept in memory only."""
    if key and len(key) >= _MIN_SECRET:
        with _lock:
            _remembered.add(key)


def key_variables(variables: tuple[str, ...]) -> None:
    """Also scrub the values of these environment variables (a registered provider's)."""
    with _lock:
        _variables.update(variables)


def scrub(text: str) -> str:
    """``text`` without any API key known to this process or shaped like one."""
    if not text:
        return text
    with _lock:
        secrets = set(_remembered)
        variables = KEY_VARIABLES + tuple(_variables)
    secrets.update(os.environ.get(v) or "" for v in variables)
    # Longest first, so a key that contains another is removed whole.
    for value in sorted((s for s in secrets if len(s) >= _MIN_SECRET), key=len, reverse=True):
        text = text.replace(value, "***")
    for pattern, mask in _KEYISH:
        text = pattern.sub(mask, text)
    return text


def scrub_json(value: Any) -> Any:
    """Every string in a JSON-ready value (dicts, lists) scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_json(v) for v in value]
    return value


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's message (installed on ``nbbatch``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own handling
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter(logger: logging.Logger) -> None:
    """Scrub every record logged on ``logger`` (once; repeated calls do nothing)."""
    if not any(isinstance(f, ScrubFilter) for f in logger.filters):
        logger.addFilter(ScrubFilter())


def scrub_chain(exc: BaseException | None) -> None:
    """Scrub, in place, the messages of ``exc`` and of every exception chained to it
    (``__cause__``, ``__context__``): a notebook shows the whole chain under an error of
    ours, and saves it with the notebook, so an SDK error quoting a key must not be
    there as it came."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        try:
            current.args = tuple(scrub(a) if isinstance(a, str) else a for a in current.args)
            for name in ("message", "body"):  # the SDKs keep the error text there too
                value = getattr(current, name, None)
                if isinstance(value, str | dict | list):
                    setattr(current, name, scrub_json(value))
        except Exception:  # an exception type that refuses: its text stays, ours is clean
            pass
        todo += [current.__cause__, current.__context__]
