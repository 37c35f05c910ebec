"""Evaluate the shipped model against the truth, the conventional protocol, BM3D and NLM.

    python -m models.evaluation.enhancement                       # table; docs/model_evaluation.json + plots
    python -m models.evaluation.enhancement --patients 1 --extra-patients 0 --val 0   # quick look

Held-out data, never seen in training:
  * phantom patients with seeds below 10,000 (training draws its phantom seeds from
    10,000 up), for sag T1, sag T2, sag Dixon water, ax T2 and CE T1, 3 central slices
    each, simulated exactly like the product's input (``simulate_series``: stored 12-bit
    integers) at several accelerations;
  * validation images from the allowed training sources (``models.training.data.validation_set``
    with the training config's held-out seed), at the default acceleration.

Per slice, against the noiseless conventional reference ``G``: PSNR (peak = the series'
99.9th percentile of ``G``), SSIM over the whole image and SSIM averaged over the body
only (the SSIM map where ``G`` is above 5 % of the peak, dilated 5 px: background noise,
which every denoiser removes, does not count), and NMSE. Methods: the accelerated input,
the conventional acquisition, BM3D and non-local means on the accelerated input (with the
oracle noise SD), the network alone (``dl_network``, ``enhance_volume``) and the product's
output (``dl``: network, do-no-harm guard, default strength; ``models.guard``).
The paper's SNR = SI(C3-C4 disc) / SD(background) and CNR = |SI(disc) - SI(C3 marrow)| /
SD(background) use the phantom's known labels (ROIs eroded 1 px, background = air at
least 15 px from any tissue), on the middle sagittal slice.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from tqdm import tqdm

from models import WEIGHTS_DIR
from models.evaluation.baselines import bm3d_denoise, nlm_denoise, oracle_noise_sd
from models.evaluation.real_mr import SNR_LEVELS
from models.guard import DEFAULT_STRENGTH, guard_series
from models.inference import enhance_volume, load_model
from simulation import acquisition as acq
from simulation.dicom_study import ROLE_PHASE_ENCODE, simulate_series
from simulation.phantom import (
    PhantomPatient,
    Tissue,
    axial_geometry,
    c3_rois,
    render_plane,
    sagittal_geometry,
)

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("SAG_T1", "SAG_T2", "SAG_DIXON_W", "AX_T2", "SAG_CE_T1")
METHODS = ("accelerated", "conventional", "nlm", "bm3d", "dl_network", "dl")
#: Acceleration settings relative to the conventional protocol (scan time ratio in the label).
ACCELERATIONS: dict[str, acq.AcquisitionProtocol] = {
    "x0.50 (default: 75% PE lines, 2/3 NEX)": acq.DEFAULT_ACCELERATED,
    "x0.67 (2/3 NEX)": acq.CONVENTIONAL.accelerated(phase_encode_factor=1.0, averages_ratio=2.0 / 3.0),
    "x0.40 (60% PE lines, 2/3 NEX)": acq.CONVENTIONAL.accelerated(phase_encode_factor=0.6, averages_ratio=2.0 / 3.0),
}
DEFAULT_ACCELERATION = next(iter(ACCELERATIONS))
PATIENT_SEEDS = (9101, 9102, 9103, 9104)  # < 10,000: never drawn by training


@dataclass
class SliceResult:
    source: str
    case: str
    role: str
    acceleration: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def slice_metrics(image: np.ndarray, truth: np.ndarray, peak: float) -> dict[str, float]:
    """PSNR (dB), SSIM (whole image), SSIM over the body, NMSE of ``image`` against ``truth``."""
    x = np.asarray(image, dtype=np.float64)
    g = np.asarray(truth, dtype=np.float64)
    mse = float(np.mean((x - g) ** 2))
    _, ssim_map = structural_similarity(x, g, data_range=peak, full=True)
    body = ndimage.binary_dilation(g > 0.05 * peak, iterations=5)
    return {
        "psnr": float(10 * np.log10(peak**2 / max(mse, 1e-12))),
        "ssim": float(ssim_map.mean()),
        "ssim_body": float(ssim_map[body].mean()) if body.any() else float("nan"),
        "nmse": float(np.sum((x - g) ** 2) / max(np.sum(g**2), 1e-12)),
    }


def paper_snr_cnr(image: np.ndarray, label: np.ndarray, level: np.ndarray) -> dict[str, float | None]:
    """The study's SNR and CNR on one sagittal slice with known labels; ``None`` where an
    ROI is empty or the background SD is 0."""
    marrow, disc = (ndimage.binary_erosion(m) for m in c3_rois(label, level))
    air = label == Tissue.AIR
    background = ndimage.distance_transform_edt(air) > 15
    img = np.asarray(image, dtype=np.float64)
    if disc.sum() < 10 or marrow.sum() < 10 or background.sum() < 100:
        return {"snr": None, "cnr": None, "sd_background": None}
    sd = float(img[background].std())
    if sd <= 0:
        return {"snr": None, "cnr": None, "sd_background": 0.0}
    si_disc, si_marrow = float(img[disc].mean()), float(img[marrow].mean())
    return {"snr": si_disc / sd, "cnr": abs(si_disc - si_marrow) / sd, "sd_background": sd}


def _run_methods(series_acc: np.ndarray, series_conv: np.ndarray, sigma: float,
                 model, use_bm3d: bool) -> dict[str, np.ndarray]:
    network = enhance_volume(model, series_acc)
    out = {"accelerated": series_acc.astype(np.float32), "conventional": series_conv.astype(np.float32),
           "dl_network": network, "dl": guard_series(series_acc, network, DEFAULT_STRENGTH).images}
    out["nlm"] = np.stack([nlm_denoise(s, sigma) for s in series_acc])
    if use_bm3d:
        out["bm3d"] = np.stack([bm3d_denoise(s, sigma) for s in series_acc])
    return out


def evaluate_phantom(model, patients: list[int], accelerations: list[str], use_bm3d: bool,
                     keep_example: bool = True) -> tuple[list[SliceResult], list[dict], dict | None]:
    results, snr_rows, example = [], [], None
    jobs = [(seed, role, a) for a in accelerations for seed in patients for role in ROLES]
    cache: dict[int, tuple] = {}
    for seed, role, acc_label in tqdm(jobs, desc="phantom series", mininterval=5):
        if seed not in cache:
            patient = PhantomPatient.from_seed(seed, protocol="myelopathy" if seed % 2 else "hivd")
            rng = np.random.default_rng(seed)
            geom = {"sagittal": sagittal_geometry(n_slices=3, x_centre=float(rng.uniform(-2, 2))),
                    "axial": axial_geometry(n_slices=3, z_centre=float(rng.uniform(-40, 0)))}
            cache = {seed: (patient, geom, {k: [render_plane(patient, p) for p in v] for k, v in geom.items()})}
        patient, geom, rendered = cache[seed]
        plane = "axial" if role.startswith("AX") else "sagittal"
        protocol = ACCELERATIONS[acc_label]
        acc_series = simulate_series(patient, role, geom[plane], rendered[plane], acquisition="accelerated",
                                     seed=seed, protocol=protocol)
        conv_series = simulate_series(patient, role, geom[plane], rendered[plane], acquisition="conventional",
                                      seed=seed)
        truth = acc_series.references
        pe_axis = 1 if ROLE_PHASE_ENCODE[role] == "ROW" else 0
        sigma = oracle_noise_sd(protocol.with_phase_encode_axis(pe_axis), acc_series.noise_sigma, truth.shape[1:])
        images = _run_methods(acc_series.images.astype(np.uint16), conv_series.images, sigma,
                              model, use_bm3d)
        peak = float(np.percentile(truth, 99.9))
        for i in range(truth.shape[0]):
            r = SliceResult("phantom", f"patient {seed} slice {i}", role, acc_label)
            for m, vol in images.items():
                r.metrics[m] = slice_metrics(vol[i], truth[i], peak)
            results.append(r)
        if plane == "sagittal" and role != "SAG_DIXON_W":
            mid = truth.shape[0] // 2
            lab, lev = rendered[plane][mid].label, rendered[plane][mid].level
            row = {"patient": seed, "role": role, "acceleration": acc_label}
            for m, vol in images.items():
                row[m] = paper_snr_cnr(vol[mid], lab, lev)
            snr_rows.append(row)
        if keep_example and example is None and role == "SAG_T1" and acc_label == DEFAULT_ACCELERATION:
            mid = truth.shape[0] // 2
            example = {m: images[m][mid] for m in ("conventional", "accelerated", "dl")} | {
                "truth": truth[mid], **({"bm3d": images["bm3d"][mid]} if "bm3d" in images else {})}
    return results, snr_rows, example


def evaluate_sources(model, n: int, use_bm3d: bool) -> list[SliceResult]:
    from models.training.data import DataConfig, validation_set
    from models.training.train import load_config

    cfg = load_config(ROOT / "models" / "training" / "configs" / "default.json")
    val = validation_set(int(cfg["val_seed"]), n, DataConfig.from_dict(cfg["data"]))
    results = []
    for k, pair in enumerate(tqdm(val, desc="validation images", mininterval=5)):
        protocol = pair["protocol"]
        sigma = oracle_noise_sd(protocol, pair["sigma"] / pair["scale"], pair["input"].shape)
        images = _run_methods(pair["input"][None], pair["conventional"][None], sigma,
                              model, use_bm3d)
        peak = float(np.percentile(pair["target"], 99.9))
        r = SliceResult(pair["source"], f"validation image {k}", "-", DEFAULT_ACCELERATION)
        for m, vol in images.items():
            r.metrics[m] = slice_metrics(vol[0], pair["target"], peak)
        results.append(r)
    return results


def summarize(results: list[SliceResult]) -> dict:
    methods = [m for m in METHODS if all(m in r.metrics for r in results)] if results else []
    out = {"n": len(results)}
    for m in methods:
        out[m] = {k: float(np.mean([r.metrics[m][k] for r in results])) for k in ("psnr", "ssim", "ssim_body", "nmse")}
    if "dl" in methods:
        for key in ("ssim", "ssim_body"):
            out[f"dl_ge_conventional_{key}_fraction"] = float(np.mean(
                [r.metrics["dl"][key] >= r.metrics["conventional"][key] for r in results]))
        if "bm3d" in methods:
            out["dl_minus_bm3d_ssim"] = out["dl"]["ssim"] - out["bm3d"]["ssim"]
            out["dl_minus_bm3d_ssim_body"] = out["dl"]["ssim_body"] - out["bm3d"]["ssim_body"]
    return out


def _fmt_row(name: str, s: dict) -> str:
    cells = []
    for m in METHODS:
        if m in s:
            cells.append(f"{s[m]['psnr']:5.2f} {s[m]['ssim']:.3f} {s[m]['ssim_body']:.3f}")
        else:
            cells.append(f"{'-':>17}")
    return f"{name:<44} {s['n']:>4}  " + "  ".join(cells)


def print_table(groups: dict[str, dict]) -> None:
    head = "  ".join(f"{m:^17}" for m in METHODS)
    print(f"\n{'group':<44} {'n':>4}  {head}")
    print(f"{'':<44} {'':>4}  " + "  ".join(f"{'PSNR  SSIM  SSIMb':^17}" for _ in METHODS))
    for name, s in groups.items():
        print(_fmt_row(name, s))


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def plot_results(results: list[SliceResult], example: dict | None, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    default = [r for r in results if r.acceleration == DEFAULT_ACCELERATION]
    methods = [m for m in METHODS if all(m in r.metrics for r in default)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("psnr", "ssim", "ssim_body"), ("PSNR (dB)", "SSIM (whole image)", "SSIM (body)")):
        ax.boxplot([[r.metrics[m][key] for r in default] for m in methods], tick_labels=methods)
        ax.set_title(f"{title}, default acceleration, n={len(default)}")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p = out_dir / "model_eval_metrics.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    written.append(_rel(p))
    if example is not None:
        names = [n for n in ("conventional", "accelerated", "bm3d", "dl", "truth") if n in example]
        g = example["truth"]
        rows, cols = np.nonzero(g > 0.05 * g.max())
        r0, r1 = max(rows.min() - 10, 0), min(rows.max() + 10, g.shape[0])
        c0 = max(int(np.median(cols)) - 110, 0)
        crop = (slice(r0 + (r1 - r0) // 4, r0 + (r1 - r0) // 4 + 220), slice(c0, c0 + 220))
        vmax = float(np.percentile(g, 99.5))
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6))
        for ax, n in zip(axes, names):
            ax.imshow(example[n][crop], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title({"dl": "DL(accelerated)", "bm3d": "BM3D(accelerated)"}.get(n, n))
            ax.axis("off")
        fig.suptitle("Phantom sag T1, held-out patient, half scan time (crop, same window)")
        fig.tight_layout()
        p = out_dir / "model_eval_montage.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(_rel(p))
    return written


def snr_summary(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["role"], r["acceleration"]) for r in rows}, key=lambda k: (list(ACCELERATIONS).index(k[1]), k[0]))
    for role, a in keys:
        sel = [r for r in rows if (r["role"], r["acceleration"]) == (role, a)]
        entry = {"role": role, "acceleration": a, "n": len(sel)}
        for m in METHODS:
            for q in ("snr", "cnr"):
                vals = [r[m][q] for r in sel if m in r and r[m][q] is not None]
                entry[f"{q}_{m}"] = float(np.mean(vals)) if vals else None
        out.append(entry)
    return out


def markdown(record: dict) -> str:
    """README tables from a ``model_evaluation.json`` record."""
    names = {"accelerated": "accelerated", "conventional": "conventional", "nlm": "NLM", "bm3d": "BM3D",
             "dl_network": "DL network alone", "dl": f"**DL (product: + guard, {DEFAULT_STRENGTH})**"}
    lines = ["| group | slices | " + " | ".join(names[m] for m in METHODS) + " |",
             "|---|---|" + "---|" * len(METHODS)]
    for g, s in record["groups"].items():
        cells = [f"{s[m]['psnr']:.1f} / {s[m]['ssim']:.3f} / {s[m]['ssim_body']:.3f}" if m in s else "-" for m in METHODS]
        lines.append(f"| {g} | {s['n']} | " + " | ".join(cells) + " |")
    lines += ["", "| role | scan time | " + " | ".join(names[m] for m in METHODS) + " |",
              "|---|---|" + "---|" * len(METHODS)]
    for e in record["snr_cnr"]:
        cells = [f"{e[f'snr_{m}']:.0f} / {e[f'cnr_{m}']:.0f}" if e.get(f"snr_{m}") is not None else "-" for m in METHODS]
        lines.append(f"| {e['role']} | {e['acceleration'].split(' ')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


REAL_METHODS = ("accelerated", "conventional", "nlm", "bm3d", "dl_network", "dl_low", "dl_medium", "dl_high")
REAL_NAMES = {"accelerated": "accelerated input", "conventional": "conventional (full time)", "nlm": "NLM",
              "bm3d": "BM3D (true noise SD)", "dl_network": "DL network alone",
              **{f"dl_{level}": (f"**DL + guard, {level} (default)**" if level == DEFAULT_STRENGTH
                                 else f"DL + guard, {level}") for level in ("low", "medium", "high")}}


def real_groups(rows: list[dict], methods: list[str]) -> dict[str, dict]:
    """Summaries per acceleration kind, per source, per noise level, and over all slices."""
    from models.evaluation.real_mr import summarize_real

    groups = {}
    for key, label in (("kind", "{}"), ("source", "{}"), ("snr", "conventional SNR {:.0f}")):
        for value in dict.fromkeys(r[key] for r in rows):
            groups[label.format(value)] = summarize_real([r for r in rows if r[key] == value], methods)
    groups["ALL slices"] = summarize_real(rows, methods)
    return groups


def print_real_table(groups: dict[str, dict], methods: list[str]) -> None:
    print(f"\n{'group':<34} {'n':>4}  " + "  ".join(f"{m:^31}" for m in methods))
    print(f"{'':<34} {'':>4}  " + "  ".join(f"{'SSIMb  PSNR  >=conv <input bias%':^31}" for _ in methods))
    for name, g in groups.items():
        cells = [f"{g[m]['ssim_body']:.3f} {g[m]['psnr']:5.1f} {100 * g[m]['ge_conventional']:5.0f}% "
                 f"{100 * g[m]['below_input']:4.0f}% {g[m]['bias_pct']:+5.1f}" for m in methods]
        print(f"{name:<34} {g['n']:>4}  " + "  ".join(f"{c:^31}" for c in cells))


def real_markdown(record: dict) -> str:
    """README table of a ``model_evaluation_real.json`` record. Cells: SSIM over the body /
    share of slices at or above the conventional's / share below the accelerated input's
    (both by body SSIM) / tissue-signal bias."""
    methods = [m for m in record["methods"] if m != "dl_low"]
    lines = ["| group | slices | " + " | ".join(REAL_NAMES.get(m, m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, g in record["groups"].items():
        cells = []
        for m in methods:
            ge = "-" if m == "conventional" else f"{100 * g[m]['ge_conventional']:.0f} %"
            below = "-" if m in ("accelerated", "conventional") else f"{100 * g[m]['below_input']:.0f} %"
            cells.append(f"{g[m]['ssim_body']:.3f} / {ge} / {below} / {g[m]['bias_pct']:+.1f} %")
        lines.append(f"| {name} | {g['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: baseline methods whose per-slice results do not depend on the model (``--baselines-from``)
MODEL_FREE_METHODS = ("nlm", "bm3d")


def copy_baselines(rows: list[dict], stored: dict) -> int:
    """Copy NLM and BM3D results into ``rows`` from an earlier run's record of the same cases.

    The simulation draws its noise from a fixed seed before any method runs, so the same
    (source, slice, matrix, kind, SNR) case is the same input; that is checked: the stored
    accelerated input's metrics must equal the new run's. Returns the number of rows filled.
    """
    def key(r: dict) -> tuple:
        return (r["source"], r["slice"], tuple(r["matrix"]), r["kind"], r["snr"])

    by_key = {key(r): r for r in stored["slices"]}
    for r in rows:
        old = by_key.get(key(r))
        if old is None:
            raise ValueError(f"--baselines-from has no case {key(r)}")
        for metric, value in r["metrics"]["accelerated"].items():
            if abs(old["metrics"]["accelerated"][metric] - value) > 1e-9 * max(1.0, abs(value)):
                raise ValueError(f"--baselines-from: case {key(r)} is not the same input ({metric} "
                                 f"{old['metrics']['accelerated'][metric]} vs {value})")
        for m in MODEL_FREE_METHODS:
            if m in old["metrics"]:
                r["metrics"][m] = old["metrics"][m]
    return len(rows)


def run_real(args, model, record_base: dict) -> int:
    from models.evaluation.real_mr import calibration_series, evaluate_real, evaluation_series, selection_series
    from models.guard import STRENGTHS

    series = {"evaluation": evaluation_series, "calibration": calibration_series,
              "selection": selection_series}[args.sources]()

    def enhance(volume: np.ndarray) -> dict[str, np.ndarray]:
        network = enhance_volume(model, volume)
        out = {"dl_network": network}
        for level in STRENGTHS:
            out[f"dl_{level}"] = guard_series(volume, network, level).images
        return out

    stored = json.loads(args.baselines_from.read_text()) if args.baselines_from else None
    rows = evaluate_real(enhance, series, use_bm3d=not args.no_bm3d and stored is None, quick=args.quick,
                         metrics=slice_metrics, use_nlm=stored is None, snr_levels=tuple(args.snr))
    if stored is not None:
        print(f"NLM/BM3D results of {copy_baselines(rows, stored)} slices from {args.baselines_from} "
              f"(same inputs, checked)")
    methods = [m for m in REAL_METHODS if all(m in r["metrics"] for r in rows)]
    methods += [m for m in rows[0]["metrics"] if m not in methods]
    groups = real_groups(rows, methods)
    print_real_table(groups, methods)
    record = record_base | {"sources": [f"{s.source}: {s.slices.shape[0]} slices" for s in series],
                            "methods": methods, "groups": groups, "slices": rows}
    name = {"evaluation": "model_evaluation_real.json", "calibration": "model_calibration_real.json",
            "selection": f"model_selection_real_{record_base['model']['version']}.json"}[args.sources]
    if tuple(args.snr) != SNR_LEVELS:  # other noise levels: a record beside the standard one
        name = name.replace(".json", "_snr" + "-".join(f"{v:g}" for v in args.snr) + ".json")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {args.out / name} in {time.perf_counter() - args.t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", type=Path, help="print README tables from a model_evaluation.json and exit")
    ap.add_argument("--patients", type=int, default=3, help="held-out phantom patients at the default acceleration")
    ap.add_argument("--extra-patients", type=int, default=2, help="patients at the other accelerations")
    ap.add_argument("--val", type=int, default=18, help="validation images from the allowed sources")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D (about 10 s per 512x512 slice)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for model_evaluation.json and plots")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", action="store_true",
                    help="the real-MR generalization evaluation (models/evaluation/real_mr.py) instead of the phantom's")
    ap.add_argument("--sources", choices=("evaluation", "calibration", "selection"), default="evaluation",
                    help="--real: the evaluation-only sources (default), the training-allowed calibration slices, "
                         "or the selection source (dipy aniso_vox, in no model's training)")
    ap.add_argument("--quick", action="store_true", help="--real: one matrix per series")
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR,
                    help="model folder (default: the shipped weights); e.g. a candidate model to compare")
    ap.add_argument("--snr", type=float, nargs="+", default=list(SNR_LEVELS),
                    help="--real: conventional SNRs of the cases (default: %(default)s)")
    ap.add_argument("--baselines-from", type=Path,
                    help="--real: take NLM and BM3D from this earlier record of the same cases (checked)")
    args = ap.parse_args(argv)
    if args.markdown:
        record = json.loads(args.markdown.read_text())
        print(real_markdown(record) if "methods" in record else markdown(record))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    t0 = args.t0 = time.perf_counter()
    model = load_model(args.weights)
    device = f"{model.device} ({model.runtime}, {model.precision})"
    info = json.loads((args.weights / "model_info.json").read_text())
    if args.real:
        return run_real(args, model, {
            "date": _dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, device {device}",
            "model": {"file": info.get("file"), "version": info.get("version"), "sha256": info.get("sha256")},
            "command": "python -m models.evaluation.enhancement " + " ".join(
                argv if argv is not None else __import__("sys").argv[1:])})
    use_bm3d = not args.no_bm3d
    res, snr_rows, example = evaluate_phantom(model, list(PATIENT_SEEDS[: args.patients]),
                                              [DEFAULT_ACCELERATION], use_bm3d)
    others = [a for a in ACCELERATIONS if a != DEFAULT_ACCELERATION]
    if args.extra_patients:
        r2, s2, _ = evaluate_phantom(model, list(PATIENT_SEEDS[: args.extra_patients]), others, use_bm3d,
                                     keep_example=False)
        res, snr_rows = res + r2, snr_rows + s2
    src = evaluate_sources(model, args.val, use_bm3d) if args.val else []

    groups: dict[str, dict] = {}
    for a in ACCELERATIONS:
        for role in ROLES:
            sel = [r for r in res if r.acceleration == a and r.role == role]
            if sel:
                groups[f"phantom {role} {a.split(' ')[0]}"] = summarize(sel)
    default_all = [r for r in res if r.acceleration == DEFAULT_ACCELERATION] + src
    for s in sorted({r.source for r in src}):
        groups[f"validation {s} x0.50"] = summarize([r for r in src if r.source == s])
    groups["ALL held-out slices, default acceleration"] = summarize(default_all)
    print_table(groups)
    overall = groups["ALL held-out slices, default acceleration"]
    print(f"\nDefault acceleration, {overall['n']} held-out slices:")
    print(f"  SSIM(DL) >= SSIM(conventional) on {100 * overall['dl_ge_conventional_ssim_fraction']:.1f} % "
          f"(whole image), {100 * overall['dl_ge_conventional_ssim_body_fraction']:.1f} % (body)")
    if "dl_minus_bm3d_ssim" in overall:
        print(f"  SSIM(DL) - SSIM(BM3D) = {overall['dl_minus_bm3d_ssim']:+.3f} (whole image), "
              f"{overall['dl_minus_bm3d_ssim_body']:+.3f} (body)")
    snr = snr_summary(snr_rows)
    print("\nPaper SNR / CNR (C3-C4 disc, C3 marrow, air), middle sagittal slice, mean over patients:")
    print(f"{'role':<10} {'acceleration':<8} " + " ".join(f"{m:>19}" for m in METHODS))
    for e in snr:
        cells = []
        for m in METHODS:
            s, c = e.get(f"snr_{m}"), e.get(f"cnr_{m}")
            cells.append(f"{s:8.1f} /{c:8.1f}" if s is not None and c is not None else f"{'-':>19}")
        print(f"{e['role']:<10} {e['acceleration'].split(' ')[0]:<8} " + " ".join(f"{c:>19}" for c in cells))
    args.out.mkdir(parents=True, exist_ok=True)
    plots = plot_results(res, example, args.out)
    record = {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, device {device}",
        "model": {"file": info.get("file"), "version": info.get("version"), "sha256": info.get("sha256"),
                  "steps": info.get("steps")},
        "command": "python -m models.evaluation.enhancement " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "groups": groups, "snr_cnr": snr, "plots": plots,
        "slices": [{"source": r.source, "case": r.case, "role": r.role, "acceleration": r.acceleration,
                    "metrics": r.metrics} for r in res + src],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "model_evaluation.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {args.out / 'model_evaluation.json'} and {', '.join(plots)} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
