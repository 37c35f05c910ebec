"""The motion flag on real MR it never saw: whole series, two motion simulators, two backgrounds.

    python -m models.evaluation.qc_real                      # evaluation-only sources -> docs/qc_real.json
    python -m models.evaluation.qc_real --sources calibration    # dipy aniso_vox -> docs/qc_real_calibration.json
    python -m models.evaluation.qc_real --rows docs/qc_real.json  # score stored series again (new thresholds)
    python -m models.evaluation.qc_real --native                 # ghosting the sources carry themselves

Sources: ``--sources evaluation`` (default) are the *evaluation-only* real MR of
docs/engineering.md (dipy ``t1_coronal_slice``, dipy ``S0_10slices``, nibabel ``example4d``),
never used to train the detector or to set a threshold or a series rule; ``--sources
calibration`` is training-allowed real MR the detector never saw in training (dipy's
``aniso_vox``, a real 4 mm head), on which the QC rule may be set. Every series is scored
with the thresholds of the role the product worries about most (``--role``, default
contrast-enhanced sagittal T1). Each source series (every slice with anatomy) is resampled to 256 and 512 pixels and
acquired in k-space (``simulation.acquisition``: the conventional and the accelerated
protocol, Rician noise at body SNR 20, 12-bit stored values) in these conditions:

* clean (several noise draws);
* this project's rigid motion (``random_motion_trajectory``: steps and drifts between shots,
  interleaved or sequential ordering), mild and severe;
* TorchIO 1.2.1 ``RandomMotion`` (3-D rigid motion, k-space split along the phase-encode
  axis) and ``RandomGhosting`` (every n-th k-space line scaled), mild and severe: another
  code base with its own conventions; noise added after the artifact.

Backgrounds: the image as acquired (air around the head), and with a zero-filled band at
both ends of the readout axis (8 % each; scanners that crop oversampling or filter the
field-of-view edge leave such bands), which the product must not read as a clean air floor.
``--backgrounds "cut phase encode" "cut readout"`` (-> ``docs/qc_real_cut.json``): the anatomy
cut by the field of view, as a small field of view or a large patient gives (a pelvis or a
shoulder fills it): 15 % of the slice removed at both ends of the phase-encode axis (the
anatomy reaches the ends of the phase-encode lines, so they hold no air) or 30 % at both
ends of the readout axis. Where no air can be judged the product must say "not measurable",
not flag.

The product scores each series exactly as it does in the application (``measure_original``:
series masks, ghost measure, detector on every slice, the series rule), told the series'
interpolation (source pixel / displayed pixel) as the application reads it from
AcquisitionMatrix. Per series: motion
score, flag, the artifact really produced (RMS difference to the same acquisition without
the artifact, in noise SDs), and the per-slice raw measures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import WEIGHTS_DIR
from models.evaluation.qc import STRENGTH_BINS, roc_auc
from models.evaluation.qc_independent import SETTINGS as TORCHIO_SETTINGS
from models.evaluation.real_mr import RealSeries, _resample, evaluation_series, selection_series
from qc.calibration import QCCalibration
from qc.measures import flagged_without_air, measure_original, motion_flagged, series_masks, slice_ghost
from qc.metrics import RAYLEIGH_MEDIAN_PER_SIGMA
from simulation import acquisition as acq

ROOT = Path(__file__).resolve().parents[2]
MATRICES = (256, 512)
SNR = 20.0
CLEAN_DRAWS = 3
BACKGROUNDS = ("air", "zero band")
#: The anatomy cut by the field of view: (readout, phase encode) share of the slice removed at
#: both ends of each axis (readout = rows, phase encode = columns).
CUT_BACKGROUNDS = {"cut phase encode": (0.0, 0.15), "cut readout": (0.30, 0.0)}
CONDITIONS = (("none", "none"), ("ours", "mild"), ("ours", "severe"), ("torchio motion", "mild"),
              ("torchio motion", "severe"), ("torchio ghosting", "mild"), ("torchio ghosting", "severe"))
SEED = 20261204
#: Background margins (source pixels) at which a source's own ghosting is read (``--native``).
NATIVE_MARGINS = (3, 6, 9)


def _torchio(volume: np.ndarray, kind: str, severity: str, seed: int) -> np.ndarray:
    """TorchIO artifact on a ``(slices, rows, columns)`` stack, phase encoding along columns."""
    import torch
    import torchio as tio

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    p = TORCHIO_SETTINGS[(kind.split()[1], severity)]
    if kind == "torchio motion":
        n = int(rng.integers(p["num_transforms"][0], p["num_transforms"][1] + 1))
        transform = tio.RandomMotion(degrees=p["degrees"], translation=p["translation"], num_transforms=n)
    else:
        transform = tio.RandomGhosting(num_ghosts=p["num_ghosts"], axes=(2,), intensity=p["intensity"])
    image = tio.ScalarImage(tensor=torch.from_numpy(volume[None].astype(np.float32)), affine=np.eye(4))
    return np.abs(np.asarray(transform(image).data[0].numpy(), dtype=np.float64))


def acquire_series(objects: np.ndarray, acquisition: str, kind: str, severity: str, pixel_mm: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One series ``(slices, rows, columns)`` acquired with and without the artifact (same
    noise), as 12-bit stored values; phase encoding along columns (array axis 1)."""
    protocol = acq.DEFAULT_ACCELERATED if acquisition == "accelerated" else acq.CONVENTIONAL
    protocol = protocol.with_phase_encode_axis(1)
    body = objects[objects > 0.2 * np.percentile(objects, 99)]
    frac = float(protocol.sampling_mask(objects.shape[1:]).mean())
    sigma = float(body.mean()) / (SNR * np.sqrt(frac)) * np.sqrt(protocol.averages_ratio)
    rng = np.random.default_rng([seed, 1])
    motion = None
    if kind == "ours":
        motion = acq.random_motion_trajectory(rng, severity, pixel_mm, kind="rigid")
    moved = _torchio(objects, kind, severity, seed) if kind.startswith("torchio") else objects
    acquired, still = [], []
    for i, (obj, clean_obj) in enumerate(zip(moved, objects)):
        phase = acq.smooth_background_phase(obj.shape, np.random.default_rng([seed, i, 7]))
        noise_key = [seed, i, 3]
        acquired.append(acq.simulate_acquisition(obj, protocol, sigma, np.random.default_rng(noise_key),
                                                 phase=phase, motion=motion))
        frozen = None if motion is None else motion.frozen_at_centre(
            obj.shape[1], acq.acquired_phase_encode_mask(obj.shape[1], protocol))
        still.append(acq.simulate_acquisition(clean_obj if kind.startswith("torchio") else obj, protocol, sigma,
                                              np.random.default_rng(noise_key), phase=phase, motion=frozen))
    scale = 2800.0 / max(float(np.percentile(np.stack(still), 99.9)), 1e-9)
    as_stored = lambda v: np.clip(np.round(np.stack(v) * scale), 0, 4095).astype(np.float32)  # noqa: E731
    return as_stored(acquired), as_stored(still)


