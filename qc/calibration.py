"""QC thresholds (``qc/calibration.json``, written by ``python -m models.evaluation.qc_series --calibrate``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qc import metrics as qm

DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class QCCalibration:
    """Thresholds from ``python -m models.evaluation.qc_series --calibrate`` (see the README).

    ``ghost_threshold``: raw ghost measure (:mod:`qc.metrics`) at which a series is flagged;
    ``detector_threshold``: the motion detector's series probability at which it is
    flagged; each maps to motion score 0.5, and the motion score is the larger of the two.
    ``accentuation_margin``: how much the DL output's raw ghost measure may exceed the
    original's before the series is flagged "DL accentuated artifacts".
    ``roles``: per series role, its own ``ghost_threshold`` / ``detector_threshold`` /
    ``accentuation_margin`` (the clean ghost level of T1-weighted sagittal series is several
    times that of axial T2);
    :meth:`for_role` applies them, roles not listed keep the pooled values above.
    ``detector_corroboration``: where the ghost measure can be taken (air beside the body),
    the detector's score counts only as far as the ghost measure reaches this fraction of its
    threshold (a fuzzy AND; 0 = the detector flags on its own). Where the body leaves no air
    to measure, the detector decides alone.
    """

    ghost_threshold: float
    accentuation_margin: float
    local_weight: float = 2.0
    detector_threshold: float | None = None
    source: str = ""
    roles: dict[str, dict[str, float]] = field(default_factory=dict)
    detector_corroboration: float = 0.0

    @classmethod
    def load(cls, path: Path = DEFAULT_CALIBRATION) -> "QCCalibration":
        data = json.loads(Path(path).read_text())
        detector = data.get("detector_threshold")
        roles = {str(k): {n: float(v) for n, v in d.items()} for k, d in (data.get("roles") or {}).items()}
        return cls(float(data["ghost_threshold"]), float(data["accentuation_margin"]),
                   float(data.get("local_weight", 2.0)), None if detector is None else float(detector),
                   str(data.get("source", "")), roles, float(data.get("detector_corroboration", 0.0)))

    def for_role(self, role: str | None) -> "QCCalibration":
        """These thresholds with ``role``'s own where it has them."""
        own = self.roles.get(role or "", {})
        if not own:
            return self
        return replace(self, ghost_threshold=own.get("ghost_threshold", self.ghost_threshold),
                       detector_threshold=own.get("detector_threshold", self.detector_threshold),
                       accentuation_margin=own.get("accentuation_margin", self.accentuation_margin))

    @property
    def score_scale(self) -> float:
        return self.ghost_threshold / np.log(2.0)  # threshold <-> score 0.5

    def ghost_score(self, ghost: float | None) -> float | None:
        """Raw ghost measure -> 0-1, 0.5 at ``ghost_threshold``."""
        return qm.motion_score_from_ratio(ghost, self.score_scale)

    def detector_score(self, probability: float | None) -> float | None:
        """Detector probability -> 0-1, 0.5 at ``detector_threshold`` (a power law:
        monotone, 0 and 1 stay)."""
        if probability is None or self.detector_threshold is None:
            return None
        gamma = np.log(0.5) / np.log(min(max(self.detector_threshold, 1e-6), 1 - 1e-6))
        return float(np.clip(probability, 0.0, 1.0) ** gamma)

    def motion_score(self, ghost: float | None, probability: float | None) -> float | None:
        """The larger of the two calibrated scores (``None`` when neither is measurable); the
        detector's capped by the ghost measure's corroboration where that is measurable."""
        detector = self.detector_score(probability)
        if detector is not None and ghost is not None and self.detector_corroboration > 0:
            detector = min(detector, qm.motion_score_from_ratio(
                ghost, self.detector_corroboration * self.score_scale))
        scores = [v for v in (self.ghost_score(ghost), detector) if v is not None]
        return max(scores) if scores else None
