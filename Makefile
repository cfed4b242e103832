# Two user commands: `make demo` and `make test`. Both create .venv and install on first use.
# Install recipe and why it looks like this: README.md, "Why it is installed this way".
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Which locked torch build: cpu or cuda. Default: cuda when `nvidia-smi -L` lists a GPU, else cpu.
ifeq ($(origin TORCH),undefined)
TORCH := $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
endif
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, got '$(TORCH)')
endif
LOCK := requirements/lock
# Folders where a torch CPU wheel may lie on disk: pip's own find-links setting (uv does not read
# pip's config). Where none holds the locked wheel, it comes from PyTorch's CPU index.
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
# The locks target this platform (pyproject: Python 3.11).
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28
PYTEST_ARGS ?=
# uv installs no .pyc files (pip compiled them at install). With PYTHONDONTWRITEBYTECODE set (as in some CI
# shells) every process - each MLflow server, Ray worker and torchrun rank - would then recompile all it
# imports (~20 s of CPU for an MLflow server). Unset, the first import writes them once.
unexport PYTHONDONTWRITEBYTECODE
STAMP := $(VENV)/.installed-$(TORCH)

.PHONY: demo test setup lock clean-venv chromium

demo: $(STAMP)
	VENV=$(VENV) bash orchestration/demo.sh

test: $(STAMP) chromium
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests - failing"; exit 1; fi; exit $$rc

setup: $(STAMP)

# The browser test drives Debian's chromium (playwright cannot download its own browser offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "[setup] installing Debian's chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || exit 1; \
	  else echo "[setup] the browser test needs Debian's chromium: sudo apt-get install chromium"; fi; }

# uv, from its hashed lock, installed with the system's pip into $(VENV)/uv (outside site-packages, so
# the sync below leaves it alone) and linked as $(VENV)/bin/uv. A venv without pip takes well under a
# second (ensurepip ~10 s); pip and setuptools come from the lock. Where $(PYTHON) has no pip, the
# venv is made with its own pip, which then installs uv.
# A $(VENV) that this recipe did not make (an older Makefile's, or a venv shared by hand) is left alone.
$(UV): $(LOCK)/uv.txt
	@if [ -e $(PY) ] && [ ! -d $(VENV)/uv ]; then echo "[setup] $(VENV) was made by an older recipe (not from" \
	  "requirements/lock): replacing it"; rm -rf $(VENV); fi
	@set -e; rm -rf $(VENV)/uv; export PIP_ROOT_USER_ACTION=ignore; \
	if $(PYTHON) -m pip --version >/dev/null 2>&1; then test -x $(PY) || $(PYTHON) -m venv --without-pip $(VENV); \
	  pip="$(PYTHON) -m pip"; else test -x $(PY) || $(PYTHON) -m venv $(VENV); pip="$(PY) -m pip"; fi; \
	$$pip install -q --no-deps --require-hashes --target $(VENV)/uv -r $(LOCK)/uv.txt 2>&1 \
	  | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0; \
	ln -sf ../uv/bin/uv $(UV); touch $(UV)

# The venv is made equal to the lock (uv pip sync removes what the lock does not list), then this
# project goes on top (editable). When switching TORCH, torch is removed first: uv takes an installed
# 2.13.0+cpu as satisfying ==2.13.0 and would keep it.
$(STAMP): $(UV) pyproject.toml $(LOCK)/$(TORCH).txt $(LOCK)/nodeps.txt
	@echo "[setup] installing the locked $(TORCH) set into $(VENV) with $$($(UV) --version)"
	@start=$$(date +%s); torch_src=""; \
	if [ "$(TORCH)" = cpu ]; then \
	  torch_src="--torch-backend cpu"; where="PyTorch's CPU index"; \
	  for d in $(TORCH_FIND_LINKS); do d=$${d#file://}; \
	    if compgen -G "$$d/torch-*+cpu-*.whl" >/dev/null; then torch_src="--find-links $$d"; where=$$d; break; fi; done; \
	  echo "[setup] torch CPU wheel from $$where"; \
	fi; \
	if ls $(VENV)/.installed-* 2>/dev/null | grep -q -v -x "$(STAMP)"; then \
	  $(UV) pip uninstall -q --python $(PY) torch; fi; \
	$(UV) pip sync --python $(PY) --require-hashes $$torch_src $(LOCK)/$(TORCH).txt $(LOCK)/nodeps.txt 2>&1 \
	  | grep -v -E '^ [-+~] '; test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e . || exit 1; \
	$(PY) -c "import importlib.util as u, importlib.metadata as md; \
	missing = [m for m in 'tria pipelines dac audiotools demucs ray mlflow webdataset duckdb pyloudnorm torch'.split() \
	           if u.find_spec(m) is None]; assert not missing, f'not importable: {missing}'; \
	print('[setup] torch', md.version('torch'))" || exit 1; \
	if [ "$(TORCH)" = cuda ]; then $(PY) -c "import torch; print('[setup] torch sees', \
	  f'{torch.cuda.device_count()} CUDA device(s)' if torch.cuda.is_available() else 'no CUDA device: the demo runs on the CPU')"; fi; \
	rm -f $(VENV)/.installed-*; \
	echo "[setup] done in $$(( $$(date +%s) - start )) s: $$(du -sh $(VENV) | cut -f1)"
	@touch $@

# Regenerate the locks from requirements/*.txt (run after editing them; commit requirements/lock/).
lock: $(UV)
	@set -e; c=(--generate-hashes $(LOCK_PLATFORM) -q --custom-compile-command "make lock"); \
	links=""; for d in $(TORCH_FIND_LINKS); do links="$$links --find-links $${d#file://}"; done; \
	$(UV) pip compile "$${c[@]}" --no-deps requirements/uv.txt -o $(LOCK)/uv.txt; \
	$(UV) pip compile "$${c[@]}" --no-deps requirements/nodeps.txt -o $(LOCK)/nodeps.txt; \
	$(UV) pip compile "$${c[@]}" $${links:---torch-backend cpu} requirements/base.txt requirements/tools.txt \
	  requirements/torch-cpu.txt -o $(LOCK)/cpu.txt; \
	$(UV) pip compile "$${c[@]}" requirements/base.txt requirements/tools.txt requirements/torch-cuda.txt \
	  -o $(LOCK)/cuda.txt; \
	echo "[lock] wrote $(LOCK)/{cpu,cuda,nodeps,uv}.txt: $$(grep -c '^[a-z]' $(LOCK)/cpu.txt) packages (cpu), \
	$$(grep -c '^[a-z]' $(LOCK)/cuda.txt) (cuda)"

clean-venv:
	rm -rf $(VENV)
