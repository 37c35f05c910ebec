"""The product's figures with two variants of its inference side by side, on the selection source.

    python -m models.evaluation.variant_check precision            # float32 / bfloat16, 128-512 px (480 slices)
    python -m models.evaluation.variant_check tiles                # 512 / 1024 px tiles, at 640 and 1024 px
    python -m models.evaluation.variant_check precision --quick --out /tmp   # one matrix (a smoke run)

Both variants share the shipped network and run on the same simulated inputs in one process
(``models.evaluation.real_mr.evaluate_real`` on the training-allowed selection source dipy
``aniso_vox``, strength high, no NLM / BM3D). Prints, per variant, over all slices and for
R = 2 SENSE: body SSIM, the share of slices at or above the conventional, slices below the
accelerated input, the worst slice's tissue bias, and the largest per-slice body-SSIM
difference between the variants; writes ``docs/<name>_selection_check_<date>.json``. The rules
that use it: ``docs/inference_choice_rule_bf16.json`` and ``docs/inference_choice_rule_tiles.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
import numpy as np
import torch

from models.evaluation.benchmark import inference_variants
from models.evaluation.enhancement import slice_metrics
from models.evaluation.real_mr import evaluate_real, selection_series, summarize_real
from models.guard import guard_series
from models.inference import enhance_volume

ROOT = Path(__file__).resolve().parents[2]
#: Matrices of the tiles check: the ones above 512 px that the product sees.
TILE_CHECK_MATRICES = (640, 1024)


def compare_variants(name: str, quick: bool = False, strength: str = "high") -> dict:
    """Rows of both variants of ``name`` on the selection source and their summaries (module doc)."""
    if name not in ("precision", "tiles"):
        raise ValueError(f"unknown variant set {name!r} (precision or tiles)")
    variants = inference_variants(name)
    series = selection_series()
    if name == "tiles":  # the matrices where tiles change anything
        series = [dataclasses.replace(s, matrices=TILE_CHECK_MATRICES) for s in series]

    def enhance(volume: np.ndarray) -> dict[str, np.ndarray]:
        return {f"product_{v}": guard_series(volume, enhance_volume(model, volume, **options), strength).images
                for v, (model, options) in variants.items()}

    rows = evaluate_real(enhance, series, use_bm3d=False, quick=quick, metrics=slice_metrics, use_nlm=False)
    methods = [f"product_{v}" for v in variants]
    summary = {}
    for label, subset in (("all", rows), ("R=2 SENSE", [r for r in rows if r["kind"] == "R=2 SENSE"])):
        s = summarize_real(subset, methods)
        summary[label] = {m.removeprefix("product_"): {
            "slices": s["n"], "body_ssim": round(s[m]["ssim_body"], 5),
            "ge_conventional": round(s[m]["ge_conventional"], 4),
            "below_input": int(round(s[m]["below_input"] * s["n"])),
            "worst_abs_bias_pct": round(abs(s[m]["worst_bias_pct"]), 3)} for m in methods}
    diffs = [abs(r["metrics"][methods[0]]["ssim_body"] - r["metrics"][methods[1]]["ssim_body"]) for r in rows]
    return {"rows": rows, "summary": summary, "max_slice_body_ssim_difference": float(max(diffs))}


def main(argv: list[str] | None = None, default_variants: str | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if default_variants is None:
        ap.add_argument("variants", choices=["precision", "tiles"])
    ap.add_argument("--quick", action="store_true", help="one matrix only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    name = default_variants or args.variants
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = compare_variants(name, quick=args.quick)
    for label, by_variant in result["summary"].items():
        for variant, v in by_variant.items():
            print(f"{label:10s} {variant:9s} body SSIM {v['body_ssim']:.5f}  >= conventional {100 * v['ge_conventional']:5.1f} %"
                  f"  below input {v['below_input']}  worst |bias| {v['worst_abs_bias_pct']:.3f} %")
    print(f"largest slice body-SSIM difference {result['max_slice_body_ssim_difference']:.6f}")
    module = "models.evaluation.variant_check" if default_variants is None else "models.evaluation.precision_check"
    record = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {args.threads} threads, CPU",
              "command": f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]),
              "what": __doc__.split("\n")[0], "variants": name, "seconds": round(time.perf_counter() - t0, 1),
              "summary": result["summary"],
              "max_slice_body_ssim_difference": result["max_slice_body_ssim_difference"]}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{name}_selection_check_{_dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
