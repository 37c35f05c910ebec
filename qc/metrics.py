"""Image-quality measures for the QC operator: background noise, SNR/CNR, motion ghosting.

Pure functions on stored-value arrays (no SDK), shared by the operator, its evaluation
and tests. Arrays are ``(rows, columns)`` slices or ``(slices, rows, columns)`` series;
``phase_encode_axis`` is 1 for DICOM ``InPlanePhaseEncodingDirection`` ``ROW`` and 0 for
``COL``.

Motion ghosting (the physics): when the patient moves between echo trains, k-space lines
disagree and the object is replicated along the phase-encode direction. Ghosts of the
object on one phase-encode line stay on that line, so in the air beside the body the
background of each line rises in proportion to the signal the body has on that line.
Noise does not: it is the same on every line. The ghost ratio is the slope of a robust
line fit of background level against body signal over all phase-encode lines; its
intercept is the noise floor. It needs no noise model, works on the original and on the
DL output alike, and does not depend on how the motion was produced.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from qc import morphology

RAYLEIGH_SD_PER_SIGMA = float(np.sqrt(2.0 - np.pi / 2.0))  # SD of pure-noise magnitude / sigma
RAYLEIGH_MEDIAN_PER_SIGMA = float(np.sqrt(2.0 * np.log(2.0)))  # median / sigma


@dataclass(frozen=True)
class SliceMasks:
    """``body``: the patient (holes filled); ``background``: air at least ``margin`` pixels
    from the body. Both boolean ``(rows, columns)``. ``remasked``: at the series threshold no
    phase-encode line kept both air and body, so the slice was masked again at its own
    (tissue) threshold (:func:`qc.measures.series_masks`)."""

    body: np.ndarray
    background: np.ndarray
    remasked: bool = False


def body_threshold(series: np.ndarray) -> float:
    """One foreground threshold for a whole series.

    Otsu on the log of non-zero values separates air from tissue; where the noise is
    low enough, the threshold is lowered to 5 noise SDs so that dark tissue (fat on
    water-only Dixon, cortical bone) still counts as body. Pure Rayleigh noise exceeds
    5 sigma with probability 4e-6.
    """
    values = series[series > 0].astype(np.float64)
    if values.size < 100:
        return float("inf")
    sample = values[:: max(1, values.size // 500_000)]
    logs = np.log(sample)
    hist, edges = np.histogram(logs, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    otsu = float(np.exp(centres[int(np.argmax(between))]))
    air = sample[sample < otsu]
    if air.size < 100:
        return otsu
    sigma = float(np.median(air)) / RAYLEIGH_MEDIAN_PER_SIGMA
    return min(otsu, 5.0 * sigma)


#: The background is kept at least this many displayed pixels clear of the body ...
BACKGROUND_MARGIN_PX = 20
#: ... and at least this many *acquired* pixels: an interpolated series (acquired at 64-128,
#: shown at 256-512) spreads the body's edge ringing and blur over several displayed pixels per
#: acquired one, and that spill rises with the body signal like a ghost. 9 acquired pixels: on
#: the training-allowed calibration head (dipy aniso_vox, 4 mm, shown at 256 = 4.4x), the
#: clean ghost slope fell from 0.023 (20 px) to 0.008 (40 px); native series keep 20 px.
BACKGROUND_MARGIN_ACQUIRED = 9


def background_margin(interpolation: float = 1.0) -> int:
    """Background margin in displayed pixels for a series shown at ``interpolation``
    displayed pixels per acquired pixel (1 = not interpolated; from AcquisitionMatrix)."""
    factor = float(interpolation) if np.isfinite(interpolation) and interpolation > 0 else 1.0
    return max(BACKGROUND_MARGIN_PX, int(np.ceil(BACKGROUND_MARGIN_ACQUIRED * factor)))


def slice_masks(image: np.ndarray, threshold: float, margin: int = BACKGROUND_MARGIN_PX) -> SliceMasks:
    """Body and far background of one slice.

    ``margin`` (pixels) keeps the background clear of the truncation ringing that the
    reduced phase-encode resolution of accelerated scans leaves beside bright edges
    (it rises with the body signal like a ghost; 20 px rather than 10 halves it);
    :func:`background_margin` widens it for interpolated series.

    The body is the largest connected region above ``threshold`` (and any region at
    least a tenth of its size), closed, with holes filled, and filled along every row
    and column between its outermost pixels: air inside the body that reaches the image
    edge (airway, mouth) is not background. Ghosts that float free of the body are
    dropped, so they stay in the background where they are measured. Zero-filled areas
    are never background.
    """
    body = image > threshold
    labels, n = ndimage.label(body)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # pixels per region
        keep = np.zeros(n + 1, dtype=bool)  # lookup by label: np.isin's sort is slower
        keep[1:] = sizes >= 0.1 * sizes.max()
        body = keep[labels]
    body = morphology.fill_holes(morphology.closing(body, 3))
    body = _fill_between_extremes(body, axis=0) | _fill_between_extremes(body, axis=1)
    near = morphology.dilation(body, margin) if body.any() else body
    background = ~near
    # Zero-filled regions (cropped oversampling, filtered field-of-view edges, suppressed air)
    # hold no noise: they are not air to measure noise or ghosts in. Runs of zeros only: a
    # single zero is possible (rarely) in Rayleigh noise.
    zero = image <= 0
    if zero.any():
        zero = morphology.square_opening(zero)
        if zero.any():
            background &= ~morphology.dilation(zero, 2)
    # Keep away from the image border (some scanners leave zero or filtered edges).
    edge = max(2, image.shape[0] // 100)
    background[:edge, :] = background[-edge:, :] = False
    background[:, :edge] = background[:, -edge:] = False
    return SliceMasks(body, background)


def _fill_between_extremes(mask: np.ndarray, axis: int) -> np.ndarray:
    """True between the first and last True along ``axis`` on every line."""
    # From the first and last index per line (argmax stops at the first True): about half
    # the time of a forward and a backward running maximum, the same pixels.
    lines = np.moveaxis(np.asarray(mask, dtype=bool), axis, 0)
    n = lines.shape[0]
    first = lines.argmax(axis=0)
    last = n - 1 - lines[::-1].argmax(axis=0)
    index = np.arange(n).reshape((n,) + (1,) * (lines.ndim - 1))
    return np.moveaxis((index >= first) & (index <= last) & lines.any(axis=0), 0, axis)


def rician_noise_sd(background_values: np.ndarray) -> float | None:
    """SD of the magnitude background, as the paper measures it, estimated robustly.

    The median of Rayleigh-distributed air gives the underlying Gaussian sigma (Rician
    correction), which is converted back to the SD of magnitude air. The median, unlike
    a plain SD, is hardly moved by ghosts or stray signal. ``None`` when there is too
    little air, or when the air is zero (scanner background suppression).
    """
    values = np.asarray(background_values, dtype=np.float64)
    if values.size < 500:
        return None
    median = float(np.median(values))
    if median <= 0:
        return None
    sigma = median / RAYLEIGH_MEDIAN_PER_SIGMA
    return sigma * RAYLEIGH_SD_PER_SIGMA


def ghost_ratio(profile: "GhostProfile") -> float | None:
    """Slope of background level against body signal over phase-encode lines (>= 0).

    ``None`` when fewer than 8 lines have enough background, or the body drive is flat.
    """
    if profile.valid.sum() < 8:
        return None
    x, y = profile.drive[profile.valid], profile.background[profile.valid]
    if np.ptp(x) <= 0:
        return None
    return max(0.0, _theil_sen_slope(x, y))


def _theil_sen_slope(x: np.ndarray, y: np.ndarray, max_pairs: int = 20000) -> float:
    """Median of pairwise slopes (robust to outlying lines), deterministic subsampling."""
    n = x.size
    i, j = np.triu_indices(n, k=1)
    if i.size > max_pairs:
        step = int(np.ceil(i.size / max_pairs))
        i, j = i[::step], j[::step]
    dx = x[j] - x[i]
    keep = np.abs(dx) > 1e-9 * (np.abs(x).max() + 1e-12)
    if not keep.any():
        return 0.0
    return float(np.median((y[j] - y[i])[keep] / dx[keep]))


def motion_score_from_ratio(ratio: float | None, scale: float) -> float | None:
    """Map a ghost ratio to 0-1 (``1 - exp(-ratio / scale)``)."""
    if ratio is None:
        return None
    return float(1.0 - np.exp(-ratio / scale))


@dataclass(frozen=True)
class GhostProfile:
    """Per phase-encode line: background level, body drive (mean body signal over the
    whole line), and whether the line has enough background."""

    background: np.ndarray
    drive: np.ndarray
    valid: np.ndarray
    body_mean: float


def ghost_profile(image: np.ndarray, masks: SliceMasks, phase_encode_axis: int, min_pixels: int = 16) -> GhostProfile:
    """Per phase-encode line (a line along ``phase_encode_axis``, fixed readout position):
    mean background level and body drive; lines with fewer than ``min_pixels`` background
    pixels are not valid, lines with fewer body pixels have no drive."""
    img = np.asarray(image, dtype=np.float64)
    body, bg = masks.body, masks.background
    if phase_encode_axis == 0:  # lines run down the columns: make them rows
        img, body, bg = img.T, body.T, bg.T
    n_bg = bg.sum(axis=1)
    valid = n_bg >= min_pixels
    bg_level = np.where(valid, (img * bg).sum(axis=1) / np.maximum(n_bg, 1), np.nan)
    # The body's signal integrated along the line drives the ghosts, not only its mean.
    drive = np.where(body.sum(axis=1) >= min_pixels, (img * body).sum(axis=1) / img.shape[1], 0.0)
    body_mean = float(img[body].mean()) if body.any() else 0.0
    return GhostProfile(bg_level, drive, valid, body_mean)


def local_ghost_excess(profile: GhostProfile, smooth: int = 9, quantile: float = 95.0) -> float | None:
    """Ghosts confined to a band of lines (swallowing), which the global slope dilutes.

    The background level per line is smoothed over ``smooth`` lines; its spread from
    the 25th to the ``quantile``-th percentile, minus what the background's fluctuation
    alone gives, relative to the mean body signal. That fluctuation is read from the
    smoothed profile itself, as the median absolute difference of windows ``smooth``
    lines apart (independent windows): for white noise it is the neighbour-difference
    estimate / sqrt(``smooth``) as before, and it stays right where neighbouring lines
    correlate (interpolated series, a source's own background texture), which the
    neighbour differences read as too quiet and the rest as ghosts.
    """
    y = profile.background[profile.valid]
    if y.size < 4 * smooth or profile.body_mean <= 0:
        return None
    smoothed = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
    spread = float(np.percentile(smoothed, quantile) - np.percentile(smoothed, 25))
    smoothed_noise = 1.4826 * float(np.median(np.abs(smoothed[smooth:] - smoothed[:-smooth]))) / np.sqrt(2.0)
    # For Gaussian noise, percentile 25 -> 95 spans 2.32 SD of the smoothed line.
    noise_only = 2.32 * smoothed_noise
    return max(0.0, spread - 1.5 * noise_only) / profile.body_mean
