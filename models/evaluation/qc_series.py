"""The motion flag on whole series of fresh phantom patients, as the product sees them.

    python -m models.evaluation.qc_series                     # 40 patients -> table + docs/qc_series.json
    python -m models.evaluation.qc_series --patients 12 --motion none severe   # a quicker look
    python -m models.evaluation.qc_series --calibrate --motion none   # thresholds -> qc/calibration.json
    python -m models.evaluation.qc_series --acquisitions accelerated --motion-patients 20
    # docs/qc_series.json holds, so far: --patients 8 --acquisitions accelerated --motion none

``models.evaluation.qc`` scores three central slices per series; the product scores every
slice of the series, the far-lateral sagittal ones and the top and bottom axial ones
included, and the series is flagged by the 75th percentile over them. Here: every role of
a study (sag T1, CE T1, Dixon in-phase and water (the water series measured with its
in-phase partner, as the operator does), ax T2), the full stacks (13 sagittal slices at
512, 24 axial at 320), accelerated and conventional acquisitions, without motion and with
mild and severe motion (rigid, swallowing or both, drawn per series).

Evaluation patients 8100-8139; calibration patients (``--calibrate``) 7000-7011, whole series
too: disjoint from each other, from the detector's training phantoms (9000-9119), the
3-slice evaluation (8000-8015) and the enhancement model's training (>= 10,000). Vendor
changes only the DICOM header, not the pixels simulated here.
"""
from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from models import WEIGHTS_DIR
from models.evaluation.qc import ARTIFACT_BINS, artifact_anr, roc_auc
from qc.calibration import QCCalibration
from qc.measures import measure_original, motion_flagged

ROOT = Path(__file__).resolve().parents[2]
PATIENT_SEEDS = range(8100, 8140)
CALIBRATION_SEEDS = range(7000, 7012)
ROLES = ("SAG_T1", "SAG_CE_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2")
MOTION_KINDS = ("rigid", "swallow", "both")
_DETECTOR = None


def _detector():
    global _DETECTOR  # one per worker process
    if _DETECTOR is None:
        import torch

        from models.motion_detector import load_motion_detector

        torch.set_num_threads(1)
        _DETECTOR = load_motion_detector(WEIGHTS_DIR)
    return _DETECTOR


def patient_series(task: tuple[int, tuple[str, ...], tuple[str, ...]]) -> list[dict]:
    """Every role of one patient, per acquisition and motion severity: the series' motion
    score, its flag, the slice scores and the artifact really produced (noise SD units)."""
    from simulation.dicom_study import simulate_series
    from simulation.phantom import PhantomPatient, axial_geometry, render_plane, sagittal_geometry

    seed, acquisitions, severities = task
    calibration = QCCalibration.load()
    rng = np.random.default_rng([seed, 13])
    patient = PhantomPatient.from_seed(seed, protocol="myelopathy" if seed % 2 else "hivd")
    geometry = {"sagittal": sagittal_geometry(x_centre=float(rng.uniform(-2, 2))),
                "axial": axial_geometry(z_centre=float(rng.uniform(-25, -15)))}
    rendered = {k: [render_plane(patient, p) for p in v] for k, v in geometry.items()}
    rows = []
    for acquisition in acquisitions:
        for severity in severities:
            # one draw per (patient, acquisition, severity), whatever else is asked for
            draw = np.random.default_rng([seed, ("accelerated", "conventional").index(acquisition),
                                          ("none", "mild", "severe").index(severity)])
            kind = "none" if severity == "none" else str(draw.choice(MOTION_KINDS))
            noise_seed = int(draw.integers(2**31))
            in_phase = None
            for role in ROLES:
                plane = "axial" if role.startswith("AX") else "sagittal"
                # Dixon in-phase and water come from one acquisition: the same seed gives them
                # the same noise and motion (simulation.dicom_study)
                series = simulate_series(patient, role, geometry[plane], rendered[plane], acquisition=acquisition,
                                         seed=noise_seed, motion=severity,
                                         motion_kind=kind if kind != "none" else "both",
                                         with_motion_free=severity != "none")
                partner = in_phase if role == "SAG_DIXON_W" else None
                _, quality = measure_original(series.images.astype(np.float32), series.protocol.phase_encode_axis,
                                              calibration, _detector(), partner)
                if role == "SAG_DIXON_IP":
                    in_phase = series.images.astype(np.float32)
                score = quality.motion_score
                rows.append({"seed": seed, "role": role, "acquisition": acquisition, "severity": severity,
                             "kind": kind, "anr": round(artifact_anr(series), 3), "motion_score": score,
                             "ghost": quality.ghost, "detector": quality.detector,
                             "flag": motion_flagged(score),
                             "slices": len(series.images), "slice_scores": quality.slice_motion_scores,
                             "flagged_slices": len(quality.flagged_slices)})
    return rows


def calibrate(rows: list[dict], previous: QCCalibration) -> QCCalibration:
    """Ghost and detector thresholds just above the highest series value (75th percentile over
    its slices, as the product scores) of any clean calibration series. The accentuation
    margin compares the DL output's ghost measure with the original's, which needs the DL
    model on every series: it stays ``previous``'s, and at least half the ghost threshold."""
    clean = [r for r in rows if r["severity"] == "none"]
    ghost_threshold = 1.001 * max(r["ghost"] or 0.0 for r in clean)
    detectors = [r["detector"] for r in clean if r["detector"] is not None]
    detector_threshold = min(1.001 * max(detectors), 0.999) if detectors else None
    return QCCalibration(
        round(ghost_threshold, 5), round(max(previous.accentuation_margin, 0.5 * ghost_threshold), 5),
        previous.local_weight, None if detector_threshold is None else round(detector_threshold, 4),
        source=(f"models.evaluation.qc_series --calibrate, whole series of patients {min(r['seed'] for r in rows)}-"
                f"{max(r['seed'] for r in rows)}, {len(clean)} clean series, {time.strftime('%Y-%m-%d')}"))


