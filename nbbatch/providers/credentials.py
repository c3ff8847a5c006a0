"""Which key a job may be polled with: only one meant for the address it was sent to.

A job records where its requests went (``base_url``) and where the key came from
(``credential``), never the key:

``env:VAR``
    submitted without ``client=``: the key in the environment variable ``VAR``. Later
    polls use ``VAR`` again, at the recorded address only.
``client``
    the key was given on a ``client=``. It is not kept; its keyed hash is
    (``key_hash``, HMAC-SHA256 under a random secret kept owner-only beside the
    ledger), so a later poll may use an environment key only when it is that same key.
    Otherwise the job needs ``client=`` again (``nb.attach(job_id, client=...)``). A job
    on a loopback address (a private emulator, ``nb.emulator.start()``) is polled with a
    placeholder key that is no secret: the emulator takes any key, and whatever now
    listens on that port learns nothing.
``local``
    nbbatch's background emulator (``provider="local"``), which needs no key.

Jobs recorded before this existed (no ``credential``) are polled with the environment
key only at the provider's default address; on a loopback address, with the
placeholder; elsewhere they need ``client=``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: The key sent to a loopback address when no real key is meant for it: not a secret.
PLACEHOLDER_KEY = "local-emulator"
#: The file, beside the ledger, holding the secret that keys the hashes of keys.
SECRET_FILE = "credential.secret"
#: Anthropic's SDK also authenticates with a bearer token from this variable.
ANTHROPIC_TOKEN = "ANTHROPIC_AUTH_TOKEN"


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` reaches this machine itself: a loopback address in any spelling
    (all of 127.0.0.0/8, ``::1``, an IPv4-mapped ``::ffff:127.x.y.z``, shorthand such
    as ``127.1``), the unspecified ``0.0.0.0`` or ``::`` (a connection to either lands
    on this machine), ``localhost`` and names under ``.localhost`` (RFC 6761 6.3
    reserves them for loopback), with or without the trailing dot of a fully
    qualified name.

    Other names are not resolved: this is asked before every request, and what a name
    resolves to may change between submit and a later poll."""
    try:
        host = (urlparse(url or "").hostname or "").rstrip(".")
    except ValueError:  # not a URL at all: nothing is sent there
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
    except ValueError:
        try:  # the shorthand the C resolver accepts too: 127.1, 2130706433, 0x7f000001
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def key_of(client: Any) -> str | None:
    """The key an official SDK client sends (None when it has none, e.g. Azure AD)."""
    if getattr(client, "_azure_ad_token_provider", None) or getattr(
        client, "_azure_ad_token", None
    ):
        # A Microsoft Entra ID client sends a token, not its api_key (a stand-in string).
        return None
    key = getattr(client, "api_key", None) or getattr(client, "auth_token", None)
    if key is None:  # google.genai.Client keeps it on its inner API client
        key = getattr(getattr(client, "_api_client", None), "api_key", None)
    if key is None:  # mistralai's Mistral keeps it in its security settings
        security = getattr(getattr(client, "sdk_configuration", None), "security", None)
        key = getattr(security, "api_key", None)
    return key if isinstance(key, str) and key else None


def secrets_of(client: Any) -> list[str]:
    """Every credential an SDK client holds, to keep out of messages: its key
    (:func:`key_of`), an Azure OpenAI client's Entra ID token, and the AWS keys and
    session token of a Bedrock client's boto3 clients."""
    found = [key_of(client), getattr(client, "_azure_ad_token", None)]
    for name in ("bedrock", "s3"):  # a BedrockBatch's boto3 clients
        signer = getattr(getattr(client, name, None), "_request_signer", None)
        credentials = getattr(signer, "_credentials", None)
        try:
            frozen = credentials.get_frozen_credentials() if credentials else None
        except Exception:  # a provider of credentials that fails now fails later, said
            frozen = None
        if frozen is not None:
            found += [frozen.access_key, frozen.secret_key, frozen.token]
    return [s for s in found if isinstance(s, str) and s]


def env_origin(variables: tuple[str, ...]) -> str | None:
    """``env:VAR`` for the variable a client built from the environment takes its key
    from (the first set of the provider's variables), or None when none is set."""
    var = next((v for v in variables if os.environ.get(v)), None)
    return None if var is None else f"env:{var}"


def _secret(home: Path) -> bytes:
    """The random secret keying the hashes of keys, made on first use (owner-only)."""
    path = home / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


def fingerprint(key: str, home: Path) -> str:
    """A keyed hash of ``key``: tells whether a later key is the same one, reveals
    nothing about it without the secret beside the ledger."""
    return hmac.new(_secret(home), key.encode(), hashlib.sha256).hexdigest()


def key_hash(provider: Any, home: Path) -> str | None:
    """The keyed hash to record for a job whose key was given on ``client=`` (else
    None: an environment key is named by its variable, the emulator needs none)."""
    if getattr(provider, "credential", None) != "client":
        return None
    key = key_of(provider.client)
    return None if key is None else fingerprint(key, home)


def needs_client(record: dict[str, Any]) -> str:
    """What to do about a job whose key was given on ``client=`` and is not known here."""
    job_id = record["id"]
    return (
        f"job {job_id} was submitted through {record.get('base_url')} with a key given on "
        f"client=; pass client= to nb.attach({job_id!r}, client=...) to poll it (nbbatch "
        "never sends a key from the environment to an address it was not submitted to; "
        "the command line and the JupyterLab sidebar poll it only when the environment "
        "holds that same key)."
    )


def env_key_matching(
    variables: tuple[str, ...], key_hash: str | None, home: Path
) -> tuple[str, str] | None:
    """(variable, key) of an environment key whose keyed hash is ``key_hash``."""
    if not key_hash:
        return None
    for var in variables:
        value = os.environ.get(var)
        if value and hmac.compare_digest(fingerprint(value, home), key_hash):
            return var, value
    return None
