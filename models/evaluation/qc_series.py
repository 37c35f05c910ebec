"""The motion flag on whole series of fresh phantom patients, as the product sees them.

    python -m models.evaluation.qc_series --motion-patients 12 --dl-patients 2   # 40 patients -> docs/qc_series.json
    python -m models.evaluation.qc_series --patients 12 --motion none severe   # a quicker look
    python -m models.evaluation.qc_series --calibrate --patients 30 --motion-patients 10 --dl-patients 3
                                                     # per-role thresholds -> qc/calibration.json
    python -m models.evaluation.qc_series --rows docs/qc_series.json            # score stored series again

``models.evaluation.qc`` scores three central slices per series; the product scores every
slice of the series, the far-lateral sagittal ones and the top and bottom axial ones
included, and combines them into the series value by an anatomy-weighted percentile
(``qc.measures.series_value``). Here: every role of both protocols (sag T1, sag T2, CE T1, Dixon in-phase
and water (the water series measured with its in-phase partner, as the operator does), ax
T2), the full stacks (13 sagittal slices at 512, 24 axial at 320), accelerated and
conventional acquisitions, without motion and with mild and severe motion (rigid,
swallowing or both, drawn per series). Every row keeps its per-slice raw measures (ghost
measure, detector probability, body share), so that ``--rows`` can score a stored run
again with new thresholds without simulating it again (the detector must be the same).

Evaluation patients 8100-8139; calibration patients (``--calibrate``) 7000-7039 (the shipped
calibration used 7000-7029), whole series too: disjoint from each other, from the detector's training phantoms (9000-9119), the
3-slice evaluation (8000-8015) and the enhancement model's training (>= 10,000). Vendor
changes only the DICOM header, not the pixels simulated here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from models import WEIGHTS_DIR
from models.evaluation.qc import ARTIFACT_BINS, STRENGTH_BINS, artifact_anr, roc_auc
from qc.calibration import DEFAULT_CALIBRATION as DEFAULT_CALIBRATION_PATH
from qc.calibration import QCCalibration
from qc.measures import measure_original, measure_series, motion_flagged, series_value

ROOT = Path(__file__).resolve().parents[2]
PATIENT_SEEDS = range(8100, 8140)
CALIBRATION_SEEDS = range(7000, 7040)
ROLES = ("SAG_T1", "SAG_T2", "SAG_CE_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2")
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


_ENHANCER = None


def _enhancer():
    global _ENHANCER  # one per worker process
    if _ENHANCER is None:
        from models.inference import load_model

        _ENHANCER = load_model(WEIGHTS_DIR)
    return _ENHANCER


def patient_series(task: tuple) -> list[dict]:
    """Every role of one patient, per acquisition and motion severity: the series' motion
    score, its flag, the slice scores and the artifact really produced (noise SD units).
    ``task``: (seed, acquisitions, severities[, with_dl[, through_plane]]); with_dl: the
    product's enhancement (network, guard, default strength) runs too and its ghost measure is
    kept, on the original's masks as the operator measures it, for the DL-accentuation guard;
    through_plane: rigid motion in 3-D (slices move along their normal too)."""
    from simulation.dicom_study import simulate_series
    from simulation.phantom import PhantomPatient, axial_geometry, render_plane, sagittal_geometry

    seed, acquisitions, severities = task[:3]
    with_dl = len(task) > 3 and bool(task[3])
    through_plane = len(task) > 4 and bool(task[4])
    calibration = QCCalibration.load()
    rng = np.random.default_rng([seed, 13])
    patient = PhantomPatient.from_seed(seed, protocol="myelopathy" if seed % 2 else "hivd")
    geometry = {"sagittal": sagittal_geometry(x_centre=float(rng.uniform(-2, 2))),
                "axial": axial_geometry(z_centre=float(rng.uniform(-25, -15)))}
    rendered = {k: [render_plane(patient, p) for p in v] for k, v in geometry.items()}
    rows = []
    offset_renders: dict = {}  # through-plane motion: displaced planes, shared by roles and draws
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
                                         with_motion_free=severity != "none", through_plane=through_plane,
                                         offset_renders=offset_renders)
                partner = in_phase if role == "SAG_DIXON_W" else None
                masks, quality = measure_original(series.images.astype(np.float32),
                                                  series.protocol.phase_encode_axis, calibration.for_role(role),
                                                  _detector(), partner)
                dl = {}
                if with_dl:
                    from models.inference import enhance_series

                    enhanced = enhance_series(_enhancer(), series.images.astype(np.uint16)).images
                    dl_quality = measure_series(np.clip(np.rint(enhanced), 0, 65535), series.protocol.phase_encode_axis,
                                                calibration.for_role(role), masks)
                    # noise_sd_dl None = the DL output's background noise is not measurable (no DL SNR / CNR)
                    dl = {"slice_ghosts_dl": dl_quality.slice_ghosts, "noise_sd_dl": dl_quality.noise_sd}
                if role == "SAG_DIXON_IP":
                    in_phase = series.images.astype(np.float32)
                score = quality.motion_score
                rows.append({"seed": seed, "role": role, "acquisition": acquisition, "severity": severity,
                             "kind": kind + (" 3-D" if through_plane and kind in ("rigid", "both") else ""), "anr": round(artifact_anr(series), 3), "motion_score": score,
                             "ghost": quality.ghost, "detector": quality.detector,
                             "flag": motion_flagged(score),
                             "slices": len(series.images), "slice_scores": quality.slice_motion_scores,
                             "flagged_slices": len(quality.flagged_slices),
                             "slice_ghosts": quality.slice_ghosts, "slice_detector": quality.slice_detector,
                             "slice_body_fraction": quality.slice_body_fraction, "noise_sd": quality.noise_sd} | dl)
    return rows


def rescore(rows: list[dict], calibration: QCCalibration) -> list[dict]:
    """The rows scored again from their per-slice raw measures with ``calibration`` (each
    row with its role's thresholds), exactly as ``qc.measures.measure_series`` combines
    them: series values, motion score, flag, slice scores."""
    out = []
    for r in rows:
        c = calibration.for_role(r["role"])
        ghost = series_value(r["slice_ghosts"], r["slice_body_fraction"])
        detector = series_value(r["slice_detector"], r["slice_body_fraction"])
        score = c.motion_score(ghost, detector)
        slices = [c.motion_score(g, p) for g, p in zip(r["slice_ghosts"], r["slice_detector"])]
        dl = {}
        if r.get("slice_ghosts_dl") is not None:
            ghost_dl = series_value(r["slice_ghosts_dl"], r["slice_body_fraction"])
            dl = {"ghost_dl": ghost_dl, "dl_accentuated": bool(
                ghost is not None and ghost_dl is not None and ghost_dl - ghost > c.accentuation_margin)}
        out.append(r | {"ghost": ghost, "detector": detector, "motion_score": score, "flag": motion_flagged(score),
                        "slice_scores": slices, "flagged_slices": sum(motion_flagged(v) for v in slices)} | dl)
    return out


#: Stack lengths a calibration series is also read at (its central slices): sites send 5 to 30 slices.
CALIBRATION_STACKS = (5, 9)


def _covering_value(row: dict, key: str) -> float | None:
    """The highest series value of ``key`` over the whole stack and its central sub-stacks
    (``CALIBRATION_STACKS``): a site that covers less than the calibration's 13 sagittal slices
    sends the central ones, whose values are higher (a clean 5-slice Dixon water series went
    above a threshold set on 13-slice stacks alone)."""
    values, weights = row[key], row["slice_body_fraction"]
    found = [series_value(values, weights)]
    for n in CALIBRATION_STACKS:
        if len(values) > n:
            lo = (len(values) - n) // 2
            found.append(series_value(values[lo : lo + n], weights[lo : lo + n]))
    found = [v for v in found if v is not None]
    return max(found) if found else None


#: Thresholds sit this far (relative) above the highest clean calibration series of their role:
#: 15 % (5 % before 2026-12-06), the smallest that flagged no clean series of the other half when
#: set on half of the calibration patients, in both directions (a maximum over 60 series does not
#: bound the tail; docs/qc_corroboration_choice.json).
THRESHOLD_MARGIN = 0.15


def calibrate_detector(rows: list[dict], previous: QCCalibration, margin: float = THRESHOLD_MARGIN) -> QCCalibration:
    """``previous`` with new detector thresholds only (pooled and per role, set as
    :func:`calibrate` sets them); the ghost thresholds and accentuation margins, which do
    not depend on the detector, stay. For a new detector version scored on calibration
    patients of one rendering only."""
    new = calibrate(rows, previous, margin)
    roles = {role: dict(values) for role, values in previous.roles.items()}
    for role, values in new.roles.items():
        if "detector_threshold" in values:
            roles.setdefault(role, {})["detector_threshold"] = values["detector_threshold"]
    clean = [r for r in rows if r["severity"] == "none"]
    return replace(previous, detector_threshold=new.detector_threshold, roles=roles,
                   source=(previous.source.split("; detector thresholds")[0]
                           + f"; detector thresholds: whole series of patients {min(r['seed'] for r in rows)}-"
                           f"{max(r['seed'] for r in rows)}, {len(clean)} clean series, margin {margin:g}, "
                           f"{time.strftime('%Y-%m-%d')}"))


#: A role's thresholds may flag at most this share of the clean real calibration series (the goal's 5 %).
MAX_REAL_FALSE_FLAGS = 0.05


def real_ghost_floor(real_rows: list[dict], margin: float = THRESHOLD_MARGIN) -> float:
    """``margin`` above the highest series ghost measure (whole stack, as ``qc_real`` scores
    it) of the clean real series in ``real_rows`` (``qc_real --sources calibration``: the
    training-allowed calibration head). Real air carries more than the phantom's (edge
    ringing, interpolation, partial volume): clean axial phantoms read 0.001-0.003, the
    head up to 0.022."""
    ghosts = [series_value(r["slice_ghosts"], r["slice_body_fraction"]) for r in real_rows if r["kind"] == "none"]
    ghosts = [g for g in ghosts if g is not None]
    if not ghosts:
        raise ValueError("no clean real series with a measurable ghost measure for the floor")
    return round((1 + margin) * max(ghosts), 5)


def calibrate(rows: list[dict], previous: QCCalibration, margin: float = THRESHOLD_MARGIN,
              detector_corroboration: float | None = None, real_rows: list[dict] | None = None) -> QCCalibration:
    """Per role, ghost and detector thresholds ``margin`` above the highest series value
    (anatomy-weighted percentile over its slices, as the product scores; over the whole stack
    and its central 5 and 9 slices) of any clean calibration series of that role; pooled thresholds (the highest over all roles) for roles
    not seen here. The accentuation margin (how far the DL output's ghost measure may exceed
    the original's) is set the same way, per role, on the clean series the enhancement was
    run on (``--dl-patients``), and is at least the ghost threshold; without such
    series it stays ``previous``'s (pooled). ``real_rows``: clean real series (the calibration
    head); a role whose thresholds flag more than ``MAX_REAL_FALSE_FLAGS`` of them has its ghost
    threshold raised to their :func:`real_ghost_floor` (``docs/qc_real_floor_choice.json``)."""
    clean = [r for r in rows if r["severity"] == "none"]
    corroboration = previous.detector_corroboration if detector_corroboration is None else detector_corroboration
    real_floor = real_ghost_floor(real_rows, margin) if real_rows is not None else 0.0
    # (ghost, detector) series values of the clean real series, on the whole stack as qc_real scores them
    real_clean = [(series_value(r["slice_ghosts"], r["slice_body_fraction"]),
                   series_value(r["slice_detector"], r["slice_body_fraction"]))
                  for r in real_rows or [] if r["kind"] == "none"]

    def real_false_flags(ghost: float, detector: float | None) -> float:
        """Share of the clean real series these thresholds flag."""
        c = QCCalibration(ghost, ghost, detector_threshold=detector, detector_corroboration=corroboration)
        return float(np.mean([motion_flagged(c.motion_score(g, p)) for g, p in real_clean]))

    def thresholds(group: list[dict]) -> tuple[float, float | None]:
        ghosts = [_covering_value(r, "slice_ghosts") or 0.0 for r in group]
        detectors = [v for v in (_covering_value(r, "slice_detector") for r in group) if v is not None]
        ghost = (1 + margin) * max(ghosts)
        detector = round(min((1 + margin) * max(detectors), 0.999), 4) if detectors else None
        if real_clean and real_false_flags(ghost, detector) > MAX_REAL_FALSE_FLAGS:
            ghost = max(ghost, real_floor)
        return round(ghost, 5), detector

    def accentuation(group: list[dict], ghost: float) -> float:
        """``margin`` above the largest rise of the ghost measure from original to DL output on
        clean series (where the enhancement was run), and at least the role's ghost threshold:
        DL has accentuated artifacts when it added as much ghosting as flags a series on its own
        (the calibration's clean DL sample is small; half the threshold flagged a clean axial
        T2 of the demo study)."""
        rises = [series_value(r["slice_ghosts_dl"], r["slice_body_fraction"])
                 - series_value(r["slice_ghosts"], r["slice_body_fraction"])
                 for r in group if r.get("slice_ghosts_dl") is not None
                 and series_value(r["slice_ghosts"], r["slice_body_fraction"]) is not None
                 and series_value(r["slice_ghosts_dl"], r["slice_body_fraction"]) is not None]
        floor = ghost if not rises else max(ghost, (1 + margin) * max(rises))
        return round(floor, 5)

    ghost_threshold, detector_threshold = thresholds(clean)
    roles = {}
    for role in sorted({r["role"] for r in clean}):
        group = [r for r in clean if r["role"] == role]
        g, d = thresholds(group)
        roles[role] = ({"ghost_threshold": g} | ({"detector_threshold": d} if d is not None else {})
                       | {"accentuation_margin": accentuation(group, g)})
    pooled_margin = accentuation(clean, ghost_threshold)
    return QCCalibration(
        ghost_threshold, pooled_margin if any(r.get("slice_ghosts_dl") for r in clean)
        else round(max(previous.accentuation_margin, pooled_margin), 5),
        previous.local_weight, detector_threshold,
        source=(f"models.evaluation.qc_series --calibrate, whole series of patients {min(r['seed'] for r in rows)}-"
                f"{max(r['seed'] for r in rows)}, {len(clean)} clean series, {len(roles)} roles, "
                f"margin {margin:g}"
                + (f", ghost thresholds of roles flagging > {MAX_REAL_FALSE_FLAGS:.0%} of the {len(real_clean)} clean "
                   f"real calibration head series raised to {real_floor:g}" if real_clean else "")
                + f", {time.strftime('%Y-%m-%d')}"),
        roles=roles,
        detector_corroboration=corroboration)


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
    for lo, hi, name in ARTIFACT_BINS + STRENGTH_BINS:
        out["detection"][f"artifact {name}"] = rate([r for r in moved if lo <= r["anr"] < hi])
    negatives = np.array([r["motion_score"] for r in clean if r["motion_score"] is not None])
    positives = np.array([r["motion_score"] for r in moved if r["anr"] > 1.0 and r["motion_score"] is not None])
    out["auc_clear_artifact"] = round(roc_auc(negatives, positives), 4) if len(negatives) and len(positives) else None
    with_dl = [r for r in rows if r.get("dl_accentuated") is not None]
    if with_dl:  # the DL-accentuation guard, where the enhancement was run
        out["dl_accentuated"] = {"clean": rate([dict(r, flag=r["dl_accentuated"]) for r in with_dl
                                                if r["severity"] == "none"])}
        for severity in sorted({r["severity"] for r in with_dl} - {"none"}):
            out["dl_accentuated"][f"severity {severity}"] = rate([dict(r, flag=r["dl_accentuated"]) for r in with_dl
                                                                  if r["severity"] == severity])
        out["dl_ghost_change_mean"] = round(float(np.mean([r["ghost_dl"] - r["ghost"] for r in with_dl
                                                           if r["ghost"] is not None and r["ghost_dl"] is not None])), 5)
        # the DL series whose original has a background noise but the DL output has none (no DL SNR / CNR)
        recorded = [r for r in with_dl if "noise_sd_dl" in r and r.get("noise_sd")]
        if recorded:
            out["dl_noise_not_measurable"] = {"series": len(recorded),
                                              "flagged": sum(r["noise_sd_dl"] is None for r in recorded)}
    # where the false flags come from: the share of slices scoring >= 0.5 by position in the stack
    lateral = {}
    for r in (r for r in clean if r["slice_scores"] is not None):
        n = r["slices"]
        for i, s in enumerate(r["slice_scores"]):
            edge = "edge third" if min(i, n - 1 - i) < n / 6 else "middle"
            lateral.setdefault(edge, []).append(motion_flagged(s))
    out["clean_slices_scoring_ge_0.5"] = {k: round(float(np.mean(v)), 4) for k, v in lateral.items()}
    return out


def print_rates(summary: dict, width: int = 32, moved: str = "series with motion") -> None:
    """The false flags, the detection rates and the AUC of a QC summary (also ``qc_real``'s)."""
    print(f"{'clean series':<{width}}{'false flags':>14}")
    for name, r in summary["false_flags"].items():
        print(f"{name:<{width}}{r['flagged']:>6}/{r['series']:<5}{100 * (r['rate'] or 0):>6.1f} %")
    print(f"\n{moved:<{width}}{'flagged':>14}")
    for name, r in summary["detection"].items():
        if r["series"]:
            print(f"{name:<{width}}{r['flagged']:>6}/{r['series']:<5}{100 * r['rate']:>6.1f} %")
    print(f"\nAUC, clear artifact (> 1 noise SD) against clean: {summary['auc_clear_artifact']}")


def print_table(summary: dict) -> None:
    print_rates(summary)
    for name, r in summary.get("dl_accentuated", {}).items():
        print(f"DL accentuated, {name:<22}{r['flagged']:>6}/{r['series']:<5}{100 * (r['rate'] or 0):>6.1f} %")
    if "dl_noise_not_measurable" in summary:
        r = summary["dl_noise_not_measurable"]
        print(f"DL noise not measurable (original's is) {r['flagged']:>4}/{r['series']}")
    print(f"clean slices scoring >= 0.5: {summary['clean_slices_scoring_ge_0.5']}")


#: The code a row's numbers come from: a checkpoint written by other code is not resumed.
MEASURING_CODE = ("qc", "simulation", "models/guard.py", "models/inference.py", "models/network.py",
                  "models/motion_detector.py")


def measuring_code_digest(root: Path = Path(__file__).resolve().parents[2]) -> str:
    """SHA-256 over the Python files of :data:`MEASURING_CODE` (paths and contents) and the one
    calibration value a row's slice ghosts depend on, ``local_weight`` (the thresholds are applied
    when the rows are scored, so a recalibration alone does not invalidate rows)."""
    digest = hashlib.sha256()
    for name in MEASURING_CODE:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    local_weight = QCCalibration.load(root / "qc" / "calibration.json").local_weight
    digest.update(f"local_weight={local_weight!r}".encode())
    return digest.hexdigest()


def _simulate(tasks: list[tuple], workers: int, start: float, checkpoint: Path, detector: dict) -> list[dict]:
    """Every task's rows; after each patient the rows so far go to ``checkpoint`` (usable with
    ``--rows``; a later run with the same detector and measuring code resumes from it), so that
    a long run stopped early still leaves its results. Patients with the enhancement (slow) run last."""
    rows: list[dict] = []
    code = measuring_code_digest()
    if checkpoint.exists():
        if json.loads(checkpoint.read_text()).get("measuring_code") != code:
            # rows measured by other code (a candidate since changed or reverted) would mix in silently
            print(f"not resuming {checkpoint}: written by other measuring code", flush=True)
        else:  # resume a stopped run of the same detector and code: its finished patients stay
            rows = [r for r in _stored_rows(checkpoint, detector) if r["seed"] in {t[0] for t in tasks}]
            tasks = [t for t in tasks if t[0] not in {r["seed"] for r in rows}]
            print(f"resuming {checkpoint}: {len({r['seed'] for r in rows})} patients done", flush=True)
    with Pool(workers) as pool:
        for i, result in enumerate(pool.imap_unordered(patient_series, sorted(tasks, key=lambda t: bool(t[3])))):
            rows.extend(result)
            checkpoint.write_text(json.dumps({"detector": {k: detector.get(k) for k in ("name", "version")},
                                              "measuring_code": code, "series": rows}))
            print(f"{i + 1}/{len(tasks)} patients, {time.time() - start:.0f} s", flush=True)
    checkpoint.unlink(missing_ok=True)  # complete: the caller writes the result
    return sorted(rows, key=lambda r: (r["seed"], r["acquisition"], r["severity"], r["role"]))


def _stored_rows(path: Path, detector: dict) -> list[dict]:
    """Series (with their per-slice raw measures) of an earlier run, scored with this detector."""
    data = json.loads(path.read_text())
    if data.get("detector", {}).get("version") != detector.get("version"):
        raise SystemExit(f"{path} was scored with detector {data.get('detector')}, not {detector.get('version')}")
    return data["series"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="derive the thresholds on the calibration patients and write qc/calibration.json")
    parser.add_argument("--patients", type=int, default=None, help="the first N patients (default: all)")
    parser.add_argument("--skip-patients", type=int, default=0, help="leave out the first N patients (split a run)")
    parser.add_argument("--acquisitions", nargs="+", default=["accelerated", "conventional"],
                        choices=["accelerated", "conventional"])
    parser.add_argument("--motion", nargs="+", default=["none", "mild", "severe"], choices=["none", "mild", "severe"])
    parser.add_argument("--motion-patients", type=int, default=None,
                        help="series with motion for the first N patients only (default: all)")
    parser.add_argument("--dl-patients", type=int, default=0,
                        help="run the product's enhancement on the first N patients' series (DL-accentuation guard)")
    parser.add_argument("--rows", type=Path, default=None,
                        help="score the series of an earlier run's JSON again (same detector) instead of simulating")
    parser.add_argument("--margin", type=float, default=THRESHOLD_MARGIN, help="--calibrate: threshold margin")
    parser.add_argument("--detector-only", action="store_true",
                        help="--calibrate: set the detector thresholds only (a new detector); keep the rest")
    parser.add_argument("--detector-corroboration", type=float, default=None,
                        help="--calibrate: the detector needs this fraction of the ghost threshold (default: keep)")
    parser.add_argument("--real-floor", type=Path, default=ROOT / "docs" / "qc_real_calibration.json",
                        help="--calibrate: qc_real rows of the clean real calibration head that a role's thresholds "
                             "may flag at most 5 %% of (default: %(default)s)")
    parser.add_argument("--no-real-floor", action="store_true", help="--calibrate: phantom thresholds alone")
    parser.add_argument("--through-plane", action="store_true",
                        help="rigid motion in 3-D: slices also move along their normal (other anatomy per shot)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="default docs/qc_series.json, with --calibrate docs/qc_series_calibration.json")
    args = parser.parse_args(argv)
    start = time.time()
    detector = json.loads((WEIGHTS_DIR / "motion_detector.json").read_text())
    seeds = list(CALIBRATION_SEEDS if args.calibrate else PATIENT_SEEDS)[:args.patients]
    with_motion = len(seeds) if args.motion_patients is None else args.motion_patients
    tasks = [(seed, tuple(args.acquisitions), tuple(m for m in args.motion if m == "none" or k < with_motion),
              k < args.dl_patients, args.through_plane) for k, seed in enumerate(seeds)][args.skip_patients:]
    out = args.out or ROOT / "docs" / ("qc_series_calibration.json" if args.calibrate else "qc_series.json")
    rows = (sorted(_stored_rows(args.rows, detector), key=lambda r: (r["seed"], r["acquisition"], r["severity"],
                                                                    r["role"]))
            if args.rows else _simulate(tasks, args.workers, start, out.with_suffix(".partial.json"), detector))
    if args.calibrate:
        from dataclasses import asdict

        from qc.calibration import DEFAULT_CALIBRATION

        calibration = (calibrate_detector(rows, QCCalibration.load(), args.margin) if args.detector_only
                       else calibrate(rows, QCCalibration.load(), args.margin, args.detector_corroboration,
                                      None if args.no_real_floor else _stored_rows(args.real_floor, detector)))
        DEFAULT_CALIBRATION.write_text(json.dumps(asdict(calibration), indent=2) + "\n")
        print(f"wrote {DEFAULT_CALIBRATION}: {calibration}")
        # below: the calibration patients scored with the new thresholds (in-sample: not an evaluation)
    rows = rescore(rows, QCCalibration.load())
    summary = summarise(rows)
    print_table(summary)
    command = "python -m models.evaluation.qc_series " + " ".join(sys.argv[1:] if argv is None else argv)
    provenance = {"command": command, "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - start)}
    if args.rows:  # scored again: the run that simulated the rows stays the provenance
        stored = json.loads(args.rows.read_text())
        provenance = {k: stored.get(k) for k in ("command", "date", "seconds")} | {
            "rescored": stored.get("rescored", []) + [{"command": command, "date": time.strftime("%Y-%m-%d")}]}
    out.write_text(json.dumps(provenance | {
        "patients": sorted({r["seed"] for r in rows}), "calibration": json.loads(DEFAULT_CALIBRATION_PATH.read_text()),
        "detector": {k: detector.get(k) for k in ("name", "version")}, "summary": summary, "series": rows,
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
