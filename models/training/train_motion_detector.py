"""Simulate motion-corrupted slices and train the motion detector (models.motion_detector).

    python -m models.training.train_motion_detector simulate --phantoms 120 --generic 2000 --workers 2
    python -m models.training.train_motion_detector train --minutes 20
    python -m models.training.train_motion_detector simulate ... && ... train ...   (``make train-motion``)

Sources (DESIGN.md section 4), chosen so that the detector's acceptance tests stay on
anatomy it has never seen:
  * the synthetic cervical-spine phantom, patient seeds from ``PHANTOM_SEEDS`` (disjoint
    from the QC calibration seeds 7000-7011 and evaluation seeds 8000-8015), all roles,
    rigid motion and swallowing as ``simulation.dicom_study.simulate_series`` makes them;
  * ITK's real MR slices (``BrainMidSagittalSlice``, a real T1 head with the texture of one
    acquisition, and BrainWeb T1 and PD slices; 40 % of the generic examples, framed tightly
    as real series are), ITK's ``KmeansTest_T1UCharRaw`` and scikit-image's bundled natural
    images, acquired with the same k-space simulator, rigid motion and local motion of a random blob (a
    stand-in for swallowing), a wider range of shot counts (8-64), amplitudes, protocols
    and SNR than the product's simulation, and the air as scanners leave it (30 %: zero-filled
    readout bands or suppressed background);
  * NOT the ch2 / MNI152 heads: ``models.evaluation.qc_independent`` tests the detector on them
    with TorchIO's motion and ghosting, an independent simulator.
Label: 1 when the motion really produced an artifact, RMS(image - motion-free image) >
``ARTIFACT_LABEL_ANR`` noise SDs (the motion-free image has the same noise and the
patient still in the k-space-centre position), 0 for still patients and motion that left
no trace. Binary cross-entropy, AdamW, horizontal/vertical flips.
"""
from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from models import WEIGHTS_DIR
from models.motion_detector import (
    INPUT_SIZE,
    MOTION_INFO_FILE,
    MOTION_SHA256_FILE,
    MOTION_WEIGHTS_FILE,
    MotionNet,
    prepare_slice,
    prepare_volume,
)

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path("/tmp/cervical_motion_data")
PHANTOM_SEEDS = range(9000, 10000)
GENERIC_SEEDS = range(20000, 100000)
ARTIFACT_LABEL_ANR = 0.15
PHANTOM_ROLES = ("SAG_T1", "SAG_T2", "AX_T2", "SAG_CE_T1", "SAG_DIXON_IP")
SEVERITY_P = {"none": 0.35, "mild": 0.30, "severe": 0.35}
VERSION = "1.2.0"
#: Share of the generic examples drawn from ITK's real MR slices (``real_object``).
REAL_SHARE = 0.4
#: Share of the generic examples whose object is a low-resolution acquisition, with its own
#: noise, interpolated to the display matrix (``low_resolution_source``): 0 for the shipped
#: 1.2.0; candidate 1.3.0 used 0.35 and was not shipped (docs/qc_detector_candidate_1.3.0.json).
LOW_RESOLUTION_SHARE = 0.0
SEED = 20261124


def _severity(rng: np.random.Generator) -> tuple[str, str]:
    severity = str(rng.choice(list(SEVERITY_P), p=list(SEVERITY_P.values())))
    kind = str(rng.choice(["rigid", "swallow", "both"], p=[0.4, 0.3, 0.3]))
    return severity, kind


def _anr(image: np.ndarray, still: np.ndarray | None, sigma: float) -> float:
    if still is None:
        return 0.0
    return float(np.sqrt(np.mean((image.astype(np.float64) - still) ** 2)) / max(sigma, 1e-9))


