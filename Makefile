# The two commands of the README: `make demo` and `make test`. Both set up a fresh Debian 12
# machine first (scripts/bootstrap is idempotent).
PYTHON ?= python3
BUILD ?= build/cpp
JOBS ?= $(shell nproc)
PY := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || echo $(PYTHON))
CMAKE_FLAGS ?=

.PHONY: demo test bootstrap build install test-cpp test-python format clean

demo: install
	scripts/demo

# pytest also executes notebooks/*.ipynb (tests/python/test_notebook.py).
test: build install
	$(MAKE) test-cpp test-python

bootstrap:
	PYTHON=$(PY) scripts/bootstrap

build: bootstrap
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE=$(PY) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Builds the C++ core again as the Python extension (incrementally, under build/py-*).
install: bootstrap
	$(PY) -m pip install --no-build-isolation --disable-pip-version-check -q .

test-cpp:
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-python:
	$(PY) -m pytest tests/python

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf build
