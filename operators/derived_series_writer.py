"""Writes each enhanced series as a derived MR series, atomically, plus the run summary.

pydicom builds the derived MR images (:mod:`series.derived`) because highdicom (0.28) has no
constructor for a classic derived MR Image; highdicom supplies the coded concepts and the
ContributingEquipment item.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import pydicom
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from pydicom.uid import ExplicitVRLittleEndian

from app.contracts import DERIVED_FOLDER, EnhancedSeries, Ports, SeriesQC, SeriesReport, WrittenSeries, derived_uid
from app.run_summary import summary_of, write_summary
from qc.report_json import image_comments, verdict_line
from series.derived import build_derived_dataset, derived_series_number, output_syntax, series_window
from series.frames import instance_label


class DerivedSeriesWriterOperator(Operator):
    """Writes ``OUT/derived/<number>_<role>/`` per enhanced series and ``OUT/run_summary.json``.

    All series are written into a staging folder first and moved into place only when
    every one of them is complete: a failure leaves no partial series behind.

    Named inputs:
        enhanced_series: list of EnhancedSeries.
        qc_results: list of SeriesQC; each derived image carries its series' verdict in
            ImageComments (the viewer shows it on the DL viewport).
        series_reports: list of SeriesReport (optional; for the summary).
    Named outputs:
        written_series: list of WrittenSeries (optional; for the QC report).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, transfer_syntax: str | None = None,
                 **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        self.transfer_syntax = output_syntax(transfer_syntax)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(Ports.ENHANCED_SERIES)
        spec.input(Ports.QC_RESULTS)
        spec.input(Ports.SERIES_REPORTS).condition(ConditionType.NONE)
        spec.output(Ports.WRITTEN_SERIES).condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        enhanced: list[EnhancedSeries] = op_input.receive(Ports.ENHANCED_SERIES) or []
        results: list[SeriesQC] = op_input.receive(Ports.QC_RESULTS) or []
        reports: list[SeriesReport] = op_input.receive(Ports.SERIES_REPORTS) or []
        op_output.emit(self.write(enhanced, reports, results), Ports.WRITTEN_SERIES)

    def write(self, enhanced: list[EnhancedSeries], reports: list[SeriesReport],
              results: list[SeriesQC] | None = None) -> list[WrittenSeries]:
        checks = {qc.source_series_instance_uid: qc for qc in results or []}
        self.output_folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now()
        taken = {r.series_number for r in reports if r.series_number is not None}
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.output_folder))
        written, series = [], []
        try:
            for item in enhanced:
                entry, record = self._write_series(item, staging, taken, now,
                                                   checks.get(str(item.datasets[0].SeriesInstanceUID)))
                written.append(entry)
                series.append(record)
            final_root = self.output_folder / DERIVED_FOLDER
            final_root.mkdir(exist_ok=True)
            for entry in written:
                target = final_root / entry["folder"]
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging / entry["folder"], target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # The selector stops a run with nothing to enhance (NoEligibleSeriesError) before this.
        write_summary(self.output_folder, summary_of(reports, enhanced, written, status="done"))
        return series

    def _write_series(self, item: EnhancedSeries, staging: Path, taken: set[int],
                      now: datetime, qc: SeriesQC | None = None) -> tuple[dict, WrittenSeries]:
        first = item.datasets[0]
        source_uid = str(first.SeriesInstanceUID)
        series_uid = derived_uid(source_uid, item.model.name, item.model.version)
        number = derived_series_number(first.get("SeriesNumber"), taken)
        taken.add(number)
        folder = f"{number:05d}_{item.role.lower()}"
        (staging / folder).mkdir()
        window = series_window(item.pixels)
        headers = []
        for i, (src, pix) in enumerate(zip(item.datasets, item.pixels)):
            ds = build_derived_dataset(src, pix, series_uid=series_uid,
                                       sop_uid=derived_uid(instance_label(src), item.model.name, item.model.version),
                                       series_number=number, window=window, model_name=item.model.name,
                                       model_version=item.model.version, model_sha256=item.model.sha256, now=now,
                                       role=item.role, strength=item.strength)
            if qc is not None:
                ds.ImageComments = image_comments(qc, i)
            if self.transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(self.transfer_syntax, pix, generate_instance_uid=False)
            pydicom.dcmwrite(staging / folder / f"IM{i + 1:04d}.dcm", ds, enforce_file_format=True)
            del ds.PixelData
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # headers handed on describe no pixels
            headers.append(ds)
        self._logger.info("%s: derived series %d written (%d images)", item.role, number, len(item.datasets))
        entry = {"role": item.role, "source_series_instance_uid": source_uid,
                 "derived_series_instance_uid": series_uid, "series_number": number,
                 "n_instances": len(item.datasets), "folder": folder,
                 "seconds": round(item.seconds, 2), "device": item.device}
        record = WrittenSeries(item.role, source_uid, series_uid, number, f"{item.model.name} {item.model.version}",
                               item.datasets, headers, item.pixels, item.strength, list(item.held_back))
        entry |= {"strength": item.strength, "guard_held_back_percent": record.held_back_percent,
                  "qc_verdict": None if qc is None else verdict_line(qc)}
        return entry, record
