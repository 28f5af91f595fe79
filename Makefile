# The two commands of the README: `make demo` (set up + main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint format bench-gpu clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/hip demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

bench-gpu: setup
	$(PY) bench/hip_step.py

clean:
	rm -rf $(VENV) outputs runs .pytest_cache .ruff_cache
