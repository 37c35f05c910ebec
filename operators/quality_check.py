"""Quality check of every enhanced series: SNR, CNR, motion score and flags, before and after DL
(the measures are in :mod:`qc.measures`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from monai.deploy.core import Fragment, Operator, OperatorSpec

from app.contracts import EnhancedSeries, ModelError, Ports
from models import WEIGHTS_DIR
from qc.calibration import DEFAULT_CALIBRATION, QCCalibration
from qc.measures import check_series, dixon_in_phase_partner

if TYPE_CHECKING:  # type hints only: the detector's module is imported when the operator loads it
    from models.motion_detector import MotionDetector


class QualityCheckOperator(Operator):
    """Measures SNR, CNR and motion ghosting on each original series and its DL output.

    Named inputs:
        enhanced_series: list of EnhancedSeries.
    Named outputs:
        qc_results: list of SeriesQC, in the same order.
    """

    def __init__(self, fragment: Fragment, *args, model_dir: Path = WEIGHTS_DIR,
                 calibration_path: Path = DEFAULT_CALIBRATION, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.calibration = QCCalibration.load(calibration_path)
        self.model_dir = Path(model_dir)
        self._detector: "MotionDetector | None" = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(Ports.ENHANCED_SERIES)
        spec.output(Ports.QC_RESULTS)

    def compute(self, op_input, op_output, context) -> None:
        items: list[EnhancedSeries] = op_input.receive(Ports.ENHANCED_SERIES) or []
        if items and self._detector is None:
            # Checksum verified: a corrupt detector stops the job as a corrupt enhancement
            # model does (exit 5), rather than silently weakening the motion flag.
            from models.motion_detector import load_motion_detector

            try:
                self._detector = load_motion_detector(self.model_dir)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ModelError(f"cannot load motion detector: {exc}") from exc
        results = []
        for item in items:
            partner = dixon_in_phase_partner(item, items)
            qc = check_series(item, self.calibration, None if partner is None else partner.source_pixels,
                              self._detector)
            self._logger.info("QC %s: motion %s -> %s%s%s", qc.role, qc.original.motion_score, qc.dl.motion_score,
                              " FLAGGED" if qc.motion_flag else "", " DL-ACCENTUATED" if qc.dl_accentuated else "")
            results.append(qc)
        op_output.emit(results, Ports.QC_RESULTS)