def with_background(volume: np.ndarray, background: str) -> np.ndarray:
    """``volume`` (slices, rows = readout, columns = phase encode) as seen with ``background``."""
    if background == "air":
        return volume
    if background == "zero band":
        return with_zero_band(volume)
    if background not in CUT_BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}")
    readout, phase = CUT_BACKGROUNDS[background]
    r, c = int(round(readout * volume.shape[1])), int(round(phase * volume.shape[2]))
    return volume[:, r:volume.shape[1] - r, c:volume.shape[2] - c]


def with_zero_band(volume: np.ndarray, fraction: float = 0.08) -> np.ndarray:
    """Zero-filled bands at both ends of the readout axis (array axis 0 here)."""
    out = volume.copy()
    n = max(1, int(round(fraction * volume.shape[1])))
    out[:, :n, :] = 0
    out[:, -n:, :] = 0
    return out


def artifact_in_noise_sds(images: np.ndarray, still: np.ndarray) -> float:
    """RMS difference to the artifact-free acquisition, in noise SDs (Rayleigh median of the air)."""
    air = still[(still > 0) & (still < np.percentile(still, 20))]
    sigma = max(float(np.median(air)) / RAYLEIGH_MEDIAN_PER_SIGMA, 1e-6) if air.size else 1.0
    return float(np.sqrt(np.mean((images.astype(np.float64) - still) ** 2)) / sigma)


