# nstask: the two commands a user runs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export NSTASK_VENV := $(VENV)

.PHONY: demo test bootstrap unit integration lint typecheck protos check-protos bench clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@$(PY) scripts/demo.py

test:
	@bash scripts/bootstrap.sh --test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

unit: bootstrap
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

integration: bootstrap
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/integration

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

protos:
	$(PY) scripts/gen_protos.py

check-protos:
	$(PY) scripts/gen_protos.py --check

bench: bootstrap
	$(PY) bench/launch.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
