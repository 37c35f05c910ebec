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
artifact. Each case is a whole sagittal series as the product receives one: 13 slices 4 mm
apart around a randomly offset midline (the lateral ones included), then Rician noise
(complex Gaussian, SNR 20 on the head), scored by the product's own path
(``measure_original``: series masks, ghost measure, detector on every slice, series rule)
with the thresholds of contrast-enhanced sagittal T1. Clean negatives: the same slices
without the artifact. Severity is the simulator's parameter range (mild / severe), listed in
the JSON; nothing is re-labelled after the fact. Because a random draw of TorchIO can move
the head very little, each case also records the artifact really produced (RMS difference to
the same slices with the same noise and no artifact, in noise SDs, as ``qc_real`` does), and
the summary gives the flag rate and AUC of the series with a clear artifact (> 1 noise SD),
the issue's definition.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import WEIGHTS_DIR
from models.evaluation.qc import STRENGTH_BINS, roc_auc
from qc.calibration import QCCalibration
from qc.measures import measure_original, motion_flagged

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
#: Sagittal slice positions relative to the midline, mm (= voxels of the 1 mm heads).
SLICE_OFFSETS_MM = tuple(range(-24, 25, 4))
#: A "clear" artifact (the issue's definition): RMS change larger than one noise SD.
CLEAR_ARTIFACT_NOISE_SDS = 1.0


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


def slices_with_noise(vol: np.ndarray, x_positions: list[int], seed: int,
                      reference: np.ndarray | None = None) -> np.ndarray:
    """Sagittal slices ``(n, 256, 256)`` (rows = y, columns = z: phase encode along columns)
    with Rician noise at SNR 20, as 12-bit integers. Noise SD and display scale come from
    ``reference`` (default ``vol``): the artifact-free volume, so that a moved series and its
    still twin (same ``seed``) differ by the artifact only."""
    rng = np.random.default_rng(seed)

    def stack(v: np.ndarray) -> np.ndarray:
        return np.abs(np.stack([v[x] for x in x_positions]).astype(np.float64))

    out, ref = stack(vol), stack(vol if reference is None else reference)
    fg = ref[ref > 0.1 * ref.max()]
    sigma = float(np.median(fg)) / SNR
    noise = rng.normal(0, sigma, (2, *out.shape))
    scale = 2800 / np.percentile(np.abs(ref + noise[0] + 1j * noise[1]), 99.9)
    noisy = np.abs(out + noise[0] + 1j * noise[1])
    return np.clip(np.round(noisy * scale), 0, 4095).astype(np.uint16)


def run(repeats: int, calibration: QCCalibration) -> list[dict]:
    from models.evaluation.qc_real import artifact_in_noise_sds
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
        positions = [mid + d for d in SLICE_OFFSETS_MM]
        moved = apply_artifact(vol, kind, severity, seed)
        series = slices_with_noise(moved, positions, seed + 7, reference=vol)
        anr = 0.0
        if kind != "none":
            anr = artifact_in_noise_sds(series, slices_with_noise(vol, positions, seed + 7))
        _, q = measure_original(series, 1, calibration, detector)
        cases.append({"volume": name, "repeat": r, "kind": kind, "severity": severity, "seed": seed,
                      "slices": len(positions), "anr": round(anr, 3), "ghost": q.ghost, "detector": q.detector,
                      "motion_score": q.motion_score, "flag": motion_flagged(q.motion_score),
                      "slice_scores": q.slice_motion_scores})
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
    clear = [c for c in pos if c.get("anr", 0.0) > CLEAR_ARTIFACT_NOISE_SDS]
    out["clear_artifact"] = {"n": len(clear), "flag_rate": float(np.mean(val(clear) >= thr)) if clear else None,
                             "auc": roc_auc(neg, val(clear)) if clear else None}
    out["by_strength"] = []
    for lo, hi, name in STRENGTH_BINS:
        group = val([c for c in pos if lo <= c.get("anr", 0.0) < hi])
        out["by_strength"].append({"artifact": name, "n": int(group.size),
                                   "flag_rate": float(np.mean(group >= thr)) if group.size else None})
    for kind in ("motion", "ghosting"):
        for severity in ("mild", "severe"):
            group = [c for c in pos if (c["kind"], c["severity"]) == (kind, severity)]
            p = val(group)
            anr = np.array([c.get("anr", np.nan) for c in group])
            clear_here = val([c for c in group if c.get("anr", 0.0) > CLEAR_ARTIFACT_NOISE_SDS])
            out["by_condition"].append({
                "kind": kind, "severity": severity, "n": int(p.size), "flag_rate": float(np.mean(p >= thr)),
                "auc": roc_auc(neg, p), "anr_median": round(float(np.nanmedian(anr)), 3),
                "anr_range": [round(float(np.nanmin(anr)), 3), round(float(np.nanmax(anr)), 3)],
                "n_clear": int(clear_here.size),
                "flag_rate_clear": float(np.mean(clear_here >= thr)) if clear_here.size else None})
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
    clear = result["clear_artifact"]
    if clear["n"]:
        print(f"clear artifact (> {CLEAR_ARTIFACT_NOISE_SDS:g} noise SD): {clear['n']} cases, "
              f"flagged {100 * clear['flag_rate']:.1f} %, AUC {clear['auc']:.3f}")
    strengths = []
    for row in result["by_strength"]:
        rate = "-" if row["flag_rate"] is None else f"{100 * row['flag_rate']:.0f} %"
        strengths.append(f"{row['artifact']} {rate} (n={row['n']})")
    print("flagged by artifact strength: " + ", ".join(strengths))
    print(f"{'kind':9s} {'severity':8s} {'n':>4s} {'flagged':>8s} {'AUC':>6s} {'artifact SDs':>16s} {'clear flagged':>14s}")
    for row in result["by_condition"]:
        clear_rate = "-" if row["flag_rate_clear"] is None else f"{100 * row['flag_rate_clear']:.1f}%"
        print(f"{row['kind']:9s} {row['severity']:8s} {row['n']:4d} {100 * row['flag_rate']:7.1f}% {row['auc']:6.3f} "
              f"{row['anr_median']:6.2f} ({row['anr_range'][0]:.2f}-{row['anr_range'][1]:.2f}) "
              f"{row['n_clear']:3d} {clear_rate:>9s}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qc_independent.json").write_text(json.dumps({"result": result, "cases": cases}, indent=1) + "\n")
    print(f"wrote {args.out / 'qc_independent.json'} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
