# Two commands for a fresh clone: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Demo credentials and data for `make run` (local use only).
export FHIR_FAX_DATA_DIR ?= fhir-fax-data

.PHONY: run test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fhir-fax serve --load-fixtures

lint: $(STAMP)
	$(BIN)/ruff check fhir_fax tests benchmarks fixtures
	$(BIN)/ruff format --check fhir_fax tests benchmarks fixtures

test: $(STAMP)
	$(BIN)/ruff check fhir_fax tests benchmarks fixtures
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) fhir-fax-data .pytest_cache
