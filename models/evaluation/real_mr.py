"""Does the enhancement hold on real MR it never saw? (issue 12)

    python -m models.evaluation.enhancement --real              # table; docs/model_evaluation_real.json
    python -m models.evaluation.enhancement --real --quick      # one matrix per series, no BM3D

Sources: the *evaluation-only* real MR of docs/engineering.md (dipy's ``t1_coronal_slice``
and ``S0_10slices``, nibabel's ``example4d``): never used to train, tune or choose a model
or a run-time setting. ``--sources calibration`` runs the same harness on training-allowed
real slices instead (ITK's BrainWeb/T1 slices); that is the set the run-time guard and the
strength levels were set on (with model 0.2.0; model 0.3.0 trains on them).
``--sources selection`` runs it on dipy's ``aniso_vox`` (training-allowed real MR that no
model trains on): the set a new model is chosen on.

Each source series is resampled (cubic) to several display matrices (128 to 640 pixels,
pixel sizes from its own field of view) and acquired in k-space at about half the
conventional scan time in three ways -- half the averages; 75 % of the phase-encode lines
with 2/3 of the averages; R = 2 SENSE with 8 coils (g-factor noise) -- at two noise levels
(conventional SNR 30 and 15 in the body), as stored 16-bit integers. Every slice of the
series goes through the network (``enhance_volume``) as one series, then through the
product's guard at each strength level.

Per slice, against the noiseless conventional image (the truth): PSNR, SSIM (whole image
and body), and the tissue-signal bias (mean over the body, % of the truth); per group, the
share of slices where a method's SSIM is at least the conventional's and where it is
below the accelerated input's.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from models.evaluation.baselines import bm3d_denoise, nlm_denoise
from simulation import acquisition as acq
from simulation.parallel_imaging import coil_sensitivities, simulate_sense_acquisition

__all__ = ["RealSeries", "evaluation_series", "calibration_series", "selection_series", "ACQUISITION_KINDS", "MATRICES",
           "simulate_case", "tissue_bias_percent", "evaluate_real", "summarize_real", "matrices_for"]

#: Display matrices (longest side, pixels) the product sees.
MATRICES = (128, 192, 256, 320, 384, 448, 512, 640)
#: Conventional SNR (mean body signal / noise SD) of the two noise levels.
SNR_LEVELS = (30.0, 15.0)
ACQUISITION_KINDS = ("half averages", "75% lines, 2/3 averages", "R=2 SENSE")
_PROTOCOLS = {
    "half averages": acq.CONVENTIONAL.accelerated(phase_encode_factor=1.0, averages_ratio=0.5),
    "75% lines, 2/3 averages": acq.DEFAULT_ACCELERATED,
}
SEED = 20261203


@dataclass
class RealSeries:
    """A real MR series ``(slices, rows, cols)`` (float, arbitrary units) and its pixel size (mm)."""

    source: str
    slices: np.ndarray
    pixel_mm: float
    #: display matrices to resample to (None: :func:`matrices_for` spreads them over the sources)
    matrices: tuple[int, ...] | None = None


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _with_anatomy(volume: np.ndarray, min_fraction: float = 0.15) -> np.ndarray:
    """Slices where at least ``min_fraction`` of the pixels are above 10 % of the series' peak."""
    peak = np.percentile(volume, 99.5)
    keep = [(s > 0.1 * peak).mean() >= min_fraction for s in volume]
    return volume[np.asarray(keep)]


def evaluation_series() -> list[RealSeries]:
    """The evaluation-only real MR (docs/engineering.md, "three lists")."""
    import nibabel as nib

    out = [RealSeries("dipy t1_coronal_slice (T1)",
                      np.load(_package_file("dipy", "data", "files", "t1_coronal_slice.npy")).astype(np.float64)[None],
                      1.0)]
    for name, path in (("dipy S0_10slices (b0 EPI)", _package_file("dipy", "data", "files", "S0_10slices.nii.gz")),
                       ("nibabel example4d (EPI)", _package_file("nibabel", "tests", "data", "example4d.nii.gz"))):
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
        if data.ndim == 4:
            data = data[..., 0]
        volume = _with_anatomy(np.moveaxis(data, 2, 0))  # axial slices
        out.append(RealSeries(name, volume, float(img.header.get_zooms()[0])))
    return out


