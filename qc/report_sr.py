"""The QC results as a TID 1500 Comprehensive 3D SR (highdicom): per series, one measurement
group for the original and one for the DL images, and, where the paper's SNR/CNR was measured,
the three regions behind it (C3-C4 disc, C3 marrow, background air) as TID 1410 planar ROIs on
the image they were placed on, original and DL, so that a viewer draws them with their values."""
from __future__ import annotations

from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from app.contracts import (MANUFACTURER, SOFTWARE_NAME, SOFTWARE_VERSION, ImageQuality, SeriesQC, WrittenSeries,
                           derived_uid)
from qc.measures import motion_flagged
from qc.report_json import report_label
from series.derived import processing_equipment
from series.frames import source_frame_number

# Local coding scheme for concepts DICOM has no code for (99 prefix = private scheme).
_SCHEME = "99CDLE"
CNR_CODE = hd.sr.CodedConcept("CNR", _SCHEME, "Contrast to noise ratio")
MOTION_SCORE_CODE = hd.sr.CodedConcept("MOTSCORE", _SCHEME, "Motion artifact score")
SLICE_MOTION_SCORE_CODE = hd.sr.CodedConcept("SLMOTSCORE", _SCHEME, "Slice motion artifact score")
DL_ACCENTUATED_CODE = hd.sr.CodedConcept("DLACCENT", _SCHEME, "Artifacts accentuated by DL enhancement")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def _header_only(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0:
            out.add(elem)
    return out


def _one_per_instance(datasets: list) -> list:
    """One dataset per SOP instance (frames of a multi-frame source share one)."""
    return list({str(ds.SOPInstanceUID): ds for ds in datasets}.values())


def slice_reference(ds: Dataset) -> hd.sr.SourceImageForMeasurement:
    """The image (the frame, for a multi-frame source) one slice of a series came from."""
    frame = source_frame_number(ds)
    return hd.sr.SourceImageForMeasurement(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                           referenced_frame_numbers=None if frame is None else [frame])


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


def mask_outline(mask: np.ndarray, tolerance: float = 0.75) -> np.ndarray | None:
    """Closed outline of the largest connected part of a boolean ``(rows, columns)`` mask, as
    SCOORD POLYLINE data: ``(n, 2)`` (column, row) in DICOM pixel coordinates (the top-left
    pixel's top-left corner is 0, 0), first point = last point; None for an empty mask."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    largest = labels == (1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1)))))
    # pad so that a region touching the border still gives one closed contour
    contours = find_contours(np.pad(largest, 1).astype(np.float32), 0.5)
    outline = max(contours, key=len) - 1.0
    outline = approximate_polygon(outline, tolerance=tolerance)
    if not np.array_equal(outline[0], outline[-1]):
        outline = np.vstack([outline, outline[:1]])
    return np.ascontiguousarray(outline[:, ::-1] + 0.5, dtype=np.float32)


def roi_groups(qc: SeriesQC, label: str, quality: ImageQuality, image: Dataset, pixels: np.ndarray,
               algorithm: hd.sr.AlgorithmIdentification, model: str,
               outlines: dict[int, np.ndarray | None] | None = None) -> list:
    """The regions behind ``quality``'s SNR/CNR (qc.measures.with_vertebral_rois) on one image
    (``pixels``: its stored values, ``(rows, columns)``), as planar ROI groups: C3-C4 disc (mean,
    SNR), C3 marrow (mean, CNR), background air (noise SD; measured in that region on every slice).
    ``outlines``: outlines already traced, by ``id`` of their mask (filled in here)."""
    _, found = qc.rois
    pixels = np.asarray(pixels, dtype=np.float64)
    disc, marrow = float(pixels[found.c3_c4_disc].mean()), float(pixels[found.c3_marrow].mean())
    frame = source_frame_number(image)
    source = hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID),
                                        referenced_frame_numbers=None if frame is None else [frame])
    regions = (
        ("C3-C4 disc", found.c3_c4_disc, codes.SCT.C3C4Disc,
         [(codes.SCT.Mean, disc), (codes.DCM.SignalToNoise, quality.snr)]),
        ("C3 marrow", found.c3_marrow, codes.SCT.BoneStructureOfC3,
         [(codes.SCT.Mean, marrow), (CNR_CODE, quality.cnr)]),
        ("background air", qc.roi_background, codes.SCT.Air, [(codes.SCT.StandardDeviation, quality.noise_sd)]),
    )
    groups = []
    outlines = {} if outlines is None else outlines
    for name, mask, site, values in regions:
        # The original and the DL group share the masks: each is traced once (the background
        # air, most of the image, took ~40 ms).
        if mask is not None and id(mask) not in outlines:
            outlines[id(mask)] = mask_outline(mask)
        outline = None if mask is None else outlines[id(mask)]
        if outline is None or len(outline) < 4:
            continue
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid("tracking-roi", qc.source_series_instance_uid, label, name, model),
                identifier=f"{qc.role} {label} {name}"),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                                                source_image=source),
            finding_type=codes.DCM.ImageQuality, finding_sites=[hd.sr.FindingSite(site)], algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=code, value=round(float(value), 2), unit=NO_UNITS,
                                            algorithm_id=algorithm) for code, value in values]))
    return groups


def build_sr(results: list[SeriesQC], written: list[WrittenSeries], model: str, now: datetime) -> hd.sr.Comprehensive3DSR:
    """TID 1500 measurement report: per series, one group for the original images and one
    for the DL images, each with SNR, CNR (when measured), motion score and the
    qualitative evaluations Motion blur and DL accentuation (Present/Absent); a flagged
    original group also holds one "Slice motion artifact score" per slice that reached the
    threshold, referencing that slice's image."""
    by_source = {w.source_series_instance_uid: w for w in written}
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("observer", SOFTWARE_NAME, SOFTWARE_VERSION), name=SOFTWARE_NAME,
        manufacturer_name=MANUFACTURER, model_name=SOFTWARE_NAME)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=f"{SOFTWARE_NAME} QC", version=SOFTWARE_VERSION)
    # OHIF's SR viewport opens at the report's first measurement and shows the image it was placed
    # on: the planar ROIs come first, CE T1's (the series the QC is for) before the others.
    roi_groups_first, groups, evidence = [], [], []
    outlines: dict[int, np.ndarray | None] = {}  # by id of the mask; the masks live in ``results``
    for qc in sorted(results, key=lambda r: r.role != "SAG_CE_T1"):
        w = by_source[qc.source_series_instance_uid]
        for label, quality, datasets, flag in (
            ("original", qc.original, w.sources, qc.motion_flag),
            ("DL", qc.dl, w.derived_headers, motion_flagged(qc.dl.motion_score)),
        ):
            measurements = []
            for code, value in ((codes.DCM.SignalToNoise, quality.snr), (CNR_CODE, quality.cnr),
                                (MOTION_SCORE_CODE, quality.motion_score)):
                if value is not None:
                    measurements.append(hd.sr.Measurement(name=code, value=float(value), unit=NO_UNITS,
                                                          algorithm_id=algorithm))
            if label == "original" and flag:  # the slices that raised the flag, each with its image
                for i in quality.flagged_slices:
                    measurements.append(hd.sr.Measurement(
                        name=SLICE_MOTION_SCORE_CODE, value=float(quality.slice_motion_scores[i]), unit=NO_UNITS,
                        algorithm_id=algorithm, referenced_images=[slice_reference(datasets[i])]))
            # Not measurable (no air to judge): no Motion blur evaluation rather than a false "Absent".
            evaluations = [] if quality.motion_score is None else [
                hd.sr.QualitativeEvaluation(codes.DCM.MotionBlur, codes.DCM.Present if flag else codes.DCM.Absent)]
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
                qualitative_evaluations=evaluations or None,
                source_images=source_image_references(datasets),
            ))
            if qc.rois is not None and quality.cnr is not None:  # the regions behind snr / cnr, on their image
                k = qc.rois[0]
                pixels = w.sources[k].pixel_array if label == "original" else w.derived_pixels[k]
                roi_groups_first.extend(roi_groups(qc, label, quality, datasets[k], pixels, algorithm, model, outlines))
            evidence.extend(_header_only(ds) for ds in _one_per_instance(datasets))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                     imaging_measurements=roi_groups_first + groups, title=codes.DCM.ImagingMeasurementReport)
    # One report per study, replaced in place when the study is run again (the same model): keyed
    # by the study, not by the series that happened to be in this run.
    key = [str(written[0].sources[0].StudyInstanceUID)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report,
        series_instance_uid=derived_uid("qc-sr-series", *key, model),
        series_number=9901, sop_instance_uid=derived_uid("qc-sr", *key, model), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        series_description=f"DL QC measurements {report_label(results)}"[:64],
        software_versions=[SOFTWARE_VERSION, model],
        content_date=now.date(), content_time=now.time().replace(microsecond=0),
        series_date=now.date(), series_time=now.time().replace(microsecond=0),
        contributing_equipment=[processing_equipment(SOFTWARE_VERSION, now)])
    return sr
