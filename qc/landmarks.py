"""Automatic C3 marrow and C3-C4 disc ROIs on a sagittal cervical slice (for the paper's CNR).

The study measured SNR in the C3-C4 disc and CNR between that disc and the C3 vertebral
marrow. This module finds them without labels, from the image alone:

1. Vertebral bodies are found as a *chain*: at several intensity thresholds, connected
   regions (bright or dark, as marrow is bright on T1 and grey on T2) of vertebral-body
   size and shape (60-700 mm^2, height/width 0.4-1.6, solid) are collected; the longest
   sequence of regions stacked head to feet with body-like spacing (11-32 mm between
   centres), little sideways jump and similar widths is the spine.
2. C2 carries the dens and is taller than C3-C7: a taller region right above the chain
   (at body spacing, of body width) is put on top as C2; otherwise the chain's own top is
   taken as C2. C3 is the next member, the C3-C4 disc lies between C3 and C4.
3. ROIs: the C3 region eroded to its central part; the disc ROI is a box centred between
   the C3 and C4 centroids, a fifth of their spacing high and half the bodies' width.

Confidence (0-1) multiplies: chain length (>= 5 bodies: 1), regularity of spacing and
widths, and how clearly the top member is C2. Below ``MIN_CONFIDENCE`` no ROI is
reported (CNR null, with a note): a wrong level is worse than none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_CONFIDENCE = 0.2  # correct C3 on all 48 calibration-seed phantom slices scored >= 0.22; non-spine images 0 or None


@dataclass(frozen=True)
class VertebralROIs:
    """Boolean ``(rows, columns)`` masks and the localisation confidence (0-1)."""

    c3_marrow: np.ndarray
    c3_c4_disc: np.ndarray
    confidence: float
    n_bodies: int


@dataclass(frozen=True)
class _Body:
    mask_index: tuple[int, int]  # (threshold index, label)
    row: float  # centroid, pixels
    col: float
    top: int
    bottom: int
    left: int
    right: int
    area_mm2: float
    strict: bool  # vertebral-body shape (C3-T1); C2 candidates may be taller

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1


def _candidates(image: np.ndarray, spacing_mm: tuple[float, float], body: np.ndarray | None):
    """Vertebral-body-like regions at several thresholds: (list of _Body, label maps)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.5 / min(spacing_mm))
    inside = smooth[body] if body is not None and body.any() else smooth.reshape(-1)
    px_area = spacing_mm[0] * spacing_mm[1]
    open_px = max(1, int(round(1.5 / min(spacing_mm))))
    bodies, maps = [], []
    for q in range(20, 96, 5):
        t = float(np.percentile(inside, q))
        for bright in (True, False):
            binary = smooth > t if bright else smooth < t
            if body is not None:
                binary &= body
            binary = ndimage.binary_opening(binary, iterations=open_px)
            labels, n = ndimage.label(binary)
            maps.append(labels)
            if n == 0:
                continue
            objects = ndimage.find_objects(labels)
            for lab, sl in enumerate(objects, start=1):
                region = labels[sl] == lab
                area = float(region.sum()) * px_area
                if not 60.0 <= area <= 1200.0:
                    continue
                h = (sl[0].stop - sl[0].start) * spacing_mm[0]
                w = (sl[1].stop - sl[1].start) * spacing_mm[1]
                solidity = region.sum() / region.size
                strict = area <= 700.0 and 0.4 <= h / w <= 1.6 and solidity >= 0.75
                if not (strict or (0.8 <= h / w <= 3.0 and solidity >= 0.6)):
                    continue
                rr, cc = np.nonzero(region)
                bodies.append(_Body((len(maps) - 1, lab), float(rr.mean() + sl[0].start), float(cc.mean() + sl[1].start),
                                    sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1, area, strict))
    return bodies, maps


def _longest_chain(bodies: list[_Body], spacing_mm: tuple[float, float]) -> list[_Body]:
    """Longest head-to-feet sequence with body-like spacing (dynamic programming)."""
    bodies = [x for x in bodies if x.strict]
    order = sorted(range(len(bodies)), key=lambda i: bodies[i].row)
    b = [bodies[i] for i in order]
    best_len = [1] * len(b)
    prev = [-1] * len(b)
    for j in range(len(b)):
        for i in range(j):
            dy = (b[j].row - b[i].row) * spacing_mm[0]
            dx = abs(b[j].col - b[i].col) * spacing_mm[1]
            gap = (b[j].top - b[i].bottom) * spacing_mm[0]
            if not 11.0 <= dy <= 32.0 or dx > 0.6 * dy or not 1.0 <= gap <= 14.0:
                continue
            wi, wj = b[i].width, b[j].width
            if max(wi, wj) > 1.6 * min(wi, wj):
                continue
            if best_len[i] + 1 > best_len[j]:
                best_len[j], prev[j] = best_len[i] + 1, i
    if not b:
        return []
    j = int(np.argmax(best_len))
    chain = []
    while j >= 0:
        chain.append(b[j])
        j = prev[j]
    return chain[::-1]


