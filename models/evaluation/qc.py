"""Calibrate and evaluate the motion flag and the DL-accentuation guard on held-out phantoms.

    python -m models.evaluation.qc --calibrate      # calibration seeds -> qc_calibration.json
    python -m models.evaluation.qc                  # evaluation seeds -> table, ROC plot, JSON

Series are simulated like the product's input (accelerated protocol, 3 central slices)
for sag T1, sag T2, ax T2 and CE T1, without motion and with mild or severe rigid motion,
swallowing or both. Motion patterns vary in shot count (12-48), ordering, timing,
amplitude and direction (``simulation.acquisition.random_motion_trajectory``).
Calibration and evaluation use disjoint patient seeds, both disjoint from training.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import WEIGHTS_DIR
from qc.calibration import DEFAULT_CALIBRATION, QCCalibration
from qc.measures import locate_rois_in_volume, measure_series, series_masks
from qc.metrics import RAYLEIGH_MEDIAN_PER_SIGMA
from simulation.dicom_study import simulate_series
from simulation.phantom import (
    PhantomPatient,
    axial_geometry,
    render_plane,
    sagittal_geometry,
)

ROLES = ("SAG_T1", "SAG_T2", "AX_T2", "SAG_CE_T1")
CONDITIONS = [("none", "none")] + [(s, k) for s in ("mild", "severe") for k in ("rigid", "swallow", "both")]
CALIBRATION_SEEDS = range(7000, 7012)
EVALUATION_SEEDS = range(8000, 8016)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    seed: int
    role: str
    severity: str
    kind: str
    ghost: float | None
    ghost_dl: float | None
    artifact_anr: float | None = None  # RMS(image - motion-free image) / noise SD; 0 when clean
    detector: float | None = None  # motion detector's series probability, original
    detector_dl: float | None = None  # the same on the DL output
    roi_confidence: float | None = None  # C3 / C3-C4 localisation (sagittal; None: not located)
    roi_correct: bool | None = None  # located ROIs lie >= 80 % in the true C3 marrow and C3-C4 disc
    cnr: float | None = None  # CNR with the located ROIs (original)
    cnr_true_rois: float | None = None  # CNR with the phantom's true ROIs, same slice


def simulate_cases(seeds, with_dl: bool, calibration: QCCalibration) -> list[Case]:
    from models.motion_detector import load_motion_detector

    detector = load_motion_detector(WEIGHTS_DIR)
    model = None
    if with_dl:
        from models.inference import enhance_volume, load_model

        model = load_model(WEIGHTS_DIR)
    cases = []
    total = len(seeds) * len(ROLES) * len(CONDITIONS)
    with tqdm(total=total, desc="QC cases") as bar:
        for seed in seeds:
            patient = PhantomPatient.from_seed(seed, protocol="myelopathy" if seed % 2 else "hivd")
            rng = np.random.default_rng(seed)
            geometry = {
                "sagittal": sagittal_geometry(n_slices=3, x_centre=float(rng.uniform(-2, 2))),
                "axial": axial_geometry(n_slices=3, z_centre=float(rng.uniform(-40, 0))),
            }
            rendered = {k: [render_plane(patient, p) for p in v] for k, v in geometry.items()}
            for role in ROLES:
                plane = "axial" if role.startswith("AX") else "sagittal"
                for severity, kind in CONDITIONS:
                    series = simulate_series(patient, role, geometry[plane], rendered[plane], acquisition="accelerated",
                                             seed=seed * 100 + CONDITIONS.index((severity, kind)), motion=severity,
                                             motion_kind=kind if kind != "none" else "both",
                                             with_motion_free=severity != "none")
                    pe_axis = series.protocol.phase_encode_axis
                    masks = series_masks(series.images, pe_axis)
                    original = measure_series(series.images, pe_axis, calibration, masks, detector)
                    dl = None
                    if model is not None:
                        enhanced = enhance_volume(model, series.images.astype(np.uint16))
                        dl = measure_series(enhanced, pe_axis, calibration, masks)  # ghost measure only (as the operator)
                    case = Case(seed, role, severity, kind, original.ghost, None if dl is None else dl.ghost,
                                artifact_anr(series), original.detector, None if dl is None else dl.detector)
                    if plane == "sagittal":
                        landmark_check(case, series.images, masks, geometry[plane][0].spacing, rendered[plane],
                                       original.noise_sd)
                    cases.append(case)
                    bar.update()
    return cases


def landmark_check(case: Case, images: np.ndarray, masks, spacing, rendered, noise_sd: float | None) -> None:
    """Locate C3 / C3-C4 as the operator does and compare with the phantom's labels."""
    from scipy import ndimage

    from simulation.phantom import c3_rois

    found = locate_rois_in_volume(images, masks, spacing)
    if found is None or not noise_sd:
        return
    index, rois = found
    true_marrow, true_disc = c3_rois(rendered[index].label, rendered[index].level)
    case.roi_confidence = rois.confidence
    case.roi_correct = bool(true_marrow[rois.c3_marrow].mean() >= 0.8 and true_disc[rois.c3_c4_disc].mean() >= 0.8)
    img = images[index].astype(np.float64)
    case.cnr = float(abs(img[rois.c3_c4_disc].mean() - img[rois.c3_marrow].mean()) / noise_sd)
    m, d = ndimage.binary_erosion(true_marrow), ndimage.binary_erosion(true_disc)
    if m.sum() >= 10 and d.sum() >= 10:
        case.cnr_true_rois = float(abs(img[d].mean() - img[m].mean()) / noise_sd)


