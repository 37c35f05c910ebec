#!/usr/bin/env bash
# Simulate the motion detector's training slices and train it on the GPU machine in one call
# (the workplace's `device` tool); the candidate comes back under $OUT/detector.
#
#   here, once:  python -m models.training.device_bundle     (writes .device/, git-ignored)
#   device:      run(command="bash models/training/device_train_motion.sh 5", carry=[".device"], timeout_s=600)
#   back here:   copy detector/ to a candidate folder, recalibrate with it (qc_real --sources calibration, then qc_series --calibrate: the head floor needs the new detector's rows)
#                and choose it by a rule written first, as for candidate 1.3.0 (model card).
#
# Arguments: [MINUTES=5] [PHANTOMS=120] [GENERIC=2000] [BATCH=32]. The simulation (19 min on
# 2 cores here) runs in nproc - 2 processes; the GPU trains. PYTHON overrides the
# interpreter (CPU dry run: PYTHON=.venv/bin/python OUT=/tmp/out bash ... 0.1 1 6 8).
set -euo pipefail
MINUTES=${1:-5}
PHANTOMS=${2:-120}
GENERIC=${3:-2000}
BATCH=${4:-32}
source models/training/device_env.sh
"$PYTHON" -m models.training.train_motion_detector simulate --phantoms "$PHANTOMS" --generic "$GENERIC" \
    --workers "$WORKERS" --data-dir /tmp/device-motion-data 2>&1 | tr '\r' '\n' | tail -n 3 | tee "$OUT/simulate.log"
"$PYTHON" -m models.training.train_motion_detector train --minutes "$MINUTES" --batch-size "$BATCH" \
    --data-dir /tmp/device-motion-data --out "$OUT/detector" 2>&1 | tee "$OUT/train_motion.log" | tail -n 8
