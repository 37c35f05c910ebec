# Sourced by device_train.sh and device_train_motion.sh: the setting both share on the GPU
# machine (or a CPU dry run here). Sets PYTHON, WORKERS and the environment; needs $OUT.
PYTHON=${PYTHON:-python3}
: "${OUT:?no OUT folder: run through the device tool, or set OUT}"
[ -d .device/training_data ] || { echo "no .device/training_data: run python -m models.training.device_bundle here and carry .device"; exit 2; }
# once per machine (device_train_both.sh runs the two scripts side by side after installing)
[ -f /tmp/device-site/.installed ] || { "$PYTHON" -m pip install -q --upgrade --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/device-site .device/wheels/*.whl && touch /tmp/device-site/.installed; }
export PYTHONPATH="/tmp/device-site:$PWD" PYTHONUNBUFFERED=1 CERVICAL_TRAINING_DATA="$PWD/.device/training_data"
# simulation in nproc - 2 processes: the training process and the GPU's feeder keep a core each
# (WORKERS_OVERRIDE: a share of them, when two runs share the machine)
WORKERS=${WORKERS_OVERRIDE:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
[ -n "${WORKERS_OVERRIDE:-}" ] || nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: CPU dry run"
