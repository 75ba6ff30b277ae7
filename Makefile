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

ASAN_DIR ?= /tmp/moe_gguf_asan
ASAN_TESTS ?= test_matmul.py test_moe_fused.py test_llamacpp_arith.py test_gguf_strings.py test_tokenizer_fast.py test_deepseek2.py test_families.py

asan-test:          ## the C kernel tests under AddressSanitizer+UBSan (built in $(ASAN_DIR), not in place)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r moe_gguf $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/moe_gguf/_kernels*.so
	MOE_GGUF_ASAN=1 $(PY) setup.py -q build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/tmp
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		LD_PRELOAD=$$(gcc -print-file-name=libasan.so) HYPOTHESIS_PROFILE=default \
		$(PY) -m pytest -q -p no:randomly $(addprefix $(CURDIR)/tests/,$(ASAN_TESTS))

clean:
	rm -rf build dist *.egg-info moe_gguf/_kernels*.so moe_gguf/_kernels.c moe_gguf/_kernels.o .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
