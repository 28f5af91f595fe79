# The two commands of the README: `make demo` (set up + main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo mae-demo test lint format bench-gpu clean stack stack-stop stack-status

setup:
	@bash scripts/setup.sh

# The demo keeps its Prefect home (ephemeral API database, result cache) in outputs/, so
# `make clean` (or `rm -rf outputs`) leaves nothing behind that a later run could trust.
demo: export PREFECT_HOME ?= $(CURDIR)/outputs/prefect-home
demo: setup
	$(PY) -m flows

mae-demo: setup
	$(VENV)/bin/hip demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Two pytest workers, one test file each at a time (module fixtures such as a Prefect server
# stay in one process): the suite spends much of its time waiting on servers and subprocesses.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

bench-gpu: setup
	$(PY) bench/perf.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache .ruff_cache

# The local stack: Prefect server + work pools + worker, MLflow server, SeaweedFS S3 (127.0.0.1).
stack: setup
	infra/stack.sh start

stack-stop:
	infra/stack.sh stop

stack-status:
	infra/stack.sh status
