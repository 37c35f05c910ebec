"""Evaluate the motion flag on artifacts from an independent simulator, on unseen anatomy.

    python -m models.evaluation.qc_independent                 # table + docs/qc_independent.json
    python -m models.evaluation.qc_independent --repeats 2     # quick look

The detector was calibrated on our own phantom and motion simulator only. Here the
artifacts come from TorchIO (a separate code base with its own conventions):

* ``RandomMotion``: k-space assembled from several rigidly moved copies of a 3-D volume
  (rotations and translations in all three axes, segment boundaries at random times),
  split along the volume's last axis, which becomes the phase-encode direction of the
  slices taken here;
* ``RandomGhosting``: every n-th k-space plane along the phase-encode axis scaled down,
  an artifact model unrelated to patient motion.

Anatomy: the mricron ch2 head and the nilearn MNI152 2009a head (1 mm), never used to
calibrate or tune the detector, padded with air to a 256 x 256 field of view before the
artifact. Three sagittal slices near the midline per case, then Rician noise (complex
Gaussian, SNR 20 on the head), scored with the thresholds of contrast-enhanced sagittal
T1. Clean negatives: the same slices without the artifact. Severity is the simulator's
parameter range (mild / severe), listed in the JSON; nothing is re-labelled after the fact.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import WEIGHTS_DIR
from models.evaluation.qc import roc_auc
from qc.calibration import QCCalibration
from qc.measures import measure_series, series_masks

ROOT = Path(__file__).resolve().parents[2]
#: TorchIO parameters per (kind, severity); symmetric ranges are drawn uniformly by TorchIO.
SETTINGS: dict[tuple[str, str], dict] = {
    ("motion", "mild"): {"degrees": 2.0, "translation": 2.0, "num_transforms": (1, 3)},
    ("motion", "severe"): {"degrees": 6.0, "translation": 8.0, "num_transforms": (2, 4)},
    ("ghosting", "mild"): {"num_ghosts": (2, 8), "intensity": (0.2, 0.4)},
    ("ghosting", "severe"): {"num_ghosts": (2, 8), "intensity": (0.6, 1.0)},
}
MATRIX = 256
SNR = 20.0


def head_volumes() -> dict[str, np.ndarray]:
    """The two 1 mm heads, float32 ``(x, 256, 256)`` (y and z padded with air), scaled to
    their 99.5th percentile."""
    import nibabel as nib

    from models.training.data import MRICRON_DIR, volume_paths

    wanted = {"ch2": MRICRON_DIR / "ch2.nii.gz"}
    for p in volume_paths():
        if "mni_icbm152" in p.name:
            wanted["mni152"] = p
    out = {}
    for name, path in wanted.items():
        if path.exists():
            vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)[:, :MATRIX, :MATRIX]
            # The field of view: y and z padded with air to 256 (the artifact is simulated
            # on the whole FOV, so ghosts land in the air as on a scanner).
            padded = np.zeros((vol.shape[0], MATRIX, MATRIX), dtype=np.float32)
            r0, c0 = (MATRIX - vol.shape[1]) // 2, (MATRIX - vol.shape[2]) // 2
            padded[:, r0 : r0 + vol.shape[1], c0 : c0 + vol.shape[2]] = vol
            out[name] = padded / max(float(np.percentile(vol, 99.5)), 1e-6)
    if not out:
        raise SystemExit("no head volume found (mricron-data / nilearn missing?)")
    return out


def apply_artifact(vol: np.ndarray, kind: str, severity: str, seed: int) -> np.ndarray:
    """TorchIO artifact on a 3-D volume (x, y, z); phase encode along z."""
    import torch
    import torchio as tio

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if severity == "none":
        return vol
    p = SETTINGS[(kind, severity)]
    if kind == "motion":
        n = int(rng.integers(p["num_transforms"][0], p["num_transforms"][1] + 1))
        transform = tio.RandomMotion(degrees=p["degrees"], translation=p["translation"], num_transforms=n)
    else:
        transform = tio.RandomGhosting(num_ghosts=p["num_ghosts"], axes=(2,), intensity=p["intensity"])
    image = tio.ScalarImage(tensor=torch.from_numpy(vol[None].copy()), affine=np.eye(4))
    return np.asarray(transform(image).data[0].numpy(), dtype=np.float32)


def slices_with_noise(vol: np.ndarray, x_positions: list[int], seed: int) -> np.ndarray:
    """Sagittal slices ``(n, 256, 256)`` (rows = y, columns = z: phase encode along columns)
    with Rician noise at SNR 20, as 12-bit integers."""
    rng = np.random.default_rng(seed)
    out = np.abs(np.stack([vol[x] for x in x_positions]).astype(np.float64))
    fg = out[out > 0.1 * out.max()]
    sigma = float(np.median(fg)) / SNR
    noisy = np.abs(out + rng.normal(0, sigma, out.shape) + 1j * rng.normal(0, sigma, out.shape))
    return np.clip(np.round(noisy / np.percentile(noisy, 99.9) * 2800), 0, 4095).astype(np.uint16)


def run(repeats: int, calibration: QCCalibration) -> list[dict]:
    from models.motion_detector import load_motion_detector

    detector = load_motion_detector(WEIGHTS_DIR)
    heads = head_volumes()
    conditions = [("none", "none")] + [(k, s) for k in ("motion", "ghosting") for s in ("mild", "severe")]
    cases = []
    jobs = [(name, r, c) for name in heads for r in range(repeats) for c in conditions]
    for name, r, (kind, severity) in tqdm(jobs, desc="independent cases", mininterval=5):
        vol = heads[name]
        seed = 31_000 + 1000 * list(heads).index(name) + 10 * r + conditions.index((kind, severity))
        mid = vol.shape[0] // 2 + int(np.random.default_rng(seed).integers(-8, 9))
        moved = apply_artifact(vol, kind, severity, seed)
        series = slices_with_noise(moved, [mid - 4, mid, mid + 4], seed + 7)
        q = measure_series(series, 1, calibration, series_masks(series, 1), detector)
        cases.append({"volume": name, "repeat": r, "kind": kind, "severity": severity, "seed": seed,
                      "ghost": q.ghost, "detector": q.detector, "motion_score": q.motion_score})
    return cases


def summarize(cases: list[dict], calibration: QCCalibration) -> dict:
    thr = 0.5  # motion score at the calibrated thresholds

    def val(cs: list[dict]) -> np.ndarray:
        return np.array([v if v is not None else 0.0
                         for v in (calibration.motion_score(c["ghost"], c.get("detector")) for c in cs)])

    neg = val([c for c in cases if c["severity"] == "none"])
    pos = [c for c in cases if c["severity"] != "none"]
    out = {"n": len(cases), "threshold": thr, "ghost_threshold": calibration.ghost_threshold,
           "detector_threshold": calibration.detector_threshold, "false_flag_rate_clean": float(np.mean(neg >= thr)),
           "auc_mild_or_worse": roc_auc(neg, val(pos)), "by_condition": []}
    for name in ("ghost", "detector"):  # each measure alone
        raw = lambda cs: np.array([c.get(name) or 0.0 for c in cs])  # noqa: E731
        out[f"auc_mild_or_worse_{name}_only"] = roc_auc(raw([c for c in cases if c["severity"] == "none"]), raw(pos))
    for kind in ("motion", "ghosting"):
        for severity in ("mild", "severe"):
            p = val([c for c in pos if (c["kind"], c["severity"]) == (kind, severity)])
            out["by_condition"].append({"kind": kind, "severity": severity, "n": int(p.size),
                                        "flag_rate": float(np.mean(p >= thr)), "auc": roc_auc(neg, p)})
    for severity in ("mild", "severe"):
        p = val([c for c in pos if c["severity"] == severity])
        out[f"flag_rate_{severity}"] = float(np.mean(p >= thr))
        out[f"auc_{severity}"] = roc_auc(neg, p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8, help="random draws per head and condition")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    start = time.time()
    # scored as contrast-enhanced sagittal T1, the role the flag exists for
    calibration = QCCalibration.load().for_role("SAG_CE_T1")
    cases = run(args.repeats, calibration)
    result = summarize(cases, calibration)
    result["settings"] = {f"{k} {s}": v for (k, s), v in SETTINGS.items()}
    result["seconds"] = round(time.time() - start)
    print(f"false flags on clean {100 * result['false_flag_rate_clean']:.1f} % "
          f"(n={int(sum(c['severity'] == 'none' for c in cases))}); AUC mild-or-worse {result['auc_mild_or_worse']:.3f} "
          f"(ghost alone {result['auc_mild_or_worse_ghost_only']:.3f}, "
          f"detector alone {result['auc_mild_or_worse_detector_only']:.3f})")
    print(f"{'kind':9s} {'severity':8s} {'n':>4s} {'flagged':>8s} {'AUC':>6s}")
    for row in result["by_condition"]:
        print(f"{row['kind']:9s} {row['severity']:8s} {row['n']:4d} {100 * row['flag_rate']:7.1f}% {row['auc']:6.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qc_independent.json").write_text(json.dumps({"result": result, "cases": cases}, indent=1) + "\n")
    print(f"wrote {args.out / 'qc_independent.json'} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