def summarise(rows: list[dict]) -> dict:
    """False flags on clean series (per role, per acquisition, all), detection by artifact
    strength and severity, and the AUC of series with a clear artifact against clean ones."""
    clean = [r for r in rows if r["severity"] == "none"]
    moved = [r for r in rows if r["severity"] != "none"]

    def rate(group: list[dict]) -> dict:
        n = sum(r["flag"] for r in group)
        return {"flagged": n, "series": len(group), "rate": round(n / len(group), 4) if group else None}

    out = {"false_flags": {"all": rate(clean)}, "detection": {}}
    for key in ("role", "acquisition"):
        for value in sorted({r[key] for r in clean}):
            out["false_flags"][f"{key} {value}"] = rate([r for r in clean if r[key] == value])
    for severity in sorted({r["severity"] for r in moved}):
        out["detection"][f"severity {severity}"] = rate([r for r in moved if r["severity"] == severity])
    for lo, hi, name in ARTIFACT_BINS:
        out["detection"][f"artifact {name}"] = rate([r for r in moved if lo <= r["anr"] < hi])
    negatives = np.array([r["motion_score"] for r in clean if r["motion_score"] is not None])
    positives = np.array([r["motion_score"] for r in moved if r["anr"] > 1.0 and r["motion_score"] is not None])
    out["auc_clear_artifact"] = round(roc_auc(negatives, positives), 4) if len(negatives) and len(positives) else None
    # where the false flags come from: the share of slices scoring >= 0.5 by position in the stack
    lateral = {}
    for r in (r for r in clean if r["slice_scores"] is not None):
        n = r["slices"]
        for i, s in enumerate(r["slice_scores"]):
            edge = "edge third" if min(i, n - 1 - i) < n / 6 else "middle"
            lateral.setdefault(edge, []).append(motion_flagged(s))
    out["clean_slices_scoring_ge_0.5"] = {k: round(float(np.mean(v)), 4) for k, v in lateral.items()}
    return out


def print_table(summary: dict) -> None:
    print(f"{'clean series':<32}{'false flags':>14}")
    for name, r in summary["false_flags"].items():
        print(f"{name:<32}{r['flagged']:>6}/{r['series']:<5}{100 * (r['rate'] or 0):>6.1f} %")
    print(f"\n{'series with motion':<32}{'flagged':>14}")
    for name, r in summary["detection"].items():
        if r["series"]:
            print(f"{name:<32}{r['flagged']:>6}/{r['series']:<5}{100 * r['rate']:>6.1f} %")
    print(f"\nAUC, clear artifact (> 1 noise SD) against clean: {summary['auc_clear_artifact']}")
    print(f"clean slices scoring >= 0.5: {summary['clean_slices_scoring_ge_0.5']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="derive the thresholds on the calibration patients and write qc/calibration.json")
    parser.add_argument("--patients", type=int, default=None, help="the first N patients (default: all)")
    parser.add_argument("--acquisitions", nargs="+", default=["accelerated", "conventional"],
                        choices=["accelerated", "conventional"])
    parser.add_argument("--motion", nargs="+", default=["none", "mild", "severe"], choices=["none", "mild", "severe"])
    parser.add_argument("--motion-patients", type=int, default=None,
                        help="series with motion for the first N patients only (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "qc_series.json")
    args = parser.parse_args(argv)
    start = time.time()
    seeds = list(CALIBRATION_SEEDS if args.calibrate else PATIENT_SEEDS)[:args.patients]
    with_motion = len(seeds) if args.motion_patients is None else args.motion_patients
    tasks = [(seed, tuple(args.acquisitions), tuple(m for m in args.motion if m == "none" or k < with_motion))
             for k, seed in enumerate(seeds)]
    rows: list[dict] = []
    with Pool(args.workers) as pool:
        for i, result in enumerate(pool.imap_unordered(patient_series, tasks)):
            rows.extend(result)
            print(f"{i + 1}/{len(tasks)} patients, {time.time() - start:.0f} s", flush=True)
    rows.sort(key=lambda r: (r["seed"], r["acquisition"], r["severity"], r["role"]))
    if args.calibrate:
        from dataclasses import asdict

        from qc.calibration import DEFAULT_CALIBRATION

        calibration = calibrate(rows, QCCalibration.load())
        DEFAULT_CALIBRATION.write_text(json.dumps(asdict(calibration), indent=2) + "\n")
        print(f"wrote {DEFAULT_CALIBRATION}: {calibration}")
        # the calibration patients scored with the new thresholds (in-sample: not an evaluation)
        for r in rows:
            r["motion_score"] = calibration.motion_score(r["ghost"], r["detector"])
            r["flag"] = motion_flagged(r["motion_score"])
            r["slice_scores"] = None  # scored with the thresholds before this calibration
        if args.out == ROOT / "docs" / "qc_series.json":
            args.out = ROOT / "docs" / "qc_series_calibration.json"
    summary = summarise(rows)
    print_table(summary)
    calibration = json.loads((ROOT / "qc" / "calibration.json").read_text())
    detector = json.loads((WEIGHTS_DIR / "motion_detector.json").read_text())
    args.out.write_text(json.dumps({
        "command": "python -m models.evaluation.qc_series " + " ".join(argv or []),
        "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - start),
        "patients": [t[0] for t in tasks], "calibration": calibration,
        "detector": {k: detector.get(k) for k in ("name", "version")}, "summary": summary, "series": rows,
    }, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
