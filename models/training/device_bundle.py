"""Prepare a training run on the GPU machine (the workplace's `device` tool).

That machine has PyTorch, NumPy, SciPy, scikit-image, ONNX and ONNX Runtime but none of our
apt packages (mricron, ITK's examples), no nilearn and no nibabel, and it cannot download.
This copies every training-allowed file source into ``.device/training_data`` (flat; the
training reads it through ``CERVICAL_TRAINING_DATA``) and downloads the missing wheels into
``.device/wheels`` (git-ignored; the call carries ``.device``). Then one call runs
``models/training/device_train.sh`` (its header has the exact call).

    python -m models.training.device_bundle [--out .device]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.training.data import (ITK_COMPLEX_SLICE, ITK_DATA, ITK_REAL_SLICES, TRAINING_DATA_ENV,
                                  volume_paths)

ROOT = Path(__file__).resolve().parents[2]
#: Wheels the GPU machine lacks (pure Python; pinned as in requirements.txt).
DEVICE_WHEELS = ("nibabel==5.4.2",)
#: The GPU machine's interpreter (KINDS.md: Python 3.12).
DEVICE_PYTHON = "3.12"


def bundle_files() -> list[Path]:
    """Every file source the training reads, from this machine's installed paths."""
    if os.environ.get(TRAINING_DATA_ENV):
        raise SystemExit(f"unset {TRAINING_DATA_ENV}: the bundle is made from the installed sources")
    files = list(volume_paths()) + [ITK_DATA / n for n in (*ITK_REAL_SLICES, ITK_COMPLEX_SLICE)]
    missing = [str(p) for p in files if not p.exists()]
    if missing or len(volume_paths()) < 4:
        raise SystemExit(f"training sources missing here (run ./setup.sh first): {missing or 'a volume'}")
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".device")
    args = ap.parse_args(argv)
    data, wheels = args.out / "training_data", args.out / "wheels"
    for d in (data, wheels):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for f in bundle_files():
        shutil.copy2(f, data / f.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(wheels),
                    *DEVICE_WHEELS], check=True)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(list(data.iterdir()))} training files, {len(list(wheels.iterdir()))} wheels, "
          f"{size / 2**20:.1f} MiB (the device call carries at most 64 MiB with the working tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
