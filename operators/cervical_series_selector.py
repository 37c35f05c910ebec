"""Selects the cervical-spine protocol series of a study and assigns each its role."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy

from operators.series_input import UnsupportedInput, decoded_pixels, frame_views
from operators.series_roles import classify_series


@dataclass(frozen=True)
class SeriesReport:
    """One line of the run summary per series found in the input (no patient data)."""

    series_instance_uid: str
    series_number: int | None
    series_description: str
    n_instances: int
    role: str | None
    status: str  # "selected" | "skipped"
    reason: str


def series_frames(series: DICOMSeries) -> list:
    """The frame views (:mod:`operators.series_input`) of every instance of a series, in
    the loader's order; raises UnsupportedInput with the first instance's reason."""
    views = []
    for sop in series.get_sop_instances():
        views.extend(frame_views(sop.get_native_sop_instance()))
    return views


def check_series_readable(series: DICOMSeries) -> str | None:
    """Why the pixel data of a series cannot be processed, or ``None`` when it can.

    The SDK's loader keeps truncated files and files without pixel data, so every
    instance (every frame of a multi-frame object) is checked here before anything is
    computed.
    """
    try:
        views = series_frames(series)
    except UnsupportedInput as exc:
        return str(exc)
    shapes, orientations = set(), set()
    positions = []
    for ds in views:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if rows < 32 or cols < 32:
            return f"matrix {rows}x{cols} too small"
        syntax = ds.file_meta.TransferSyntaxUID
        if not syntax.is_transfer_syntax or syntax.is_compressed:
            try:
                decoded_pixels(ds)  # decoding is the check
            except UnsupportedInput as exc:
                return str(exc)
        else:
            expected = rows * cols * int(ds.BitsAllocated) // 8
            if len(ds.PixelData) < expected:
                return f"truncated pixel data ({len(ds.PixelData)} of {expected} bytes)"
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            return "missing ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
        shapes.add((rows, cols, int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0))))
        orientations.add(tuple(round(float(v), 3) for v in ds.ImageOrientationPatient))
        positions.append(tuple(round(float(v), 3) for v in ds.ImagePositionPatient))
    if len(shapes) != 1:
        return "instances differ in matrix or pixel format"
    if len(orientations) != 1:
        return "instances differ in orientation"
    if len(set(positions)) != len(positions):
        return "several instances share one position"
    return None


class CervicalSeriesSelectorOperator(Operator):
    """Classifies every series into a cervical protocol role; skips the rest with a reason.

    Named inputs:
        dicom_study_list: list of DICOMStudy from the SDK's DICOMDataLoaderOperator.
    Named outputs:
        study_selected_series_list: list of StudySelectedSeries; each SelectedSeries'
            ``selection_name`` is its role (SAG_T1, SAG_T2, SAG_DIXON_IP, SAG_DIXON_W,
            AX_T2, SAG_CE_T1).
        series_reports: list of SeriesReport, one per series found (for the run summary).
    """

    def __init__(self, fragment: Fragment, *args, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")
        spec.output("study_selected_series_list")
        spec.output("series_reports")

    def compute(self, op_input, op_output, context) -> None:
        studies: list[DICOMStudy] = op_input.receive("dicom_study_list") or []
        selected, reports = self.select(studies)
        op_output.emit(selected, "study_selected_series_list")
        op_output.emit(reports, "series_reports")

    def select(self, studies: list[DICOMStudy]) -> tuple[list[StudySelectedSeries], list[SeriesReport]]:
        selected: list[StudySelectedSeries] = []
        reports: list[SeriesReport] = []
        for study in studies:
            study_selection = StudySelectedSeries(study)
            for series in study.get_all_series():
                instances = series.get_sop_instances()
                first = instances[0].get_native_sop_instance()
                try:
                    decision = classify_series(first)
                    role, reason = decision.role, decision.reason
                    if role is not None:
                        problem = check_series_readable(series)
                        if problem is not None:
                            role, reason = None, problem
                except Exception as exc:  # noqa: BLE001 - one odd series must not stop the study
                    role, reason = None, f"header cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
                number = first.get("SeriesNumber")
                report = SeriesReport(str(series.SeriesInstanceUID), int(number) if number not in (None, "") else None,
                                      str(first.get("SeriesDescription", "")), len(instances), role,
                                      "selected" if role else "skipped", reason)
                reports.append(report)
                # Log series number and role only: descriptions can carry site text, never patient data.
                if role:
                    study_selection.add_selected_series(SelectedSeries(role, series))
                    self._logger.info("series %s (%d images): %s", report.series_number, len(instances), role)
                else:
                    self._logger.info("series %s (%d images) skipped: %s", report.series_number, len(instances), reason)
            if study_selection.selected_series:
                selected.append(study_selection)
        reports.sort(key=lambda r: (r.series_number is None, r.series_number or 0))
        return selected, reports


def sorted_instances(series: DICOMSeries) -> list:
    """The series' frame views (pydicom datasets, one per slice) sorted along the slice
    normal (first slice first)."""
    datasets = series_frames(series)
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
