# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) .venv. torch is installed pinned *before* the package so
# that pip never resolves an unpinned torch (which would pull several GB of CUDA
# wheels); on a machine that already has torch in .venv nothing is replaced.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv install test test-slow demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"

install: venv
	$(PY) -m pip install --quiet -e .

test: venv
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: venv
	$(PY) -m pip install --quiet -e ".[demo]"
	$(VENV)/bin/sam3dseg demo --out demo

bench: venv
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) bench/encoder.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
