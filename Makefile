# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and friends are pinned for our own runs (constraints.txt), not for users of the package.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
SHARED_DATA ?= ../shared/data/instruction-data.json

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test,lora,demo]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

demo: install
	$(VENV)/bin/heed demo

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