def _confidence(chain: list[_Body]) -> float:
    """Product of: chain length (>= 5 bodies: 1), regular spacing and similar widths of
    C3 and below, and C2 being taller than the bodies below it."""
    heights = np.array([c.height for c in chain], dtype=np.float64)
    widths = np.array([c.width for c in chain[1:]], dtype=np.float64)
    steps = np.diff([c.row for c in chain[1:]])
    length = min(1.0, (len(chain) - 2) / 3.0)
    regularity = float(np.exp(-5.0 * np.std(steps) / max(np.mean(steps), 1e-6))) if len(steps) > 1 else 0.5
    similar = float(np.exp(-3.0 * np.std(widths) / max(np.mean(widths), 1e-6)))
    c2_ratio = heights[0] / max(float(np.median(heights[1:5])), 1e-6)
    c2 = float(np.clip((c2_ratio - 1.0) / 0.25, 0.0, 1.0))
    return float(length * regularity * similar * c2)


def _c2_above(bodies: list[_Body], chain: list[_Body], spacing_mm: tuple[float, float]) -> _Body | None:
    """A taller region right above the chain's top (C2 with its dens), or None (then the
    chain's top may itself be C2)."""
    top = chain[0]
    median_h = float(np.median([c.height for c in chain[1:5]]))
    median_w = float(np.median([c.width for c in chain]))
    best = None
    for b in bodies:
        dy = (top.row - b.row) * spacing_mm[0]
        gap = (top.top - b.bottom) * spacing_mm[0]
        dx = abs(top.col - b.col) * spacing_mm[1]
        if 14.0 <= dy <= 40.0 and 1.0 <= gap <= 14.0 and dx <= 12.0 and b.height >= 1.2 * median_h \
                and 0.8 * median_w <= b.width <= 2.0 * median_w:
            if best is None or b.height > best.height:
                best = b
    return best


def locate_c3_rois(image: np.ndarray, spacing_mm: tuple[float, float], body: np.ndarray | None = None,
                   rows_head_to_feet: bool = True) -> VertebralROIs | None:
    """C3 marrow and C3-C4 disc ROIs on one sagittal slice ``(rows, columns)``, or None.

    ``spacing_mm``: (row, column) pixel spacing (DICOM PixelSpacing); ``body``: optional
    body mask to search in; ``rows_head_to_feet``: False when row 0 is at the feet (the
    image is flipped for the search and the masks flipped back).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not rows_head_to_feet:
        flipped = locate_c3_rois(img[::-1], spacing_mm, None if body is None else body[::-1], True)
        if flipped is None:
            return None
        return VertebralROIs(flipped.c3_marrow[::-1], flipped.c3_c4_disc[::-1], flipped.confidence, flipped.n_bodies)
    bodies, maps = _candidates(img, spacing_mm, body)
    chain = _longest_chain(bodies, spacing_mm)
    if len(chain) < 3:
        return None
    c2 = _c2_above(bodies, chain, spacing_mm)
    if c2 is not None:
        chain = [c2] + chain
    confidence = _confidence(chain)
    c3, c4 = chain[1], chain[2]  # chain[0] is taken as C2
    labels = maps[c3.mask_index[0]]
    c3_region = labels == c3.mask_index[1]
    erode = max(1, int(round(0.2 * min(c3.height, c3.width))))
    marrow = ndimage.binary_erosion(c3_region, iterations=erode)
    if marrow.sum() < 10:
        marrow = c3_region
    # The disc is centred between the two bodies' centroids (robust to a body region that
    # grew into an endplate at one threshold); the box is a fifth of the spacing high.
    disc = np.zeros(img.shape, dtype=bool)
    step = c4.row - c3.row
    centre_r, centre_c = (c3.row + c4.row) / 2.0, (c3.col + c4.col) / 2.0
    half_h = max(0.5, 0.1 * step)
    half_w = 0.25 * (c3.width + c4.width) / 2.0
    r0, r1 = int(round(centre_r - half_h)), int(round(centre_r + half_h))
    c0, c1 = int(round(centre_c - half_w)), int(round(centre_c + half_w))
    disc[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1] = True
    if disc.sum() < 4:
        return None
    return VertebralROIs(marrow, disc, round(confidence, 3), len(chain))
