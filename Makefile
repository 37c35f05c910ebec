# Two commands: `make demo` (set up; Orthanc + worker + OHIF front; simulate a study, upload it,
# wait for the worker's results and print them and the viewer URL) and `make test`. `make stop` ends the demo.
SHELL := /bin/bash
PY := .venv/bin/python
unexport PYTHONPATH  # the project is installed into .venv (pip install -e ., scripts/setup.sh)
# The app's soft stack limit (KiB), from its one home (map/layout.py); read when a recipe runs.
STACK_KIB = $(shell $(PY) -c "from map.layout import STACK_LIMIT_KIB; print(STACK_LIMIT_KIB)")
DEMO_DIR ?= demo-output

.PHONY: device-bundle train-motion setup demo test train evaluate benchmark clean

# SETUP_DONE=1: a sub-make of a target that has already run set-up (prints "setup: ready" once).
setup:
	@[ -n "$(SETUP_DONE)" ] || scripts/setup.sh

demo: viewer
	@$(MAKE) --no-print-directory orthanc SETUP_DONE=1
	@$(MAKE) --no-print-directory front SETUP_DONE=1
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(PY) -m simulation.make_study --protocol myelopathy --acquisition accelerated --seed 7 \
		--motion mild --out $(DEMO_DIR)/study
	@# The results are computed once, by the worker; the summary is read back from Orthanc.
	@$(PY) ohif-config/demo.py $(DEMO_DIR)/study

test: setup viewer
	ulimit -s $(STACK_KIB); $(PY) -m pytest -q tests

# Four stages (commands, seeds and data in models/weights/MODEL_CARD.md); each starts from the
# previous checkpoint and exports models/weights/cervical_dl_recon.{pt,onnx} + sha256 + model_info.json.
train: setup
	$(PY) -m models.training.train --config models/training/configs/default.json
	$(PY) -m models.training.train --config models/training/configs/stage2.json
	$(PY) -m models.training.train --config models/training/configs/stage3.json
	$(PY) -m models.training.train --config models/training/configs/stage5_coarse.json

# A training run on the GPU machine (the workplace's `device` tool, when a task is lent one):
# copy the training sources and the missing wheels into .device/ (git-ignored), then one
# device call runs models/training/device_train.sh (its header has the call) with .device carried.
device-bundle: setup
	$(PY) -m models.training.device_bundle

# The QC motion detector (models/weights/motion_detector.*): simulate slices, train 20 min, recalibrate
# (per role, on whole series of the calibration patients 7000-7029, with the calibration head's
# clean series, scored by the new detector, as the real-MR floor).
train-motion: setup
	$(PY) -m models.training.train_motion_detector simulate --phantoms 120 --generic 2000 --workers 2
	$(PY) -m models.training.train_motion_detector train --minutes 20
	$(PY) -m models.evaluation.qc_real --sources calibration
	$(PY) -m models.evaluation.qc_series --calibrate --patients 30 --motion-patients 10 --dl-patients 3

# Long evaluations and benchmarks (outside CI; results committed under docs/).
evaluate: setup
	$(PY) -m models.evaluation.enhancement
	$(PY) -m models.evaluation.qc
	$(PY) -m models.evaluation.qc_independent
	$(PY) -m models.evaluation.qc_series --motion-patients 12 --dl-patients 2
	$(PY) -m models.evaluation.qc_real

benchmark: setup
	$(PY) -m models.evaluation.benchmark --paths

clean:
	rm -rf $(DEMO_DIR) test-artifacts .pytest_cache

# Orthanc + worker on this machine (orthanc/README.md): generated credentials, loopback only.
.PHONY: orthanc stop
orthanc: setup
	@$(PY) -m cervical_pacs.launcher start

stop:
	@$(PY) ohif-config/front.py stop
	@$(PY) -m cervical_pacs.launcher stop

# MAP packaging (issue 7, docs/deploy.md). `make map-context` writes the complete MAP build
# context offline into build/map-context (MAP_VARIANT=gpu|cpu); `docker build` on it gives the MAP.
# `make map-packager` creates .venv-packager with holoscan-cli 4.2.0 (the `monai-deploy package`
# CLI; it conflicts with nilearn in .venv): tests/test_map.py then also checks our manifests
# against that CLI's own app.yaml reader.
MAP_VARIANT ?= gpu
MAP_CONTEXT ?= build/map-context
.PHONY: map-context map-packager
map-context:
	$(PY) -m map.build_context --variant $(MAP_VARIANT) --out $(MAP_CONTEXT)

map-packager:
	@test -x .venv-packager/bin/monai-deploy || { python3 -m venv .venv-packager && \
		.venv-packager/bin/pip install -q holoscan-cli==4.2.0; }
	.venv-packager/bin/monai-deploy version || true

# Scale-out artefacts (deploy/): regenerate the WM workflow and the example Kubernetes Job.
.PHONY: deploy-manifests
deploy-manifests:
	$(PY) -m deploy.workflow
	$(PY) -m deploy.k8s_job > deploy/cervical-dl-job.example.json

# OHIF viewer (ohif-config/README.md): prebuilt @ohif/app fetched + slimmed into ohif-config/dist,
# playwright-core for the browser tests; `front` starts nginx (viewer + DICOMweb proxy to Orthanc).
.PHONY: viewer front front-stop
viewer: setup
	@command -v npm >/dev/null || { echo "viewer: node/npm are required"; exit 1; }
	$(PY) ohif-config/front.py fetch
	@cd ohif-config && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; }

front: viewer
	@$(PY) ohif-config/front.py start

front-stop:
	@$(PY) ohif-config/front.py stop
