# FedDST Edge — one-line entry points (see README "Quick start").
PYTHON ?= python3
OUT ?= runs/demo

.PHONY: setup demo test lint bench-wire bench-paper bench-kernels

# Installs the package with every extra, plus the system pieces the tests use (mosquitto).
setup:
	@command -v mosquitto >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto)
	$(PYTHON) -m pip install -q -e '.[all,dev]'

# The main job on the embedded default: nothing external needed.
demo: setup
	feddst demo --out $(OUT)

# The whole test suite (what CI runs).
test: setup
	$(PYTHON) -m pytest -q

lint:
	ruff check .
	mypy feddst_core protocol simulator datasources cloud edge_agent feddst_cli
