# fetalplanes: `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The resolved dependency set (every package pinned, extras all + dev), written by `make lock`
# for CPython 3.11 on Linux x86_64. `make setup LOCK=` installs from pyproject.toml's ranges instead.
LOCK ?= requirements/lock.txt
# pip-compile (pip-tools) resolves the lock with pip itself, so it sees this machine's package
# sources and caps exactly as the install does (uv would not: it fetches other torch builds).
LOCK_TOOLS := build/lock-tools
PIP_PIN := pip==26.3
LOCK_TOOL_PINS := $(PIP_PIN) pip-tools==7.6.2
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest release the ranges allow;
# plain `make lock` keeps the current pins and only adds or drops what pyproject.toml changed.
LOCK_FLAGS ?=
# Never reach for a model hub from here: offline lookups hang ~1 minute before failing.
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-fast lock clean mutate docs-numbers

# --clear: the venv holds exactly the lock (packages dropped from it do not linger).
# --no-deps twice: the lock is the whole set, pip resolves nothing more; `pip check` then
# proves it complete (a dependency added to pyproject.toml but not locked fails here).
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_PIN)
ifneq ($(LOCK),)
	$(BIN)/python -m pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check || { echo "$(LOCK) does not match pyproject.toml: run 'make lock', then 'make setup'"; exit 1; }
else
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
endif
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fetalplanes demo --out runs/demo

# -n auto: one pytest worker per core (pytest-xdist); --random-order: modules, and the tests in
# each, in a shuffled order (pytest-random-order; the seed is printed at the top, and
# `--random-order-seed=N` replays it). Every run checks that no test depends on another's leftovers.
PYTEST_RUN := $(BIN)/python -m pytest -q -n auto --random-order

test: setup
	$(PYTEST_RUN)

test-fast: setup
	$(PYTEST_RUN) -m "not slow and not browser"

# Refresh the lock after changing dependencies in pyproject.toml (one command; commit the result).
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet $(LOCK_TOOL_PINS)
	mkdir -p $(dir $(LOCK))
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet $(LOCK_FLAGS) \
	    --extra all,dev --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	    --output-file $(LOCK) pyproject.toml
	# The `all` extra names the project itself; `make setup` installs it (editable) separately.
	sed -i '/^fetalplanes @ /,/^[^ ]/{/^fetalplanes @ /d;/^    #/d}' $(LOCK)

# Mutation testing of the metric math (evaluation/metrics.py, calibration.py, core/postprocess.py,
# explain/localization.py) against its fast reference tests; config in pyproject [tool.mutmut].
# Not in CI: about 4 minutes on 2 idle cores (8 when busy). Score and survivors: docs/metrics.md.
# mutmut forks one child per mutant from a process that has imported torch: with more than one
# OpenMP thread the children deadlock (futex wait) and are reported as timeouts, so the math
# runs single-threaded here.
MUTATE_CHILDREN ?= 2
mutate: setup
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 FP_HYPOTHESIS_EXAMPLES=25 HF_HUB_OFFLINE=1 \
		$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN)
	$(BIN)/mutmut results

# Re-run every command whose output README.md and docs/ quote, write benchmarks/results/*.json
# (stamped: commit, versions, CPU, threads, source hash), then rewrite the marked regions of the
# docs from them (benchmarks/docs_numbers.py; docs/reproduce.md, "Numbers in the docs").
# `make docs-numbers PARTS="params formats"` runs only those parts; each part prints its wall time.
# The demo runs with torch's default thread count, as `make demo` does.
PARTS ?=
docs-numbers: setup
	$(BIN)/python benchmarks/docs_numbers.py run $(PARTS)

clean:
	rm -rf runs .pytest_cache
