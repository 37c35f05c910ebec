"""Automatic C3 marrow and C3-C4 disc ROIs on a sagittal cervical slice (for the paper's CNR).

The study measured SNR in the C3-C4 disc and CNR between that disc and the C3 vertebral
marrow. This module finds them without labels, from the image alone:

1. Vertebral bodies are found as a *chain*: at several intensity thresholds, connected
   regions (bright or dark, as marrow is bright on T1 and grey on T2) of vertebral-body
   size and shape are collected (60-700 mm^2; elongation from the second moments <= 1.6
   and solidity against the convex hull >= 0.85, both unchanged when lordosis tilts a
   body, unlike its bounding box). The longest sequence of regions of one polarity stacked
   head to feet with body-like spacing (11-32 mm between centres, a 1-14 mm gap along the
   line joining them), little sideways jump and similar widths is the spine.
2. C2 is recognised by its height, never assumed: its body is taller than C3-C7 (about
   1.4 times on the phantom) and the dens adds more where the slice cuts it. Heights are
   compared on one threshold map at a time (the chain may hold each body from a different
   threshold, whose sizes do not compare) and the median ratio over the maps is used:
   either the chain's top is clearly taller than the members below it (then it is C2),
   or a taller region of the same polarity sits right above the top (C2 with its dens,
   too tall or tapered to be a chain member; then it is put on top as C2). When neither
   holds the top is taken as C2 with confidence 0: on the realistic phantom a
   missing C2 otherwise made C4 look like C3. C3 is the member below C2.
3. ROIs: the C3 region eroded to its central part; the disc ROI is a box tilted with the
   spine, a fifth of the C3-C4 spacing high and half the bodies' width deep, centred
   across between the two centroids and along the spine in the middle of the gap between
   C3's lower and C4's upper edge (the centroid midpoint missed tilted discs).

Confidence (0-1) multiplies: chain length (>= 5 bodies: 1), regularity of spacing and
widths, and how clearly C2 is taller than the bodies below it (0 at ``C2_MIN_RATIO``,
1 at ``C2_MIN_RATIO + C2_RAMP``). Below ``MIN_CONFIDENCE`` no ROI is reported (CNR
null, with a note): a wrong level is worse than none. ``python -m models.evaluation.landmarks``
measures it on fresh phantom patients (tuning and held-out seeds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import morphology

from qc.morphology import erosion as cross_erosion, opening as cross_opening

C2_MIN_RATIO, C2_RAMP = 1.15, 0.2  # C2 / C3-C6 height: confidence 0 at 1.15, full at 1.35 (phantom: 20/14 mm body)
# Kept at 0.2: on the tuning seeds (models.evaluation.landmarks) no wrong level scored above it;
# non-spine images score 0 or None.
MIN_CONFIDENCE = 0.2


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
    bright: bool  # brighter than the threshold (marrow on T1) or darker (marrow on fat-suppressed images)
    cov_mm2: tuple[float, float, float]  # second central moments (row-row, row-col, col-col), mm^2

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    def extent_mm(self, direction: np.ndarray) -> float:
        """Length of the region along a unit (row, col) direction in mm, from its second
        moment (exact for a rectangle: sqrt(12 var)). Unlike the bounding box, it does not
        grow when lordosis tilts the body."""
        rr, rc, cc = self.cov_mm2
        dr, dc = float(direction[0]), float(direction[1])
        return float(np.sqrt(max(12.0 * (dr * dr * rr + 2.0 * dr * dc * rc + dc * dc * cc), 0.0)))

    def centre_mm(self, spacing_mm: tuple[float, float]) -> np.ndarray:
        return np.array([self.row * spacing_mm[0], self.col * spacing_mm[1]])


def _candidates(image: np.ndarray, spacing_mm: tuple[float, float], body: np.ndarray | None):
    """Vertebral-body-like regions at several thresholds: (list of _Body, label maps, each
    map's ``ndimage.find_objects`` slices, each map's polarity)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.5 / min(spacing_mm))
    inside = smooth[body] if body is not None and body.any() else smooth.reshape(-1)
    px_area = spacing_mm[0] * spacing_mm[1]
    open_px = max(1, int(round(1.5 / min(spacing_mm))))
    bodies, maps, found, polarity = [], [], [], []
    # all thresholds from one partial sort (the same values as one np.percentile call per q)
    for t in np.percentile(inside, np.arange(20, 96, 5)).tolist():
        for bright in (True, False):
            binary = smooth > t if bright else smooth < t
            if body is not None:
                binary &= body
            binary = cross_opening(binary, open_px)
            labels, n = ndimage.label(binary)
            objects = ndimage.find_objects(labels) if n else []
            maps.append(labels)
            found.append(objects)
            polarity.append(bright)
            if n == 0:
                continue
            # region sizes from one count, so that regions of the wrong size are skipped
            # before they are cut out (most regions are: speckle and whole tissue layers)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            for lab, sl in enumerate(objects, start=1):
                npx = int(sizes[lab])
                area = npx * px_area
                if not 60.0 <= area <= 1200.0:
                    continue
                region = labels[sl] == lab
                rr, cc = np.nonzero(region)
                # Shape from second moments (tilt-independent, unlike the bounding box):
                # a rounded body is about as tall as deep; C2 with its dens up to 3 times.
                r_mm, c_mm = rr * spacing_mm[0], cc * spacing_mm[1]
                cov = np.cov(np.stack([r_mm, c_mm])) if npx > 2 else np.zeros((2, 2))
                evals = np.linalg.eigvalsh(cov)
                elong = float(np.sqrt(max(evals[1], 1e-9) / max(evals[0], 1e-9)))
                if elong > 3.0:  # too long for either test below: skip the costly hull
                    continue
                # Solidity against the convex hull: a tilted box still fills its hull, and
                # C2's tapered dens does too (the bounding box of either is half empty).
                # The hull lies within the bounding box, so a region that fills enough of its box
                # passes the solidity tests without the (costly) hull.
                strict_shape = area <= 700.0 and elong <= 1.6
                if npx / region.size < (0.85 if strict_shape else 0.75):
                    solidity = npx / max(float(morphology.convex_hull_image(region).sum()), 1.0)
                else:
                    solidity = 1.0  # at least the fill of the box: every test below passes as with the hull
                strict = strict_shape and solidity >= 0.85
                if not (strict or solidity >= 0.75):  # elong <= 3 here (longer ones skipped above)
                    continue
                bodies.append(_Body((len(maps) - 1, lab), float(rr.mean() + sl[0].start), float(cc.mean() + sl[1].start),
                                    sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1, area, strict, bright,
                                    (float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1]))))
    return bodies, maps, found, polarity