def native_ghosting(series: list[RealSeries], margins: tuple[int, ...] = NATIVE_MARGINS,
                    local_weight: float = 2.0) -> list[dict]:
    """The ghosting a real source already carries, before any simulation: the product's per-slice
    ghost measure (slope, or ``local_weight`` x band excess, whichever is larger) of the source's
    own slices, read along columns (array axis 1, the axis this evaluation uses as phase encoding)
    and along rows (axis 0), with background margins of ``margins`` source pixels. A real scan's
    own phase-encode artifacts (EPI Nyquist ghosts, pulsation, the patient's own small motion) lie
    along its phase-encode axis only; blur and edge ringing of the body lie along both.
    Per source, axis and margin: slices measurable, median and largest slice value."""
    rows = []
    for s in series:
        volume = np.asarray(s.slices, dtype=np.float32)
        for axis, name in ((1, "columns (phase encode here)"), (0, "rows (readout here)")):
            for margin in margins:
                values = [v for v in (slice_ghost(image, masks, axis, local_weight)
                                      for image, masks in zip(volume, series_masks(volume, axis, margin)))
                          if v is not None]
                rows.append({"source": s.source, "axis": name, "margin_px": margin, "slices": int(len(volume)),
                             "measurable": len(values),
                             "median": round(float(np.median(values)), 4) if values else None,
                             "max": round(float(np.max(values)), 4) if values else None})
    return rows


def calibration_series() -> list[RealSeries]:
    """dipy's ``aniso_vox`` (:func:`models.evaluation.real_mr.selection_series`): training-allowed
    real MR that neither the detector's training nor the evaluation uses."""
    return selection_series()


def run(series: list[RealSeries], calibration: QCCalibration,
        backgrounds: tuple[str, ...] = BACKGROUNDS) -> list[dict]:
    from models.motion_detector import load_motion_detector

    detector = load_motion_detector(WEIGHTS_DIR)
    jobs = []
    for s_i, s in enumerate(series):
        for matrix in MATRICES:
            for acquisition in ("accelerated", "conventional"):
                for kind, severity in CONDITIONS:
                    for draw in range(CLEAN_DRAWS if kind == "none" else 1):
                        jobs.append((s_i, s, matrix, acquisition, kind, severity, draw))
    rows = []
    cache: dict[tuple[int, int], tuple[np.ndarray, float]] = {}  # resampled objects and pixel mm
    for s_i, s, matrix, acquisition, kind, severity, draw in tqdm(jobs, desc="real-MR QC series", mininterval=10):
        if (s_i, matrix) not in cache:
            cache[(s_i, matrix)] = _resample(s, matrix)
        objects, pixel = cache[(s_i, matrix)]
        seed = SEED + 100_000 * s_i + 1000 * MATRICES.index(matrix) + 100 * ("accelerated", "conventional").index(
            acquisition) + 10 * CONDITIONS.index((kind, severity)) + draw
        images, still = acquire_series(objects, acquisition, kind, severity, pixel, seed)
        anr = 0.0 if kind == "none" else artifact_in_noise_sds(images, still)
        for background in backgrounds:
            seen = with_background(images, background)
            # What AcquisitionMatrix would say of such a series: acquired at the source's resolution.
            masks, q = measure_original(seen, 1, calibration, detector, interpolation=max(1.0, s.pixel_mm / pixel))
            rows.append({"source": s.source, "slices": int(len(images)), "matrix": matrix,
                         "acquisition": acquisition, "kind": kind, "severity": severity, "draw": draw,
                         "background": background, "seed": seed, "anr": round(anr, 3),
                         "motion_score": q.motion_score, "flag": motion_flagged(q.motion_score),
                         "not_measurable": q.motion_score is None, "ghost": q.ghost, "detector": q.detector,
                         "slice_scores": q.slice_motion_scores, "slice_ghosts": q.slice_ghosts,
                         "slice_detector": q.slice_detector, "slice_body_fraction": q.slice_body_fraction,
                         "remasked_slices": [i for i, m in enumerate(masks) if m.remasked]})
    return rows


def summarise(rows: list[dict], calibration: QCCalibration | None = None) -> dict:
    """False flags on clean series (all, per source, per background, per acquisition), flag
    rates per simulator and severity, AUC of series with a clear artifact (> 1 noise SD);
    with ``calibration``, also the false flags and clear-artifact detection had the series
    been labelled as each role the calibration has thresholds for."""
    clean = [r for r in rows if r["kind"] == "none"]
    moved = [r for r in rows if r["kind"] != "none"]

    def rate(group: list[dict]) -> dict:
        n = sum(r["flag"] for r in group)
        return {"flagged": n, "series": len(group), "rate": round(n / len(group), 4) if group else None,
                "not_measurable": sum(r["not_measurable"] for r in group)}

    out = {"false_flags": {"all": rate(clean)}, "detection": {}}
    if all("remasked_slices" in r for r in rows):
        # How often a flag carries the product's note that the air beside the body was missing
        # on a flagged image (qc.measures.check_series): on clean series it is the warning a
        # reader needs; on moved ones it is said of real ghosts too.
        out["flags_noting_no_air"] = {name: {"flagged": sum(r["flag"] for r in group),
                                             "with the note": sum(_notes_no_air(r) for r in group)}
                                      for name, group in (("clean", clean), ("moved", moved))}
    for key in ("source", "background", "acquisition"):
        for value in sorted({r[key] for r in clean}):
            out["false_flags"][f"{key} {value}"] = rate([r for r in clean if r[key] == value])
    for kind in sorted({r["kind"] for r in moved}):
        for severity in ("mild", "severe"):
            out["detection"][f"{kind} {severity}"] = rate([r for r in moved if (r["kind"], r["severity"]) == (
                kind, severity)])
    out["detection"]["artifact > 1 noise SD"] = rate([r for r in moved if r["anr"] > 1.0])
    for lo, hi, name in STRENGTH_BINS:
        out["detection"][f"artifact {name}"] = rate([r for r in moved if lo <= r["anr"] < hi])
    negatives = np.array([r["motion_score"] or 0.0 for r in clean])
    out["auc_clear_artifact"] = {}
    for name, group in (("all", moved), ("ours", [r for r in moved if r["kind"] == "ours"]),
                        ("torchio", [r for r in moved if r["kind"].startswith("torchio")])):
        positives = np.array([r["motion_score"] or 0.0 for r in group if r["anr"] > 1.0])
        out["auc_clear_artifact"][name] = round(roc_auc(negatives, positives), 4) if positives.size else None
    if calibration is not None:
        from models.evaluation.qc_series import rescore

        out["by_role"] = {}
        for role in sorted(calibration.roles):
            scored = rescore([dict(r, role=role) for r in rows], calibration)
            out["by_role"][role] = {"false_flags": rate([r for r in scored if r["kind"] == "none"]),
                                    "artifact > 1 noise SD": rate([r for r in scored
                                                                   if r["kind"] != "none" and r["anr"] > 1.0])}
    return out


def _notes_no_air(row: dict) -> bool:
    """Whether the product's QC notes of this series say that a flagged image had no air
    beside the body (a flagged slice that was masked again)."""
    return bool(row["flag"]) and bool(flagged_without_air(row["slice_scores"], row["remasked_slices"]))


def print_table(summary: dict) -> None:
    from models.evaluation.qc_series import print_rates

    print_rates(summary, width=44, moved="series with an artifact")
    for name, n in summary.get("flags_noting_no_air", {}).items():
        print(f"flags on {name} series noting no air beside the body on a flagged image: "
              f"{n['with the note']} of {n['flagged']}")
    for role, r in summary.get("by_role", {}).items():
        print(f"as {role:<14} false flags {100 * (r['false_flags']['rate'] or 0):5.1f} %, "
              f"clear artifacts flagged {100 * (r['artifact > 1 noise SD']['rate'] or 0):5.1f} %")


def _write_native(out: Path, argv: list[str] | None) -> int:
    """``--native``: both source lists, a table, and ``out`` (JSON)."""
    calibration = QCCalibration.load()
    rows = []
    for listed, series in (("calibration (training-allowed)", calibration_series()),
                           ("evaluation-only", evaluation_series())):
        rows += [r | {"list": listed} for r in native_ghosting(series, local_weight=calibration.local_weight)]
    print(f"{'source':<30} {'read along':<28} margin  measurable  median    max")
    for r in rows:
        value = "-" if r["median"] is None else f"{r['median']:.4f}  {r['max']:.4f}"
        print(f"{r['source']:<30} {r['axis']:<28} {r['margin_px']:>4}  {r['measurable']:>5}/{r['slices']:<5} {value}")
    command = "python -m models.evaluation.qc_real " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d"),
                               "what": native_ghosting.__doc__.split("\n\n")[0].replace("\n    ", " ").strip(),
                               "thresholds": {role: calibration.for_role(role).ghost_threshold
                                              for role in sorted(calibration.roles)},
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", choices=["evaluation", "calibration"], default="evaluation")
    parser.add_argument("--role", default="SAG_CE_T1", help="whose thresholds score the series")
    parser.add_argument("--rows", type=Path, default=None,
                        help="score the series of an earlier run's JSON again (same detector) instead of simulating")
    parser.add_argument("--backgrounds", nargs="+", default=list(BACKGROUNDS),
                        choices=list(BACKGROUNDS) + list(CUT_BACKGROUNDS),
                        help="default: %(default)s; the cut ones write docs/qc_real_cut.json")
    parser.add_argument("--native", action="store_true",
                        help="only the ghosting the sources carry themselves (both source lists, no simulation) "
                             "-> docs/qc_real_native_ghosting.json")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.native:
        return _write_native(args.out or ROOT / "docs" / "qc_real_native_ghosting.json", argv)
    name = "qc_real.json" if args.sources == "evaluation" else "qc_real_calibration.json"
    if tuple(args.backgrounds) != BACKGROUNDS:
        name = name.replace(".json", "_cut.json")
    out = args.out or ROOT / "docs" / name
    start = time.time()
    import torch

    torch.set_num_threads(2)
    series = [] if args.rows else evaluation_series() if args.sources == "evaluation" else calibration_series()
    calibration = QCCalibration.load()
    if args.rows:
        from models.evaluation.qc_series import _stored_rows, rescore

        detector = json.loads((WEIGHTS_DIR / "motion_detector.json").read_text())
        rows = [dict(r, role=args.role) for r in _stored_rows(args.rows, detector)]
        rows = [r | {"not_measurable": r["motion_score"] is None} for r in rescore(rows, calibration)]
    else:
        rows = run(series, calibration.for_role(args.role), tuple(args.backgrounds))
    summary = summarise(rows, calibration)
    print_table(summary)
    command = "python -m models.evaluation.qc_real " + " ".join(sys.argv[1:] if argv is None else argv)
    provenance = {"command": command, "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - start)}
    if args.rows:  # scored again: the run that simulated the series stays the provenance
        stored = json.loads(args.rows.read_text())
        provenance = {k: stored.get(k) for k in ("command", "date", "seconds")} | {
            "rescored": stored.get("rescored", []) + [{"command": command, "date": time.strftime("%Y-%m-%d")}]}
    out.write_text(json.dumps(provenance | {"role": args.role, "calibration": json.loads((ROOT / "qc" / "calibration.json").read_text()),
        "detector": {k: json.loads((WEIGHTS_DIR / "motion_detector.json").read_text()).get(k) for k in ("name", "version")},
        "summary": summary, "series": rows}, indent=1))
    print(f"wrote {out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
