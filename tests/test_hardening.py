"""What nbbatch shows, writes and makes is safe to keep and to open: no key in a chained
traceback, no formula run from a CSV export, no folder open to others under umask 000,
no ledger folder of another user, and the sidebar's server answers bad requests with a
clear 4xx rather than a 500."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import Listener, jupyter_running
from .conftest import openai_client
from .this_machine import remote_host

NOBODY = 65534
CLIENT_KEY = "proxy-key-of-ours-0123456789abcdef"


def test_no_key_in_the_chained_sdk_error_of_a_traceback():
    def quote_key(headers: dict[str, str]) -> dict:  # a 401 that quotes the key it was sent
        sent = headers.get("authorization", "")
        return {"error": {"message": f"Incorrect API key provided: {sent}"}}

    server = Listener("127.0.0.1", 0, status=401, body=quote_key)
    try:
        url = f"http://127.0.0.1:{server.port}/v1"
        with openai.OpenAI(base_url=url, api_key=CLIENT_KEY, max_retries=0) as client:
            with pytest.raises(nb.ProviderError) as raised:
                nb.submit(pd.DataFrame({"t": ["a"]}), "{t}", model="gpt-4o-mini", client=client)
    finally:
        server.close()
    error: BaseException | None = raised.value
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    sdk = [e for e in chain if isinstance(e, openai.AuthenticationError)]
    assert sdk  # the chain is kept...
    shown = "".join(traceback.format_exception(raised.value))
    assert "Incorrect API key provided" in shown
    assert CLIENT_KEY not in shown  # ...without the key (as a notebook shows and saves it)
    assert CLIENT_KEY not in json.dumps(sdk[0].body)


def _collect_formulas(server: emulator.Emulator, out: Path) -> None:
    """Collect a job whose answers a spreadsheet would take for formulas into ``out``."""
    df = pd.DataFrame({"text": ["a", "b", "c", "d"]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=openai_client(server))
    job.wait(timeout=60, progress=False)
    run = subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", "collect", job.id, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


INERT = ['\'=HYPERLINK("http://x.example")', "'+1+1", "'@SUM(A1)", "'-2"]


def test_csv_export_cells_never_start_a_formula(emu_formulas, tmp_path):
    out = tmp_path / "results.csv"
    _collect_formulas(emu_formulas, out)
    with out.open(newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert pd.read_csv(out)["response"].tolist() == INERT


def test_xlsx_export_cells_never_start_a_formula(emu_formulas, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")  # in the dev extra: CI always has it
    out = tmp_path / "results.xlsx"
    _collect_formulas(emu_formulas, out)
    sheet = openpyxl.load_workbook(out).active
    # A formula cell is what a spreadsheet would run: none, and every text kept as text.
    assert not [c.coordinate for row in sheet.iter_rows() for c in row if c.data_type == "f"]
    assert pd.read_excel(out)["response"].tolist() == INERT


@pytest.fixture
def emu_formulas() -> Iterator[emulator.Emulator]:
    """An emulator whose answers a spreadsheet would take for formulas."""
    answers = {"a": '=HYPERLINK("http://x.example")', "b": "+1+1", "c": "@SUM(A1)", "d": "-2"}
    with emulator.start(
        processing_seconds=0.05, responder=lambda request: answers[request.prompt]
    ) as server:
        yield server


def test_folders_are_owner_only_under_umask_000(monkeypatch, tmp_path):
    home = tmp_path / "made" / "by" / "nbbatch"
    monkeypatch.setenv("NBBATCH_HOME", str(home))
    old = os.umask(0)
    try:
        with emulator.start(processing_seconds=0.05) as server:
            job = nb.submit(pd.DataFrame({"t": ["a", "b"]}), "{t}", model="gpt-4o-mini",
                            client=openai_client(server))  # fmt: skip
            job.wait(timeout=60, progress=False)
    finally:
        os.umask(old)
    folders = [tmp_path / "made", *[p for p in (tmp_path / "made").rglob("*") if p.is_dir()]]
    assert home in folders and len(folders) > 3
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in folders if p.stat().st_mode & 0o077}
    assert loose == {}


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a folder of another user")
def test_a_ledger_folder_of_another_user_is_refused(monkeypatch, tmp_path):
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    monkeypatch.setenv("NBBATCH_HOME", str(home))
    with pytest.raises(nb.ConfigError, match="belongs to another user.*NBBATCH_HOME"):
        nb.jobs()
    assert not (home / "ledger.sqlite3").exists()


# ------------------------------------------------------------------ the sidebar's server


@pytest.fixture
def jupyter(tmp_path) -> Iterator[tuple[str, str, Path]]:
    """Jupyter Server (with nbbatch's extension) on this test's ledger: url, token, root."""
    root = tmp_path / "root"
    root.mkdir()
    with jupyter_running("jupyter_server", root, tmp_path) as (url, token):
        yield url, token, root


def _call(url: str, token: str, method: str = "GET", body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"token {token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.mark.slow
def test_the_sidebar_answers_bad_requests_with_a_clear_4xx(jupyter, emu):
    url, token, root = jupyter
    api = f"{url}/nbbatch/api/jobs"
    job = nb.submit(pd.DataFrame({"t": ["a"]}), "{t}", model="gpt-4o-mini",
                    client=openai_client(emu)).wait(timeout=60, progress=False)  # fmt: skip
    status, answer = _call(f"{api}/{job.id}/failed?limit=x", token)
    assert status == 400 and "limit must be a whole number" in answer["error"]
    (root / "out" / f"{job.id}.parquet").mkdir(parents=True)  # a folder where the file goes
    status, answer = _call(f"{api}/{job.id}/collect", token, "POST", {"folder": "out"})
    assert status == 400 and "is a folder" in answer["error"]
    status, answer = _call(f"{api}/{job.id}/collect", token, "POST", {"folder": ""})
    assert status == 200 and answer["rows"] == 1


@pytest.fixture
def env_key(monkeypatch) -> str:
    """The environment's OpenAI key, set before the server starts (it polls with it)."""
    monkeypatch.setenv("OPENAI_API_KEY", CLIENT_KEY)
    return CLIENT_KEY


@pytest.mark.slow
def test_a_provider_answering_malformed_json_is_a_clear_warning(env_key, jupyter):
    url, token, _ = jupyter
    # This machine's non-loopback address: nbbatch takes it for a remote one (a proxy).
    host = remote_host()
    if host is None:
        pytest.skip("this machine has no non-loopback address to listen on")
    with emulator.start(host=host, processing_seconds=600.0) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=env_key, max_retries=0)
        job = nb.submit(pd.DataFrame({"t": ["a"]}), "{t}", model="gpt-4o-mini", client=client)
        job.wait_sent()
        port = server.port
        client.close()
    # Whoever answers there now answers 200 with a body that is not JSON (a proxy's page).
    broken = Listener(host, port, status=200, body=lambda h: b"<html>{not json")
    try:
        status, answer = _call(f"{url}/nbbatch/api/jobs/{job.id}/refresh", token, "POST", {})
    finally:
        broken.close()
    assert status == 200, answer
    assert "not its API's JSON" in answer["warning"]


@pytest.mark.slow
def test_a_result_download_goes_to_disk_as_it_arrives(monkeypatch):
    import tracemalloc

    big = "x" * (4 << 20)  # a 4 MiB answer per row: a 48 MiB download in all
    df = pd.DataFrame({"t": [f"row {i}" for i in range(12)]})
    # (OpenAI: the emulator cuts a Claude reply at its max_tokens, far below 4 MiB.)
    with emulator.start(processing_seconds=0.05, responder=lambda request: big) as server:
        job = nb.submit(df, "{t}", model="gpt-4o-mini", client=openai_client(server))
        download = job._provider.download_results
        peaks: list[int] = []

        def measured(info, sink, **kwargs):
            tracemalloc.start()
            try:
                download(info, sink, **kwargs)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
            peaks.append(sum(p.stat().st_size for p in sink.paths))

        monkeypatch.setattr(job._provider, "download_results", measured)
        job.wait(timeout=120, progress=False)
    peak, on_disk = peaks
    assert on_disk > 48 << 20  # all of it went to disk...
    assert peak < 8 << 20  # ...while no more than a few chunks were ever in memory
    assert job.results()["output"].str.len().tolist() == [len(big)] * 12
