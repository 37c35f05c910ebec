"""Where does the product trail the full-time protocol? The low band (issue 12).

    python -m models.evaluation.low_band            # table; docs/low_band_diagnosis.json
    python -m models.evaluation.low_band --model-dir models/candidates/X   # a candidate network

On the *selection* source only (dipy ``aniso_vox``, training-allowed, no model trains on it;
never the evaluation-only real MR), at the small matrices where the product falls short of
the conventional protocol (128 and 192 px), for R = 2 SENSE and half the averages at SNR 30
and 15, every third slice. Per case:

* ``pass_through``: the regression coefficient of the network's low-band error on the
  input's low-band noise, over the body (low band: Gaussian of ``LOW_BAND_SIGMA`` px). 1 means
  the network keeps that noise, 0 that it removes it (the Gaussian is not a projection: keeping
  exactly the Gaussian-filtered noise reads about 0.66, keeping all noise below 0.15 cycles /
  px above 0.9). Model 0.5.0 reads 0.87-1.07.
* the RMS low-band error over the body of the accelerated input, the conventional
  acquisition, the network and the product (network + guard at high); the guard gives the
  low band back by design (its ``mean_sigma`` give-back keeps the tissue signal the input's);
* body SSIM of the conventional, of the product, and of the product with the truth's low
  band put in (``oracle_low_band``): how much of the gap that band holds.

A network (or guard) that removes low-band noise shows as a lower pass-through *and* a higher
product SSIM; one that only lowers the pass-through by blurring shows as a lower SSIM.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from models import WEIGHTS_DIR
from models.evaluation import real_mr
from models.evaluation.enhancement import slice_metrics

__all__ = ["LOW_BAND_SIGMA", "low_band", "pass_through", "diagnose_case", "main"]

#: Gaussian width (px) of the low band: the guard's give-back width.
LOW_BAND_SIGMA = 2.0
CASES = [(m, k, s) for m in (128, 192) for k in ("R=2 SENSE", "half averages") for s in (30.0, 15.0)]
SEED = 5


def low_band(image: np.ndarray, sigma: float = LOW_BAND_SIGMA) -> np.ndarray:
    """Gaussian low-pass ``(H, W)`` -> float64 ``(H, W)`` (``sigma`` in pixels)."""
    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), sigma)


def pass_through(output: np.ndarray, source: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                 sigma: float = LOW_BAND_SIGMA) -> float:
    """Regression coefficient of ``output``'s low-band error on ``source``'s over ``mask``
    (all ``(H, W)``; means removed): 1 keeps the source's low-band noise, 0 removes it."""
    if mask.shape != truth.shape or output.shape != truth.shape or source.shape != truth.shape:
        raise ValueError("output, source, truth and mask must have one shape")
    e_src = low_band(source - truth, sigma)[mask]
    e_out = low_band(np.asarray(output, np.float64) - truth, sigma)[mask]
    e_src = e_src - e_src.mean()
    e_out = e_out - e_out.mean()
    denom = float((e_src**2).sum())
    if denom <= 0:
        raise ValueError("the source has no low-band error over the mask")
    return float((e_out * e_src).sum() / denom)


def diagnose_case(truth: np.ndarray, conventional: np.ndarray, accelerated: np.ndarray,
                  network: np.ndarray, product: np.ndarray) -> dict:
    """Per-case figures (means over the slices of ``(S, H, W)`` stacks, see the module doc)."""
    out: dict[str, list[float]] = {}
    images = {"accelerated": accelerated, "conventional": conventional, "network": network, "product": product}
    for i in range(truth.shape[0]):
        t = truth[i]
        body = real_mr.body_mask(t)
        peak = float(np.percentile(t, 99.9))
        out.setdefault("pass_through", []).append(pass_through(network[i], accelerated[i].astype(np.float64), t, body))
        for name, vol in images.items():
            err = low_band(vol[i].astype(np.float64) - t)[body]
            out.setdefault(f"low_band_rms_{name}", []).append(float(np.sqrt(np.mean(err**2))))
        p = product[i].astype(np.float64)
        oracle = p - low_band(p) + low_band(t)
        for name, img in (("conventional", conventional[i]), ("product", p), ("oracle_low_band", oracle)):
            out.setdefault(f"ssim_body_{name}", []).append(slice_metrics(np.asarray(img, np.float32), t, peak)["ssim_body"])
    return {k: float(np.mean(v)) for k, v in out.items()} | {"slices": int(truth.shape[0])}


def run(model_dir: Path = WEIGHTS_DIR, every: int = 3) -> dict:
    """All ``CASES`` on the selection source with the model in ``model_dir``."""
    import torch

    from models.guard import guard_series
    from models.inference import enhance_volume, load_model

    torch.set_num_threads(2)
    model = load_model(model_dir)
    series = real_mr.selection_series()[0]
    rng = np.random.default_rng(SEED)
    rows = []
    for matrix, kind, snr in CASES:
        objs, _ = real_mr._resample(series, matrix)
        sims = [real_mr.simulate_case(o, kind, snr, rng, 1) for o in objs[::every]]
        truth = np.stack([s[0] for s in sims])
        conventional = np.stack([real_mr._as_stored(s[1]) for s in sims])
        accelerated = np.stack([real_mr._as_stored(s[2]) for s in sims])
        network = enhance_volume(model, accelerated)
        product = guard_series(accelerated, network, 1.0).images
        rows.append({"matrix": matrix, "kind": kind, "snr": snr}
                    | diagnose_case(truth, conventional, accelerated, network, product))
    return {"rows": rows, "pass_through_mean": float(np.mean([r["pass_through"] for r in rows]))}


def _table(rows: list[dict]) -> str:
    head = ("| matrix | kind | SNR | pass-through | low-band RMS: input / conventional / network / product "
            "| body SSIM: conventional / product / product with the truth's low band |\n|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['matrix']} | {r['kind']} | {r['snr']:g} | {r['pass_through']:.2f} | "
                     f"{r['low_band_rms_accelerated']:.1f} / {r['low_band_rms_conventional']:.1f} / "
                     f"{r['low_band_rms_network']:.1f} / {r['low_band_rms_product']:.1f} | "
                     f"{r['ssim_body_conventional']:.3f} / {r['ssim_body_product']:.3f} / "
                     f"{r['ssim_body_oracle_low_band']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--out", type=Path, default=Path("docs/low_band_diagnosis.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args.model_dir)
    info = json.loads((args.model_dir / "model_info.json").read_text())
    record = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.system()}",
              "model": f"{info.get('name', 'cervical_dl_recon')} {info.get('version', '?')}",
              "source": "selection (dipy aniso_vox), every third slice, seed 5",
              "low_band_sigma_px": LOW_BAND_SIGMA, "seconds": round(time.perf_counter() - t0, 1)} | result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(_table(result["rows"]))
    print(f"mean pass-through {result['pass_through_mean']:.3f}; {args.out}")


if __name__ == "__main__":
    main()
