"""Selects the cervical-spine protocol series of a study and assigns each its role."""
from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy

from app.contracts import NoDicomError, NoEligibleSeriesError, Ports, SeriesReport
from series.frames import check_series_readable
from series.roles import classify_series


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
        spec.input(Ports.DICOM_STUDY_LIST)
        spec.output(Ports.STUDY_SELECTED_SERIES)
        spec.output(Ports.SERIES_REPORTS)

    def compute(self, op_input, op_output, context) -> None:
        studies: list[DICOMStudy] = op_input.receive(Ports.DICOM_STUDY_LIST) or []
        if not studies:  # the loader runs with must_load=False so that this error is ours
            raise NoDicomError("no DICOM study found in the input folder")
        selected, reports = self.select(studies)
        op_output.emit(selected, Ports.STUDY_SELECTED_SERIES)
        op_output.emit(reports, Ports.SERIES_REPORTS)

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
        if not selected:  # stop here, where the cause is known: nothing downstream has work
            reasons = "; ".join(f"series {r.series_number}: {r.reason}" for r in reports) or "no series found"
            raise NoEligibleSeriesError(f"no cervical protocol series to enhance ({reasons})", reports)
        return selected, reports
