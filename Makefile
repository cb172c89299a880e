# Two commands matter: `make up` runs the product on embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/zhisuan up

lint: $(STAMP)
	$(BIN)/ruff check scheduler agents api simulations tests benchmarks
	$(BIN)/ruff format --check scheduler agents api simulations tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy scheduler agents api simulations

# Ray keeps one driver connection per process, so the suites that start Ray clusters run in their own processes.
unit: $(STAMP)
	$(BIN)/pytest -q --doctest-modules scheduler agents api simulations tests --ignore=tests/integration --ignore=tests/e2e
	$(BIN)/pytest -q tests/integration
	$(BIN)/pytest -q tests/e2e

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/placement.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
