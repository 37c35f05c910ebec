"""Train the cascaded U-Net on simulated (accelerated, conventional-reference) pairs.

    python -m models.training.train --config models/training/configs/default.json [--resume]
    python -m models.training.train --config models/training/configs/stage2.json    # continues from default's weights

Stops at ``steps`` or at the wall-clock ``time_budget_s`` (whichever comes first; the
budget counts training time across resumes), then runs a held-out validation, writes the
weights (``cervical_dl_recon.pt``, a weights-only state_dict) and their ONNX export
(``cervical_dl_recon.onnx``) to ``model_dir`` with ``cervical_dl_recon.sha256`` beside
them, and ``model_info.json``. ``--export-only`` does the last part from a checkpoint.
A config with ``init_from`` (a checkpoint path) starts from that checkpoint's weights with
a fresh optimiser and its own learning-rate schedule (a second training stage).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.training.data import DataConfig, PairStream, phantom_available, validation_set
from models.inference import file_sha256
from models.network import CascadedUNet, count_flops, count_parameters
from models.normalization import NOISE_LEVEL_GAIN, ROBUST_PERCENTILE, noise_level, with_noise_level

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "cervical_dl_recon"

DEFAULTS: dict = {
    "name": "default",
    "version": "0.1.0",
    "seed": 20251124,
    "val_seed": 990_001,
    "n_val": 18,
    "steps": 100000,
    "time_budget_s": 1920,
    "batch_size": 8,
    "lr": 1e-3,
    "lr_end": 1e-4,
    "warmup_steps": 100,
    "ssim_weight": 0.1,
    "gradient_weight": 0.0,
    "lowpass_weight": 0.0,
    "lowpass_sigma": 2.0,
    "grad_clip": 1.0,
    "dc_lr_mult": 10.0,
    "log_every": 25,
    "checkpoint_every_s": 180,
    "threads": 2,
    "model": {"base_channels": 8, "cascade_stages": 3, "cascade_channels": 8,
              "dc_band": 0.25, "dc_edge": 0.1},
    "data": {},
    "checkpoint_dir": "models/checkpoints",
    "model_dir": "models/weights",
    "info_path": "models/weights/model_info.json",
    "loss_plot": "models/training/loss_curve.png",
    "validation_path": "models/weights/validation.json",
    "init_from": None,
    "data_workers": 0,
}


def load_config(path: Path) -> dict:
    """A training config over :data:`DEFAULTS`; ``"extends": "<name>"`` starts from that config
    in the same folder instead (one level of dicts merged, as over the defaults)."""
    cfg = json.loads(Path(path).read_text())
    base = cfg.pop("extends", None)
    out = dict(load_config(Path(path).parent / f"{base}.json")) if base else dict(DEFAULTS)
    for k, v in cfg.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    out["config_name"] = Path(path).stem
    return out


def _abs(p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else REPO_ROOT / q


def select_training_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def lr_at(progress: float, step: int, cfg: dict) -> float:
    """Cosine decay from ``lr`` to ``lr_end`` over training progress, linear warm-up."""
    progress = min(max(progress, 0.0), 1.0)
    lr = cfg["lr_end"] + (cfg["lr"] - cfg["lr_end"]) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if step < cfg["warmup_steps"]:
        lr *= (step + 1) / cfg["warmup_steps"]
    return lr


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win: int = 7) -> torch.Tensor:
    """Mean SSIM with a uniform window (for the loss)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x = F.avg_pool2d(x, win, 1)
    mu_y = F.avg_pool2d(y, win, 1)
    sxx = F.avg_pool2d(x * x, win, 1) - mu_x**2
    syy = F.avg_pool2d(y * y, win, 1) - mu_y**2
    sxy = F.avg_pool2d(x * y, win, 1) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 distance of the finite differences along both axes: penalises edges and texture
    that the output lacks (plain L1 is satisfied by a smoothed median where texture is
    uncertain)."""
    return (F.l1_loss(x[..., 1:, :] - x[..., :-1, :], y[..., 1:, :] - y[..., :-1, :])
            + F.l1_loss(x[..., :, 1:] - x[..., :, :-1], y[..., :, 1:] - y[..., :, :-1]))


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter (``sigma`` in pixels, reflect-padded) of ``(B, 1, H, W)``."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, [radius, radius, 0, 0], mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, [0, 0, radius, radius], mode="reflect"), k.view(1, 1, -1, 1))


def lowpass_l1(x: torch.Tensor, y: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """L1 distance of the Gaussian low-pass images: the error below about 1 / (2 pi sigma)
    cycles per pixel. The input's white noise puts only ~1/(2 sqrt(pi) sigma) of its SD there
    (0.14 at 2 px), so plain L1 barely sees it and model 0.5.0 passes it through unchanged."""
    return F.l1_loss(gaussian_lowpass(x, sigma), gaussian_lowpass(y, sigma))


def save_checkpoint(path: Path, model, opt, step, elapsed, history, stream) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
        "elapsed": elapsed, "history": history,
        "stream_rng": json.dumps(stream.state()),
        "torch_rng": torch.get_rng_state(),
    }, tmp)
    os.replace(tmp, path)


def plot_losses(history: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    h = np.array([[r["step"], r["loss"], r["l1"]] for r in history])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(h[:, 0], h[:, 1], label="loss (L1 + w(1-SSIM))")
    ax.plot(h[:, 0], h[:, 2], label="L1")
    val = [(r["step"], r["val_l1"]) for r in history if "val_l1" in r]
    if val:
        v = np.array(val)
        ax.plot(v[:, 0], v[:, 1], "o-", label="held-out L1")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (normalised units)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def predict_full(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float32)
    if getattr(model, "noise_input", False):
        x = torch.from_numpy(with_noise_level(image[None], np.array([noise_level(image)]))).to(device)
    else:
        x = torch.from_numpy(image)[None, None].to(device)
    return model(x)[0, 0].float().cpu().numpy()


def evaluate(model: torch.nn.Module, val: list[dict], device: torch.device) -> dict:
    """PSNR / SSIM vs the reference G of the accelerated input, the DL output and the
    conventional acquisition, on full held-out images (normalised units)."""
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    was_training = model.training
    model.eval()
    rows = []
    for p in val:
        g = p["target"].astype(np.float64)
        dr = float(g.max() - g.min())
        out = np.clip(predict_full(model, p["input"], device), 0, None).astype(np.float64)
        r = {"source": p["source"], "snr": p["snr"], "shape": list(g.shape)}
        for key, im in (("input", p["input"]), ("output", out), ("conventional", p["conventional"])):
            im = im.astype(np.float64)
            r[f"psnr_{key}"] = float(psnr(g, im, data_range=dr))
            r[f"ssim_{key}"] = float(ssim(g, im, data_range=dr))
            r[f"l1_{key}"] = float(np.abs(g - im).mean())
        rows.append(r)
    model.train(was_training)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith(("psnr", "ssim", "l1"))}
    summary["n"] = len(rows)
    summary["frac_output_psnr_gt_input"] = float(np.mean([r["psnr_output"] > r["psnr_input"] for r in rows]))
    summary["frac_output_ssim_gt_input"] = float(np.mean([r["ssim_output"] > r["ssim_input"] for r in rows]))
    summary["frac_output_psnr_ge_conventional"] = float(np.mean([r["psnr_output"] >= r["psnr_conventional"] for r in rows]))
    by_source: dict = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    summary["by_source"] = {
        s: {k: float(np.mean([r[k] for r in rs])) for k in ("psnr_input", "psnr_output", "psnr_conventional",
                                                           "ssim_input", "ssim_output", "ssim_conventional")}
        | {"n": len(rs)}
        for s, rs in by_source.items()
    }
    return {"summary": summary, "images": rows}


def print_eval(tag: str, ev: dict) -> None:
    s = ev["summary"]
    print(f"[{tag}] n={s['n']}  PSNR input {s['psnr_input']:.2f} -> DL {s['psnr_output']:.2f} dB "
          f"(conventional {s['psnr_conventional']:.2f});  SSIM input {s['ssim_input']:.4f} -> DL "
          f"{s['ssim_output']:.4f} (conventional {s['ssim_conventional']:.4f});  DL better than input "
          f"on {100 * s['frac_output_psnr_gt_input']:.0f}% (PSNR) / {100 * s['frac_output_ssim_gt_input']:.0f}% (SSIM)",
          flush=True)
    for src, v in s["by_source"].items():
        print(f"    {src:8s} n={v['n']:2d}  PSNR {v['psnr_input']:.2f} -> {v['psnr_output']:.2f} "
              f"(conv {v['psnr_conventional']:.2f})  SSIM {v['ssim_input']:.4f} -> {v['ssim_output']:.4f} "
              f"(conv {v['ssim_conventional']:.4f})", flush=True)


def export_onnx(model: CascadedUNet, path: Path) -> None:
    """ONNX export (dynamo exporter, opset 20) with dynamic batch and matrix. The traced
    graph holds the padding for multiples of 16; :class:`models.inference.OnnxSliceModel`
    pads other sizes itself. Shape annotations of intermediate values are dropped: the
    exporter labels the real-FFT output with the input's width, which misleads ONNX
    Runtime's buffer planning; ONNX Runtime infers the shapes itself."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=64)
    rows = torch.export.Dim("rows", min=32, max=4096)
    cols = torch.export.Dim("cols", min=32, max=4096)
    x = torch.rand(2, model.in_channels, 256, 256, generator=torch.Generator().manual_seed(0))
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["y"], dynamo=True,
                      dynamic_shapes={"x": {0: batch, 2: rows, 3: cols}}, external_data=False, verbose=False)
    proto = onnx.load(str(tmp))
    del proto.graph.value_info[:]
    proto.producer_name = f"{MODEL_NAME} (torch {torch.__version__})"
    onnx.save(proto, str(path))
    tmp.unlink(missing_ok=True)