def calibration_series() -> list[RealSeries]:
    """Training-allowed real slices (ITK examples), for setting run-time parameters."""
    from skimage.io import imread

    base = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
    names = ("BrainMidSagittalSlice.png", "BrainT1Slice.png", "BrainProtonDensitySlice.png")
    return [RealSeries(f"ITK {n}", imread(base / n, as_gray=True).astype(np.float64)[None], 1.0) for n in names]


def selection_series() -> list[RealSeries]:
    """dipy's ``aniso_vox`` (training-allowed real MR, a 4 x 4 x 5 mm head), its axial slices
    with anatomy: real MR that no model trains on, for choosing between models (and for
    checking the QC calibration). At ``SELECTION_MATRICES``: the small ones (128, 192),
    where its own detail reaches the pixel scale, are where a denoiser takes detail for
    noise; at 320 and 512 alone every candidate since 0.2.0 scored alike (100 %)."""
    import nibabel as nib

    img = nib.load(_package_file("dipy", "data", "files", "aniso_vox.nii.gz"))
    volume = _with_anatomy(np.moveaxis(np.asarray(img.dataobj, dtype=np.float64), 2, 0))
    return [RealSeries("dipy aniso_vox (T1)", volume, float(img.header.get_zooms()[0]), SELECTION_MATRICES)]


#: Display matrices of the selection source (before 2026-12-05 evening: 512 and 320 only).
SELECTION_MATRICES = (128, 192, 320, 512)


def matrices_for(series: RealSeries, index: int) -> tuple[int, ...]:
    """Display matrices a series is resampled to: single slices get four, multi-slice series
    two (BM3D's time), spread so that the sources together cover 128 to 640; a series'
    own ``matrices`` where it has them."""
    if series.matrices:
        return tuple(series.matrices)
    if series.slices.shape[0] == 1:
        return (MATRICES[(index + 7) % 8], MATRICES[(index + 6) % 8], MATRICES[(index + 3) % 8], MATRICES[(index + 1) % 8])
    return (MATRICES[(2 * index - 2) % 8], MATRICES[(index + 3) % 8])


def _resample(series: RealSeries, matrix: int) -> tuple[np.ndarray, float]:
    """Cubic resampling so the longest side is ``matrix`` (even sides); returns the stack and pixel mm."""
    s = series.slices
    factor = matrix / max(s.shape[1:])
    shape = [max(2, int(round(d * factor / 2)) * 2) for d in s.shape[1:]]
    out = np.stack([ndimage.zoom(sl, (shape[0] / sl.shape[0], shape[1] / sl.shape[1]), order=3) for sl in s])
    out = np.clip(out, 0, None)
    return out * (1000.0 / max(float(np.percentile(out, 99.5)), 1e-9)), series.pixel_mm / factor


def body_mask(truth: np.ndarray) -> np.ndarray:
    """Tissue (not background): above 20 % of the slice's 99th percentile, eroded 2 px."""
    m = truth > 0.2 * np.percentile(truth, 99)
    return ndimage.binary_erosion(m, iterations=2) if m.sum() > 200 else m


def tissue_bias_percent(image: np.ndarray, truth: np.ndarray) -> float:
    """Mean signal over the body, relative to the truth's (%): 0 is unbiased."""
    m = body_mask(truth)
    ref = float(truth[m].mean())
    return 100.0 * (float(np.asarray(image, dtype=np.float64)[m].mean()) - ref) / ref


