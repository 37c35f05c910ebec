"""The QC report a radiologist reads: a PDF (matplotlib) encapsulated in DICOM (Modality DOC).

Encapsulated with pydicom rather than the SDK's DICOMEncapsulatedPDFWriterOperator, because
that operator gives every run new random UIDs: a rerun must replace the report in the PACS,
not add a second one, so our UIDs are derived from the study's UID and the model version (one report per study).
"""
from __future__ import annotations

import io
import textwrap
from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from app.contracts import MANUFACTURER, SOFTWARE_NAME, SOFTWARE_VERSION, SeriesQC, WrittenSeries, derived_uid
from qc.report_json import report_label
from series.derived import new_file_meta, processing_equipment


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
            if qc.motion_flag:
                text, colour = "CE T1: MOTION ARTIFACT FLAGGED - read the original", "red"
            elif qc.original.motion_score is None:
                text, colour = "CE T1: motion not measurable (no air beside the body) - compare with the original", "darkorange"
            else:
                text, colour = "CE T1: no motion flag", "green"
            fig.text(0.05, y, text, fontsize=13, weight="bold", color=colour)
            y -= 0.03
        for qc in flagged:
            reasons = "; ".join(qc.notes)
            fig.text(0.05, y, f"{qc.role} (series {qc.series_number}): {reasons}", fontsize=9, color="red", wrap=True)
            y -= 0.025
        if not flagged:
            fig.text(0.05, y, "No series flagged.", fontsize=10, color="green")
            y -= 0.025
        columns = ["Role", "Series", "DL series", "SNR orig", "SNR DL", "CNR orig", "CNR DL", "Motion orig",
                   "Motion DL", "Flag", "DL accent.", "Strength", "Held back"]
        rows = []
        for qc in results:
            w = by_source.get(qc.source_series_instance_uid)
            rows.append([qc.role, str(qc.series_number), str(w.series_number if w else "-"), fmt(qc.original.snr),
                         fmt(qc.dl.snr), fmt(qc.original.cnr), fmt(qc.dl.cnr), fmt(qc.original.motion_score),
                         fmt(qc.dl.motion_score), "YES" if qc.motion_flag else "no",
                         "YES" if qc.dl_accentuated else "no", (w.strength.split(" ")[0] if w and w.strength else "-"),
                         (f"{w.held_back_percent:.0f} %" if w and w.held_back_percent is not None else "-")])
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
                    "Motion DL: ghosting score of the DL output. Strength: share of the DL change applied "
                    "(low 0.60, medium 0.85, high 1.00). Held back: share of the network's change the do-no-harm guard "
                    "withheld because it did not look like noise (mean over slices; per slice in qc.json).")
        fig.text(0.05, 0.04, "\n".join(textwrap.wrap(footnote, 150)), fontsize=6.5)
        pdf.savefig(fig)
        plt.close(fig)
        for start in range(0, len(results), 3):
            fig, axes = plt.subplots(3, 2, figsize=(8.27, 11.69), squeeze=False)
            for row, qc in zip(axes, results[start:start + 3]):
                w = by_source[qc.source_series_instance_uid]
                # Flagged: the slice with the worst motion score; else the slice the CNR ROIs were
                # placed on (outlined), else the middle one.
                worst = qc.original.worst_slice if qc.motion_flag else None
                k = worst if worst is not None else qc.rois[0] if qc.rois is not None else len(w.sources) // 2
                lo, hi = np.percentile(w.derived_pixels, [1, 99.5])  # one grey scale for both images
                for axis, (title, image) in zip(row, (("original", w.sources[k].pixel_array),
                                                       ("DL", w.derived_pixels[k]))):
                    axis.imshow(image, cmap="gray", vmin=lo, vmax=hi)
                    if qc.rois is not None:
                        axis.contour(qc.rois[1].c3_marrow, [0.5], colors="yellow", linewidths=0.6)
                        axis.contour(qc.rois[1].c3_c4_disc, [0.5], colors="cyan", linewidths=0.6)
                    what = "worst motion image" if worst is not None else "image"
                    axis.set_title(f"{qc.role} {title}, {what} {qc.image_number(k)} of {len(w.sources)}"
                                   + ("\nC3 marrow yellow, C3-C4 disc cyan" if qc.rois is not None else ""), fontsize=8,
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
    key = [str(reference.StudyInstanceUID)]  # one report per study, replaced when the study is re-run
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
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.ContributingEquipmentSequence = [processing_equipment(SOFTWARE_VERSION, now)]
    return ds
