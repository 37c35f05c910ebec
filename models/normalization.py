"""Intensity normalisation shared by training and inference.

One robust scale per *series* (at inference) or per simulated image (in training): the
99.5th percentile of the network *input*, computed on all its voxels. Input and target are
divided by the same scale; the network output is multiplied back. Never per slice at
inference: per-slice scaling makes a series flicker when scrolled.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ROBUST_PERCENTILE", "MAX_SAMPLES", "robust_scale"]

#: Percentile of the input intensities used as the normalisation scale.
ROBUST_PERCENTILE = 99.5
#: Above this many voxels the percentile is taken on a regular (deterministic) subsample,
#: so memory stays flat however long the series is.
MAX_SAMPLES = 4_000_000


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