def _link(a: _Body, b: _Body, spacing_mm: tuple[float, float]) -> tuple[float, float, float] | None:
    """(centre distance, sideways jump, gap along the line between them) in mm for ``b``
    below ``a``, or None when ``b`` is not below ``a``."""
    d = b.centre_mm(spacing_mm) - a.centre_mm(spacing_mm)
    if d[0] <= 0:
        return None
    dist = float(np.hypot(*d))
    unit = d / dist
    gap = dist - 0.5 * (a.extent_mm(unit) + b.extent_mm(unit))
    return dist, abs(float(d[1])), gap


def _longest_chain(bodies: list[_Body], spacing_mm: tuple[float, float]) -> list[_Body]:
    """Longest head-to-feet sequence with body-like spacing (dynamic programming)."""
    bodies = [x for x in bodies if x.strict]
    order = sorted(range(len(bodies)), key=lambda i: bodies[i].row)
    b = [bodies[i] for i in order]
    best_len = [1] * len(b)
    prev = [-1] * len(b)
    for j in range(len(b)):
        for i in range(j):
            if b[i].bright != b[j].bright:  # one tissue: marrow is either bright or dark
                continue
            link = _link(b[i], b[j], spacing_mm)
            if link is None:
                continue
            dist, dx, gap = link
            if not 11.0 <= dist <= 32.0 or dx > 0.6 * dist or not 1.0 <= gap <= 14.0:
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


def _axis(chain: list[_Body], spacing_mm: tuple[float, float]) -> np.ndarray:
    """Unit (row, col) direction of the spine at the chain's top, head to feet."""
    d = chain[1].centre_mm(spacing_mm) - chain[0].centre_mm(spacing_mm)
    return d / max(float(np.hypot(*d)), 1e-6)


