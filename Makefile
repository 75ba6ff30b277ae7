PY ?= python3

.PHONY: install build test test-slow bench asan-test clean

install:            ## install (editable) with test extras; builds the C kernels
	$(PY) -m pip install -e '.[test]'

build:              ## rebuild the C kernels in place after editing csrc/
	$(PY) setup.py -q build_ext --inplace

test:               ## the default test run (what CI runs)
	$(PY) -m pytest -q

test-slow:          ## the slow tests only
	$(PY) -m pytest -q -m slow

bench:              ## kernel benchmarks
	$(PY) tools/bench_kernels.py

clean:
	rm -rf build dist *.egg-info moe_gguf/_kernels*.so moe_gguf/_kernels.c moe_gguf/_kernels.o .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
