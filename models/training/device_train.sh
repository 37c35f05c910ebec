#!/usr/bin/env bash
# Train a config on the GPU machine in one call (the workplace's `device` tool), export the
# model under $OUT and time its CUDA inference path.
#
#   here, once:  python -m models.training.device_bundle     (writes .device/, git-ignored)
#   device:      run(command="bash models/training/device_train.sh models/training/configs/stage4.json",
#                    carry=[".device"], timeout_s=600)
#   back here:   the files under the reply's files_at: model/ (weights, ONNX, sha256, model_info,
#                validation, loss plot), train.log, cuda_timing.txt. Copy model/ to
#                models/candidates/<version>/ and choose it by its rule like any candidate.
#
# Arguments: CONFIG [BUDGET_S=420] [BATCH=32]. 420 s of training leaves about 2.5 minutes of
# the 10-minute call for starting the simulation workers, the validation, the ONNX export and
# the timing (the candidate and the shipped model). Simulation runs in nproc - 2 worker processes (the CPU side is the bottleneck);
# the GPU trains. PYTHON overrides the interpreter (a CPU dry run here: PYTHON=.venv/bin/python
# OUT=/tmp/out bash models/training/device_train.sh CONFIG 20 8).
set -euo pipefail
CONFIG=${1:?usage: device_train.sh CONFIG [BUDGET_S] [BATCH]}
BUDGET=${2:-420}
BATCH=${3:-32}
source models/training/device_env.sh
"$PYTHON" -m models.training.train --config "$CONFIG" --time-budget-s "$BUDGET" --batch-size "$BATCH" \
    --data-workers "$WORKERS" --threads 2 --model-dir "$OUT/model" --checkpoint-dir /tmp/device-checkpoints \
    > "$OUT/train.log" 2>&1 || { tail -c 4000 "$OUT/train.log"; exit 1; }
grep -v "it/s\]$" "$OUT/train.log" | tr '\r' '\n' | grep -E "step |held-out|exported|budget|stopped|PSNR" | tail -n 25
"$PYTHON" - "$OUT/model" models/weights <<'PY' | tee "$OUT/cuda_timing.txt"
# The candidate and the shipped model timed in the same process, so their ratio is fair.
import sys, time
import numpy as np
import torch
from models.inference import enhance_series, enhance_volume, load_model

vol = (np.random.default_rng(0).random((32, 512, 512)) * 1000).astype(np.uint16)
for folder in sys.argv[1:]:
    model = load_model(folder)  # checksums verified
    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    for name, fn in (("network", lambda v: enhance_volume(model, v, batch_size=8)),
                     ("product (network + guard)", lambda v: enhance_series(model, v))):
        fn(vol[:8]); sync()
        t = time.perf_counter(); fn(vol); sync(); dt = time.perf_counter() - t
        print(f"{folder}: {torch.cuda.get_device_name() if model.device.type == 'cuda' else 'cpu'} "
              f"torch {torch.__version__}: {name}: {vol.shape[0] / dt:.1f} slices/s at 512x512 (32 slices)")
PY
