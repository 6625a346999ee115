# Two commands do everything on a fresh clone: `make test` and `make demo`.
# They create .venv, install torch (the local CPU wheel 2.13.0 when no torch is present), Triton and the
# package with its test and bench extras, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
# CPU machines: Triton >= 3.8 (the 3.6 interpreter breaks with numpy >= 2.3).
TRITON_SPEC ?= triton==3.8.0

.PHONY: test demo bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || \
	  $(if $(TORCH_WHEEL),$(PIP) install -q "$(TORCH_WHEEL)",$(PIP) install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install -q "$(TRITON_SPEC)"
	$(PIP) install -q -e ".[test,bench]"
	touch $(STAMP)

# The whole suite. Without a GPU the Triton kernels run through Triton's interpreter (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# The benchmark demo at a quick size on whatever device is present. Without a GPU: traffic and parity of every
# loss through Triton's interpreter, the committed GPU results, the eager fallback's overhead (on a
# 2-core CPU about 3 minutes, 6-11 beside other work); each section printed when done, progress on stderr.
demo: $(STAMP)
	$(PY) -m fusedloss demo

bench: $(STAMP)
	$(PY) -m fusedloss bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
