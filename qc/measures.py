"""The quality check of one series and its DL output: SNR, CNR (C3-C4 disc, C3 marrow),
motion score and flags, and the notes that explain them. Arrays are ``(slices, rows,
columns)`` in stored values."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from skimage.filters import threshold_otsu

from app.contracts import MOTION_FLAG_SCORE, EnhancedSeries, ImageQuality, SeriesQC
from qc import metrics as qm
from qc.calibration import QCCalibration
from qc.landmarks import MIN_CONFIDENCE, VertebralROIs, locate_c3_rois

if TYPE_CHECKING:  # type hints only: the detector's module is imported when the operator loads it
    from models.motion_detector import MotionDetector


def phase_encode_axis(datasets: list) -> tuple[int, str, str | None]:
    """Array axis of phase encoding from InPlanePhaseEncodingDirection (ROW -> 1, COL -> 0).

    Returns ``(axis, direction, note)``; a missing tag falls back to ROW with a note.
    """
    direction = str(datasets[0].get("InPlanePhaseEncodingDirection", "")).strip().upper()
    if direction == "COL":
        return 0, "COL", None
    if direction == "ROW":
        return 1, "ROW", None
    return 1, "ROW", "InPlanePhaseEncodingDirection missing: ghosting measured along rows"


def interpolation_factor(datasets: list) -> float:
    """Displayed pixels per acquired pixel (>= 1) of a series, from AcquisitionMatrix
    (frequency and phase samples) against Rows / Columns and the phase-encode direction:
    2 for a 256 acquisition shown at 512. 1 when the tags are missing or inconsistent."""
    ds = datasets[0] if datasets else None
    try:
        matrix = [int(v) for v in ds.AcquisitionMatrix]
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return 1.0
    if len(matrix) != 4:
        return 1.0
    freq_rows, freq_cols, phase_rows, phase_cols = matrix
    # Which display axis each count belongs to: "ROW" phase encoding runs along a row (columns).
    if str(ds.get("InPlanePhaseEncodingDirection", "")).strip().upper() == "COL":
        along_columns, along_rows = freq_cols, phase_rows
    else:
        along_columns, along_rows = phase_cols, freq_rows
    factors = [n_display / n for n_display, n in ((columns, along_columns), (rows, along_rows)) if n > 0]
    return float(min(max(max(factors), 1.0), 16.0)) if factors else 1.0


def series_masks(volume: np.ndarray, pe_axis: int | None = None, margin: int = qm.BACKGROUND_MARGIN_PX) -> list[qm.SliceMasks]:
    """Body and background masks of every slice, from one threshold for the series.

    With ``pe_axis``: where strong ghosts rise above that threshold they join the body,
    and no phase-encode line keeps both air and body (the ghost slope is unmeasurable);
    such a slice is masked again with its own Otsu threshold, which leaves ghosts, being
    fainter than tissue, in the background where they are measured.
    """
    vol = np.asarray(volume, dtype=np.float32)
    threshold = qm.body_threshold(vol)
    masks = [qm.slice_masks(image, threshold, margin) for image in vol]
    if pe_axis is not None:
        for i, image in enumerate(vol):
            if qm.ghost_ratio(qm.ghost_profile(image, masks[i], pe_axis)) is None and image.max() > image.min():
                masks[i] = replace(qm.slice_masks(image, max(threshold, float(threshold_otsu(image))), margin),
                                   remasked=True)
    return masks


def slice_ghost(image: np.ndarray, masks: qm.SliceMasks, pe_axis: int, local_weight: float) -> float | None:
    """The ghost measure of one slice ``(rows, columns)``: the ghost slope over the phase-encode
    lines, or ``local_weight`` x the excess of a band of lines (swallowing), whichever is larger
    (:mod:`qc.metrics`); None where neither can be read (too little air)."""
    profile = qm.ghost_profile(image, masks, pe_axis)
    local = qm.local_ghost_excess(profile)
    parts = [v for v in (qm.ghost_ratio(profile), None if local is None else local_weight * local) if v is not None]
    return max(parts) if parts else None


def measure_series(volume: np.ndarray, pe_axis: int, calibration: QCCalibration,
                   masks_per_slice: list[qm.SliceMasks], detector: "MotionDetector | None" = None,
                   detector_volume: np.ndarray | None = None) -> ImageQuality:
    """All measures of one series ``(slices, rows, columns)`` in stored values.

    The masks come from the original series (or its Dixon in-phase partner) so the
    original and the DL output are measured on the same pixels. ``detector``: the motion
    network (``models.motion_detector``); without it only the ghost measure scores motion.
    Series values are the 75th percentile over slices: motion in 2-D multi-slice scans
    hits every slice, but slices at the edge of the body show it less.
    """
    vol = np.asarray(volume, dtype=np.float32)
    ghosts, background, body_means = [], [], []
    for image, masks in zip(vol, masks_per_slice):
        ghosts.append(slice_ghost(image, masks, pe_axis, calibration.local_weight))
        background.append(image[masks.background])
        if masks.body.any():
            body_means.append(float(image[masks.body].mean()))
    probabilities: list[float | None] = [None] * len(ghosts)
    if detector is not None and len(vol):
        seen = vol if detector_volume is None else np.asarray(detector_volume, dtype=np.float32)
        probabilities = [float(p) for p in detector.score_slices(seen, pe_axis)]
    noise_sd = qm.rician_noise_sd(np.concatenate(background)) if background else None
    fg = float(np.mean(body_means)) if body_means else None
    snr_fg = fg / noise_sd if (fg is not None and noise_sd) else None
    body_fractions = [float(m.body.mean()) for m in masks_per_slice]
    ghost = series_value(ghosts, body_fractions)
    probability = series_value(probabilities, body_fractions)
    return ImageQuality(
        snr_foreground=_round(snr_fg), snr=_round(snr_fg), cnr=None, noise_sd=_round(noise_sd),
        ghost=_round(ghost, 5), ghost_score=_round(calibration.ghost_score(ghost), 4), detector=_round(probability, 4),
        motion_score=_round(calibration.motion_score(ghost, probability), 4),
        slice_motion_scores=[_round(calibration.motion_score(g, p), 4) for g, p in zip(ghosts, probabilities)],
        slice_ghosts=[_round(g, 5) for g in ghosts], slice_detector=[_round(p, 4) for p in probabilities],
        slice_body_fraction=[round(f, 4) for f in body_fractions],
    )


def motion_flagged(score: float | None) -> bool:
    """Whether a motion score (0-1, None: not measurable) raises the motion flag."""
    return bool(score is not None and score >= MOTION_FLAG_SCORE)


def flagged_without_air(slice_scores: list[float | None], remasked_slices: list[int]) -> list[int]:
    """0-based indices of the slices whose own motion score raises the flag and that were masked
    again (no phase-encode line kept air beside the body: :attr:`qc.metrics.SliceMasks.remasked`)."""
    remasked = set(remasked_slices)
    return [i for i, score in enumerate(slice_scores) if i in remasked and motion_flagged(score)]


def measure_original(source: np.ndarray, pe_axis: int, calibration: QCCalibration,
                     detector: "MotionDetector | None" = None,
                     mask_source: np.ndarray | None = None,
                     interpolation: float = 1.0) -> tuple[list[qm.SliceMasks], ImageQuality]:
    """Masks (from ``mask_source``, the Dixon in-phase partner, when given) and measures of an
    original series ``(slices, rows, columns)``, as the product's QC takes them.
    ``interpolation``: displayed pixels per acquired pixel (:func:`interpolation_factor`)."""
    masks = series_masks(source if mask_source is None else mask_source, pe_axis,
                         qm.background_margin(interpolation))
    return masks, measure_series(source, pe_axis, calibration, masks, detector, mask_source)


def with_vertebral_rois(quality: ImageQuality, volume: np.ndarray, rois: tuple[int, VertebralROIs]) -> ImageQuality:
    """The paper's SNR = SI(C3-C4 disc) / SD(background) and CNR = |SI(disc) - SI(C3
    marrow)| / SD(background), on the slice the ROIs were located on."""
    if not quality.noise_sd:
        return quality
    index, found = rois
    image = np.asarray(volume[index], dtype=np.float64)
    disc, marrow = float(image[found.c3_c4_disc].mean()), float(image[found.c3_marrow].mean())
    return replace(quality, snr=_round(disc / quality.noise_sd), cnr=_round(abs(disc - marrow) / quality.noise_sd))


def number_ranges(numbers: list[int]) -> str:
    """Image numbers as ranges for a reader: [1, 2, 3, 11, 13] -> "1-3, 11, 13"."""
    parts, run = [], []
    for i in sorted(set(numbers)):
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
            run = []
        run.append(i)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
    return ", ".join(parts)


def image_numbers(datasets: list) -> list[int]:
    """Per slice, the number viewers show: InstanceNumber, else the 1-based position."""
    numbers = []
    for i, ds in enumerate(datasets):
        try:
            numbers.append(int(ds.get("InstanceNumber")))
        except (TypeError, ValueError):
            numbers.append(i + 1)
    return numbers if len(set(numbers)) == len(numbers) else list(range(1, len(datasets) + 1))


#: Slices are combined into the series value by this percentile, each slice weighted by its anatomy.
SERIES_PERCENTILE = 75.0


def series_value(values: list[float | None], body_fractions: list[float] | None = None,
                 percentile: float = SERIES_PERCENTILE) -> float | None:
    """The series' value of a per-slice measure: its ``percentile`` over the slices, each
    slice weighted by its body area relative to the series' largest (``body_fractions``:
    share of each slice the body covers; None = equal weights). Motion in 2-D multi-slice
    scans hits every slice, but the far-lateral slices of a sagittal stack, mostly partial
    volume and air, show it least and score least reliably. ``None``: nothing measurable."""
    pairs = [(float(v), 1.0 if body_fractions is None else float(f))
             for v, f in zip(values, body_fractions or [1.0] * len(values)) if v is not None]
    if not pairs:
        return None
    top = max(w for _, w in pairs)
    pairs = sorted((v, w / top if top > 0 else 1.0) for v, w in pairs)
    weights = np.array([w for _, w in pairs])
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    # weighted percentile: each slice sits at the centre of its share of the total weight
    centres = (np.cumsum(weights) - 0.5 * weights) / weights.sum()
    return float(np.interp(percentile / 100.0, centres, [v for v, _ in pairs]))


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def locate_rois(item: EnhancedSeries, masks: list[qm.SliceMasks]) -> tuple[int, VertebralROIs] | None:
    """C3 marrow and C3-C4 disc on the middle sagittal slices of the original (the middle
    one and two on each side; the most confident wins), or None: not sagittal, not found,
    or confidence below ``qc.landmarks.MIN_CONFIDENCE``."""
    ds = item.datasets[0]
    try:
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[0]) < 0.8 or abs(orientation[5]) < 0.7:  # not sagittal, or rows not head-feet
        return None
    return locate_rois_in_volume(item.source_pixels, masks, spacing, rows_head_to_feet=orientation[5] < 0)


def locate_rois_in_volume(volume: np.ndarray, masks: list[qm.SliceMasks], spacing: tuple[float, float],
                          rows_head_to_feet: bool = True) -> tuple[int, VertebralROIs] | None:
    """:func:`locate_rois` on a sagittal ``(slices, rows, columns)`` array."""
    n = volume.shape[0]
    best = None
    for index in sorted({min(max(n // 2 + d, 0), n - 1) for d in (-2, -1, 0, 1, 2)}):
        found = locate_c3_rois(volume[index], spacing, masks[index].body, rows_head_to_feet=rows_head_to_feet)
        if found is not None and (best is None or found.confidence > best[1].confidence):
            best = (index, found)
    if best is None or best[1].confidence < MIN_CONFIDENCE:
        return None
    return best


def check_series(item: EnhancedSeries, calibration: QCCalibration,
                 mask_source: np.ndarray | None = None, detector: "MotionDetector | None" = None) -> SeriesQC:
    """QC of one source series and its DL output.

    ``mask_source``: a series of the same acquisition and geometry to find the body on
    (the in-phase partner of a water-only Dixon series, where fat is as dark as air); the
    motion detector looks at it too. ``detector``: the motion network (without it, the ghost measure alone scores motion).
    """
    calibration = calibration.for_role(item.role)
    axis, direction, note = phase_encode_axis(item.datasets)
    numbers = image_numbers(item.datasets)
    source = item.source_pixels
    masks, original = measure_original(source, axis, calibration, detector, mask_source,
                                       interpolation_factor(item.datasets))
    # The detector learned acquired images; DL output (no noise) is outside what it saw
    # (it scores clean DL output high), so the DL output is scored by the ghost measure.
    dl = measure_series(item.pixels, axis, calibration, masks)
    notes = [note] if note else []
    if item.role == "SAG_DIXON_W" and mask_source is None:
        notes.append("water-only Dixon without its in-phase partner: body outline from dark fat is uncertain")
    flag = motion_flagged(original.motion_score)
    accentuated = bool(
        original.ghost is not None and dl.ghost is not None
        and dl.ghost - original.ghost > calibration.accentuation_margin
    )
    rois = None
    # Not on water-only Dixon: its marrow is dark and the localiser found no C3 there on
    # the tuning phantoms (0 of 40 slices), while the earlier one took wrong levels (5 of 5).
    if item.role.startswith("SAG") and item.role != "SAG_DIXON_W":
        rois = locate_rois(item, masks)
        if rois is not None and flag:
            # Ghost copies of the vertebrae shift the chain: on severe motion a quarter of
            # the localisations were a level off (calibration phantoms). No CNR then.
            notes.append("motion artifacts: C3 / C3-C4 localisation unreliable, CNR not reported")
            rois = None
        elif rois is not None:
            original = with_vertebral_rois(original, source, rois)
            dl = with_vertebral_rois(dl, item.pixels, rois)
            notes.append(f"SNR/CNR in the C3-C4 disc and C3 marrow located automatically on image {numbers[rois[0]]} "
                         f"(confidence {rois[1].confidence:.2f})")
        else:
            notes.append("C3 / C3-C4 not located with confidence: SNR is the whole-body foreground SNR, "
                         "CNR not reported")
    if original.motion_score is None:
        notes.append("motion not measurable: too little air around the body")
    elif original.ghost is None:
        notes.append("too little air around the body for the ghost measure: motion scored by the detector only")
    if flag:
        why = [name for name, score in (("ghosting in the air along the phase-encode direction",
                                         calibration.ghost_score(original.ghost)),
                                        ("motion detector", calibration.detector_score(original.detector)))
               if motion_flagged(score)]
        where = [numbers[i] for i in original.flagged_slices]
        notes.append("motion artifacts: " + " and ".join(why)
                     + (f"; images {number_ranges(where)} of {len(source)} score >= 0.5" if where else ""))
        # The known limitation (README, "How well it works"): said where it applies.
        without_air = [numbers[i] for i in flagged_without_air(original.slice_motion_scores,
                                                                [i for i, m in enumerate(masks) if m.remasked])]
        if without_air:
            notes.append(f"images {number_ranges(without_air)}: no phase-encode line keeps air beside the body "
                         "(anatomy cut by the field of view, or ghosts as bright as tissue); the ghost measure "
                         "there may read darker tissue as ghosting: confirm on the original")
    if accentuated:
        notes.append("DL accentuated artifacts; read the original")
    if original.noise_sd is None:
        notes.append("background noise not measurable (suppressed or no air): SNR not reported")
    elif dl.noise_sd is None:
        # A DL output whose air is blank (a denoiser that removes all of the air's noise, passed
        # on if the guard's air cap is raised to 1): the paper's SNR (signal / SD of the air)
        # has no finite value for the DL series.
        notes.append("DL series: its air is noise-free, so its SNR/CNR (signal over the SD of the air) are not "
                     "reported; compare the original's")
    number = item.datasets[0].get("SeriesNumber")
    return SeriesQC(item.role, str(item.datasets[0].SeriesInstanceUID),
                    int(number) if number not in (None, "") else None, direction,
                    original, dl, flag, accentuated, notes, None if rois is None else rois[1].confidence, rois,
                    numbers, None if rois is None else masks[rois[0]].background)


def _positions(item: EnhancedSeries) -> list[tuple[float, ...]]:
    return [tuple(round(float(v), 2) for v in ds.ImagePositionPatient) for ds in item.datasets]


def dixon_in_phase_partner(item: EnhancedSeries, items: list[EnhancedSeries]) -> EnhancedSeries | None:
    """The in-phase series acquired with a water-only Dixon series (same frame of
    reference and slice positions), or None."""
    if item.role != "SAG_DIXON_W":
        return None
    for other in items:
        if (other.role == "SAG_DIXON_IP"
                and other.datasets[0].get("FrameOfReferenceUID") == item.datasets[0].get("FrameOfReferenceUID")
                and _positions(other) == _positions(item)
                and other.pixels.shape == item.pixels.shape):
            return other
    return None
