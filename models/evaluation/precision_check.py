"""The product's figures with the network in float32 and in bfloat16 on the CPU, side by side.

    python -m models.evaluation.precision_check                       # selection source, 480 slices
    python -m models.evaluation.precision_check --quick --out /tmp    # one matrix (a smoke run)

Both variants share the shipped network and run on the same simulated inputs in one
process (``models.evaluation.real_mr.evaluate_real`` on the training-allowed selection
source dipy ``aniso_vox``, strength high, no NLM / BM3D). Prints, per variant, over all
slices and for R = 2 SENSE: body SSIM, the share of slices at or above the conventional,
slices below the accelerated input, the worst slice's tissue bias, and the largest
per-slice body-SSIM difference between the variants; writes
``docs/precision_selection_check_<date>.json``. The rule that uses it:
``docs/inference_choice_rule_bf16.json``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import WEIGHTS_DIR
from models.evaluation.enhancement import slice_metrics
from models.evaluation.real_mr import evaluate_real, selection_series, summarize_real
from models.guard import guard_series
from models.inference import TorchSliceModel, enhance_volume, load_model

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def compare_precisions(quick: bool = False, strength: str = "high") -> dict:
    """Rows of both variants on the selection source and their summaries (see module doc)."""
    shipped = load_model(WEIGHTS_DIR, torch.device("cpu"), runtime="torch")
    models = {name: TorchSliceModel(shipped.network, torch.device("cpu"), cpu_dtype=dtype)
              for name, dtype in VARIANTS.items()}

    def enhance(volume: np.ndarray) -> dict[str, np.ndarray]:
        return {f"product_{name}": guard_series(volume, enhance_volume(model, volume), strength).images
                for name, model in models.items()}

    rows = evaluate_real(enhance, selection_series(), use_bm3d=False, quick=quick, metrics=slice_metrics,
                         use_nlm=False)
    methods = [f"product_{name}" for name in VARIANTS]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one matrix only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = compare_precisions(quick=args.quick)
    for label, by_variant in result["summary"].items():
        for name, v in by_variant.items():
            print(f"{label:10s} {name:9s} body SSIM {v['body_ssim']:.5f}  >= conventional {100 * v['ge_conventional']:5.1f} %"
                  f"  below input {v['below_input']}  worst |bias| {v['worst_abs_bias_pct']:.3f} %")
    print(f"largest slice body-SSIM difference {result['max_slice_body_ssim_difference']:.6f}")
    record = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {args.threads} threads, CPU",
              "command": "python -m models.evaluation.precision_check " + " ".join(argv if argv is not None else sys.argv[1:]),
              "what": __doc__.split("\n")[0], "seconds": round(time.perf_counter() - t0, 1),
              "summary": result["summary"],
              "max_slice_body_ssim_difference": result["max_slice_body_ssim_difference"]}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"precision_selection_check_{_dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