def artifact_anr(series) -> float:
    """How much artifact the motion really produced: RMS over the series of the
    difference to the motion-free acquisition (same noise, patient still in the position
    of the k-space centre), in units of the noise SD (Rayleigh median of the air). Motion
    that shifts the whole image without ghosting scores about 0."""
    if series.motion_free is None:
        return 0.0
    diff = series.images.astype(np.float64) - series.motion_free
    air = series.motion_free[series.motion_free < np.percentile(series.motion_free, 20)]
    sigma = max(float(np.median(air)) / RAYLEIGH_MEDIAN_PER_SIGMA, 1e-6)
    return float(np.sqrt(np.mean(diff**2)) / sigma)


#: Bins of the artifact actually produced (noise SD units), for reporting.
ARTIFACT_BINS = ((0.0, 0.25, "barely any (< 0.25 noise SD)"), (0.25, 1.0, "weak (0.25-1)"),
                 (1.0, np.inf, "strong (> 1 noise SD)"))
#: The strong artifacts split further (noise-SD units): where along its strength the flag starts to work.
STRENGTH_BINS = ((1.0, 2.0, "1-2 noise SDs"), (2.0, 4.0, "2-4 noise SDs"), (4.0, np.inf, ">= 4 noise SDs"))


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Probability a positive scores above a negative (ties count half): the ROC AUC."""
    if negatives.size == 0 or positives.size == 0:
        return float("nan")
    diff = positives[:, None] - negatives[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def scores(cases: list[Case], calibration: QCCalibration) -> np.ndarray:
    """Motion scores (0-1, flag at >= 0.5) of the original series; not measurable counts as 0."""
    out = [calibration.motion_score(c.ghost, c.detector) for c in cases]
    return np.array([0.0 if v is None else v for v in out])


def calibrate(cases: list[Case], margin_rate: float = 0.025) -> QCCalibration:
    """Ghost and detector thresholds just above the highest value of any clean series (on
    the calibration phantoms the goal of <= 5 % false flags costs no sensitivity at 0 %:
    clean and moving series are separated by a gap); accentuation margin at the
    (1 - ``margin_rate``) quantile of the DL - original raw ghost measure on clean
    series, where there is nothing to accentuate, and at least half the ghost threshold."""
    clean = [c for c in cases if c.severity == "none"]
    ghost_threshold = 1.001 * max(c.ghost or 0.0 for c in clean)
    detectors = [c.detector for c in clean if c.detector is not None]
    detector_threshold = min(1.001 * max(detectors), 0.999) if detectors else None
    with_dl = [c for c in clean if c.ghost_dl is not None and c.ghost is not None]
    margin = ghost_threshold
    if with_dl:
        diffs = np.array([c.ghost_dl - c.ghost for c in with_dl])
        margin = max(float(np.quantile(diffs, 1 - margin_rate)), 0.5 * ghost_threshold)
    return QCCalibration(round(ghost_threshold, 5), round(margin, 5), 2.0,
                         None if detector_threshold is None else round(detector_threshold, 4), source=(
        f"models.evaluation.qc --calibrate, seeds {min(c.seed for c in cases)}-{max(c.seed for c in cases)}, "
        f"{len(cases)} series, {time.strftime('%Y-%m-%d')}"))


def evaluate(cases: list[Case], calibration: QCCalibration) -> dict:
    thr = 0.5  # motion score at the calibrated thresholds
    value = lambda cs: scores(cs, calibration)  # noqa: E731
    clean = [c for c in cases if c.severity == "none"]
    neg = value(clean)
    result = {"n_series": len(cases), "threshold": thr, "ghost_threshold": calibration.ghost_threshold,
              "detector_threshold": calibration.detector_threshold, "false_flag_rate_clean": float(np.mean(neg >= thr)),
              "auc_mild_or_worse": roc_auc(neg, value([c for c in cases if c.severity != "none"])),
              "by_condition": [], "by_role": []}
    moving_all = [c for c in cases if c.severity != "none"]
    for name, attr in (("ghost", "ghost"), ("detector", "detector")):  # each measure alone
        raw = lambda cs: np.array([getattr(c, attr) or 0.0 for c in cs])  # noqa: E731
        result[f"auc_mild_or_worse_{name}_only"] = roc_auc(raw(clean), raw(moving_all))
    for severity, kind in CONDITIONS[1:]:
        pos = value([c for c in cases if (c.severity, c.kind) == (severity, kind)])
        result["by_condition"].append({"severity": severity, "kind": kind, "n": int(pos.size),
                                       "flag_rate": float(np.mean(pos >= thr)), "auc": roc_auc(neg, pos)})
    for severity in ("mild", "severe"):
        pos = value([c for c in cases if c.severity == severity])
        result[f"flag_rate_{severity}"] = float(np.mean(pos >= thr))
        result[f"auc_{severity}"] = roc_auc(neg, pos)
    for role in ROLES:
        n = value([c for c in clean if c.role == role])
        p = value([c for c in cases if c.role == role and c.severity != "none"])
        result["by_role"].append({"role": role, "false_flag_rate": float(np.mean(n >= thr)),
                                  "flag_rate_motion": float(np.mean(p >= thr)), "auc": roc_auc(n, p)})
    moving = [c for c in cases if c.severity != "none" and c.artifact_anr is not None]
    result["by_artifact"] = []
    for lo, hi, label in ARTIFACT_BINS:
        sel = [c for c in moving if lo <= c.artifact_anr < hi]
        pos = value(sel)
        result["by_artifact"].append({"artifact": label, "n": len(sel),
                                      "flag_rate": float(np.mean(pos >= thr)) if sel else None,
                                      "auc": roc_auc(neg, pos)})
    sagittal = [c for c in cases if c.role.startswith("SAG")]
    located = [c for c in sagittal if c.roi_confidence is not None]
    # The operator reports CNR only where the series is not flagged for motion.
    reported = [c for c, score in zip(sagittal, scores(sagittal, calibration))
                if c.roi_confidence is not None and score < 0.5]
    if sagittal:
        result["landmarks"] = {
            "n_sagittal_series": len(sagittal),
            "located_rate": len(located) / len(sagittal),
            "correct_rate_of_located": float(np.mean([c.roi_correct for c in located])) if located else None,
            "located_rate_clean": float(np.mean([c.roi_confidence is not None for c in sagittal if c.severity == "none"])),
            "median_confidence": float(np.median([c.roi_confidence for c in located])) if located else None,
            "median_abs_cnr_error_pct": float(np.median([abs(c.cnr - c.cnr_true_rois) / c.cnr_true_rois * 100
                                                         for c in located if c.cnr_true_rois])) if located else None,
            "reported_rate": len(reported) / len(sagittal),
            "correct_rate_of_reported": float(np.mean([c.roi_correct for c in reported])) if reported else None,
            "correct_rate_of_reported_clean": float(np.mean([c.roi_correct for c in reported if c.severity == "none"]))
            if any(c.severity == "none" for c in reported) else None,
        }
    with_dl = [c for c in cases if c.ghost_dl is not None and c.ghost is not None]
    if with_dl:
        acc = np.array([c.ghost_dl - c.ghost > calibration.accentuation_margin for c in with_dl])
        result["dl_accentuated_rate_clean"] = float(np.mean([a for a, c in zip(acc, with_dl) if c.severity == "none"]))
        result["dl_accentuated_rate_motion"] = float(np.mean([a for a, c in zip(acc, with_dl) if c.severity != "none"]))
        result["mean_ghost_original_motion"] = float(np.mean([c.ghost for c in with_dl if c.severity != "none"]))
        result["mean_ghost_dl_motion"] = float(np.mean([c.ghost_dl for c in with_dl if c.severity != "none"]))
    return result


def plot_roc(cases: list[Case], calibration: QCCalibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    neg = scores([c for c in cases if c.severity == "none"], calibration)
    fig, ax = plt.subplots(figsize=(5, 5))
    for severity, kind in CONDITIONS[1:]:
        pos = scores([c for c in cases if (c.severity, c.kind) == (severity, kind)], calibration)
        thresholds = np.unique(np.concatenate([neg, pos, [np.inf]]))[::-1]
        tpr = [np.mean(pos >= t) for t in thresholds]
        fpr = [np.mean(neg >= t) for t in thresholds]
        ax.plot(fpr, tpr, label=f"{severity} {kind} (AUC {roc_auc(neg, pos):.2f})",
                linestyle="-" if severity == "severe" else "--")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set_xlabel("false flag rate (clean series)")
    ax.set_ylabel("flag rate (series with motion)")
    ax.set_title("Motion flag ROC, held-out phantoms")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(result: dict) -> None:
    print(f"thresholds: ghost {result['ghost_threshold']}, detector {result['detector_threshold']}; "
          f"false flags on clean series {100 * result['false_flag_rate_clean']:.1f} %; "
          f"AUC mild-or-worse {result['auc_mild_or_worse']:.3f} (ghost alone {result['auc_mild_or_worse_ghost_only']:.3f}, "
          f"detector alone {result['auc_mild_or_worse_detector_only']:.3f})")
    print(f"{'severity':8s} {'kind':8s} {'n':>4s} {'flagged':>8s} {'AUC':>6s}")
    for row in result["by_condition"]:
        print(f"{row['severity']:8s} {row['kind']:8s} {row['n']:4d} {100 * row['flag_rate']:7.1f}% {row['auc']:6.3f}")
    for row in result.get("by_artifact", []):
        if row["n"]:
            print(f"motion with artifact {row['artifact']:30s} n={row['n']:4d} flagged {100 * row['flag_rate']:5.1f} %"
                  f"  AUC {row['auc']:.3f}")
    for row in result["by_role"]:
        print(f"{row['role']:10s} false flags {100 * row['false_flag_rate']:5.1f} %  flagged with motion "
              f"{100 * row['flag_rate_motion']:5.1f} %  AUC {row['auc']:.3f}")
    if "landmarks" in result:
        lm = result["landmarks"]
        print(f"C3 / C3-C4 located on {100 * lm['located_rate']:.1f} % of {lm['n_sagittal_series']} sagittal series "
              f"({100 * lm['located_rate_clean']:.1f} % without motion); correct level and tissue on "
              f"{100 * (lm['correct_rate_of_located'] or 0):.1f} % of those; median confidence {lm['median_confidence']}; "
              f"median |CNR - CNR with true ROIs| {lm['median_abs_cnr_error_pct']:.1f} %")
        print(f"  reported (located and not flagged for motion) on {100 * lm['reported_rate']:.1f} %, correct on "
              f"{100 * (lm['correct_rate_of_reported'] or 0):.1f} % of those "
              f"({100 * (lm['correct_rate_of_reported_clean'] or 0):.1f} % without motion)")
    if "dl_accentuated_rate_clean" in result:
        print(f"DL accentuation flag: clean {100 * result['dl_accentuated_rate_clean']:.1f} %, with motion "
              f"{100 * result['dl_accentuated_rate_motion']:.1f} %; mean raw ghost measure original {result['mean_ghost_original_motion']:.4f}"
              f" -> DL {result['mean_ghost_dl_motion']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="derive thresholds on the calibration seeds")
    parser.add_argument("--no-dl", action="store_true", help="skip the DL model (no accentuation guard)")
    parser.add_argument("--seeds", type=int, default=None, help="number of patients (default: all)")
    parser.add_argument("--cases", type=Path, default=None,
                        help="reuse the raw measures of stored cases (qc_calibration_cases.json with --calibrate, "
                             "else the 'cases' of a qc_evaluation.json; they do not depend on the thresholds) "
                             "instead of simulating again")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    start = time.time()
    if args.calibrate:
        seeds = list(CALIBRATION_SEEDS)[: args.seeds]
        provisional = QCCalibration(1.0, 1.0, detector_threshold=0.5)  # raw measures do not depend on it
        if args.cases is not None:
            cases = [Case(**c) for c in json.loads(args.cases.read_text())]
        else:
            cases = simulate_cases(seeds, not args.no_dl, provisional)
        calibration = calibrate(cases)
        DEFAULT_CALIBRATION.write_text(json.dumps(asdict(calibration), indent=2) + "\n")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "qc_calibration_cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
        print(f"wrote {DEFAULT_CALIBRATION}: {asdict(calibration)}")
        print_table(evaluate(cases, calibration))
    else:
        calibration = QCCalibration.load()
        seeds = list(EVALUATION_SEEDS)[: args.seeds]
        if args.cases is not None:
            stored = json.loads(args.cases.read_text())
            cases = [Case(**c) for c in stored["cases"]]
        else:
            cases = simulate_cases(seeds, not args.no_dl, calibration)
        result = evaluate(cases, calibration)
        result["calibration"] = asdict(calibration)
        result["seconds"] = stored["result"].get("seconds") if args.cases is not None else round(time.time() - start)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "qc_evaluation.json").write_text(json.dumps(
            {"result": result, "cases": [asdict(c) for c in cases]}, indent=1))
        plot_roc(cases, calibration, args.out / "qc_roc.png")
        print_table(result)
        print(f"wrote {args.out / 'qc_evaluation.json'} and {args.out / 'qc_roc.png'} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
