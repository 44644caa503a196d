# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo serve test lint types docs pytest browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.rental_service.scenario

serve: $(STAMP)
	$(BIN)/python -m examples.rental_service

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

types: $(STAMP)
	$(BIN)/mypy

# The staff-page test drives Debian's Chromium headless; install it once (CI runs as root).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

pytest: $(STAMP) browser
	$(BIN)/pytest

# The documentation site; --strict turns broken links and anchors into failures.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint types docs pytest

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,docs,bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
