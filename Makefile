# Two commands for a fresh clone: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench soak system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

# The unmodified Oystehr SDK, used by the compatibility tests.
SDK_STAMP := node-clients/node_modules/.installed
$(SDK_STAMP): node-clients/package-lock.json
	cd node-clients && npm ci --silent --no-fund --no-audit
	touch $(SDK_STAMP)

install: $(STAMP) $(SDK_STAMP)

# A faster simulated carrier and a local admin client for the demo (local use only).
run: export FHIR_FAX_SIMULATOR_SPEED ?= 20
run: export FHIR_FAX_BOOTSTRAP_CLIENT_ID ?= local-admin
run: export FHIR_FAX_BOOTSTRAP_CLIENT_SECRET ?= local-admin-secret
run: export FHIR_FAX_BOOTSTRAP_USER ?= admin
run: export FHIR_FAX_BOOTSTRAP_PASSWORD ?= local-admin-password
run: $(STAMP)
	$(BIN)/fhir-fax serve --load-fixtures

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fhir_fax

# Debian packages the tests need, installed only when missing (a browser download at install time is not
# possible): Chromium and its driver for the browser tests, Tesseract for reading scanned received faxes.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends$$missing; \
	fi

# Two workers (one embedded database each); tests of one module stay on one worker, so module fixtures
# (a built wheel, a Telnyx emulator) are made once. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: lint $(SDK_STAMP) system-packages
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

# Benchmarks (never part of the tests): the table and benchmarks/results/latest.json; about 6 minutes.
bench: $(STAMP)
	$(if $(PROFILE),$(BIN)/python -m pip install --quiet -e '.[bench]')
	$(BIN)/python benchmarks/load.py $(if $(PROFILE),--profile $(PROFILE))

# The same, then five minutes of mixed load while the server's memory is sampled.
soak: $(STAMP)
	$(BIN)/python benchmarks/load.py --soak 300

clean:
	rm -rf $(VENV) fhir-fax-data .pytest_cache .mypy_cache build dist node-clients/node_modules