def phantom_examples(seed: int) -> list[dict]:
    """Slices of one phantom patient: several series, random roles, motion and protocol."""
    from simulation import acquisition as acq
    from simulation.dicom_study import simulate_series
    from simulation.phantom import PhantomPatient, axial_geometry, render_plane, sagittal_geometry

    rng = np.random.default_rng([SEED, seed])
    patient = PhantomPatient.from_seed(seed, protocol="myelopathy" if rng.random() < 0.5 else "hivd")
    # Slices from anywhere in the product's stacks (13 sagittal slices reach +-20 mm, 24 axial
    # slices z -60..20 mm): detector 1.0.0 saw +-4 mm only and flagged clean lateral slices.
    geometry = {"sagittal": sagittal_geometry(n_slices=3, x_centre=float(rng.uniform(-20, 20))),
                "axial": axial_geometry(n_slices=3, z_centre=float(rng.uniform(-60, 20)))}
    rendered = {k: [render_plane(patient, p) for p in v] for k, v in geometry.items()}
    out = []
    for _ in range(10):
        role = str(rng.choice(PHANTOM_ROLES))
        plane = "axial" if role.startswith("AX") else "sagittal"
        severity, kind = _severity(rng)
        protocol = acq.CONVENTIONAL.accelerated(phase_encode_factor=float(rng.uniform(0.6, 1.0)),
                                                averages_ratio=float(rng.uniform(0.5, 1.0)))
        series = simulate_series(patient, role, geometry[plane], rendered[plane], acquisition="accelerated",
                                 seed=int(rng.integers(2**31)), motion=severity, motion_kind=kind,
                                 protocol=protocol, with_motion_free=severity != "none")
        sigma = series.noise_sigma / np.sqrt(series.protocol.averages_ratio)
        x = prepare_volume(series.images, series.protocol.phase_encode_axis).astype(np.float16)
        for i in range(series.images.shape[0]):
            still = None if series.motion_free is None else series.motion_free[i]
            out.append({"x": x[i], "anr": _anr(series.images[i], still, sigma), "source": "phantom",
                        "seed": seed, "severity": severity, "kind": kind})
    return out


_SAMPLER = None


def _sampler():
    """Object sampler restricted to ITK Kmeans T1 and natural images (no ch2/MNI152)."""
    global _SAMPLER  # one per worker process: loading the sources takes seconds
    if _SAMPLER is None:
        from models.training.data import DataConfig, ObjectSampler, _load_volume, itk_kmeans_path

        cfg = DataConfig(source_weights={"volume": 0.5, "natural": 0.5})
        sampler = ObjectSampler(cfg, use_phantom=False, seed=SEED)
        kmeans = itk_kmeans_path()
        sampler.volumes = [_load_volume(kmeans)] if kmeans.exists() else []
        if not sampler.volumes:
            sampler.sources, sampler.source_p = ["natural"], np.array([1.0])
        _SAMPLER = sampler
    return _SAMPLER


_REAL_SLICES = None


def real_object(rng: np.random.Generator) -> np.ndarray:
    """One of ITK's real MR slices as an object in a display matrix: turned, flipped, cropped,
    a little gamma, often filling or overfilling the field of view (real series are framed
    tightly, with little air)."""
    global _REAL_SLICES  # one per worker process
    if _REAL_SLICES is None:
        from models.training.data import real_slices

        _REAL_SLICES = real_slices()
    from models.training.data import _place

    im = _REAL_SLICES[int(rng.integers(len(_REAL_SLICES)))]
    im = np.rot90(im, int(rng.integers(4)))
    if rng.random() < 0.5:
        im = im[:, ::-1]
    h, w = im.shape
    ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
    r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = np.clip(im[r0 : r0 + ch, c0 : c0 + cw], 0, None) ** rng.uniform(0.8, 1.25)
    rows, cols = _sampler()._matrix(rng)
    zoom = rng.uniform(0.8, 1.4) * min(rows / ch, cols / cw)
    return _place(ndimage.zoom(im, zoom, order=3).clip(0, None), (rows, cols), rng)


def with_background_variant(images: list[np.ndarray | None], obj: np.ndarray, pe_axis: int, sigma: float,
                            rng: np.random.Generator) -> list[np.ndarray | None]:
    """What real scanners do to the air, applied alike to an image and its motion-free twin:
    nothing (most often), zero-filled bands at both ends of the readout axis (cropped
    oversampling), or suppressed air (background set to zero away from the object)."""
    u = rng.random()
    if u < 0.7:
        return images
    out = []
    if u < 0.85:
        n = int(obj.shape[1 - pe_axis] * rng.uniform(0.04, 0.15))
        for im in images:
            if im is not None:
                im = im.copy()
                if pe_axis == 1:
                    im[:n, :] = 0
                    im[-n:, :] = 0
                else:
                    im[:, :n] = 0
                    im[:, -n:] = 0
            out.append(im)
        return out
    keep = ndimage.binary_dilation(obj > 0.05 * obj.max(), iterations=int(rng.integers(2, 12)))
    for im in images:
        out.append(None if im is None else np.where(keep | (im > 4.0 * sigma), im, 0.0))
    return out


