"""A real JupyterLab in headless Chromium, for the panel's browser test.

Follows ``shared/reference/jupyterlab-browser-tests.md``: Debian's Chromium driven by
Python Playwright (never ``playwright install``), JupyterLab on a free loopback port with
a random token, its config/runtime/settings in a temporary folder, and a temporary COPY
of the notebooks as its root (Lab writes checkpoints next to them).

Without Chromium or JupyterLab the tests skip, saying why, except under ``CI=true``,
where they fail: CI must run them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .._helpers import jupyter_running

#: Debian's Chromium (``apt-get install chromium``); NBBATCH_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("NBBATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
HERE = Path(__file__).parent
#: Where screenshots go: the git-ignored artifacts/ folder (NBBATCH_ARTIFACTS elsewhere).
ARTIFACTS = Path(os.environ.get("NBBATCH_ARTIFACTS", HERE.parents[1] / "artifacts"))


def require(what: str, ok: bool) -> None:
    """Skip (outside CI, printing why) or fail (in CI) when ``what`` is missing."""
    if ok:
        return
    reason = f"{what} is missing; the browser tests need it"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: install it, see .ci/run)", pytrace=False)
    print(f"SKIPPED browser test: {reason}", file=sys.stderr)
    pytest.skip(reason)


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab serving a temporary copy of ``tests/browser/notebooks``."""
    require(f"Chromium ({CHROMIUM})", Path(CHROMIUM).exists())
    require("playwright (pip)", importlib.util.find_spec("playwright") is not None)
    require("jupyterlab (pip)", importlib.util.find_spec("jupyterlab") is not None)

    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    shutil.copytree(HERE / "notebooks", root)
    settings = base / "settings"
    news = settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    env = {"NBBATCH_HOME": str(base / "nbbatch-home")}  # the kernel's own ledger
    args = (
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
        f"--LabApp.user_settings_dir={settings}",
    )
    with jupyter_running("jupyter lab", root, base, args=args, env=env, seconds=60) as (url, token):
        yield Lab(url, token, root)


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[object]:
    """A headless Debian Chromium (module scope: one per test module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()