class _Maps:
    """The thresholded label maps, measured on demand: the region under a point and its
    size along / across the spine. All members are measured on one map at a time so that
    their heights compare (the chain may hold each body from a different threshold)."""

    def __init__(self, maps: list[np.ndarray], objects: list[list], spacing_mm: tuple[float, float]):
        self.maps, self.objects, self.spacing = maps, objects, spacing_mm
        self._measured: dict[tuple[int, int, tuple[float, float]], tuple | None] = {}

    def region(self, m: int, point_mm: np.ndarray, axis: np.ndarray) -> tuple[int, np.ndarray, float, float] | None:
        """(label, centre mm, height along ``axis`` mm, depth across mm) of the region of map
        ``m`` under ``point_mm``, or None: background, outside, or not body-sized."""
        labels = self.maps[m]
        r, c = int(round(point_mm[0] / self.spacing[0])), int(round(point_mm[1] / self.spacing[1]))
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]) or labels[r, c] == 0:
            return None
        lab = int(labels[r, c])
        key = (m, lab, (float(axis[0]), float(axis[1])))
        if key not in self._measured:  # the same region is asked for again from nearby points
            self._measured[key] = self._measure(m, lab, axis)
        return self._measured[key]

    def _measure(self, m: int, lab: int, axis: np.ndarray) -> tuple[int, np.ndarray, float, float] | None:
        sl = self.objects[m][lab - 1]
        rr, cc = np.nonzero(self.maps[m][sl] == lab)
        area = rr.size * self.spacing[0] * self.spacing[1]
        if not 60.0 <= area <= 1200.0:  # a fragment, or merged with its surroundings
            return None
        pts = np.stack([(rr + sl[0].start) * self.spacing[0], (cc + sl[1].start) * self.spacing[1]])
        centre = pts.mean(axis=1)
        along = axis @ (pts - centre[:, None])
        across = np.array([-axis[1], axis[0]]) @ (pts - centre[:, None])
        return lab, centre, float(np.sqrt(12.0 * along.var())), float(np.sqrt(12.0 * across.var()))


def _c2_evidence(maps: _Maps, polarity: list[bool], chain: list[_Body],
                 spacing_mm: tuple[float, float]) -> tuple[float, float]:
    """How much taller than the bodies below it (a) the chain's top and (b) the region right
    above the top are: each the median, over the threshold maps where it could be measured,
    of its height over the median height of the chain members below it on the same map.
    0 where never measurable."""
    axis = _axis(chain, spacing_mm)
    top_c = chain[0].centre_mm(spacing_mm)
    step = float(np.hypot(*(chain[1].centre_mm(spacing_mm) - top_c)))
    top_ratios, above_ratios = [], []
    for m in range(len(maps.maps)):
        if polarity[m] != chain[0].bright:
            continue
        members = [maps.region(m, c.centre_mm(spacing_mm), axis) for c in chain[:5]]
        below = [x[2] for x in members[1:] if x is not None]
        if members[0] is None or len(below) < 2:
            continue
        ref = float(np.median(below))
        top_ratios.append(members[0][2] / ref)
        # The region above: the first one met walking up the spine from the top's centre
        # (C2 with its dens has its centre 1-2 spacings above C3's).
        found = None
        for f in np.arange(0.6, 2.0, 0.05):
            x = maps.region(m, top_c - f * step * axis, axis)
            if x is not None and x[0] != members[0][0]:
                found = x
                break
        if found is None:
            continue
        d = top_c - found[1]
        along, across = float(d @ axis), abs(float(d[0] * axis[1] - d[1] * axis[0]))
        gap = along - 0.5 * (found[2] + members[0][2])
        depth = float(np.median([x[3] for x in members if x is not None]))
        if 0.9 * step <= along <= 2.2 * step and across <= 0.35 * step and 1.0 <= gap <= 14.0 \
                and 0.5 * depth <= found[3] <= 1.8 * depth:
            above_ratios.append(found[2] / ref)
    top = float(np.median(top_ratios)) if top_ratios else 0.0
    # The region above counts only where it was seen on at least a third of the maps the
    # top was measured on (a blob at one threshold is not C2).
    above = float(np.median(above_ratios)) if len(above_ratios) >= max(2, len(top_ratios) / 3) else 0.0
    return top, above


