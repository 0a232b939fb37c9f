# Entry points. `make demo` and `make test` each run the setup first.
VENV := .venv/bin

# Python caches compiled modules (and pytest its assertion-rewritten tests) only where
# PYTHONDONTWRITEBYTECODE is unset; a machine that sets it (ours
# does) would have every Python the suite starts compile our packages anew (~0.17 CPU-s
# each, ~900 of them) and every pytest process rewrite the tests anew (~3 CPU-s). The
# caches go next to the sources (__pycache__/, ignored by git).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test lint unit integration repeat bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/vxflow demo

lint: setup
	$(VENV)/ruff check .

# Test processes in parallel (pytest-xdist), each in network namespaces of its own
# (tests/sandbox.py): most of a test's time is waiting on daemons, not the CPU. On 2 cores,
# 4 workers kept 1.34 of them busy on average (940 CPU-s in 11 min 42 s); 6 fill the waits.
WORKERS ?= 6
PARALLEL = -n $(WORKERS) --dist loadgroup

# Each test once: the pure tier runs inside the suite as `make unit` (as typed, by
# tests/test_make_targets.py), the random_leases tests as `make repeat REPEAT=1`;
# a failure there fails that test and names the failed ones. Running `pytest` alone
# runs them directly as well.
ONCE = -m "(e2e or integration) and not random_leases"

test: setup lint
	$(VENV)/python -m pytest $(PARALLEL) $(ONCE)

unit: setup
	$(VENV)/python -m pytest -m "not integration and not e2e"

integration: setup
	$(VENV)/python -m pytest $(PARALLEL) -m "integration or e2e"

# The tests whose outcome could hang on the registry's random draws, REPEAT times each,
# every repetition drawing anew: the non-e2e ones as pytest-repeat's copies; the e2e ones
# draw once per module's cluster, so each repetition of theirs is a pytest run of its own
# (a cluster and a draw of its own), WORKERS at a time (each run in namespaces of its own).
# One repetition (the suite's own check of this target) starts no workers: each would
# collect the whole suite for a handful of tests.
REPEAT ?= 200
repeat: setup
	$(VENV)/python -m pytest $(if $(filter 1,$(REPEAT)),,$(PARALLEL)) -m "random_leases and not e2e" --count $(REPEAT) -x -q
	seq $(REPEAT) | xargs -P $(WORKERS) -I{} $(VENV)/python -m pytest -q -p no:cacheprovider -m "random_leases and e2e"

bench: setup
	$(VENV)/python -m bench.run_all
