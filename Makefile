# `make demo` and `make test` set everything up on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What `make demo` needs: nbbatch and its own requirements, no dev tools, no sidebar build.
DEMO_STAMP := $(VENV)/.installed-demo
# The sidebar's TypeScript tools, exactly as labextension/package-lock.json pins them.
NODE_STAMP := labextension/node_modules/.package-lock.json

.PHONY: demo test lint lint-ts test-ts bench lab clean

$(PY):
	@echo "==> creating the virtual environment $(VENV)"
	python3 -m venv $(VENV)

# Re-install when the project's requirements change. The editable install also builds the
# JupyterLab sidebar (labextension/, TypeScript) with npm and installs it where JupyterLab
# looks; after editing the TypeScript, run `pip install -e .` again.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

# The demo installs only nbbatch and its requirements (pandas, pyarrow, the providers'
# SDKs, ...), with pip's progress shown, and skips the sidebar's npm build
# (SKIP_JUPYTER_BUILDER, read by hatch-jupyter-builder): the demo runs in a terminal.
# --no-compile: Python compiles only the modules the demo imports, when it imports them,
# instead of every module of every package at install time.
# A later `make test` or `make lab` installs the dev tools and builds the sidebar.
$(DEMO_STAMP): $(PY) pyproject.toml
	@echo "==> installing nbbatch and what the demo needs (no dev tools, no sidebar build)"
	SKIP_JUPYTER_BUILDER=1 $(PY) -m pip install --disable-pip-version-check --no-compile -e .
	touch $(DEMO_STAMP)

$(NODE_STAMP): labextension/package.json labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund

# The sidebar's own lint (eslint + type check) and unit tests (node:test).
lint-ts: $(NODE_STAMP)
	cd labextension && npm run lint

test-ts: $(NODE_STAMP)
	cd labextension && npm test

demo: $(DEMO_STAMP)
	@echo "==> running the demo (python -m nbbatch.demo)"
	$(PY) -m nbbatch.demo

test: $(STAMP) lint-ts test-ts
	$(PY) -m ruff check nbbatch tests benchmarks
	$(PY) -m ruff format --check nbbatch tests benchmarks
	$(PY) -m mypy nbbatch
	$(PY) -m pytest -q -n 3

lint: $(STAMP) lint-ts
	$(PY) -m ruff check nbbatch tests benchmarks
	$(PY) -m ruff format --check nbbatch tests benchmarks
	$(PY) -m mypy nbbatch

bench: $(STAMP)
	$(PY) benchmarks/bench_io.py
	$(PY) benchmarks/bench_e2e.py

# The example notebooks start their own embedded emulator: no API key needed.
# (--allow-root only when run as root, as in containers.)
lab: $(STAMP)
	@echo "Opening JupyterLab on notebooks/: each notebook starts nbbatch's embedded emulator, no API key needed (set OPENAI_API_KEY / ANTHROPIC_API_KEY to use the real services)."
	$(PY) -m jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	rm -rf labextension/node_modules labextension/lib labextension/lib-test nbbatch/labextension
