"""Writes the QC results: ``qc.json``, a TID 1500 Comprehensive 3D SR and a PDF report
(builders in :mod:`qc.report_json`, :mod:`qc.report_sr`, :mod:`qc.report_pdf`), atomically."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from app.contracts import QC_FOLDER, QC_JSON, Ports, SeriesQC, WrittenSeries
from qc.report_json import qc_entries
from qc.report_pdf import build_pdf_dataset, render_pdf
from qc.report_sr import build_sr


class QCReportWriterOperator(Operator):
    """Writes ``OUT/qc.json``, ``OUT/qc/sr/*.dcm`` and ``OUT/qc/report/*.dcm`` (atomically).

    Named inputs:
        qc_results: list of SeriesQC.
        written_series: list of WrittenSeries from the derived-series writer.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(Ports.QC_RESULTS)
        spec.input(Ports.WRITTEN_SERIES)

    def compute(self, op_input, op_output, context) -> None:
        results: list[SeriesQC] = op_input.receive(Ports.QC_RESULTS) or []
        written: list[WrittenSeries] = op_input.receive(Ports.WRITTEN_SERIES) or []
        self.write(results, written)

    def write(self, results: list[SeriesQC], written: list[WrittenSeries]) -> None:
        if not results:
            return
        now = datetime.now()
        model = written[0].model if written else "unknown"
        staging = Path(tempfile.mkdtemp(prefix=".staging-qc-", dir=self.output_folder))
        try:
            (staging / "sr").mkdir()
            (staging / "report").mkdir()
            sr = build_sr(results, written, model, now)
            sr.save_as(staging / "sr" / "QC_SR.dcm", enforce_file_format=True)
            pdf = build_pdf_dataset(render_pdf(results, written, model), written[0].sources[0], results, model, now)
            pydicom.dcmwrite(staging / "report" / "QC_REPORT.dcm", pdf, enforce_file_format=True)
            entries = qc_entries(results, written)
            (staging / QC_JSON).write_text(json.dumps(entries, indent=2))
            target = self.output_folder / QC_FOLDER
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / QC_JSON, self.output_folder / QC_JSON)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for qc in results:
            if qc.motion_flag or qc.dl_accentuated:
                self._logger.warning("QC flag on %s (series %s): %s", qc.role, qc.series_number, "; ".join(qc.notes))