def _confidence(chain: list, c2_ratio: float) -> float:
    """Product of: chain length (>= 5 bodies: 1), regular spacing and similar widths of
    C3 and below, and C2 being clearly taller than the bodies below it."""
    widths = np.array([c.width for c in chain[1:]], dtype=np.float64)
    steps = np.diff([c.row for c in chain[1:]])
    length = min(1.0, (len(chain) - 2) / 3.0)
    regularity = float(np.exp(-5.0 * np.std(steps) / max(np.mean(steps), 1e-6))) if len(steps) > 1 else 0.5
    similar = float(np.exp(-3.0 * np.std(widths) / max(np.mean(widths), 1e-6)))
    c2 = float(np.clip((c2_ratio - C2_MIN_RATIO) / C2_RAMP, 0.0, 1.0))
    return float(length * regularity * similar * c2)


def _disc_box(maps: _Maps, polarity: list[bool], c3: _Body, c4: _Body, shape: tuple[int, int],
              spacing_mm: tuple[float, float]) -> np.ndarray:
    """The C3-C4 disc ROI: a box along the spine (tilted with it), a fifth of the C3-C4
    spacing high and half the bodies' width deep, centred across between the two
    centroids and along the spine in the middle of the gap between C3's lower and C4's
    upper edge (median over the maps where both bodies are measurable). The centroid
    midpoint alone sits off the disc when one body's region grew into an endplate or
    the bodies differ in height."""
    p3, p4 = c3.centre_mm(spacing_mm), c4.centre_mm(spacing_mm)
    step = float(np.hypot(*(p4 - p3)))
    axis = (p4 - p3) / max(step, 1e-6)
    mids = []
    for m in range(len(maps.maps)):
        if polarity[m] != c3.bright:
            continue
        r3, r4 = maps.region(m, p3, axis), maps.region(m, p4, axis)
        if r3 is None or r4 is None or r3[0] == r4[0]:
            continue
        bottom3 = float((r3[1] - p3) @ axis) + 0.5 * r3[2]
        top4 = float((r4[1] - p3) @ axis) - 0.5 * r4[2]
        if 0.0 < bottom3 < top4 < step:
            mids.append(0.5 * (bottom3 + top4))
    centre = p3 + (float(np.median(mids)) if mids else 0.5 * step) * axis
    half_h = max(0.5 * min(spacing_mm), 0.1 * step)
    half_w = 0.25 * 0.5 * (c3.width * spacing_mm[1] + c4.width * spacing_mm[1])
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    dr, dc = rows * spacing_mm[0] - centre[0], cols * spacing_mm[1] - centre[1]
    along = dr * axis[0] + dc * axis[1]
    across = -dr * axis[1] + dc * axis[0]
    return (np.abs(along) <= half_h) & (np.abs(across) <= half_w)


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
    bodies, maps, objects, polarity = _candidates(img, spacing_mm, body)
    chain = _longest_chain(bodies, spacing_mm)
    if len(chain) < 3:
        return None
    # C2 is recognised by its height: either the chain's top is clearly taller than the
    # bodies below it, or a taller region (C2 with its dens, too tall or too tapered to be
    # a chain member) sits right above it. Otherwise the top is taken as C2 with
    # confidence 0.
    measured = _Maps(maps, objects, spacing_mm)  # one cache for C2 and the disc
    top_ratio, above_ratio = _c2_evidence(measured, polarity, chain, spacing_mm)
    if top_ratio < C2_MIN_RATIO + C2_RAMP and above_ratio > top_ratio:
        chain = [None] + chain  # C2 is the region above; only its place in the chain matters
        c2_ratio = above_ratio
    else:
        c2_ratio = top_ratio
    confidence = _confidence(chain, c2_ratio)
    c3, c4 = chain[1], chain[2]  # chain[0] is taken as C2
    labels = maps[c3.mask_index[0]]
    c3_region = labels == c3.mask_index[1]
    erode = max(1, int(round(0.2 * min(c3.height, c3.width))))
    marrow = cross_erosion(c3_region, erode)
    if marrow.sum() < 10:
        marrow = c3_region
    disc = _disc_box(measured, polarity, c3, c4, img.shape, spacing_mm)
    if disc.sum() < 4:
        return None
    return VertebralROIs(marrow, disc, round(confidence, 3), len(chain))
