# The two commands of the README: `make demo` and `make test`. Both set up a fresh Debian 12
# machine first (scripts/bootstrap is idempotent): Debian packages, then the project venv $(VENV)
# made from $(PYTHON). Everything Python runs from the venv's own interpreter, so neither command
# depends on what PATH holds (a pyenv shim, Debian's python3, another venv, a stale `blixard`).
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BUILD ?= build/cpp
JOBS ?= $(shell nproc)
PY := $(VENV)/bin/python
CMAKE_FLAGS ?=
# Seconds each libFuzzer target runs in `make test` (tests/fuzz/run; 0 skips them).
FUZZ_SECONDS ?= 20

.PHONY: demo test bootstrap build install test-cpp test-python test-e2e test-stubs test-fuzz format clean

demo: install
	VENV=$(VENV) scripts/demo

# pytest also executes notebooks/*.ipynb (tests/python/test_notebook.py).
test: build install
	$(MAKE) test-cpp test-stubs test-python test-e2e test-fuzz

bootstrap:
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/bootstrap

build: bootstrap
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE=$(PY) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Builds the C++ core again as the Python extension (incrementally, under build/py-*), into the venv.
install: bootstrap
	$(PY) -m pip install --no-build-isolation --disable-pip-version-check -q .

test-cpp:
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The typed surface (python/blixard/_core.pyi) against the built extension.
test-stubs:
	$(PY) -m mypy.stubtest blixard._core --allowlist python/stubtest-allowlist.txt

test-python:
	$(PY) -m pytest tests/python

# Real processes: a server and agents in network namespaces on a bridge the tests make.
test-e2e:
	$(PY) -m pytest tests/e2e

# The fuzz targets (clang, build/fuzz) from their committed seeds, a bounded time each.
test-fuzz:
	if [ "$(FUZZ_SECONDS)" != 0 ]; then FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) tests/fuzz/run; fi

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf build