def low_resolution_source(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``obj`` as a low-resolution acquisition interpolated to its matrix: sampled 2-4x coarser,
    with Rician noise of its own (SNR 8-40), then cubic-interpolated back to ``obj``'s shape.

    Why: sites send series reconstructed or resampled to a larger matrix than acquired (a
    256 acquisition shown at 512, old low-resolution scans); their noise and edges become
    blobs and ripples spread over several pixels, in the air too. Detector 1.2.0 never saw
    such air and read it as ghosting (real MR false flags). Applied before the acquisition
    simulation, to the moved and the still object alike, so the label still measures motion.
    """
    from models.training.data import cubic_to_shape, foreground_reference

    factor = float(rng.uniform(2.0, 4.0))
    small = ndimage.zoom(obj, 1.0 / factor, order=1, grid_mode=True, mode="grid-constant").clip(0, None)
    sigma = foreground_reference(small) / float(np.exp(rng.uniform(np.log(8), np.log(40))))
    noisy = np.abs(small + sigma * (rng.standard_normal(small.shape) + 1j * rng.standard_normal(small.shape)))
    return np.clip(cubic_to_shape(noisy, obj.shape), 0, None)


def generic_example(seed: int, low_resolution_share: float = LOW_RESOLUTION_SHARE) -> list[dict]:
    """One slice of a non-phantom object with rigid and/or local blob motion."""
    from models.training.data import foreground_reference
    from simulation import acquisition as acq

    rng = np.random.default_rng([SEED, seed])
    if rng.random() < REAL_SHARE:
        obj, source = real_object(rng), "real"
    else:
        obj, source = _sampler().sample(rng)
    if low_resolution_share > 0 and rng.random() < low_resolution_share:  # no draw at 0: 1.2.0's data stay
        obj, source = low_resolution_source(obj, rng), f"{source} low-resolution"
    pe_axis = int(rng.integers(2))
    protocol = acq.CONVENTIONAL.accelerated(phase_encode_factor=float(rng.uniform(0.5, 1.0)),
                                            averages_ratio=float(rng.uniform(0.5, 1.0))).with_phase_encode_axis(pe_axis)
    sigma = foreground_reference(obj) / float(np.exp(rng.uniform(np.log(8), np.log(60))))
    phase = acq.smooth_background_phase(obj.shape, rng)
    severity, kind = _severity(rng)
    blob = None
    if kind != "rigid":  # local motion of a random region, as swallowing moves the larynx
        rows, cols = np.indices(obj.shape, dtype=np.float64)
        body = np.argwhere(obj > 0.1 * obj.max())
        centre = body[int(rng.integers(len(body)))] if len(body) else np.array(obj.shape) / 2
        radius = rng.uniform(0.08, 0.25) * min(obj.shape)
        blob = np.exp(-(((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * radius**2)))
    trajectory = acq.random_motion_trajectory(rng, severity, float(rng.uniform(0.35, 1.2)), kind=kind,
                                              swallow_weight=blob, n_shots=int(rng.integers(8, 65)))
    noise_seed = int(rng.integers(2**31))
    image = acq.simulate_acquisition(obj, protocol, sigma, np.random.default_rng(noise_seed), phase=phase,
                                     motion=trajectory)
    still = None
    if severity != "none":
        frozen = trajectory.frozen_at_centre(obj.shape[pe_axis],
                                             acq.acquired_phase_encode_mask(obj.shape[pe_axis], protocol))
        still = acq.simulate_acquisition(obj, protocol, sigma, np.random.default_rng(noise_seed), phase=phase,
                                         motion=frozen)
    scale = 2800.0 / max(float(np.percentile(image, 99.9)), 1e-9)  # 12-bit stored values, as scanners write
    image = np.clip(np.round(image * scale), 0, 4095)
    still = None if still is None else np.clip(np.round(still * scale), 0, 4095)
    noise_sd = sigma * scale / np.sqrt(protocol.averages_ratio)
    anr = _anr(image, still, noise_sd)  # the artifact, measured before the background variant
    image, still = with_background_variant([image, still], obj, pe_axis, noise_sd, rng)
    return [{"x": prepare_slice(image, pe_axis).astype(np.float16), "anr": anr, "source": source,
             "seed": seed, "severity": severity, "kind": kind}]


def _task(task: tuple[str, int, float]) -> list[dict]:
    torch.set_num_threads(1)
    kind, seed, low_resolution_share = task
    try:
        return phantom_examples(seed) if kind == "phantom" else generic_example(seed, low_resolution_share)
    except Exception as exc:  # a failed draw must not end a long simulation
        print(f"skipped {kind} {seed}: {exc.__class__.__name__}: {exc}", flush=True)
        return []


def simulate(n_phantoms: int, n_generic: int, workers: int, out_dir: Path,
             low_resolution_share: float = LOW_RESOLUTION_SHARE) -> Path:
    tasks = [("phantom", s, low_resolution_share) for s in list(PHANTOM_SEEDS)[:n_phantoms]]
    tasks += [("generic", s, low_resolution_share) for s in list(GENERIC_SEEDS)[:n_generic]]
    # Interleave so that a stopped run still has both kinds.
    order = np.random.default_rng(SEED).permutation(len(tasks))
    tasks = [tasks[i] for i in order]
    out_dir.mkdir(parents=True, exist_ok=True)
    examples: list[dict] = []
    start = time.time()
    with Pool(workers) as pool:
        for i, result in enumerate(pool.imap_unordered(_task, tasks, chunksize=1)):
            examples.extend(result)
            if (i + 1) % 100 == 0 or i + 1 == len(tasks):
                print(f"{i + 1}/{len(tasks)} tasks, {len(examples)} slices, {time.time() - start:.0f} s", flush=True)
    path = out_dir / "motion_examples.npz"
    np.savez(path, x=np.stack([e["x"] for e in examples]), anr=np.array([e["anr"] for e in examples]),
             source=np.array([e["source"] for e in examples]), seed=np.array([e["seed"] for e in examples]),
             severity=np.array([e["severity"] for e in examples]), kind=np.array([e["kind"] for e in examples]))
    print(f"wrote {path}: {len(examples)} slices in {time.time() - start:.0f} s")
    return path


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def train(data: Path, minutes: float, out_dir: Path, batch_size: int = 32, lr: float = 2e-3,
          init: Path | None = None, version: str = VERSION) -> dict:
    """Train on the simulated slices for ``minutes`` (cosine schedule over the measured pace);
    ``init``: start from these weights (a ``motion_detector.pt`` state_dict) instead of random
    ones. From random weights the loss can sit on its constant-prediction plateau (0.55) for
    the whole run: a 2026-12-05 run on the data of 1.3.0 never left it in 6,667 steps
    (validation AUC 0.50), while 1.2.0 left it after ~450."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    d = np.load(data)
    x = torch.from_numpy(d["x"].astype(np.float32))
    labels = torch.from_numpy((d["anr"] > ARTIFACT_LABEL_ANR).astype(np.float32))
    # Validation: every tenth phantom patient and every tenth generic object (whole patients).
    val = (d["seed"] % 10) == 3
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    network = MotionNet()
    if init is not None:
        network.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    # CUDA when present (the GPU machine); the slices stay in host memory, batches move
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    network.to(device)
    labels = labels.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    pos_weight = torch.tensor(float((1 - labels[tr_idx]).sum() / labels[tr_idx].sum().clamp_min(1)), device=device)
    deadline = time.time() + 60 * minutes
    est_steps = None
    step, losses, history = 0, [], []
    start = time.time()
    while time.time() < deadline:
        for i in range(0, len(tr_idx) - batch_size + 1, batch_size):
            if time.time() >= deadline:
                break
            if est_steps is None and step == 20:  # cosine schedule over the measured pace
                est_steps = int(20 * (60 * minutes) / max(time.time() - start, 1e-3))
            frac = min(1.0, step / est_steps) if est_steps else 0.0
            for g in optimiser.param_groups:
                g["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))
            if i == 0:
                rng.shuffle(tr_idx)
            idx = tr_idx[i : i + batch_size]
            xb = x[idx].to(device)
            if rng.random() < 0.5:
                xb = xb.flip(-1)
            if rng.random() < 0.5:
                xb = xb.flip(-2)
            loss = F.binary_cross_entropy_with_logits(network(xb), labels[idx], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                history.append({"step": step, "loss": float(np.mean(losses[-100:])), "seconds": round(time.time() - start)})
                print(f"step {step} loss {history[-1]['loss']:.4f} {time.time() - start:.0f} s", flush=True)
    network.eval()
    with torch.inference_mode():
        p = torch.cat([torch.sigmoid(network(x[va_idx[i : i + 64]].to(device))).cpu()
                       for i in range(0, len(va_idx), 64)]).numpy()
    network.cpu()
    y = labels[va_idx].cpu().numpy()
    sev = d["severity"][va_idx]
    source = d["source"][va_idx]
    validation = {"n": int(len(va_idx)), "auc_artifact": _auc(p[y == 0], p[y == 1]),
                  "auc_mild_or_worse": _auc(p[sev == "none"], p[sev != "none"]),
                  "auc_artifact_by_source": {str(s): _auc(p[(source == s) & (y == 0)], p[(source == s) & (y == 1)])
                                             for s in np.unique(source)}}
    print(f"validation: {validation}")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / MOTION_WEIGHTS_FILE
    torch.save(network.state_dict(), weights)
    from models.inference import file_sha256

    (out_dir / MOTION_SHA256_FILE).write_text(f"{file_sha256(weights)}  {MOTION_WEIGHTS_FILE}\n")
    sources, counts = np.unique(d["source"], return_counts=True)
    info = {"name": "cervical_motion_detector", "version": version, "file": MOTION_WEIGHTS_FILE, "device": str(device),
            "sha256": file_sha256(weights), "widths": list(network.widths),
            "input_size": INPUT_SIZE, "label": f"RMS artifact > {ARTIFACT_LABEL_ANR} noise SD",
            "training": {"seed": SEED, "steps": step, "minutes": round((time.time() - start) / 60, 1),
                         "initialised_from_sha256": None if init is None else file_sha256(init),
                         "batch_size": batch_size, "lr": lr, "n_train": int(len(tr_idx)),
                         "slices_by_source": {str(s): int(c) for s, c in zip(sources, counts)},
                         "phantom_seeds": [int(d["seed"][d["source"] == "phantom"].min()),
                                           int(d["seed"][d["source"] == "phantom"].max())]
                         if (d["source"] == "phantom").any() else None,
                         "history": history},
            "validation": validation}
    (out_dir / MOTION_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {weights}, {MOTION_SHA256_FILE}, {MOTION_INFO_FILE}")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="simulate training slices")
    sim.add_argument("--phantoms", type=int, default=120)
    sim.add_argument("--generic", type=int, default=2000)
    sim.add_argument("--workers", type=int, default=2)
    sim.add_argument("--data-dir", type=Path, default=DATA_DIR)
    sim.add_argument("--low-resolution-share", type=float, default=LOW_RESOLUTION_SHARE,
                     help="share of generic slices made low-resolution sources (candidate 1.3.0: 0.35)")
    tr = sub.add_parser("train", help="train on simulated slices")
    tr.add_argument("--minutes", type=float, default=20.0)
    tr.add_argument("--data-dir", type=Path, default=DATA_DIR)
    tr.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--init", type=Path, default=None, help="start from these weights (motion_detector.pt)")
    tr.add_argument("--version", default=VERSION, help="version written into motion_detector.json")
    tr.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "simulate":
        simulate(args.phantoms, args.generic, args.workers, args.data_dir, args.low_resolution_share)
    else:
        train(args.data_dir / "motion_examples.npz", args.minutes, args.out, batch_size=args.batch_size,
              lr=args.lr, init=args.init, version=args.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
