# Orchestrator Service: everyday commands. `make` alone lists them.
# Servers: whatever DATABASE_URL / POSTGRES_HOST and REDIS_URL / REDIS_HOST name; otherwise the
# embedded PostgreSQL and Redis that deploy/devstack.py starts under ./var.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lock.stamp
# The locks are resolved for the image's Python (Dockerfile), with markers for other platforms.
LOCK_FLAGS := --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock" --quiet
LOCK_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
QUEUES := L20,advanced,standard
IO_QUEUES := io.L20,io.advanced,io.standard
# Exports DATABASE_URL and REDIS_URL (starting embedded servers if none are configured), then runs
# the rest of the recipe line with them.
WITH_SERVICES = exports="$$($(PY) -m deploy.devstack services)" && eval "$$exports" &&

.DEFAULT_GOAL := help
.PHONY: help venv lock test-tools run test test-fast fuzz lint format migrate worker worker-io beat flower services stop-services bench chaos clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create .venv from requirements-dev.lock (hashes checked), then the service and `orchestrator`

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

lock: ## Regenerate requirements.lock and requirements-dev.lock from pyproject.toml (LOCK_ARGS=--upgrade)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep -o 'uv==[0-9.]*' pyproject.toml)"
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) $(LOCK_ARGS) -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -c requirements.lock $(LOCK_FLAGS) $(LOCK_ARGS) \
		-o requirements-dev.lock

test-tools: ## Install Chromium and nginx for the tests when missing (apt-get as root or with sudo -n)
	python3 -m deploy.system_tools

run: venv ## Run API, worker and beat with prefixed logs (embedded servers if none configured)
	$(PY) -m deploy.devstack run

test: test-tools venv ## ruff check, mypy and import contracts, then pytest on a fresh database and Redis DB (PYTEST_ARGS=...)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app workers
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m deploy.devstack test -- $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv ## ruff check and import contracts, then pytest without browsers, fault stacks, real processes or fuzzing
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m deploy.devstack test -- $(PY) -m pytest -q -m "not browser and not faults and not slow and not fuzz" $(PYTEST_ARGS)

fuzz: venv ## Schemathesis (every check, stateful too; schemathesis.toml) with FUZZ_EXAMPLES (200) examples each
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} $(PY) -m deploy.devstack test -- $(PY) -m pytest -q tests/test_fuzz.py $(PYTEST_ARGS)

lint: venv ## ruff check, ruff format --check, mypy and the import contracts (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app workers
	$(VENV)/bin/lint-imports --no-cache

format: venv ## Fix imports and reformat the code with ruff
	$(VENV)/bin/ruff check --select I --fix .
	$(VENV)/bin/ruff format .

migrate: venv ## Apply database migrations (flask db upgrade)
	$(WITH_SERVICES) $(VENV)/bin/flask --app wsgi db upgrade

worker: venv ## Run one Celery worker on the L20, advanced and standard queues
	$(WITH_SERVICES) $(VENV)/bin/celery -A workers worker -Q $(QUEUES) --concurrency 2 --loglevel INFO

worker-io: venv ## Run one I/O pool process: threads on the io.L20, io.advanced and io.standard queues (calls to AI services); run one per core
	$(WITH_SERVICES) $(VENV)/bin/celery -A workers worker -Q $(IO_QUEUES) -P threads --concurrency 8 --loglevel INFO -n io-$$$$@%h

beat: venv ## Run Celery beat (periodic jobs); schedule file in var/
	mkdir -p var
	$(WITH_SERVICES) $(VENV)/bin/celery -A workers beat --loglevel INFO --schedule var/celerybeat-schedule

flower: venv ## Run Flower on http://127.0.0.1:5555 (basic auth: FLOWER_USER, FLOWER_PASSWORD)
	@test -n "$$FLOWER_PASSWORD" || { echo "Set FLOWER_PASSWORD (and optionally FLOWER_USER) for Flower's basic auth"; exit 2; }
	$(WITH_SERVICES) $(VENV)/bin/celery -A workers flower --address=127.0.0.1 --port=5555 \
		--basic-auth="$${FLOWER_USER:-flower}:$$FLOWER_PASSWORD"

services: venv ## Ensure PostgreSQL and Redis; print export lines: eval "$(make -s services)"
	@$(PY) -m deploy.devstack services

stop-services: venv ## Stop the embedded PostgreSQL and Redis that `services` left running
	$(PY) -m deploy.devstack stop

bench: venv ## Run the benchmark on a fresh database; writes docs/performance.md (BENCH_ARGS="--quick", "--only reads,bigfile")
	$(PY) -m deploy.devstack test -- $(PY) -m bench $(BENCH_ARGS)

chaos: venv ## Fault soak at 50,000 tasks (kill -9, Redis flush/restart, PostgreSQL restart); writes docs/reliability.md
	$(PY) -m deploy.devstack test -- $(PY) -m bench.chaos

clean: ## Stop embedded servers, delete their data, remove var/ and caches (keeps .venv)
	if [ -x $(PY) ]; then $(PY) -m deploy.devstack clean; fi
	rm -rf var .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
