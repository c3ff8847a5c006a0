"""``make demo`` and ``make test`` on a fresh clone: what each installs (read from
``make``'s own dry run, so nothing is installed here).

The demo once took minutes on a fresh clone, silently installing the whole dev
toolchain (PySpark, Dask, Playwright, JupyterLab, mypy, ...) and building the sidebar
with npm; it needs none of them. ``make test`` (what CI runs) still installs them all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(target: str) -> list[str]:
    """The commands ``make TARGET`` would run on a fresh clone (-B: as if nothing had
    been installed yet; -n: printed, not run)."""
    out = subprocess.run(
        ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line and "--upgrade pip" not in line]


def test_make_demo_installs_only_nbbatch_without_npm_and_shows_progress() -> None:
    lines = _dry_run("demo")
    (install,) = _installs(lines)
    assert "-e ." in install and "[dev]" not in install  # no dev tools
    assert "SKIP_JUPYTER_BUILDER=1" in install  # no npm build of the sidebar
    assert "--quiet" not in install and " -q " not in install  # pip's progress is shown
    assert not any("npm" in line for line in lines)
    assert any("nbbatch.demo" in line for line in lines)
    assert any(line.startswith("echo") and "==>" in line for line in lines)  # each step named


def test_make_test_still_installs_everything_ci_needs() -> None:
    lines = _dry_run("test")
    installs = _installs(lines)
    assert any('-e ".[dev]"' in line for line in installs)
    assert not any("SKIP_JUPYTER_BUILDER" in line for line in lines)  # the sidebar is built
    assert any("npm ci" in line for line in lines) and any("pytest" in line for line in lines)
