"""The sidebar's HTTP routes, behind Jupyter Server's own authentication and
authorisation (every handler is an ``APIHandler``, so also XSRF-checked on POST).

=======  ================================  ===========================================
GET      ``/nbbatch/api/jobs``             every job (see :mod:`.views` for the schema)
GET      ``/nbbatch/api/jobs/ID/failed``   the rows that did not succeed, with errors
POST     ``/nbbatch/api/check``            check the running jobs nobody checked lately,
                                           one at a time (see :mod:`.checks`)
POST     ``/nbbatch/api/jobs/ID/refresh``  poll the provider once ("check now")
POST     ``/nbbatch/api/jobs/ID/cancel``   cancel at the provider
POST     ``/nbbatch/api/jobs/ID/collect``  results to ``FOLDER/ID.parquet`` (body
                                           ``{"folder": "path/under/root"}``)
=======  ================================  ===========================================

Errors are ``{"error": "..."}`` with 400 (bad request, e.g. ``?limit=x`` or a target
that is a folder), 404 (no such job), 409 (the action does not apply now, e.g.
cancelling a finished job, or the library or the server's disk refused it, e.g. no key
for the job's provider) or 502 (the provider refused, answered something that is not
its API's JSON, or could not be reached). Actions run in the server process, with the server's
environment (its API keys), in a worker thread so the server stays responsive; no
key ever goes into a response (error texts are scrubbed of the keys in the server's
environment and of anything shaped like one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .._scrub import scrub_json as _scrub_json
from .checks import Checks
from .namespace import NAMESPACE

JOB_ID = r"(?P<job_id>[A-Za-z0-9_.\-]+)"


def scrub(text: str) -> str:
    """``text`` without any API key from the environment or anything shaped like one."""
    from .._scrub import scrub as _scrub_text

    return _scrub_text(text)


class _Handler(APIHandler):
    """Common ground: JSON out, errors as ``{"error": ...}``, work in a thread."""

    #: The resource name Jupyter Server's authorizer is asked about.
    auth_resource = NAMESPACE

    def initialize(self, root_dir: str, checks: Checks) -> None:
        self.root_dir = root_dir
        self.checks = checks

    async def _run(self, fn: Callable[[], Any]) -> None:
        from .._errors import InputError, JobNotFoundError, NbbatchError, ProviderError
        from .views import Conflict

        try:
            result = await asyncio.to_thread(fn)
        except JobNotFoundError as exc:
            return self._error(404, exc)
        except (ValueError, InputError) as exc:
            return self._error(400, exc)
        except ProviderError as exc:
            return self._error(502, exc)
        except (NbbatchError, Conflict) as exc:
            return self._error(409, exc)
        except OSError as exc:  # the server's disk refused (a file in the way, no room)
            return self._error(409, exc)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        # Every text of the answer (warnings, errors of rows) is scrubbed of keys.
        self.finish(json.dumps(_scrub_json(result)))

    def _error(self, status: int, exc: BaseException) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": scrub(str(exc))}))

    def _ledger(self) -> Any:
        from .._ledger import default

        return default()


class JobsHandler(_Handler):
    """``GET``: the whole list (reads the ledger; never polls a provider)."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        from .views import listing

        await self._run(lambda: listing(self.root_dir, self.checks.errors()))


class CheckHandler(_Handler):
    """``POST``: check the running jobs (poll only, one at a time) that no process has
    checked lately; the sidebar asks when it opens and while it is visible."""

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from .._ledger import home

        if not (home() / "ledger.sqlite3").exists():  # nothing to check; create nothing
            return await self._run(lambda: {"checked": [], "failed": [], "busy": False})
        await self._run(lambda: self.checks.check_open(self._ledger()))


class FailedHandler(_Handler):
    """``GET``: the job's failed, expired and cancelled rows with their errors."""

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        from .views import failed_view

        raw = self.get_query_argument("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            return self._error(
                400, ValueError(f"limit must be a whole number of rows, found {raw[:40]!r}")
            )
        await self._run(lambda: failed_view(self._ledger(), job_id, max(1, min(limit, 1000))))


class RefreshHandler(_Handler):
    """``POST``: poll the job's provider once, as ``nbbatch status`` does."""

    @tornado.web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        from .views import refresh

        def check() -> dict[str, Any]:
            try:
                out = refresh(self._ledger(), job_id, self.root_dir)
            except Exception as exc:
                self.checks.note(job_id, f"{type(exc).__name__}: {exc}")
                raise
            self.checks.note(job_id, out["warning"])
            return out

        await self._run(check)


class CancelHandler(_Handler):
    """``POST``: cancel the job at its provider (the sidebar asked the user first)."""

    @tornado.web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        from .views import cancel

        await self._run(lambda: cancel(self._ledger(), job_id, self.root_dir))


class CollectHandler(_Handler):
    """``POST``: write the job's results as Parquet under the server's root."""

    @tornado.web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        from .views import collect

        body = self.get_json_body() or {}
        folder = body.get("folder", "") if isinstance(body, dict) else ""
        if not isinstance(folder, str):
            return self._error(400, ValueError("folder must be a string"))
        await self._run(lambda: collect(self._ledger(), job_id, self.root_dir, folder))


def routes(base_url: str, root_dir: str) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL patterns, under ``base_url``, each with its handler."""
    api = url_path_join(base_url, NAMESPACE, "api")
    kwargs = {"root_dir": root_dir, "checks": Checks()}  # one Checks for the server
    return [
        (url_path_join(api, "jobs"), JobsHandler, kwargs),
        (url_path_join(api, "check"), CheckHandler, kwargs),
        (url_path_join(api, "jobs", JOB_ID, "failed"), FailedHandler, kwargs),
        (url_path_join(api, "jobs", JOB_ID, "refresh"), RefreshHandler, kwargs),
        (url_path_join(api, "jobs", JOB_ID, "cancel"), CancelHandler, kwargs),
        (url_path_join(api, "jobs", JOB_ID, "collect"), CollectHandler, kwargs),
    ]
