# Two commands: `make demo` and `make test`. Both install first; installing again is quick.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHECKOV_VERSION := 3.3.30
CHECKOV := $(VENV)/tools/checkov/bin/checkov

.PHONY: install demo test lint clean

install: $(STAMP)

# Re-install only when the project's dependencies change. Development gets every extra; the images
# install only theirs (deploy/Dockerfile).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $(STAMP)

# checkov (the deploy checks) has a venv of its own: its pins (packaging, networkx) conflict with
# the project's. Only the tests need it, so `make demo` does not wait for it.
$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)

demo: install
	$(BIN)/swatch demo

lint: install
	$(BIN)/ruff check streams tagger tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint $(CHECKOV)
	$(BIN)/pytest $(PYTEST_ARGS)

# The fault-injection suite at full scale (`make test` runs it short). It names tests/chaos because
# pytest only knows --chaos-full from tests/chaos/conftest.py when it loads that file at start-up.
.PHONY: chaos
chaos: install
	$(BIN)/pytest tests/chaos -m chaos --chaos-full $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
