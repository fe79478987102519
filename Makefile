# Set-up on a fresh machine: `make tune` (the demo job) and `make test`. Both create .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_DIR ?= runs
export RAYPIPE_RUN_DIR := $(RUN_DIR)

# A local Ray head for `make tune RAY_ADDRESS=...` and `ray job submit` (token auth on, 127.0.0.1).
RAY_PORT ?= 6379
RAY_DASHBOARD_PORT ?= 8265
# The job agent's HTTP port (Ray's default 52365): a second head on this machine needs another, or its
# jobs are refused ("No available agent to submit job")
RAY_AGENT_PORT ?= 52365
RAY_HEAD_DIR = $(abspath $(RUN_DIR))/ray-head
RAY_TOKEN = $(RAY_HEAD_DIR)/auth_token

.PHONY: install test test-unit test-e2e tune demo ray-up ray-down cluster-up cluster-down lint bench mlflow-ui clean purge-runs

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (see README)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache.
	$(PY) -m pip install -q -e '.[dev,dicom]'
	touch $@

install: $(VENV)/.installed

# Two pytest workers, a test file each: most of the suite's wall time is waiting on Ray and MLflow, so two
# files run side by side on 2 cores in about half the time. TEST_JOBS=0 runs in one process.
TEST_JOBS ?= 2
PYTEST = $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

test: install
	$(PYTEST)

test-unit: install
	$(PYTEST) -m "not e2e"

test-e2e: install
	$(PYTEST) -m e2e

# The demo study: synthesises data if absent, tunes the preset's targets (age, fracture/AP, fracture/Lat) on local Ray.
# With RAY_ADDRESS=127.0.0.1:$(RAY_PORT) it attaches to the head from `make ray-up` (and its token).
tune: install
	$(if $(RAY_ADDRESS),RAY_ADDRESS=$(RAY_ADDRESS) RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$${RAY_AUTH_TOKEN_PATH:-$(RAY_TOKEN)}) \
	  $(VENV)/bin/raypipe tune --preset demo --run-dir $(RUN_DIR)

# The whole pipeline on the demo preset: tune every target, promote the winners, write the report.
demo: install
	$(VENV)/bin/raypipe pipeline run --preset demo --run-dir $(RUN_DIR)

# Jobs run `python` from the head's PATH: the venv goes first so they find raypipe's dependencies.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: without it Ray rewrites 127.0.0.1 to the host's address and its
# GCS, raylet and agents listen on every interface (tests/e2e/test_security.py checks they do not).
ray-up: install
	@mkdir -p $(RAY_HEAD_DIR) && chmod 700 $(RAY_HEAD_DIR)
	@test -s $(RAY_TOKEN) || (umask 077 && $(PY) -c "import secrets; print(secrets.token_hex(32))" > $(RAY_TOKEN))
	PATH=$(abspath $(VENV))/bin:$$PATH RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(RAY_TOKEN) \
	  $(VENV)/bin/ray start --head --node-ip-address 127.0.0.1 --port $(RAY_PORT) \
	  --dashboard-host 127.0.0.1 --dashboard-port $(RAY_DASHBOARD_PORT) \
	  --dashboard-agent-listen-port $(RAY_AGENT_PORT) --disable-usage-stats >/dev/null
	@echo "Ray head on 127.0.0.1:$(RAY_PORT), dashboard http://127.0.0.1:$(RAY_DASHBOARD_PORT), token $(RAY_TOKEN)"
	@echo "  make tune RAY_ADDRESS=127.0.0.1:$(RAY_PORT)"
	@echo "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(RAY_TOKEN)"
	@echo "  ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . -- python -m raypipe tune --data /abs/path/to/data --run-dir $(abspath $(RUN_DIR)) ..."

# Only the head on RAY_PORT: `ray stop --force` would also kill every other Ray cluster on the machine.
ray-down:
	$(PY) -m raypipe.train.head stop $(RAY_PORT)

# A Ray cluster in Docker on this host: head, GPU workers, MLflow on PostgreSQL + MinIO (cluster/README.md).
# `make cluster-up WORKERS=2` = two workers with one GPU each; VARIANT=cpu for a host without GPUs.
# Missing secrets are generated (docker/secrets/, mode 600); containers run as your uid to read them.
COMPOSE = docker compose -f docker/compose.yaml
WORKERS ?= 1
VARIANT ?= gpu
CLUSTER_UID = $(shell [ "$$(id -u)" = 0 ] && echo 1000 || id -u)
CLUSTER_GID = $(shell [ "$$(id -u)" = 0 ] && echo 1000 || id -g)

cluster-up:
	@docker/make-secrets.sh docker/secrets $(CLUSTER_UID):$(CLUSTER_GID)
	RAYPIPE_UID=$(CLUSTER_UID) RAYPIPE_GID=$(CLUSTER_GID) RAYPIPE_VARIANT=$(VARIANT) \
	  RAYPIPE_GIT_SHA=$$(git rev-parse HEAD 2>/dev/null || echo unknown) $(COMPOSE) \
	  $(if $(filter cpu,$(VARIANT)),--profile cpu) up -d --build --wait \
	  $(if $(filter cpu,$(VARIANT)),--scale ray-worker=0 --scale ray-worker-cpu=$(WORKERS),--scale ray-worker=$(WORKERS))
	@echo "Ray dashboard http://127.0.0.1:8265, MLflow http://127.0.0.1:5000. Submit a study:"
	@echo "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(abspath docker/secrets/ray_token)"
	@echo "  $(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m raypipe tune --preset demo --data /shared/runs/demo-data --storage /shared/runs"

# Stops and removes the containers; the volumes (runs, MLflow database, artifacts) stay.
cluster-down:
	$(COMPOSE) --profile cpu down

lint: install
	$(VENV)/bin/ruff check raypipe tests benchmarks

# Benchmarks 1-3 of benchmarks/README.md, sized to finish in < 20 min on 2 CPU cores (W=2 overhead on 2
# trials, search quality on 1 seed: BENCH_SEEDS=3 for the full figure, ~+15 min). Each runs in a temporary
# run dir; its JSON lands in $(RUN_DIR)/bench/ and is printed.
BENCH_SEEDS ?= 1
bench: install
	@mkdir -p $(RUN_DIR)/bench
	$(PY) benchmarks/input_pipeline.py > $(RUN_DIR)/bench/input_pipeline.json && cat $(RUN_DIR)/bench/input_pipeline.json
	$(PY) benchmarks/trial_overhead.py --modes bare,tune_w1,tune_w2 --w2-trials 2 > $(RUN_DIR)/bench/trial_overhead.json \
	  && cat $(RUN_DIR)/bench/trial_overhead.json
	$(PY) benchmarks/search_quality.py --seeds $(BENCH_SEEDS) --bootstrap 500 > $(RUN_DIR)/bench/search_quality.json \
	  && cat $(RUN_DIR)/bench/search_quality.json

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN_DIR))/mlflow.db --host 127.0.0.1 --port 5000

# Rebuildable things only: the image cache, Ray's scratch and the test cache. The MLflow store, the model
# registry, the studies and the data stay (they are results, not build outputs).
clean:
	rm -rf $(RUN_DIR)/cache $(RUN_DIR)/ray .pytest_cache

# Everything under RUN_DIR: MLflow runs, registered models, studies, data. Says what it deletes first.
purge-runs:
	@echo "deleting $(RUN_DIR): MLflow store (mlflow.db, mlartifacts), model registry, studies, data, reports"
	rm -rf $(RUN_DIR)
