# Two commands for a new user: `make repro` (the pipeline on the demo corpus) and `make test` (the whole suite).
# Each creates the virtual environment when missing. It lives outside the clone, keyed by a hash of the dependency
# pins, so every clone with the same pins shares one environment.
PYTHON ?= python3.11
PINS_HASH := $(shell sha256sum requirements.lock | cut -c1-16)
VENV ?= $(HOME)/.cache/m3ret/venv-$(PINS_HASH)
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# dvc stages call the `m3ret` console script of this environment
export PATH := $(BIN):$(PATH)

.PHONY: env repro test lint format lock clean-env

# no prerequisites: the path already names the lock file's hash, and a fresh clone's new mtimes must not force a rebuild
$(VENV)/.complete:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

env: $(VENV)/.complete
	@$(BIN)/pip install -q --no-deps -e . >/dev/null
	@echo "environment: $(VENV)  (activate: source $(BIN)/activate)"

repro: env
	$(BIN)/dvc repro

test: env
	$(BIN)/pytest

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve the pins from pyproject.toml's ranges in a scratch venv and write requirements.lock.
lock:
	rm -rf /tmp/m3ret-lock && $(PYTHON) -m venv /tmp/m3ret-lock
	/tmp/m3ret-lock/bin/pip install -q --upgrade pip && /tmp/m3ret-lock/bin/pip install -q -e ".[dev]"
	(echo "# Exact versions of every dependency, checked together on Python 3.11 (pip check clean). Regenerate: make lock"; \
	 /tmp/m3ret-lock/bin/pip freeze --exclude-editable) > requirements.lock

clean-env:
	rm -rf $(VENV)
