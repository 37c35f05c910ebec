"""Writes the QC results: ``qc.json``, a TID 1500 Comprehensive 3D SR and a PDF report.

The SR is built with highdicom. The PDF is drawn with matplotlib and encapsulated with
pydicom rather than the SDK's DICOMEncapsulatedPDFWriterOperator, because that operator
gives every run new random UIDs: a rerun must replace the report in the PACS, not add a
second one, so our UIDs are derived from the source UIDs and the model version.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import textwrap
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage

from operators.derived_series_writer import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    WrittenSeries,
    derived_uid,
    new_file_meta,
)
from operators.quality_check import SeriesQC
from operators.series_input import source_frame_number
from operators.series_roles import SOFTWARE_NAME

QC_JSON = "qc.json"
QC_FOLDER = "qc"
# Local coding scheme for concepts DICOM has no code for (99 prefix = private scheme).
_SCHEME = "99CDLE"
CNR_CODE = hd.sr.CodedConcept("CNR", _SCHEME, "Contrast to noise ratio")
MOTION_SCORE_CODE = hd.sr.CodedConcept("MOTSCORE", _SCHEME, "Motion artifact score")
DL_ACCENTUATED_CODE = hd.sr.CodedConcept("DLACCENT", _SCHEME, "Artifacts accentuated by DL enhancement")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def qc_entries(results: list[SeriesQC], written: list[WrittenSeries]) -> list[dict]:
    """The stable ``qc.json`` interface: one entry per source series (see README)."""
    by_source = {w.source_series_instance_uid: w for w in written}
    entries = []
    for qc in results:
        w = by_source.get(qc.source_series_instance_uid)
        entries.append({
            "SeriesInstanceUID": qc.source_series_instance_uid,
            "derived_SeriesInstanceUID": w.derived_series_instance_uid if w else None,
            "role": qc.role,
            "series_number": qc.series_number,
            "derived_series_number": w.series_number if w else None,
            "phase_encode_direction": qc.phase_encode_direction,
            "snr_original": qc.original.snr, "snr_dl": qc.dl.snr,
            "snr_foreground_original": qc.original.snr_foreground, "snr_foreground_dl": qc.dl.snr_foreground,
            "cnr_original": qc.original.cnr, "cnr_dl": qc.dl.cnr,
            "roi_confidence": qc.roi_confidence,
            "noise_sd_original": qc.original.noise_sd, "noise_sd_dl": qc.dl.noise_sd,
            "motion_score_original": qc.original.motion_score, "motion_score_dl": qc.dl.motion_score,
            "ghost_score_original": qc.original.ghost_score, "ghost_score_dl": qc.dl.ghost_score,
            "motion_detector_original": qc.original.detector,
            "slice_motion_scores_original": qc.original.slice_motion_scores,
            "slice_motion_scores_dl": qc.dl.slice_motion_scores,
            "motion_flag": qc.motion_flag,
            "dl_accentuated": qc.dl_accentuated,
            "notes": qc.notes,
        })
    return entries


def report_label(results: list[SeriesQC]) -> str:
    """What a QC object covers, for its SeriesDescription and title: the role when the
    run had one series (the Orthanc worker runs one job per series), and the flags, so
    that a viewer can tell the reports of one study apart."""
    scope = results[0].role if len(results) == 1 else f"{len(results)} series"
    flagged = [qc.role for qc in results if qc.motion_flag]
    accentuated = [qc.role for qc in results if qc.dl_accentuated]
    parts = [scope]
    if flagged:
        parts.append("MOTION FLAGGED" if len(results) == 1 else f"MOTION FLAGGED {' '.join(flagged)}")
    if accentuated:
        parts.append("DL ACCENTUATED" if len(results) == 1 else f"DL ACCENTUATED {' '.join(accentuated)}")
    return " ".join(parts)


def _header_only(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0:
            out.add(elem)
    return out


def _one_per_instance(datasets: list) -> list:
    """One dataset per SOP instance (frames of a multi-frame source share one)."""
    return list({str(ds.SOPInstanceUID): ds for ds in datasets}.values())


def source_image_references(datasets: list) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """One reference per SOP instance; frames of a multi-frame source are listed by number."""
    frames: dict[str, list[int]] = {}
    for ds in datasets:
        frame = source_frame_number(ds)
        frames.setdefault(str(ds.SOPInstanceUID), [])
        if frame is not None:
            frames[str(ds.SOPInstanceUID)].append(frame)
    return [hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                 referenced_frame_numbers=frames[str(ds.SOPInstanceUID)] or None)
            for ds in _one_per_instance(datasets)]


def build_sr(results: list[SeriesQC], written: list[WrittenSeries], model: str, now: datetime) -> hd.sr.Comprehensive3DSR:
    """TID 1500 measurement report: per series, one group for the original images and one
    for the DL images, each with SNR, CNR (when measured), motion score and the
    qualitative evaluations Motion blur and DL accentuation (Present/Absent)."""
    by_source = {w.source_series_instance_uid: w for w in written}
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("observer", SOFTWARE_NAME, SOFTWARE_VERSION), name=SOFTWARE_NAME,
        manufacturer_name=MANUFACTURER, model_name=SOFTWARE_NAME)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=f"{SOFTWARE_NAME} QC", version=SOFTWARE_VERSION)
    groups, evidence = [], []
    for qc in results:
        w = by_source[qc.source_series_instance_uid]
        for label, quality, datasets, flag in (
            ("original", qc.original, w.sources, qc.motion_flag),
            ("DL", qc.dl, w.derived_headers, qc.dl.motion_score is not None and qc.dl.motion_score >= 0.5),
        ):
            measurements = []
            for code, value in ((codes.DCM.SignalToNoise, quality.snr), (CNR_CODE, quality.cnr),
                                (MOTION_SCORE_CODE, quality.motion_score)):
                if value is not None:
                    measurements.append(hd.sr.Measurement(name=code, value=float(value), unit=NO_UNITS,
                                                          algorithm_id=algorithm))
            evaluations = [hd.sr.QualitativeEvaluation(codes.DCM.MotionBlur, codes.DCM.Present if flag else codes.DCM.Absent)]
            if label == "DL":
                evaluations.append(hd.sr.QualitativeEvaluation(
                    DL_ACCENTUATED_CODE, codes.DCM.Present if qc.dl_accentuated else codes.DCM.Absent))
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking", qc.source_series_instance_uid, label, model),
                    identifier=f"{qc.role} {label} series {w.series_number if label == 'DL' else qc.series_number}"),
                finding_type=codes.DCM.ImageQuality,
                finding_sites=[hd.sr.FindingSite(codes.SCT.CervicalSpine)],
                algorithm_id=algorithm,
                measurements=measurements or None,
                qualitative_evaluations=evaluations,
                source_images=source_image_references(datasets),
            ))
            evidence.extend(_header_only(ds) for ds in _one_per_instance(datasets))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                     imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    key = sorted(qc.source_series_instance_uid for qc in results)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report,
        series_instance_uid=derived_uid("qc-sr-series", *key, model),
        series_number=9901, sop_instance_uid=derived_uid("qc-sr", *key, model), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False)
    sr.SeriesDescription = f"DL QC measurements {report_label(results)}"[:64]
    sr.SoftwareVersions = [SOFTWARE_VERSION, model]
    _stamp(sr, now)
    return sr


def _stamp(ds: Dataset, now: datetime) -> None:
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = SOFTWARE_NAME
    equipment.SoftwareVersions = SOFTWARE_VERSION
    equipment.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.ProcessingEquipment)]
    ds.ContributingEquipmentSequence = [equipment]


def render_pdf(results: list[SeriesQC], written: list[WrittenSeries], model: str) -> bytes:
    """One-page-per-three-series PDF: verdict, table, original | DL thumbnails."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    by_source = {w.source_series_instance_uid: w for w in written}
    flagged = [qc for qc in results if qc.motion_flag or qc.dl_accentuated]
    buffer = io.BytesIO()

    def fmt(v):
        return "n/a" if v is None else (f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}")

    with PdfPages(buffer, metadata={"Title": "DL enhancement quality check", "Creator": SOFTWARE_NAME}) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        fig.text(0.05, 0.96, "Accelerated cervical MR: DL enhancement quality check", fontsize=14, weight="bold")
        fig.text(0.05, 0.935, f"{SOFTWARE_NAME} {SOFTWARE_VERSION}, model {model}. Not a diagnosis; "
                 "read the original series whenever a flag is raised.", fontsize=8)
        y = 0.9
        ce = [qc for qc in results if qc.role == "SAG_CE_T1"]
        for qc in ce:
            text = ("CE T1: MOTION ARTIFACT FLAGGED - read the original" if qc.motion_flag else "CE T1: no motion flag")
            fig.text(0.05, y, text, fontsize=13, weight="bold", color="red" if qc.motion_flag else "green")
            y -= 0.03
        for qc in flagged:
            reasons = "; ".join(qc.notes)
            fig.text(0.05, y, f"{qc.role} (series {qc.series_number}): {reasons}", fontsize=9, color="red", wrap=True)
            y -= 0.025
        if not flagged:
            fig.text(0.05, y, "No series flagged.", fontsize=10, color="green")
            y -= 0.025
        columns = ["Role", "Series", "DL series", "SNR orig", "SNR DL", "CNR orig", "CNR DL", "Motion orig",
                   "Motion DL", "Flag", "DL accent."]
        rows = []
        for qc in results:
            w = by_source.get(qc.source_series_instance_uid)
            rows.append([qc.role, str(qc.series_number), str(w.series_number if w else "-"), fmt(qc.original.snr),
                         fmt(qc.dl.snr), fmt(qc.original.cnr), fmt(qc.dl.cnr), fmt(qc.original.motion_score),
                         fmt(qc.dl.motion_score), "YES" if qc.motion_flag else "no",
                         "YES" if qc.dl_accentuated else "no"])
        ax = fig.add_axes([0.03, y - 0.05 - 0.03 * len(rows), 0.94, 0.04 + 0.03 * len(rows)])
        ax.axis("off")
        table = ax.table(cellText=rows, colLabels=columns, loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        for i, qc in enumerate(results, start=1):
            if qc.motion_flag or qc.dl_accentuated:
                for j in range(len(columns)):
                    table[i, j].set_facecolor("#ffd6d6")
        footnote = ("SNR: C3-C4 disc (else whole body) / SD of background air (robust, Rician-corrected); CNR: "
                    "|disc - C3 marrow| / SD, ROIs located automatically (see notes and the outlines on the next "
                    "pages). Motion score 0-1: the larger of the ghosting in the air along the phase-encode direction "
                    "and the motion detector (CNN), each calibrated to 0.5 at its flag threshold; flag at >= 0.5. "
                    "Motion DL: ghosting score of the DL output.")
        fig.text(0.05, 0.04, "\n".join(textwrap.wrap(footnote, 150)), fontsize=6.5)
        pdf.savefig(fig)
        plt.close(fig)
        for start in range(0, len(results), 3):
            fig, axes = plt.subplots(3, 2, figsize=(8.27, 11.69), squeeze=False)
            for row, qc in zip(axes, results[start:start + 3]):
                w = by_source[qc.source_series_instance_uid]
                # The slice the CNR ROIs were placed on (outlined), else the middle one.
                k = qc.rois[0] if qc.rois is not None else len(w.sources) // 2
                for axis, (title, image) in zip(row, (("original", w.sources[k].pixel_array),
                                                       ("DL", w.derived_pixels[k]))):
                    lo, hi = np.percentile(w.derived_pixels, [1, 99.5])
                    axis.imshow(image, cmap="gray", vmin=lo, vmax=hi)
                    if qc.rois is not None:
                        axis.contour(qc.rois[1].c3_marrow, [0.5], colors="yellow", linewidths=0.6)
                        axis.contour(qc.rois[1].c3_c4_disc, [0.5], colors="cyan", linewidths=0.6)
                    axis.set_title(f"{qc.role} {title}, slice {k + 1}" + ("\nC3 marrow yellow, C3-C4 disc cyan"
                                                                         if qc.rois is not None else ""), fontsize=8,
                                   color="red" if qc.motion_flag or qc.dl_accentuated else "black")
                    axis.axis("off")
            for row in axes[len(results[start:start + 3]):]:
                for axis in row:
                    axis.axis("off")
            fig.tight_layout()
            pdf.savefig(fig)
            plt.close(fig)
    return buffer.getvalue()


def build_pdf_dataset(pdf_bytes: bytes, reference: Dataset, results: list[SeriesQC], model: str,
                      now: datetime) -> Dataset:
    """Encapsulated PDF in the study of ``reference`` (patient and study copied)."""
    key = sorted(qc.source_series_instance_uid for qc in results)
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                    "SpecificCharacterSet"):
        ds[keyword] = reference[keyword] if keyword in reference else pydicom.DataElement(
            pydicom.datadict.tag_for_keyword(keyword), pydicom.datadict.dictionary_VR(keyword), "")
    sop_uid = derived_uid("qc-pdf", *key, model)
    ds.file_meta = new_file_meta(EncapsulatedPDFStorage, sop_uid)
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = derived_uid("qc-pdf-series", *key, model)
    ds.SeriesNumber = 9902
    ds.SeriesDescription = f"DL QC report {report_label(results)}"[:64]
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.Manufacturer = MANUFACTURER
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = f"DL enhancement quality check: {report_label(results)}"
    ds.ConceptNameCodeSequence = [hd.sr.CodedConcept("121070", "DCM", "Findings")]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = pdf_bytes + (b"\0" if len(pdf_bytes) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = [SOFTWARE_VERSION, model]
    _stamp(ds, now)
    return ds


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
        spec.input("qc_results")
        spec.input("written_series")

    def compute(self, op_input, op_output, context) -> None:
        results: list[SeriesQC] = op_input.receive("qc_results") or []
        written: list[WrittenSeries] = op_input.receive("written_series") or []
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
