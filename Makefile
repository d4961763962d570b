# fetalplanes: `make demo` and `make test` work on a fresh machine with Python 3.10+ and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Never reach for a model hub from here: offline lookups hang ~1 minute before failing.
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fetalplanes demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf runs .pytest_cache
