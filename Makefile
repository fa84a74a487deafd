# One command each, from a fresh machine with Python 3.10+ (3.11 preferred):
#   make demo   -> creates .venv, installs shiftlab, runs `shiftlab demo`
#   make test   -> creates .venv, installs shiftlab[dev], runs the whole test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/shiftlab demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
