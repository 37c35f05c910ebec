"""Speed and memory of the DL model against BM3D and non-local means, per matrix size
(and of the quality check).

    python -m models.evaluation.benchmark                      # 256, 320, 512, 1024; table + docs/model_benchmark.json
    python -m models.evaluation.benchmark --paths              # also eager / TorchScript / torch.compile / ONNX Runtime at 512
    python -m models.evaluation.benchmark --sizes 512 --slices 4 --bm3d-slices 1
    python -m models.evaluation.benchmark --guard-ab OLD_GUARD.py  # the guard alone against an earlier one, one process
    python -m models.evaluation.benchmark --layout-ab --sizes 256 512   # network / product, contiguous vs channels-last
    python -m models.evaluation.benchmark --precision-ab --sizes 256 512   # network / product, float32 vs bfloat16 (CPU)
    python -m models.evaluation.benchmark --tiles-ab --sizes 640 1024      # network / product, 512 px tiles vs whole slices

Every measurement runs in its own child process (fresh interpreter, same thread count),
so its peak resident memory (``ru_maxrss``) belongs to that method and matrix alone; the
table shows the peak and the increase over the child's RSS after imports and set-up.
Inputs are phantom-like 12-bit magnitude slices (noise plus a bright object), timed
after one warm-up slice; seconds are the median per slice. DL runs through the product
path (``models.inference.enhance_volume``, tiles above 512). Ratios compare methods
measured in the same run on the same machine. On a machine with CUDA the DL is also
timed on the GPU (autocast bf16/fp16, batches of 8).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("dl", "bm3d", "nlm", "qc")
PATHS = ("torch", "onnxruntime", "compile", "torchscript")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def test_slices(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` uint16 slices: an ellipse of tissue with texture in Rayleigh air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = ((xx / 0.35) ** 2 + (yy / 0.42) ** 2) < 1
    out = np.empty((n, size, size), dtype=np.uint16)
    for i in range(n):
        tex = 1200 + 600 * np.sin(40 * xx + i) * np.cos(25 * yy)
        img = np.where(body, tex, 0.0) + rng.rayleigh(60.0, (size, size))
        out[i] = np.clip(img, 0, 4095).astype(np.uint16)
    return out


def _load_dl(path_kind: str, device):
    """The shipped model through one inference path (all verified against the checksums)."""
    import torch

    from models.inference import TorchSliceModel, load_model

    if path_kind in ("onnxruntime", "torch"):
        return load_model(WEIGHTS_DIR, device, runtime=path_kind)
    eager = load_model(WEIGHTS_DIR, device, runtime="torch")
    if path_kind == "compile":
        return TorchSliceModel(torch.compile(eager.network, dynamic=False), device)
    if path_kind == "torchscript":  # deprecated in torch 2.13; measured for the record
        return TorchSliceModel(torch.jit.script(eager.network), device)
    raise ValueError(f"unknown path {path_kind!r}")


def guard_ab(baseline: Path, sizes: list[int], slices: int, threads: int, rounds: int = 5) -> list[dict]:
    """The do-no-harm guard alone, ``baseline`` (a file holding an earlier ``models/guard.py``)
    against the current one, on the same slices and network output, interleaved ``rounds``
    times in one process; prints median s/slice and the speed-up, returns the rows."""
    import importlib.util

    import torch

    from models import guard
    from models.inference import enhance_volume, load_model

    torch.set_num_threads(threads)
    spec = importlib.util.spec_from_file_location("guard_baseline", baseline)
    base = importlib.util.module_from_spec(spec)
    sys.modules["guard_baseline"] = base  # dataclasses look their module up
    spec.loader.exec_module(base)
    model = load_model(WEIGHTS_DIR)
    rows = []
    print("size  baseline s/slice  current s/slice  speed-up")
    for size in sizes:
        vol = test_slices(slices, size)
        net = enhance_volume(model, vol)
        times: dict[str, list[float]] = {"baseline": [], "current": []}
        for _ in range(rounds):
            for name, module in (("baseline", base), ("current", guard)):
                t0 = time.perf_counter()
                module.guard_series(vol, net)
                times[name].append((time.perf_counter() - t0) / len(vol))
        b, c = float(np.median(times["baseline"])), float(np.median(times["current"]))
        rows.append({"size": size, "baseline_s": b, "current_s": c, "speedup": b / c})
        print(f"{size:4d}  {b:16.4f}  {c:15.4f}  {b / c:7.2f}x")
    return rows


def variant_ab(variants: dict, sizes: list[int], slices: int, threads: int, rounds: int = 5) -> list[dict]:
    """The network alone and the product (network + guard) for two variants of the shipped
    network (:func:`inference_variants`, baseline first): the same slices, interleaved ``rounds`` times in one process; prints median s/slice, the speed-up of the
    second over the first, and the largest output difference (input units); returns the rows."""
    import torch

    from models.guard import guard_series
    from models.inference import enhance_volume

    torch.set_num_threads(threads)
    base, other = list(variants)
    rows = []
    print(f"size  network s/slice {base} / {other}  speed-up  product s/slice  speed-up  max |diff|")
    for size in sizes:
        vol = test_slices(slices, size)
        times: dict[str, list[float]] = {f"{k}_{m}": [] for k in ("network", "product") for m in variants}
        outputs = {}
        for _ in range(rounds):
            for name, (model, options) in variants.items():
                # the variants may share one network: each puts it in its own layout first (not timed)
                model.network.to(memory_format=model._layout)
                enhance_volume(model, vol[:1], **options)
                t0 = time.perf_counter()
                net = enhance_volume(model, vol, **options)
                t1 = time.perf_counter()
                guard_series(vol, net)
                t2 = time.perf_counter()
                times[f"network_{name}"].append((t1 - t0) / len(vol))
                times[f"product_{name}"].append((t2 - t0) / len(vol))
                outputs[name] = net
        med = {k: float(np.median(v)) for k, v in times.items()}
        diff = float(np.abs(outputs[base] - outputs[other]).max())
        row = {"size": size, **{f"{k}_s": v for k, v in med.items()},
               "network_speedup": med[f"network_{base}"] / med[f"network_{other}"],
               "product_speedup": med[f"product_{base}"] / med[f"product_{other}"],
               "max_abs_diff": diff}
        rows.append(row)
        print(f"{size:4d}  {med[f'network_{base}']:.4f} / {med[f'network_{other}']:.4f}"
              f"{row['network_speedup']:27.2f}x  {med[f'product_{base}']:.4f} / {med[f'product_{other}']:.4f}"
              f"  {row['product_speedup']:.2f}x  {diff:.2e}")
    return rows


def inference_variants(name: str) -> dict:
    """Two variants of the shipped network on the CPU, baseline first, as ``{variant:
    (TorchSliceModel, enhance_volume keyword arguments)}``: ``layout`` (contiguous /
    channels-last, both float32), ``precision`` (float32 / bfloat16) or ``tiles`` (512 px tiles /
    whole slices up to 1024 px, the defaults otherwise). Used by the A/B timings here and by
    :mod:`models.evaluation.variant_check`."""
    import torch

    from models.inference import TorchSliceModel, load_model

    cpu = torch.device("cpu")
    shipped = load_model(WEIGHTS_DIR, cpu, runtime="torch")
    if name == "layout":
        return {layout: (TorchSliceModel(shipped.network, cpu, memory_format=fmt, cpu_dtype=torch.float32), {})
                for layout, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))}
    if name == "precision":
        return {p: (TorchSliceModel(shipped.network, cpu, cpu_dtype=getattr(torch, p)), {})
                for p in ("float32", "bfloat16")}
    if name == "tiles":
        return {f"tile{t}": (shipped, {"tile": t}) for t in (512, 1024)}
    raise ValueError(f"unknown variant set {name!r} (layout, precision or tiles)")


def layout_ab(sizes: list[int], slices: int, threads: int, rounds: int = 5) -> list[dict]:
    """:func:`variant_ab` of the network in the default (contiguous) layout against
    channels-last, the CPU default since 2026-12-07 (both float32)."""
    return variant_ab(inference_variants("layout"), sizes, slices, threads, rounds)


def precision_ab(sizes: list[int], slices: int, threads: int, rounds: int = 5) -> list[dict]:
    """:func:`variant_ab` of the network in float32 against bfloat16 autocast (channels-last)."""
    return variant_ab(inference_variants("precision"), sizes, slices, threads, rounds)


def tiles_ab(sizes: list[int], slices: int, threads: int, rounds: int = 5) -> list[dict]:
    """:func:`variant_ab` of the shipped model in 512 px tiles against whole slices up to
    1024 px (the default since 2026-12-07)."""
    return variant_ab(inference_variants("tiles"), sizes, slices, threads, rounds)


def worker(method: str, size: int, slices: int, path_kind: str, device_name: str) -> dict:
    """Run in a child: time ``method`` on ``slices`` slices of ``size`` x ``size``."""
    import torch

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    data = test_slices(slices + 1, size)
    if method in ("dl", "dl+guard"):
        from models.inference import enhance_series, enhance_volume

        device = torch.device(device_name)
        model = _load_dl(path_kind if device.type == "cpu" else "torch", device)
        if method == "dl":  # the network alone
            fn = lambda vol: enhance_volume(model, vol, batch_size=8)  # noqa: E731
        else:  # the product: network, do-no-harm guard, default strength
            fn = lambda vol: enhance_series(model, vol, batch_size=8)  # noqa: E731
    elif method == "qc":  # the quality check of one series: masks, C3 ROIs, measures + detector on original and DL
        from models.motion_detector import load_motion_detector
        from qc.calibration import QCCalibration
        from qc.measures import locate_rois_in_volume, measure_series, series_masks, with_vertebral_rois

        cal = QCCalibration.load()
        detector = load_motion_detector(WEIGHTS_DIR, torch.device(device_name))

        def fn(vol):
            masks = series_masks(vol, 1)
            rois = locate_rois_in_volume(vol, masks, (240.0 / vol.shape[1], 240.0 / vol.shape[2]))
            original = measure_series(vol, 1, cal, masks, detector)
            dl = measure_series(vol, 1, cal, masks)  # the DL output is scored by the ghost measure only
            if rois is not None:
                with_vertebral_rois(original, vol, rois)
                with_vertebral_rois(dl, vol, rois)
    elif method == "qc_ghost":  # baseline: the quality check with the ghost measure only (no detector, no ROIs)
        from qc.calibration import QCCalibration
        from qc.measures import measure_series, series_masks

        cal = QCCalibration.load()

        def fn(vol):
            masks = series_masks(vol, 1)
            measure_series(vol, 1, cal, masks)
            measure_series(vol, 1, cal, masks)
    else:
        from models.evaluation.baselines import bm3d_denoise, nlm_denoise

        den = bm3d_denoise if method == "bm3d" else nlm_denoise
        fn = lambda vol: np.stack([den(s, 60.0) for s in vol])  # noqa: E731
    rss_ready = _rss_mib()
    fn(data[:1])  # warm-up (and torch.compile's compilation)
    times = []
    if method.startswith("dl") and device_name == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn(data[1:])
        torch.cuda.synchronize()
        times = [(time.perf_counter() - t) / slices] * slices
    elif method.startswith("qc"):  # the QC works per series (ROIs on the 5 middle slices): time whole series
        for _ in range(3):
            t = time.perf_counter()
            fn(data[1:])
            times.append((time.perf_counter() - t) / slices)
    else:
        for k in range(1, slices + 1):
            t = time.perf_counter()
            fn(data[k : k + 1])
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    path_kind = path_kind if method.startswith("dl") else "-"
    row = {"method": method, "size": size, "path": path_kind, "device": device_name, "slices": slices,
           "s_per_slice": statistics.median(times), "peak_rss_mib": peak, "rss_ready_mib": rss_ready}
    if method.startswith("dl"):
        row["precision"] = model.precision
    return row


def run_child(method: str, size: int, slices: int, path_kind: str = "torch", device: str = "cpu",
              threads: int = 2) -> dict:
    cmd = [sys.executable, "-m", "models.evaluation.benchmark", "--_worker", method, str(size), str(slices), path_kind, device]
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "size": size, "path": path_kind, "device": device, "error": reason[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict, ref: dict | None) -> str:
    if "error" in r:
        return f"{r['method']:<8} {r['path']:<12} {r['device']:<5} {r['size']:>5}  failed: {r['error']}"
    sps = 1.0 / r["s_per_slice"]
    ratio = f"{ref['s_per_slice'] / r['s_per_slice']:8.2f}x" if ref and "error" not in ref else f"{'':>9}"
    return (f"{r['method']:<8} {r['path']:<12} {r['device']:<5} {r['size']:>5}  {r['s_per_slice']:9.3f} {sps:9.2f}"
            f" {r['peak_rss_mib']:9.0f} {r['peak_rss_mib'] - r['rss_ready_mib']:9.0f} {ratio}")


HEADER = (f"{'method':<8} {'path':<12} {'dev':<5} {'size':>5}  {'s/slice':>9} {'slices/s':>9} {'peakMiB':>9} "
          f"{'+MiB':>9} {'DL speed-up':>9}")


def markdown(record: dict) -> str:
    """README table from a ``model_benchmark.json`` record."""
    lines = ["| matrix | method | s / slice | slices / s | peak RSS MiB (+ over set-up) | DL faster by |",
             "|---|---|---|---|---|---|"]
    for r in record["rows"] + record.get("paths", []):
        if "error" in r:
            lines.append(f"| {r['size']} | {r['method']} {r['path']} | failed: {r['error']} | | | |")
            continue
        engine = ", ".join(str(x) for x in (r["path"], r.get("precision"), r["device"]) if x)
        name = {"dl": f"DL network alone ({engine})",
                "dl+guard": f"DL product: network + guard ({engine})",
                "bm3d": "BM3D", "nlm": "non-local means",
                "qc": "quality check (original + DL)",
                "qc_ghost": "quality check, ghost measure only"}[r["method"]]
        ratio = ", ".join(f"{v:.1f}x vs {k.upper() if k == 'bm3d' else 'NLM'}" for k, v in r.get("speedup_vs", {}).items())
        lines.append(f"| {r['size']} | {name} | {r['s_per_slice']:.3f} | {1 / r['s_per_slice']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - r['rss_ready_mib']:.0f}) | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 320, 512, 1024])
    ap.add_argument("--slices", type=int, default=8, help="timed DL and NLM slices per size")
    ap.add_argument("--bm3d-slices", type=int, default=2, help="timed BM3D slices per size (slow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", action="store_true", help="compare inference paths (at --paths-size)")
    ap.add_argument("--paths-size", type=int, nargs="+", default=[512, 320])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "model_benchmark.json")
    ap.add_argument("--markdown", type=Path, help="print the README table from a model_benchmark.json and exit")
    ap.add_argument("--qc-only", action="store_true",
                    help="time only the quality check, against its ghost-measure-only baseline (docs/qc_benchmark.json)")
    ap.add_argument("--guard-only", action="store_true",
                    help="time only the product path (network + guard) against the network alone (docs/guard_benchmark.json)")
    ap.add_argument("--guard-ab", type=Path, metavar="BASELINE_GUARD_PY",
                    help="time the guard alone against an earlier models/guard.py (e.g. from git show) in one process")
    ap.add_argument("--layout-ab", action="store_true",
                    help="time the network and the product with the network contiguous against channels-last, one process")
    ap.add_argument("--precision-ab", action="store_true",
                    help="time the network and the product in float32 against bfloat16 on the CPU, one process")
    ap.add_argument("--tiles-ab", action="store_true",
                    help="time the network and the product in 512 px tiles against whole slices up to 1024, one process")
    ap.add_argument("--_worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.guard_ab:
        guard_ab(args.guard_ab, args.sizes, args.slices, args.threads)
        return 0
    for option, run_ab in (("layout_ab", layout_ab), ("precision_ab", precision_ab), ("tiles_ab", tiles_ab)):
        if getattr(args, option):
            rows = run_ab(args.sizes, args.slices, args.threads)
            out = ROOT / "docs" / f"{option.split('_')[0]}_benchmark_{_dt.date.today().isoformat()}.json"
            out.write_text(json.dumps({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                       "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads",
                                       "slices": args.slices,
                                       "command": "python -m models.evaluation.benchmark " + " ".join(argv or sys.argv[1:]),
                                       "rows": rows}, indent=2) + "\n")
            print(out)
            return 0
    if args._worker:
        m, size, n, path_kind, dev = args._worker
        print(json.dumps(worker(m, int(size), int(n), path_kind, dev)))
        return 0
    import torch

    cuda = torch.cuda.is_available()
    rows: list[dict] = []
    print(HEADER)
    # A method against its baseline only, both per size, ratio in the same run (its own JSON).
    paired = {"qc_only": ("qc_ghost", "ghost measure only", "qc", "ROIs + detector + ghost measure", "qc_benchmark.json"),
              "guard_only": ("dl", "the network alone", "dl+guard", "the product: network + do-no-harm guard",
                             "guard_benchmark.json")}
    for option, (base_method, base_note, method, note, out_name) in paired.items():
        if not getattr(args, option):
            continue
        for size in args.sizes:
            base = run_child(base_method, size, args.slices, threads=args.threads)
            full = run_child(method, size, args.slices, threads=args.threads)
            print(_row(base, None) + f"   (baseline: {base_note})")
            print(_row(full, base if "error" not in base else None) + f"   ({note})")
            rows += [base, full]
        args.sizes = []
        if args.out == ROOT / "docs" / "model_benchmark.json":
            args.out = ROOT / "docs" / out_name
    for size in args.sizes:
        dl = run_child("dl", size, args.slices, threads=args.threads)
        product = run_child("dl+guard", size, args.slices, threads=args.threads)
        others = [run_child("bm3d", size, args.bm3d_slices, threads=args.threads),
                  run_child("nlm", size, args.slices, threads=args.threads)]
        qc = run_child("qc", size, args.slices, threads=args.threads)
        dl["speedup_vs"] = {o["method"]: (o["s_per_slice"] / dl["s_per_slice"]) for o in others
                            if "error" not in o and "error" not in dl}
        print(_row(dl, None))
        print(_row(product, dl if "error" not in dl else None) + "   (the product: network + do-no-harm guard)")
        for o in others:
            print(_row(o, None) + (f"   DL is {dl['speedup_vs'][o['method']]:.1f}x faster"
                                   if o["method"] in dl.get("speedup_vs", {}) else ""))
        print(_row(qc, None) + "   (quality check, original + DL, per slice)")
        rows += [dl, product] + others + [qc]
        if cuda:
            g = run_child("dl", size, max(args.slices, 16), path_kind="torch", device="cuda", threads=args.threads)
            print(_row(g, None))
            rows.append(g)
    path_rows: list[dict] = []
    if args.paths:
        for size in args.paths_size:
            print(f"\nInference paths, {size}x{size} (ratio: speed relative to the product's path, PyTorch eager)")
            print(HEADER)
            ref = None
            for p in PATHS:
                r = run_child("dl", size, args.slices, path_kind=p, threads=args.threads)
                ref = ref or (r if "error" not in r else None)
                print(_row(r, ref))
                path_rows.append(r)
    record = {"date": _dt.date.today().isoformat(),
              "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads"
                         + (f", GPU {torch.cuda.get_device_name(0)}" if cuda else ", no GPU"),
              "torch": torch.__version__, "command": "python -m models.evaluation.benchmark " + " ".join(argv or sys.argv[1:]),
              "rows": rows, "paths": path_rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
