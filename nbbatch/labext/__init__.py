"""nbbatch inside JupyterLab: the server side of the "Batch jobs" sidebar.

Installing nbbatch installs two things that Jupyter finds on its own:

- a prebuilt JupyterLab extension (``share/jupyter/labextensions/nbbatch``, built from
  ``labextension/`` in the repository), the sidebar itself;
- this Jupyter Server extension (enabled by ``etc/jupyter/jupyter_server_config.d/
  nbbatch.json``), which serves a small JSON view of the ledger and runs the sidebar's
  actions (cancel, collect) in the server process, where the provider keys are.

The sidebar is a view: listing jobs reads the ledger and never polls a provider. Its
checks of the running jobs (:mod:`.checks`, while it is visible) and its actions
(check now, collect, cancel) talk to one, and none of them sends rows. See
:mod:`.handlers` for the routes and :mod:`.views` for the JSON they return.
"""

from __future__ import annotations

from typing import Any

from .namespace import NAMESPACE

__all__ = ["NAMESPACE"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension Jupyter Server loads (enabled by the installed config)."""
    return [{"module": "nbbatch.labext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the sidebar's routes to a running Jupyter Server."""
    from .handlers import routes

    app = serverapp.web_app
    app.add_handlers(".*$", routes(app.settings["base_url"], serverapp.root_dir))
    serverapp.log.info("nbbatch: the Batch jobs sidebar's API is at /%s/api", NAMESPACE)
