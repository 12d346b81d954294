# Two commands for a fresh clone: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench soak ocr

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

# The unmodified Oystehr SDK, used by the compatibility tests.
SDK_STAMP := tests/sdk/node_modules/.installed
$(SDK_STAMP): tests/sdk/package-lock.json
	cd tests/sdk && npm ci --silent --no-fund --no-audit
	touch $(SDK_STAMP)

install: $(STAMP) $(SDK_STAMP)

# A faster simulated carrier and a local admin client for the demo (local use only).
run: export FHIR_FAX_SIMULATOR_SPEED ?= 20
run: export FHIR_FAX_BOOTSTRAP_CLIENT_ID ?= local-admin
run: export FHIR_FAX_BOOTSTRAP_CLIENT_SECRET ?= local-admin-secret
run: $(STAMP)
	$(BIN)/fhir-fax serve --load-fixtures

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fhir_fax

# Tesseract reads scanned received faxes (patient suggestions; their tests need it). Installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ocr:
	@command -v tesseract >/dev/null 2>&1 || { \
		echo "installing tesseract-ocr (OCR of received faxes)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq tesseract-ocr; }

test: lint $(SDK_STAMP) ocr
	$(BIN)/python -m pytest

# Benchmarks (never part of the tests): the table and benchmarks/results/latest.json; about 6 minutes.
bench: $(STAMP)
	$(if $(PROFILE),$(BIN)/python -m pip install --quiet -e '.[bench]')
	$(BIN)/python benchmarks/load.py $(if $(PROFILE),--profile $(PROFILE))

# The same, then five minutes of mixed load while the server's memory is sampled.
soak: $(STAMP)
	$(BIN)/python benchmarks/load.py --soak 300

clean:
	rm -rf $(VENV) fhir-fax-data .pytest_cache .mypy_cache build dist tests/sdk/node_modules
