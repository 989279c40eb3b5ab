# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-tpu test-e2e browser bench

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt requirements-tpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	-$(PY) -m pip install -q -r requirements-tpu.txt || echo "libtpu not installed: TPU compile tests will skip"
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(VENV)/bin/xpsr-jax demo --out outputs/demo

# The report test renders HTML in headless Chromium; install it where apt is available, skip that test elsewhere.
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q chromium >/dev/null 2>&1))) || echo "chromium not installed: the HTML screenshot test will skip"

# Two test processes keep a 2-core machine busy (XLA compiles on one core); each test file stays in one process,
# so its module fixtures compile once, and the longest files go first (tests/conftest.py orders them).
# TEST_WORKERS=0 runs everything in this process. The 25 slowest tests are listed at the end.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup browser
	$(PY) -m pytest -q $(XDIST) --durations=25

test-slow: setup
	$(PY) -m pytest -q -m slow

# Ahead-of-time TPU compiles on this host (libtpu from requirements-tpu.txt, no TPU needed) and interpreted kernels.
test-tpu: setup
	$(PY) -m pytest -q -m tpu $(XDIST) --durations=25

# Long chains of stages: a tiny study end to end, a run killed and resumed through a local GCS emulator.
test-e2e: setup
	$(PY) -m pytest -q -m e2e $(XDIST) --durations=25

bench: setup
	$(PY) bench/bench_unet.py && $(PY) bench/bench_denoiser.py && $(PY) bench/bench_train.py
