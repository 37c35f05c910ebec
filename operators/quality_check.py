"""Quality check of every enhanced series: SNR, CNR, motion score and flags, before and after DL."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from skimage.filters import threshold_otsu

from operators import qc_metrics as qm
from operators.dl_enhancement import EnhancedSeries

DEFAULT_CALIBRATION = Path(__file__).with_name("qc_calibration.json")


@dataclass(frozen=True)
class QCCalibration:
    """Thresholds from ``python -m operators.qc_evaluate --calibrate`` (see the README).

    ``ghost_threshold``: raw ghost measure at which a series is flagged (score 0.5);
    ``accentuation_margin``: how much the DL output's raw measure may exceed the
    original's before the series is flagged "DL accentuated artifacts".
    """

    ghost_threshold: float
    accentuation_margin: float
    local_weight: float = 2.0
    source: str = ""

    @classmethod
    def load(cls, path: Path = DEFAULT_CALIBRATION) -> "QCCalibration":
        data = json.loads(Path(path).read_text())
        return cls(float(data["ghost_threshold"]), float(data["accentuation_margin"]),
                   float(data.get("local_weight", 2.0)), str(data.get("source", "")))

    @property
    def score_scale(self) -> float:
        return self.ghost_threshold / np.log(2.0)  # threshold <-> score 0.5


@dataclass(frozen=True)
class ImageQuality:
    """Measures of one series (original or DL). ``None`` = not measurable."""

    snr_foreground: float | None
    snr: float | None  # paper's SNR: C3-C4 disc / SD(background), else foreground
    cnr: float | None
    noise_sd: float | None
    ghost: float | None  # raw ghost measure of the series (75th percentile of slices)
    motion_score: float | None  # 0-1
    slice_motion_scores: list[float | None]


@dataclass
class SeriesQC:
    role: str
    source_series_instance_uid: str
    series_number: int | None
    phase_encode_direction: str
    original: ImageQuality
    dl: ImageQuality
    motion_flag: bool
    dl_accentuated: bool
    notes: list[str] = field(default_factory=list)


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


def series_masks(volume: np.ndarray, pe_axis: int | None = None) -> list[qm.SliceMasks]:
    """Body and background masks of every slice, from one threshold for the series.

    With ``pe_axis``: where strong ghosts rise above that threshold they join the body,
    and no phase-encode line keeps both air and body (the ghost slope is unmeasurable);
    such a slice is masked again with its own Otsu threshold, which leaves ghosts, being
    fainter than tissue, in the background where they are measured.
    """
    vol = np.asarray(volume, dtype=np.float32)
    threshold = qm.body_threshold(vol)
    masks = [qm.slice_masks(image, threshold) for image in vol]
    if pe_axis is not None:
        for i, image in enumerate(vol):
            if qm.ghost_ratio(qm.ghost_profile(image, masks[i], pe_axis)) is None and image.max() > image.min():
                masks[i] = qm.slice_masks(image, max(threshold, float(threshold_otsu(image))))
    return masks


def measure_series(volume: np.ndarray, pe_axis: int, calibration: QCCalibration,
                   masks_per_slice: list[qm.SliceMasks]) -> ImageQuality:
    """All measures of one series ``(slices, rows, columns)`` in stored values.

    The masks come from the original series (or its Dixon in-phase partner) so the
    original and the DL output are measured on the same pixels.
    """
    vol = np.asarray(volume, dtype=np.float32)
    ghosts, background, body_means = [], [], []
    for image, masks in zip(vol, masks_per_slice):
        profile = qm.ghost_profile(image, masks, pe_axis)
        slope = qm.ghost_ratio(profile)
        local = qm.local_ghost_excess(profile)
        parts = [v for v in (slope, None if local is None else calibration.local_weight * local) if v is not None]
        ghosts.append(max(parts) if parts else None)
        background.append(image[masks.background])
        if masks.body.any():
            body_means.append(float(image[masks.body].mean()))
    noise_sd = qm.rician_noise_sd(np.concatenate(background)) if background else None
    fg = float(np.mean(body_means)) if body_means else None
    snr_fg = fg / noise_sd if (fg is not None and noise_sd) else None
    valid = [g for g in ghosts if g is not None]
    ghost = float(np.percentile(valid, 75)) if valid else None
    scale = calibration.score_scale
    return ImageQuality(
        snr_foreground=_round(snr_fg), snr=_round(snr_fg), cnr=None, noise_sd=_round(noise_sd),
        ghost=_round(ghost, 5), motion_score=_round(qm.motion_score_from_ratio(ghost, scale), 4),
        slice_motion_scores=[_round(qm.motion_score_from_ratio(g, scale), 4) for g in ghosts],
    )


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def check_series(item: EnhancedSeries, calibration: QCCalibration,
                 mask_source: np.ndarray | None = None) -> SeriesQC:
    """QC of one source series and its DL output.

    ``mask_source``: a series of the same acquisition and geometry to find the body on
    (the in-phase partner of a water-only Dixon series, where fat is as dark as air).
    """
    axis, direction, note = phase_encode_axis(item.datasets)
    source = item.source_pixels
    masks = series_masks(source if mask_source is None else mask_source, axis)
    original = measure_series(source, axis, calibration, masks)
    dl = measure_series(item.pixels, axis, calibration, masks)
    notes = [note] if note else []
    if item.role == "SAG_DIXON_W" and mask_source is None:
        notes.append("water-only Dixon without its in-phase partner: body outline from dark fat is uncertain")
    flag = bool(original.motion_score is not None and original.motion_score >= 0.5)
    accentuated = bool(
        original.ghost is not None and dl.ghost is not None
        and dl.ghost - original.ghost > calibration.accentuation_margin
    )
    if original.motion_score is None:
        notes.append("motion not measurable: too little air around the body")
    if flag:
        notes.append("motion artifacts: ghosting along the phase-encode direction")
    if accentuated:
        notes.append("DL accentuated artifacts; read the original")
    if original.noise_sd is None:
        notes.append("background noise not measurable (suppressed or no air): SNR not reported")
    number = item.datasets[0].get("SeriesNumber")
    return SeriesQC(item.role, str(item.datasets[0].SeriesInstanceUID),
                    int(number) if number not in (None, "") else None, direction,
                    original, dl, flag, accentuated, notes)


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


class QualityCheckOperator(Operator):
    """Measures SNR, CNR and motion ghosting on each original series and its DL output.

    Named inputs:
        enhanced_series: list of EnhancedSeries.
    Named outputs:
        qc_results: list of SeriesQC, in the same order.
    """

    def __init__(self, fragment: Fragment, *args, calibration_path: Path = DEFAULT_CALIBRATION, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.calibration = QCCalibration.load(calibration_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("enhanced_series")
        spec.output("qc_results")

    def compute(self, op_input, op_output, context) -> None:
        items: list[EnhancedSeries] = op_input.receive("enhanced_series") or []
        results = []
        for item in items:
            partner = dixon_in_phase_partner(item, items)
            qc = check_series(item, self.calibration, None if partner is None else partner.source_pixels)
            self._logger.info("QC %s: motion %s -> %s%s%s", qc.role, qc.original.motion_score, qc.dl.motion_score,
                              " FLAGGED" if qc.motion_flag else "", " DL-ACCENTUATED" if qc.dl_accentuated else "")
            results.append(qc)
        op_output.emit(results, "qc_results")
