# Entry points. `make demo` and `make test` each run the setup first.
VENV := .venv/bin

.PHONY: setup demo test lint unit integration bench
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/vxflow demo

lint: setup
	$(VENV)/ruff check .

test: setup lint
	$(VENV)/python -m pytest

unit: setup
	$(VENV)/python -m pytest -m "not integration and not e2e"

integration: setup
	$(VENV)/python -m pytest -m "integration or e2e"

bench: setup
	$(VENV)/python -m bench.run_all
