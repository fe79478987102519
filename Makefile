# Set-up on a fresh machine: `make tune` (the demo job) and `make test`. Both create .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_DIR ?= runs
export RAYPIPE_RUN_DIR := $(RUN_DIR)

# A local Ray head for `make tune RAY_ADDRESS=...` and `ray job submit` (token auth on, 127.0.0.1).
RAY_PORT ?= 6379
RAY_DASHBOARD_PORT ?= 8265
RAY_HEAD_DIR = $(abspath $(RUN_DIR))/ray-head
RAY_TOKEN = $(RAY_HEAD_DIR)/auth_token

.PHONY: install test test-unit test-e2e tune demo ray-up ray-down lint mlflow-ui clean

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

# The demo study: synthesises data if absent, tunes age + every fracture target on local Ray.
# With RAY_ADDRESS=127.0.0.1:$(RAY_PORT) it attaches to the head from `make ray-up` (and its token).
tune: install
	$(if $(RAY_ADDRESS),RAY_ADDRESS=$(RAY_ADDRESS) RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$${RAY_AUTH_TOKEN_PATH:-$(RAY_TOKEN)}) \
	  $(VENV)/bin/raypipe tune --preset demo --run-dir $(RUN_DIR)

# The whole pipeline on the demo preset: tune every target, promote the winners, write the report.
demo: install
	$(VENV)/bin/raypipe pipeline run --preset demo --run-dir $(RUN_DIR)

# Jobs run `python` from the head's PATH: the venv goes first so they find raypipe's dependencies.
ray-up: install
	@mkdir -p $(RAY_HEAD_DIR) && chmod 700 $(RAY_HEAD_DIR)
	@test -s $(RAY_TOKEN) || (umask 077 && $(PY) -c "import secrets; print(secrets.token_hex(32))" > $(RAY_TOKEN))
	PATH=$(abspath $(VENV))/bin:$$PATH RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(RAY_TOKEN) \
	  $(VENV)/bin/ray start --head --node-ip-address 127.0.0.1 --port $(RAY_PORT) \
	  --dashboard-host 127.0.0.1 --dashboard-port $(RAY_DASHBOARD_PORT) --disable-usage-stats >/dev/null
	@echo "Ray head on 127.0.0.1:$(RAY_PORT), dashboard http://127.0.0.1:$(RAY_DASHBOARD_PORT), token $(RAY_TOKEN)"
	@echo "  make tune RAY_ADDRESS=127.0.0.1:$(RAY_PORT)"
	@echo "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(RAY_TOKEN)"
	@echo "  ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . -- python -m raypipe tune ..."

ray-down:
	$(VENV)/bin/ray stop --force

lint: install
	$(VENV)/bin/ruff check raypipe tests benchmarks

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN_DIR))/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(RUN_DIR) .pytest_cache
