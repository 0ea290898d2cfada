# snapkernel: `make run` and `make test` set everything up on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROXY := build/node/node_modules/.bin/configurable-http-proxy

PREFIX ?= /opt/snapkernel
# Test worker processes (pytest-xdist): tests mostly wait on kernels and CRIU, so more workers than cores pay.
TEST_WORKERS ?= 3

.PHONY: setup run demo test test-quick lint format bench clean system-install

setup: $(INSTALLED) $(PROXY)
	@$(VENV)/bin/jupyter snapkernel install-criu --prefix $(VENV) --build-dir build/criu
	@bash scripts/install-chromium.sh
	@bash scripts/install-test-tools.sh

# JupyterHub's proxy, for the hub integration test.
$(PROXY):
	@mkdir -p build/node
	@npm install --silent --no-audit --no-fund --prefix build/node configurable-http-proxy@4

$(INSTALLED): pyproject.toml labextension/package.json $(wildcard labextension/src/*.ts labextension/src/*.tsx labextension/style/* labextension/schema/*.json)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip setuptools wheel
	@$(PY) -m pip install -q -e ".[test,examples]"
	@touch $@

# For every user of the machine (as root): PREFIX venv, CRIU, a criu with cap_checkpoint_restore for group snapkernel.
system-install:
	@PREFIX=$(PREFIX) bash scripts/system-install.sh

# JupyterLab on localhost with the snapkernel kernel and the example notebooks.
run: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --no-browser --ServerApp.root_dir=examples \
		$(if $(filter 0,$(shell id -u)),--allow-root)

demo: setup
	$(PY) examples/engine_demo.py

test: setup lint
	$(PY) -m pytest -ra -n $(TEST_WORKERS) --dist loadgroup

# The unit tier (tests/unit): pure logic, as any user, without CRIU, root or kernels; well under 2 minutes.
# PYTEST_ARGS adds options (e.g. `-p no:cacheprovider` in a checkout this user cannot write to).
test-quick: $(INSTALLED)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd labextension && ../$(VENV)/bin/jlpm install --immutable >/dev/null && ../$(VENV)/bin/jlpm run lint:check

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	cd labextension && ../$(VENV)/bin/jlpm run lint

# Every figure beside its baseline, in one run (engine, example notebooks, 16 sessions through a
# server, privilege modes from the machine-wide install): benchmarks/results/latest.json and .png.
bench: setup
	@PREFIX=$(PREFIX) bash scripts/system-install.sh
	$(PY) benchmarks/report.py --prefix $(PREFIX)

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache
