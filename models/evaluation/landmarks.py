"""Check the C3 / C3-C4 localiser (:mod:`qc.landmarks`) on fresh phantom patients.

``python -m models.evaluation.landmarks [--set tuning|held-out|both] [--seeds 7000-7007] [-v]``

For each phantom seed the five middle sagittal planes of the default 13-slice stack
(x = 0, +-3.3, +-6.6 mm: the mid-sagittal and parasagittal slices through the vertebral
bodies) are rendered once and acquired as accelerated series of the sagittal roles
SAG_T1, SAG_T2, SAG_CE_T1 and SAG_DIXON_W (body mask from its in-phase partner, as the
product does). Vendors differ only in DICOM headers, not pixels, so they are not varied.
``locate_c3_rois`` runs on every slice; the phantom's tissue and level labels are the
truth. "Correct" = both ROIs at least 80 % inside the true C3 marrow and C3-C4 disc
(as in the README). Printed per seed set:

* per slice: located (confidence >= MIN_CONFIDENCE) %, correct % of located, wrong
  levels above the floor (the worst outcome: it would be used for SNR/CNR), low-confidence
  (found below the floor, or nothing found);
* the same without SAG_DIXON_W, which the product no longer localises on;
* per series, as the product does it (``qc.measures.locate_rois_in_volume``: the most
  confident of the five middle slices, floor applied): the same figures.

Seed sets are disjoint: ``tuning`` (7000-7007, used to tune the localiser) and
``held-out`` (7100-7115, never used for tuning). Simulated slices are cached in
``$C3_EVAL_CACHE`` (default ``/tmp/c3_eval_cache``) so that re-runs only time the localiser.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from qc.landmarks import MIN_CONFIDENCE, locate_c3_rois

SETS = {"tuning": list(range(7000, 7008)), "held-out": list(range(7100, 7116))}
ROLES = ("SAG_T1", "SAG_T2", "SAG_CE_T1", "SAG_DIXON_W")
SLICES = (4, 5, 6, 7, 8)  # of sagittal_geometry()'s 13 planes: x = -6.6 .. +6.6 mm


def _simulated(seed: int, cache: Path) -> dict[str, np.ndarray]:
    """Images, body masks and true ROIs of one seed (all roles, the five planes)."""
    path = cache / f"seed{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    from qc.measures import series_masks
    from simulation.dicom_study import simulate_series
    from simulation.phantom import PhantomPatient, c3_rois, render_plane, sagittal_geometry

    patient = PhantomPatient.from_seed(seed)
    planes = [sagittal_geometry()[k] for k in SLICES]
    rendered = [render_plane(patient, p) for p in planes]
    out: dict[str, np.ndarray] = {"spacing": np.array(planes[0].spacing)}
    truth = [c3_rois(r.label, r.level) for r in rendered]
    out["true_marrow"] = np.stack([t[0] for t in truth])
    out["true_disc"] = np.stack([t[1] for t in truth])
    for role in ROLES:
        series = simulate_series(patient, role, planes, rendered, acquisition="accelerated", seed=seed)
        pe_axis = series.protocol.phase_encode_axis
        mask_source = series.images
        if role == "SAG_DIXON_W":  # the product masks water-only Dixon on its in-phase partner
            mask_source = simulate_series(patient, "SAG_DIXON_IP", planes, rendered, acquisition="accelerated",
                                          seed=seed).images
        out[role] = series.images.astype(np.uint16)
        out[role + "_body"] = np.stack([m.body for m in series_masks(mask_source, pe_axis)])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def _correct(found, marrow: np.ndarray, disc: np.ndarray) -> bool:
    return bool(marrow[found.c3_marrow].mean() >= 0.8 and disc[found.c3_c4_disc].mean() >= 0.8)


def evaluate(seeds: list[int], cache: Path, verbose: bool = False) -> dict[str, dict[str, int]]:
    """Counts per slice and per series: n, located, correct, wrong (above the floor), low."""
    counts = {k: dict(n=0, located=0, correct=0, wrong=0, low=0, low_correct=0)
              for k in ("slice", "series", "slice, no Dixon W", "series, no Dixon W")}
    for seed in seeds:
        data = _simulated(seed, cache)
        spacing = tuple(float(v) for v in data["spacing"])
        for role in ROLES:
            images, bodies = data[role], data[role + "_body"]
            results = []
            for i in range(len(SLICES)):
                found = locate_c3_rois(images[i].astype(np.float64), spacing, bodies[i])
                results.append(found)
                ok = found is not None and _correct(found, data["true_marrow"][i], data["true_disc"][i])
                for key in ("slice",) + (("slice, no Dixon W",) if role != "SAG_DIXON_W" else ()):
                    c = counts[key]
                    c["n"] += 1
                    if found is not None and found.confidence >= MIN_CONFIDENCE:
                        c["located"] += 1
                        c["correct"] += ok
                        c["wrong"] += not ok
                    else:
                        c["low"] += 1
                        c["low_correct"] += ok
                if verbose and (found is None or found.confidence < MIN_CONFIDENCE or not ok):
                    conf = "None" if found is None else f"{found.confidence:.3f}"
                    state = "WRONG" if found is not None and found.confidence >= MIN_CONFIDENCE else "low"
                    print(f"  {seed} {role:12s} slice {SLICES[i]} ({state}, conf {conf}, "
                          f"{'right' if ok else 'wrong'} level)")
            # The product: most confident of the middle slices, floor applied.
            best = _best(results)
            for key in ("series",) + (("series, no Dixon W",) if role != "SAG_DIXON_W" else ()):
                c = counts[key]
                c["n"] += 1
                if best is None:
                    c["low"] += 1
                else:
                    i, found = best
                    ok = _correct(found, data["true_marrow"][i], data["true_disc"][i])
                    c["located"] += 1
                    c["correct"] += ok
                    c["wrong"] += not ok
    return counts


def _best(results):
    """``qc.measures.locate_rois_in_volume``'s choice over the five middle slices (the same
    rule, applied to the per-slice results already computed): the most confident slice,
    floor applied."""
    best = None
    for i, found in enumerate(results):
        if found is not None and (best is None or found.confidence > best[1].confidence):
            best = (i, found)
    if best is None or best[1].confidence < MIN_CONFIDENCE:
        return None
    return best


def _print(name: str, seeds: list[int], counts: dict[str, dict[str, int]], seconds: float) -> None:
    print(f"{name}: seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), {len(ROLES)} roles, accelerated, "
          f"floor {MIN_CONFIDENCE} ({seconds:.0f} s)")
    for level, c in counts.items():
        n, located = c["n"], c["located"]
        pct = 100.0 * located / max(n, 1)
        correct = 100.0 * c["correct"] / max(located, 1)
        extra = f" (of which right level {c['low_correct']})" if level.startswith("slice") else ""
        print(f"  per {level:18s}: {n:3d}, located {located} ({pct:.1f} %), correct {c['correct']} "
              f"({correct:.1f} % of located), wrong level above floor {c['wrong']}, "
              f"low confidence / none {c['low']}{extra}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("tuning", "held-out", "both"), default="both")
    parser.add_argument("--seeds", help="explicit seed range a-b instead of a named set")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss and wrong level")
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("C3_EVAL_CACHE", "/tmp/c3_eval_cache"))
    if args.seeds:
        a, b = (int(v) for v in args.seeds.split("-"))
        sets = {f"seeds {a}-{b}": list(range(a, b + 1))}
    else:
        sets = {k: v for k, v in SETS.items() if args.set in (k, "both")}
    for name, seeds in sets.items():
        t = time.time()
        counts = evaluate(seeds, cache, args.verbose)
        _print(name, seeds, counts, time.time() - t)


if __name__ == "__main__":
    main()
