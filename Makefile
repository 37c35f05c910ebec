# Two commands: `make demo` (set up, simulate a study, run the app) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)
DEMO_DIR ?= demo-output

.PHONY: setup demo test train clean

setup:
	@scripts/setup.sh

demo: setup
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(PY) -m simulation.make_study --protocol myelopathy --acquisition accelerated --seed 7 \
		--motion mild --out $(DEMO_DIR)/study
	ulimit -s 32768; $(PY) -m app -i $(DEMO_DIR)/study -o $(DEMO_DIR)/output -m models
	@echo "demo: derived series in $(DEMO_DIR)/output/derived, summary in $(DEMO_DIR)/output/run_summary.json"

test: setup
	ulimit -s 32768; $(PY) -m pytest -q tests

train: setup
	$(PY) -m models.train --config models/configs/default.json

clean:
	rm -rf $(DEMO_DIR) test-artifacts .pytest_cache

# Orthanc + worker on this machine (orthanc/README.md): generated credentials, loopback only.
.PHONY: orthanc stop
orthanc: setup
	@PYTHONPATH=$(CURDIR):$(CURDIR)/orthanc $(PY) -m cervical_pacs.launcher start

stop:
	@PYTHONPATH=$(CURDIR):$(CURDIR)/orthanc $(PY) -m cervical_pacs.launcher stop
