# Two commands on a fresh machine: `make run` (the service with demo data on SQLite at
# http://127.0.0.1:8000) and `make test` (the whole test suite). See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-postgres lint format chromium clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/leadmarket demo
	LEADMARKET_DEMO_MARKET=true $(BIN)/leadmarket serve

# The suite runs against LEADMARKET_TEST_DATABASE_URL (default: a scratch SQLite file).
test: install chromium
	$(BIN)/pytest

test-postgres: install chromium
	LEADMARKET_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres $(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src
	scripts/alembic-check

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Browser tests drive Debian's Chromium; no tool downloads a browser of its own.
chromium:
	@scripts/ensure-chromium

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
