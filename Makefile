# `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.scoregeo-installed

.PHONY: setup weights run test test-slow bench clean-venv

setup: $(STAMP) weights

# The constraints file keeps pip on the CPU build of torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Offline metric weights (LPIPS trunks, FID Inception); idempotent.
weights: $(STAMP)
	$(BIN)/scoregeo weights

run: setup
	$(BIN)/scoregeo run

# One worker per core (at most 4), each test file on one worker (its module fixtures built
# once), torch at one thread per worker (SCOREGEO_TEST_THREADS). -rs prints why a test was
# skipped (the browser test, where no headless Chromium is installed).
test: setup
	$(BIN)/python -m pytest -q -rs -m "not slow" -n auto --maxprocesses 4 --dist loadfile

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/scoregeo bench

clean-venv:
	rm -rf $(VENV)
