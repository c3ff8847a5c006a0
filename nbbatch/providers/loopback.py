"""Keys and prompts reach a loopback listener only after it proves it is the job's own.

Any local process can listen on a loopback port once its owner has let it go, so an
address such as ``http://127.0.0.1:8765`` says nothing about who answers there now. A
client nbbatch uses for a loopback address therefore sends through a guard
(:class:`Guard`, an ``httpx2`` transport) that checks, before every request, that the
listener is still the one the job was sent to, and answers the request itself with a
403 naming the fix when it is not (the SDK then raises its own error, unretried):

the home's background emulator (``provider="local"``)
    it proves it holds the home's key with the identity challenge (an HMAC of a fresh
    nonce, its pid and its port, see :mod:`nbbatch.emulator._identity`); the key itself
    is put on the request only then, and the request goes to the port the emulator
    answers on now. The SDK client holds a placeholder, never the key, and the key
    changes each time the emulator starts, so a key learned once is no use later.
any other loopback listener (``nb.emulator.start()``, a local proxy)
    its listening socket must be the one that listened when the job was submitted: the
    same socket inode and owner, read from ``/proc/net/tcp`` (Linux); for a job that
    also sends to a second loopback address (Bedrock's S3 endpoint), on both ports. A process that
    took the port after the first one exited has another socket, so it gets nothing;
    a port no one listens on fails as a refused connection, unsent. Where ``/proc``
    is not there, the client made at submit trusts the address for its
    own life only; a job rebuilt later (``nb.attach``, the command line, the sidebar)
    then needs ``client=``.

A job on a loopback address is recorded with credential ``loopback:<listener>`` and no
key hash: nbbatch never sends an environment key there later, whatever key the client
had at submit (an ``openai.OpenAI(base_url=...)`` made without ``api_key`` takes
``OPENAI_API_KEY``).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import httpx2

from .credentials import is_loopback

#: Credentials of jobs on a loopback address other than the background emulator.
PREFIX = "loopback:"
#: The headers an SDK puts its key in (OpenAI bearer, Anthropic, Google).
#: The headers SDKs carry a key in (Azure OpenAI's key goes in ``api-key``).
_KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
#: Clients already behind a guard (made by nbbatch) -> the credential to record for
#: them, so none is wrapped twice.
_GUARDED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: Guarded copies -> the client each was made from (kept alive with the copy).
_ORIGINALS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def listener(port: int) -> str | None:
    """Who listens on TCP ``port`` now: ``uid:inode`` of each listening socket, sorted
    and joined ("" when none listens), or None when this system has no ``/proc/net``."""
    found: list[str] = []
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx rx tr retrnsmt uid timeout inode
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                found.append(f"{fields[7]}:{fields[9]}")
    return ",".join(sorted(found)) if readable else None


def port_of(url: str) -> int:
    """The port ``url`` reaches (its scheme's default when it names none)."""
    parsed = urlparse(url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def ports_of(url: str) -> list[int]:
    """The loopback ports a job at ``url`` sends to: ``url``'s own, then those of the
    loopback addresses its query names (Bedrock's S3 endpoint, ``?s3=http://...``,
    where the prompts are uploaded and the answers read)."""
    ports = [port_of(url)]
    for _, value in parse_qsl(urlparse(url).query):
        if is_loopback(value) and port_of(value) not in ports:
            ports.append(port_of(value))
    return ports


def credential_for(url: str) -> str:
    """What to record for a job sent to loopback ``url``: who listens there now (on each
    of its ports after the first, ``|port=listener``)."""
    main, *more = ports_of(url)
    extra = "".join(f"|{port}={listener(port) or ''}" for port in more)
    return PREFIX + (listener(main) or "") + extra


def _recorded(url: str, recorded: str | None) -> dict[int, str | None]:
    """Port -> the listener recorded for it (None: not known) from a credential's body."""
    main, *more = ports_of(url)
    first, *rest = (recorded or "").split("|")
    found = {main: first or None}
    for item in rest:
        port, _, who = item.partition("=")
        if port.isdigit() and int(port) in more:
            found[int(port)] = who or None
    return {port: found.get(port) for port in (main, *more)}


def gone(url: str, job_id: str | None = None) -> str:
    """The message for a loopback listener that is not the one a job was sent to."""
    where = f"nb.attach({job_id!r}, client=...)" if job_id else "nb.attach(job_id, client=...)"
    return (
        f"the loopback backend at {url} is gone: whatever listens there now is not the "
        "process the job was sent to, so nbbatch sends it neither a key nor a prompt. If "
        f"you started it again yourself, pass a client for it: {where}."
    )


class Guard(httpx2.BaseTransport):
    """An httpx2 transport that asks ``check`` before each request to a loopback host
    and answers 403 itself with the reason ``check`` gives for refusing it."""

    def __init__(
        self,
        check: Callable[[httpx2.Request], str | None],
        owner: httpx2.Client | None,
        http: Any = httpx2,
    ) -> None:
        self._check = check
        # ``http``: the module the owner's client comes from. The SDKs also take a
        # client of the older ``httpx`` package; its transport (a proxy, an auth
        # layer the user set up) must carry the request as it would without nbbatch.
        self._http = http
        # The client's own transport when it has one: its connections stay in its pool,
        # and once its owner is closed nothing more is sent through it (as the owner
        # itself would refuse), so no connection outlives the client it belongs to.
        inner: Any = getattr(owner, "_transport", None)
        mine = isinstance(inner, http.BaseTransport)
        self._owner = owner if mine else None
        self._owns = not mine
        self._inner: Any = inner if mine else http.HTTPTransport()

    @property
    def check(self) -> Callable[[httpx2.Request], str | None]:
        """The check asked before each request (a client that does not send through
        httpx2, Bedrock's boto3, asks it itself)."""
        return self._check

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` if ``check`` allows it (it may also rewrite it)."""
        if self._owner is not None and self._owner.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if is_loopback(str(request.url)):
            try:
                refusal = self._check(request)
            except httpx2.ConnectError as exc:
                if self._http is httpx2:
                    raise
                raise self._http.ConnectError(str(exc), request=request) from None
            if refusal is not None:
                return _refused(request, refusal, self._http)
        return self._inner.handle_request(request)

    def close(self) -> None:
        """Close the connections of the inner transport, if it is the guard's own."""
        if self._owns:
            self._inner.close()


def close_with(owner: Any, http: Any) -> None:
    """Close ``http`` (an HTTP client nbbatch made, of httpx2 or the older httpx) when
    ``owner`` is no longer used: the SDKs close only the clients they made themselves.
    A finalizer, not ``__del__``: it holds ``http`` until it runs, so ``http``'s sockets
    are never collected (and reported unclosed) before it is closed."""
    try:
        weakref.finalize(owner, _close_quietly, http)
    except TypeError:  # not weakly referable: closed by the garbage collector instead
        pass


def _close_quietly(http: Any) -> None:
    try:
        http.close()
    except Exception:  # at interpreter exit, or closed already
        pass


def _refused(request: httpx2.Request, message: str, http: Any = httpx2) -> httpx2.Response:
    # One body every SDK reads its message from (OpenAI and Gemini read error.message,
    # Anthropic error.message under type "error").
    body = {
        "type": "error",
        "error": {
            "type": "permission_error",
            "code": 403,
            "status": "PERMISSION_DENIED",
            "message": message,
        },
    }
    response: httpx2.Response = http.Response(403, json=body, request=request)
    return response


def listener_check(
    url: str, recorded: str | None, *, at_submit: bool, job_id: str | None = None
) -> Callable[[httpx2.Request], str | None]:
    """A check that lets a request through only while the listener on each of ``url``'s
    loopback ports (:func:`ports_of`) is the socket ``recorded`` at submit. When no one
    listens, the request fails as a refused connection would, without being sent. When
    this system cannot tell who listens (no ``/proc``), only the client made at submit
    (``at_submit``) trusts it."""
    expected = _recorded(url, recorded)
    main = port_of(url)

    def check(request: httpx2.Request) -> str | None:
        port = request.url.port or main
        if port not in expected:
            return gone(url, job_id)
        now = listener(port)
        if now == "":
            # Refused here, as the system would refuse the connection: sent on, the
            # request could reach a process that takes the port in the meantime.
            raise httpx2.ConnectError(f"nothing listens on port {port}", request=request)
        if now is None or expected[port] is None:
            return None if at_submit else gone(url, job_id)
        return None if now == expected[port] else gone(url, job_id)

    return check


def home_check(home: Path) -> Callable[[httpx2.Request], str | None]:
    """A check that sends each request to the home's background emulator as it answers
    now (started if it does not run), with its key, once it proved it holds that key."""

    def check(request: httpx2.Request) -> str | None:
        from .. import emulator

        try:
            emu = emulator.background(home)  # find() ran the identity challenge
        except Exception as error:  # not startable: said, and tried again next time
            return f"nbbatch's background emulator could not be started: {error}"
        request.url = request.url.copy_with(host="127.0.0.1", port=emu.port)
        request.headers["host"] = f"127.0.0.1:{emu.port}"
        for name in _KEY_HEADERS:
            if name in request.headers:
                bearer = name == "authorization"
                request.headers[name] = f"Bearer {emu.token}" if bearer else emu.token
        return None

    return check


#: How a provider makes a copy of its client sending through another HTTP client
#: (:meth:`~nbbatch.providers.base.Provider.rebind`).
Rebind = Callable[[Any, Any], Any]


def guarded(
    client: Any, check: Callable[[httpx2.Request], str | None], credential: str, rebind: Rebind
) -> Any:
    """A copy of SDK ``client`` (made by its provider's ``rebind``) whose requests pass
    ``check`` first (``credential``: what a job made with it records, see
    :func:`credential_of`)."""
    legacy = _legacy_http_of(client)
    http: Any
    if legacy is not None:  # the user's client of the older httpx package, kept as such
        module = sys.modules["httpx"]
        http = module.Client(
            transport=_LegacyGuard(check, legacy, module),
            trust_env=False,
            timeout=module.Timeout(600.0, connect=10.0),
            follow_redirects=False,
        )
    else:
        http = httpx2.Client(
            transport=Guard(check, _http_of(client)),
            trust_env=False,  # never through a proxy: it would see the key
            timeout=httpx2.Timeout(600.0, connect=10.0),
            follow_redirects=False,
        )
    copy = rebind(client, http)
    close_with(copy, http)
    _GUARDED[copy] = credential
    # The copy sends through the original's connection pool (see Guard), and an SDK
    # closes the pool it made when its client is collected (mistralai does, from a
    # finalizer): the original lives as long as the copy, whoever dropped it.
    _ORIGINALS[copy] = client
    return copy


def credential_of(client: Any) -> str | None:
    """The credential of a client :func:`guarded` made, else None."""
    try:
        return _GUARDED.get(client)
    except TypeError:  # not weakly referable: not one of ours
        return None


def guard(client: Any, url: str, rebind: Rebind) -> tuple[Any, str]:
    """``client`` (for loopback ``url``) behind a guard bound to who listens there now,
    and the credential to record; a client already guarded is returned as it is."""
    known = credential_of(client)
    if known is not None:
        return client, known
    credential = credential_for(url)
    check = listener_check(url, credential.removeprefix(PREFIX), at_submit=True)
    return guarded(client, check, credential, rebind), credential


def for_record(client: Any, url: str, credential: str | None, job_id: str, rebind: Rebind) -> Any:
    """A client (holding no real key) for recorded job ``job_id`` at loopback ``url``,
    guarded by the listener recorded at submit: none recorded (a job from before
    listeners were recorded, or from a system without ``/proc``) matches no listener."""
    recorded = None
    if credential and credential.startswith(PREFIX):
        recorded = credential.removeprefix(PREFIX)
    check = listener_check(url, recorded, at_submit=False, job_id=job_id)
    return guarded(client, check, credential or PREFIX, rebind)


def _http_of(client: Any) -> httpx2.Client | None:
    """The httpx2 client an SDK client sends through (its connection pool), if nbbatch
    can share it."""
    http = getattr(client, "_client", None)  # openai, anthropic
    if http is None:  # mistralai
        http = getattr(getattr(client, "sdk_configuration", None), "client", None)
    if http is None:  # google.genai
        http = getattr(getattr(client, "_api_client", None), "_httpx_client", None)
    return http if isinstance(http, httpx2.Client) else None


def _legacy_http_of(client: Any) -> Any:
    """The client of the older ``httpx`` package an SDK client sends through, if the
    user gave it one (the SDKs accept both), else None."""
    module = sys.modules.get("httpx")
    http = getattr(client, "_client", None)
    if module is None or module is httpx2 or isinstance(http, httpx2.Client):
        return None
    return http if isinstance(http, module.Client) else None


def _legacy_guard_type() -> type:
    # A Guard that is also a transport of the older httpx package, made only when a
    # user's client of that package is met (nbbatch never imports it itself).
    module = sys.modules["httpx"]
    return type("_LegacyGuard", (Guard, module.BaseTransport), {})


def _LegacyGuard(check: Callable[[httpx2.Request], str | None], owner: Any, module: Any) -> Any:
    return _legacy_guard_type()(check, owner, module)