def export(model: CascadedUNet, cfg: dict, step: int, elapsed: float, ev: dict, sources: list[str]) -> dict:
    """Write the weights (``state_dict``, weights only), the ONNX export, their sha256
    file and ``model_info.json``; check that both files reproduce the eager model."""
    from models.inference import ONNX_FILE, SHA256_FILE, WEIGHTS_FILE, OnnxSliceModel, TorchSliceModel

    model = model.cpu().eval()
    out_dir = _abs(cfg["model_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path, onnx_path = out_dir / WEIGHTS_FILE, out_dir / ONNX_FILE
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, weights_path)
    export_onnx(model, onnx_path)
    reloaded = CascadedUNet(**cfg["model"])
    reloaded.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    runners = {"weights": TorchSliceModel(reloaded, torch.device("cpu")),
               "onnx": OnnxSliceModel(onnx_path, noise_input=model.noise_input)}
    gen = torch.Generator().manual_seed(0)
    for shape in ((1, model.in_channels, 512, 512), (2, model.in_channels, 320, 320), (1, model.in_channels, 200, 168)):
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        for name, run in runners.items():
            diff = float(np.abs(run(x.numpy()) - ref).max())
            if diff > 1e-3:
                raise RuntimeError(f"exported {name} differs from the eager model by {diff} at {shape}")
    digests = {p.name: file_sha256(p) for p in (weights_path, onnx_path)}
    (out_dir / SHA256_FILE).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    info = {
        "name": MODEL_NAME,
        "version": cfg["version"],
        "file": WEIGHTS_FILE,
        "sha256": digests[WEIGHTS_FILE],
        "files": {n: {"sha256": d, "bytes": (out_dir / n).stat().st_size} for n, d in digests.items()},
        "training_config": cfg["config_name"],
        "steps": step,
        "training_time_s": round(elapsed, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parameter_count": count_parameters(model),
        "flops_512x512": count_flops(model, 512),
        "architecture": {"class": "models.network.CascadedUNet", **cfg["model"]},
        "input": ("(B, 2, H, W) float32, any H, W; magnitude divided by the series scale, and a constant "
                  f"map of the slice's noise level (models.normalization.noise_level, gain {NOISE_LEVEL_GAIN:g})"
                  if model.noise_input else
                  "(B, 1, H, W) float32, any H, W; magnitude divided by the series scale"),
        "normalization": {
            "rule": f"per-series {ROBUST_PERCENTILE}th percentile of the input intensities "
                    "(models.normalization.robust_scale on the whole series); output multiplied back",
            "percentile": ROBUST_PERCENTILE,
        },
        "loss": {"l1": 1.0, **{k: cfg[k] for k in ("ssim_weight", "gradient_weight", "lowpass_weight", "lowpass_sigma")}},
        "training_sources": sources,
        "training_overrides": cfg.get("training_overrides", {}),
        "training_device": str(select_training_device()),
        "seed": cfg["seed"],
        "validation_seed": cfg["val_seed"],
        "validation": {k: v for k, v in ev["summary"].items() if k != "by_source"},
        "validation_by_source": ev["summary"]["by_source"],
        "torch_version": torch.__version__,
    }
    _abs(cfg["info_path"]).write_text(json.dumps(info, indent=2) + "\n")
    return info


def finalize(model: CascadedUNet, cfg: dict, step: int, elapsed: float, sources: list[str],
             device: torch.device) -> None:
    """Held-out validation, ``validation.json``, export."""
    val = validation_set(cfg["val_seed"], int(cfg["n_val"]), DataConfig.from_dict(cfg["data"]))
    ev = evaluate(model, val, device)
    print_eval("held-out, DEFAULT_ACCELERATED", ev)
    _abs(cfg["validation_path"]).parent.mkdir(parents=True, exist_ok=True)
    _abs(cfg["validation_path"]).write_text(json.dumps(ev, indent=2) + "\n")
    info = export(model, cfg, step, elapsed, ev, sources)
    print(f"exported {cfg['model_dir']}/{{{', '.join(info['files'])}}} sha256 {info['sha256']}", flush=True)


def load_earlier_stage(cfg: dict) -> dict | None:
    """The checkpoint of the stage ``init_from`` continues (None without one): its weights
    start this stage, its steps and seconds count in the record.

    ``init_from`` is a training checkpoint, or a shipped weights file (``models/weights/
    cervical_dl_recon.pt``): then its sha256 is checked against the ``model_info.json``
    beside it, which gives the steps and seconds."""
    if not cfg["init_from"]:
        return None
    init_path = _abs(cfg["init_from"])
    if not init_path.exists():
        raise SystemExit(f"init_from checkpoint {init_path} not found: run its training stage first")
    info_path = init_path.parent / "model_info.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("file") == init_path.name:
        info = json.loads(info_path.read_text())
        if file_sha256(init_path) != info["sha256"]:
            raise SystemExit(f"init_from {init_path}: sha256 differs from {info_path}")
        state = torch.load(init_path, map_location="cpu", weights_only=True)
        return {"model": state, "step": int(info["steps"]), "elapsed": float(info["training_time_s"]),
                "history": [], "version": info.get("version")}
    return torch.load(init_path, map_location="cpu", weights_only=False)


def with_input_channels(state: dict, model: CascadedUNet) -> dict:
    """An earlier stage's weights for ``model``: where the model has a noise-level input
    channel the earlier one lacked, its first convolution gets zero weights for it, so the
    stage starts as exactly the earlier network."""
    key = "encoders.0.block1.conv.weight"
    want = model.state_dict()[key].shape
    if state[key].shape != want:
        extra = torch.zeros(want[0], want[1] - state[key].shape[1], *want[2:], dtype=state[key].dtype)
        state = {**state, key: torch.cat([state[key], extra], dim=1)}
    return state


def export_checkpoint(cfg: dict) -> None:
    """Validate and export the config's last checkpoint (no training)."""
    ckpt_path = _abs(cfg["checkpoint_dir"]) / f"{cfg['config_name']}_last.pt"
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = CascadedUNet(**cfg["model"])
    model.load_state_dict(ck["model"])
    prev = load_earlier_stage(cfg)  # count the earlier stage too, as train() does
    step, elapsed = int(ck["step"]), float(ck["elapsed"])
    if prev is not None:
        step, elapsed = step + int(prev["step"]), elapsed + float(prev["elapsed"])
    sources = [s for s, w in DataConfig.from_dict(cfg["data"]).source_weights.items() if w > 0]
    finalize(model, cfg, step, elapsed, sources, torch.device("cpu"))


def train(cfg: dict, resume: bool) -> None:
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % (2**32))
    device = select_training_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick its kernels
    data_cfg = DataConfig.from_dict(cfg["data"])
    print(f"device {device}; phantom source {'available' if phantom_available() else 'NOT available'}", flush=True)
    t_setup = time.perf_counter()
    stream = PairStream(data_cfg, seed=cfg["seed"], noise_input=bool(cfg["model"].get("noise_input")),
                        workers=int(cfg["data_workers"]))
    print(f"training sources {stream.sampler.sources} p={np.round(stream.sampler.source_p, 2).tolist()} "
          f"(phantom bank {len(stream.sampler.phantom_bank)}) setup {time.perf_counter() - t_setup:.1f}s", flush=True)

    model = CascadedUNet(**cfg["model"]).to(device)
    dc_params = [p for n, p in model.named_parameters() if n.endswith("dc.param")]
    other = [p for n, p in model.named_parameters() if not n.endswith("dc.param")]
    # the data-consistency weights are single scalars: let them move faster
    opt = torch.optim.Adam([{"params": other, "lr_mult": 1.0},
                            {"params": dc_params, "lr_mult": float(cfg["dc_lr_mult"])}], lr=cfg["lr"])
    print(f"model: {count_parameters(model)} parameters, "
          f"{count_flops(CascadedUNet(**cfg['model']), 512) / 1e9:.2f} GFLOPs per 512x512 slice", flush=True)

    ckpt_path = _abs(cfg["checkpoint_dir"]) / f"{cfg['config_name']}_last.pt"
    step, elapsed, history = 0, 0.0, []
    prev = load_earlier_stage(cfg)
    # steps/time of the earlier stage, for the record (also when this stage is resumed)
    step_base, elapsed_base = (int(prev["step"]), float(prev["elapsed"])) if prev is not None else (0, 0.0)
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed, history = ck["step"], ck["elapsed"], ck["history"]
        stream.set_state(json.loads(ck["stream_rng"]))
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {ckpt_path} at step {step}, {elapsed:.0f}s", flush=True)
    elif prev is not None:
        model.load_state_dict(with_input_channels(prev["model"], model))
        history = [dict(h, stage="previous") for h in prev["history"]]
        print(f"stage start from the weights of {cfg['init_from']} (step {prev['step']})", flush=True)
    elif resume:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", flush=True)

    quick_val = validation_set(cfg["val_seed"] + 1, 4, data_cfg)
    budget, max_steps = float(cfg["time_budget_s"]), int(cfg["steps"])
    model.train()
    t0 = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()
    run_loss, run_l1, n_run = 0.0, 0.0, 0
    pbar = tqdm(total=max_steps, initial=step, mininterval=10, file=sys.stdout, dynamic_ncols=False, ncols=110)
    while step < max_steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            print(f"\ntime budget reached ({elapsed:.0f}s) at step {step}", flush=True)
            break
        progress = max(step / max_steps, elapsed / budget)
        lr = lr_at(progress, step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        xb, yb = stream.next_batch(int(cfg["batch_size"]))
        x = torch.from_numpy(xb).to(device)
        y = torch.from_numpy(yb).to(device)
        out = model(x)
        l1 = F.l1_loss(out, y)
        loss = l1
        if cfg["ssim_weight"] > 0:
            loss = loss + cfg["ssim_weight"] * (1.0 - ssim_torch(out, y))
        if cfg["gradient_weight"] > 0:
            loss = loss + cfg["gradient_weight"] * gradient_l1(out, y)
        if cfg["lowpass_weight"] > 0:
            loss = loss + cfg["lowpass_weight"] * lowpass_l1(out, y, float(cfg["lowpass_sigma"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        run_l1 += float(l1.detach())
        n_run += 1
        pbar.update(1)
        if step % cfg["log_every"] == 0:
            rec = {"step": step_base + step, "loss": run_loss / n_run, "l1": run_l1 / n_run, "lr": lr,
                   "elapsed": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            pbar.set_postfix(loss=f"{rec['loss']:.4f}", l1=f"{rec['l1']:.4f}", lr=f"{lr:.1e}")
            run_loss, run_l1, n_run = 0.0, 0.0, 0
        if time.perf_counter() - last_ckpt >= cfg["checkpoint_every_s"]:
            ev = evaluate(model, quick_val, device)
            lam = [round(float(torch.sigmoid(s.dc.param)), 3) for s in model.cascade]
            if history:
                history[-1]["val_l1"] = ev["summary"]["l1_output"]
            print(f"\nstep {step} t={time.perf_counter() - t0:.0f}s lr={lr:.2e} train L1 "
                  f"{history[-1]['l1'] if history else float('nan'):.4f}; quick-val L1 input "
                  f"{ev['summary']['l1_input']:.4f} -> DL {ev['summary']['l1_output']:.4f}, PSNR "
                  f"{ev['summary']['psnr_input']:.2f} -> {ev['summary']['psnr_output']:.2f}; DC lambdas {lam}; "
                  f"sources {stream.source_counts}", flush=True)
            save_checkpoint(ckpt_path, model, opt, step, time.perf_counter() - t0, history, stream)
            plot_losses(history, _abs(cfg["loss_plot"]))
            last_ckpt = time.perf_counter()
    pbar.close()
    elapsed = time.perf_counter() - t0
    save_checkpoint(ckpt_path, model, opt, step, elapsed, history, stream)
    plot_losses(history, _abs(cfg["loss_plot"]))
    stream.close()
    print(f"training stopped at step {step} after {elapsed:.0f}s; sources used {stream.source_counts}", flush=True)

    finalize(model, cfg, step_base + step, elapsed_base + elapsed, stream.sampler.sources, device)


def apply_overrides(cfg: dict, args: argparse.Namespace) -> dict:
    """Command-line settings over the config's, for a run on another machine (the GPU
    machine: more simulation workers, a bigger batch, its own budget, output under $OUT)."""
    cfg = dict(cfg)
    for key in ("steps", "time_budget_s", "batch_size", "data_workers", "threads", "checkpoint_dir", "init_from"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    if args.model_dir is not None:
        out = Path(args.model_dir)
        cfg.update(model_dir=str(out), info_path=str(out / "model_info.json"),
                   validation_path=str(out / "validation.json"), loss_plot=str(out / "loss_curve.png"))
    return cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from the config's last checkpoint")
    ap.add_argument("--export-only", action="store_true",
                    help="validate and export the config's last checkpoint without training")
    over = ap.add_argument_group("overrides of the config (each recorded in model_info.json's training_overrides)")
    over.add_argument("--steps", type=int)
    over.add_argument("--time-budget-s", type=float)
    over.add_argument("--batch-size", type=int)
    over.add_argument("--data-workers", type=int, help="simulation processes (0: in the training process)")
    over.add_argument("--threads", type=int, help="torch CPU threads")
    over.add_argument("--model-dir", type=Path, help="export folder (weights, ONNX, model_info, validation, loss plot)")
    over.add_argument("--checkpoint-dir", type=str)
    over.add_argument("--init-from", type=str)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    overrides = {k: str(v) for k, v in vars(args).items()
                 if k not in ("config", "resume", "export_only") and v is not None}
    cfg = apply_overrides(cfg, args)
    cfg["training_overrides"] = overrides
    if args.export_only:
        torch.set_num_threads(int(cfg["threads"]))
        export_checkpoint(cfg)
    else:
        train(cfg, args.resume)


if __name__ == "__main__":
    main()