def simulate_case(obj: np.ndarray, kind: str, snr: float, rng: np.random.Generator,
                  pe_axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Acquire one slice ``obj`` (rows, cols) conventionally and at half time (``kind``).

    Returns (truth, conventional, accelerated, oracle noise SD of the accelerated image
    in the body, measured from a noiseless twin acquisition).
    """
    conv_protocol = acq.CONVENTIONAL.with_phase_encode_axis(pe_axis)
    truth = acq.band_limited_truth(obj, conv_protocol)
    body = body_mask(truth)
    frac = float(conv_protocol.sampling_mask(obj.shape).mean())
    sigma_k = float(truth[body].mean()) / (snr * np.sqrt(frac))
    phase = acq.smooth_background_phase(obj.shape, rng)
    conventional = acq.simulate_acquisition(obj, conv_protocol, sigma_k, rng, phase=phase)
    if kind == "R=2 SENSE":
        coils = coil_sensitivities(obj.shape, 8, rng)
        accelerated = simulate_sense_acquisition(obj, conv_protocol, sigma_k, rng, coils=coils, phase=phase)
        noiseless = simulate_sense_acquisition(obj, conv_protocol, 0.0, rng, coils=coils, phase=phase)
    else:
        protocol = _PROTOCOLS[kind].with_phase_encode_axis(pe_axis)
        accelerated = acq.simulate_acquisition(obj, protocol, sigma_k, rng, phase=phase)
        noiseless = acq.simulate_acquisition(obj, protocol, 0.0, rng, phase=phase)
    sigma = float(np.std((accelerated - noiseless)[body]))
    return truth, conventional, accelerated, sigma


def _as_stored(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def evaluate_real(enhance: Callable[[np.ndarray], dict[str, np.ndarray]], series: list[RealSeries],
                  use_bm3d: bool = True, quick: bool = False, metrics=None, use_nlm: bool = True,
                  snr_levels: tuple[float, ...] = SNR_LEVELS) -> list[dict]:
    """Run every (series, matrix, kind, noise level) case; returns one row per slice.

    ``enhance``: ``(S, H, W) uint16 series -> {variant name: (S, H, W) float}``, the
    product's enhancement variants (the series is the unit, as in the product).
    ``metrics``: ``(image, truth, peak) -> dict`` (the phantom evaluation's ``slice_metrics``).
    ``snr_levels``: conventional SNRs (mean body signal / noise SD) of the cases.
    """
    if not snr_levels or any(not np.isfinite(v) or v <= 0 for v in snr_levels):
        raise ValueError(f"snr_levels must be positive numbers, got {snr_levels!r}")
    rng = np.random.default_rng(SEED)
    cases = []
    for k, s in enumerate(series):
        matrices = matrices_for(s, k)[:1] if quick else matrices_for(s, k)
        for m_i, matrix in enumerate(matrices):
            for kind in ACQUISITION_KINDS:
                for snr in snr_levels:
                    cases.append((s, matrix, kind, snr, (m_i + k) % 2))
    rows = []
    for s, matrix, kind, snr, pe_axis in tqdm(cases, desc="real-MR series", mininterval=10):
        objs, pixel = _resample(s, matrix)
        sims = [simulate_case(o, kind, snr, rng, pe_axis) for o in objs]
        truth = np.stack([t for t, *_ in sims])
        conventional = np.stack([_as_stored(c) for _, c, _, _ in sims])
        accelerated = np.stack([_as_stored(a) for _, _, a, _ in sims])
        images = {"accelerated": accelerated.astype(np.float32), "conventional": conventional.astype(np.float32)}
        if use_nlm:
            images["nlm"] = np.stack([nlm_denoise(a, sg) for a, (*_, sg) in zip(accelerated, sims)])
        if use_bm3d:
            images["bm3d"] = np.stack([bm3d_denoise(a, sg) for a, (*_, sg) in zip(accelerated, sims)])
        for name, image in enhance(accelerated).items():
            images[name] = np.asarray(image, dtype=np.float32)
        for i in range(truth.shape[0]):
            peak = float(np.percentile(truth[i], 99.9))
            row = {"source": s.source, "slice": i, "matrix": list(truth.shape[1:]), "pixel_mm": round(pixel, 3),
                   "kind": kind, "snr": snr, "metrics": {}}
            for name, vol in images.items():
                row["metrics"][name] = metrics(vol[i], truth[i], peak) | {
                    "bias_pct": tissue_bias_percent(vol[i], truth[i])}
            rows.append(row)
    return rows


def summarize_real(rows: list[dict], methods: list[str]) -> dict:
    """Means per method, and for each method the share of slices at/above the
    conventional's body SSIM and below the accelerated input's."""
    out: dict = {"n": len(rows)}
    for m in methods:
        vals = {k: float(np.mean([r["metrics"][m][k] for r in rows])) for k in ("psnr", "ssim", "ssim_body", "bias_pct")}
        # Shares by SSIM over the body: whole-image SSIM rewards removing background noise,
        # which every denoiser does and no reader needs.
        vals["ge_conventional"] = float(np.mean([r["metrics"][m]["ssim_body"] >= r["metrics"]["conventional"]["ssim_body"]
                                                for r in rows]))
        vals["below_input"] = float(np.mean([r["metrics"][m]["ssim_body"] < r["metrics"]["accelerated"]["ssim_body"]
                                            for r in rows]))
        vals["worst_bias_pct"] = float(max((r["metrics"][m]["bias_pct"] for r in rows), key=abs))
        out[m] = vals
    return out
