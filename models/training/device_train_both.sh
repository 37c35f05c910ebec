#!/usr/bin/env bash
# Both candidates in one device call (a session's 15 minutes of device time hold one call):
# the enhancement config (device_train.sh) and the motion detector (device_train_motion.sh)
# side by side, the simulation workers split between them; the GPU is shared (each needs a
# fraction of it). Results under $OUT/enhancement and $OUT/motion, as the two scripts leave them.
#
#   here, once:  python -m models.training.device_bundle     (writes .device/, git-ignored)
#   device:      run(command="bash models/training/device_train_both.sh models/training/configs/stage4_scratch.json",
#                    carry=[".device"], timeout_s=600)
#
# Arguments: CONFIG [BUDGET_S=330] [DETECTOR_MINUTES=2.5] [PHANTOMS=100] [GENERIC=1800]. Sized for
# 16 cores: 7 workers each; the detector's simulation (38 core-minutes for 120 + 2000 here)
# takes about 4.5 min on 7, so both finish inside the 10-minute call with about a minute to
# spare. CPU dry run here: PYTHON=.venv/bin/python OUT=/tmp/out bash models/training/device_train_both.sh CONFIG 20 0.1 1 6
set -euo pipefail
CONFIG=${1:?usage: device_train_both.sh CONFIG [BUDGET_S] [DETECTOR_MINUTES] [PHANTOMS] [GENERIC]}
BUDGET=${2:-330}
DETECTOR_MINUTES=${3:-2.5}
PHANTOMS=${4:-100}
GENERIC=${5:-1800}
source models/training/device_env.sh  # installs the wheels once, sets WORKERS
HALF=$(( WORKERS / 2 > 0 ? WORKERS / 2 : 1 ))
REST=$(( WORKERS - HALF > 0 ? WORKERS - HALF : 1 ))
mkdir -p "$OUT/enhancement" "$OUT/motion"
WORKERS_OVERRIDE=$HALF OUT="$OUT/enhancement" bash models/training/device_train.sh "$CONFIG" "$BUDGET" 32 \
    > "$OUT/enhancement.log" 2>&1 &
ENHANCEMENT=$!
WORKERS_OVERRIDE=$REST OUT="$OUT/motion" bash models/training/device_train_motion.sh "$DETECTOR_MINUTES" "$PHANTOMS" "$GENERIC" 32 \
    > "$OUT/motion.log" 2>&1 &
MOTION=$!
status=0
wait $ENHANCEMENT || { echo "enhancement run failed"; status=1; }
wait $MOTION || { echo "motion detector run failed"; status=1; }
echo "== enhancement ($HALF workers)"; tail -n 12 "$OUT/enhancement.log"
echo "== motion detector ($REST workers)"; tail -n 12 "$OUT/motion.log"
exit $status
