# snapkernel: `make run` and `make test` set everything up on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: setup run test lint format bench clean

setup: $(INSTALLED)
	@bash scripts/install-criu.sh

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip setuptools wheel
	@$(PY) -m pip install -q -e ".[test]"
	@touch $@

run: setup
	$(PY) examples/engine_demo.py

test: setup lint
	$(PY) -m pytest -ra

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
