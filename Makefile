# fetalplanes: `make demo` and `make test` work on a fresh machine with Python 3.10+ and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Never reach for a model hub from here: offline lookups hang ~1 minute before failing.
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-fast bench clean mutate

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

# Mutation testing of the metric math (evaluation/metrics.py, calibration.py, core/postprocess.py,
# explain/localization.py) against its fast reference tests; config in pyproject [tool.mutmut].
# Not in CI: about half an hour on 2 busy cores. Score and survivors: docs/metrics.md.
MUTATE_CHILDREN ?= 2
mutate: setup
	rm -rf mutants
	FP_HYPOTHESIS_EXAMPLES=25 $(BIN)/mutmut run --max-children $(MUTATE_CHILDREN)
	$(BIN)/mutmut results

clean:
	rm -rf runs .pytest_cache
