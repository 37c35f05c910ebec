"""Intensity normalisation shared by training and inference.

One robust scale per *series* (at inference) or per simulated image (in training): the
99.5th percentile of the network *input*, computed on all its voxels. Input and target are
divided by the same scale; the network output is multiplied back. Never per slice at
inference: per-slice scaling makes a series flicker when scrolled.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ROBUST_PERCENTILE", "MAX_SAMPLES", "NOISE_LEVEL_GAIN", "robust_scale", "noise_level", "with_noise_level"]

#: Percentile of the input intensities used as the normalisation scale.
ROBUST_PERCENTILE = 99.5
#: Above this many voxels the percentile is taken on a regular (deterministic) subsample,
#: so memory stays flat however long the series is.
MAX_SAMPLES = 4_000_000
#: The noise-level input channel is the slice's noise SD in normalised units times this
#: gain (SNR 6-80 puts it near 0.1-2, the range of the image channel).
NOISE_LEVEL_GAIN = 10.0


def robust_scale(values: np.ndarray, percentile: float = ROBUST_PERCENTILE) -> float:
    """Robust intensity scale of an image or a whole series (any shape, any real dtype).

    Returns the ``percentile``-th percentile of the values; if that is not positive
    (mostly empty images) the maximum; ``1.0`` if everything is zero or not finite.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return 1.0
    if flat.size > MAX_SAMPLES:
        step = int(np.ceil(flat.size / MAX_SAMPLES))
        flat = flat[::step]
    flat = flat.astype(np.float64, copy=False)
    finite = flat[np.isfinite(flat)] if not np.all(np.isfinite(flat)) else flat
    if finite.size == 0:
        return 1.0
    scale = float(np.percentile(finite, percentile))
    if not scale > 0.0:
        scale = float(finite.max())
    if not (scale > 0.0 and np.isfinite(scale)):
        return 1.0
    return scale


def noise_level(image: np.ndarray) -> float:
    """Noise level of one normalised slice ``(H, W)`` for a noise-aware network: the
    robust noise SD over the tissue (:func:`models.guard.input_noise_sd`, what the
    do-no-harm guard reads too) times :data:`NOISE_LEVEL_GAIN`. Computed the same way in
    training (on the whole simulated image) and at inference (on the whole slice, before
    tiling), so the network learns the estimator's own bias, not the true SD."""
    from models.guard import input_noise_sd, tissue_mask

    x = np.asarray(image, dtype=np.float32)
    return NOISE_LEVEL_GAIN * input_noise_sd(x, tissue_mask(x))


def with_noise_level(images: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` images and ``(B,)`` levels -> ``(B, 2, H, W)`` float32: the image and a
    constant map of its level (FFDNet-style noise-level input)."""
    x = np.asarray(images, dtype=np.float32)
    lv = np.asarray(levels, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray(np.stack([x, np.broadcast_to(lv, x.shape)], axis=1))
