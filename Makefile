# Two commands on a fresh machine with only Python:
#   make run    set up .venv and run the whole loop on the embedded model into out/demo
#   make test   set up .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: setup run test test-heavy lint format

setup: $(VENV)/.installed

# torch is pinned to the build that lies on this kind of machine's disk (a CUDA build that
# also runs on the CPU); the CPU-only 2.13.0 file cannot import torchvision.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/t2i-engine demo --out $(OUT)

# Two pytest-xdist workers of one torch thread each: 243 s of pytest on 2 cores against 321 s for
# one process at two threads (2026-12-07); two workers at two threads each took 883 s. The tests
# marked `alone` (signals, killed processes, Ray, concurrent parts) run one at a time on one worker.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and formatting, checked by CI before the tests.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Also the tests too slow for the 15-minute suite (torch.compile on a CPU: minutes each).
test-heavy: setup
	$(PY) -m pytest -q --heavy -m heavy
