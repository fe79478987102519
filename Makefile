# Set-up on a fresh machine: `make tune` (the demo job) and `make test`. Both create .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_DIR ?= runs
export RAYPIPE_RUN_DIR := $(RUN_DIR)

.PHONY: install test test-unit test-e2e tune lint mlflow-ui clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (see README)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache.
	$(PY) -m pip install -q -e '.[dev,dicom]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not e2e"

test-e2e: install
	$(PY) -m pytest -q -m e2e

tune: install
	$(VENV)/bin/raypipe train --preset demo --run-dir $(RUN_DIR)

lint: install
	$(VENV)/bin/ruff check raypipe tests

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN_DIR))/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(RUN_DIR) .pytest_cache
