# FedDST Edge — one-line entry points (see README "Quick start").
PYTHON ?= python3
OUT ?= runs/demo

.PHONY: setup demo test test-arm64 lint bench-wire bench-paper bench-kernels

# Installs the package with every extra, plus the system pieces it uses: mosquitto, iptables (network faults in
# namespaces: tests/field_trial/test_link_faults.py, bench/faults.py) and chromium (the tests:
# the dashboard's browser tests drive Debian's chromium through playwright, never `playwright install`) and a C
# compiler (the install builds the native sparse kernels, feddst_core/native/feddst_kernels.c; without one
# the install still succeeds and training falls back to slower torch kernels). Ends with one status line.
setup:
	@command -v mosquitto >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto)
	@command -v cc >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gcc libc6-dev) \
		|| echo "warning: could not install a C compiler; the native kernels will not be built" >&2
	@command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu) \
		|| echo "note: no aarch64 cross compiler; the NEON build test (tests/feddst_core/native) will be skipped" >&2
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium; the dashboard browser tests will be skipped" >&2
	@command -v iptables >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq iptables) \
		|| echo "note: no iptables; the link-fault tests and bench/faults.py's network scenarios will be skipped" >&2
	$(PYTHON) -m pip install -q -e '.[all,dev]'
	@$(PYTHON) -c 'import feddst_core.native as n; print("native kernels:", n.status())'

# The main job on the embedded default: nothing external needed.
demo: setup
	feddst demo --out $(OUT)

# The whole test suite (what CI runs). TEST_WORKERS=N runs it in N pytest-xdist worker processes (most tests
# wait on brokers and subprocesses, not the CPU: a serial run used half of one of the 2 cores); `--dist
# loadgroup` keeps each xdist_group (the network-namespace tests) in one worker. 0 (the default until a run on
# a quiet machine shows N workers green and faster, docs/results.md "Test suite wall time") runs serially.
TEST_WORKERS ?= 0
test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The agent install proven on 64-bit ARM: deploy/install_agent.sh, then one live round, inside an emulated
# Debian arm64 root (qemu-user; needs root). The root is built once (debootstrap, a few minutes) and cached
# in /var/cache/feddst-arm64 (FEDDST_ARM64_ROOT); a run takes tens of minutes, so `make test` skips it.
test-arm64:
	FEDDST_TEST_ARM64=1 $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/arm64

lint:
	ruff check .
	mypy feddst_core protocol simulator datasources cloud edge_agent feddst_cli field_trial durable_files inference
