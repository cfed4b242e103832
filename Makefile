# Two user commands: `make demo` and `make test`. Both create .venv and install on first use.
# Install recipe and why it looks like this: README.md, "Why it is installed this way".
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel by default; on a GPU machine: make TORCH_REQ='torch==2.13.0' ...
TORCH_REQ ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-venv chromium

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

$(STAMP): pyproject.toml requirements/base.txt requirements/nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing into $(VENV) (first time: ~2-3 minutes, ~2.2 GB)"
	@start=$$(date +%s); \
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1; \
	$(PY) -m pip install -q "$(TORCH_REQ)" 2>/dev/null || $(PY) -m pip install -q --extra-index-url $(TORCH_INDEX) "$(TORCH_REQ)" || exit 1; \
	$(PY) -m pip install -q -r requirements/base.txt 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	$(PY) -m pip install -q --no-deps -r requirements/nodeps.txt || exit 1; \
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . || exit 1; \
	$(PY) -c "import tria, pipelines, dac, demucs, ray, mlflow, webdataset, duckdb, pyloudnorm" || exit 1; \
	echo "[setup] done in $$(( $$(date +%s) - start )) s: $$(du -sh $(VENV) | cut -f1)"
	@touch $@

clean-venv:
	rm -rf $(VENV)
