"""Quality check: noise, ghosting measure, flags, DL-accentuation guard, qc.json, SR, PDF."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from app.contracts import EnhancedSeries, ModelDescription
from qc import metrics as qm
from qc.calibration import QCCalibration
from qc.measures import check_series, measure_series, series_masks
from simulation.dicom_study import simulate_series
from simulation.phantom import PhantomPatient, c3_rois, render_plane, sagittal_geometry

CALIBRATION = QCCalibration.load()


@pytest.fixture(scope="module")
def ce_t1_planes():
    patient = PhantomPatient.from_seed(8601, protocol="myelopathy")
    planes = sagittal_geometry(n_slices=2)
    return patient, planes, [render_plane(patient, p) for p in planes]


def _series(ce_t1_planes, motion, kind="rigid", seed=1):
    patient, planes, rendered = ce_t1_planes
    return simulate_series(patient, "SAG_CE_T1", planes, rendered, acquisition="accelerated", seed=seed,
                           motion=motion, motion_kind=kind)


def test_background_sd_estimate_matches_rayleigh():
    rng = np.random.default_rng(0)
    sigma = 7.0
    air = np.abs(rng.normal(0, sigma, 200_000) + 1j * rng.normal(0, sigma, 200_000))
    assert qm.rician_noise_sd(air) == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=0.02)
    # Ghost-like outliers in 10 % of the air barely move the robust estimate.
    air[:20_000] += 200.0
    assert qm.rician_noise_sd(air) < 1.2 * sigma * np.sqrt(2 - np.pi / 2)
    assert qm.rician_noise_sd(np.zeros(1000)) is None


def test_zero_filled_bands_are_not_air(ce_t1_planes):
    """Zero-filled bands at the field-of-view edge (cropped oversampling) hold no noise: they
    must neither lower the noise SD nor look like ghosting (their lines have no body signal
    and zero background, which a slope fit reads as ghosts rising with the body)."""
    clean = _series(ce_t1_planes, "none").images.astype(np.float32)
    axis = 1  # the test series' phase encoding runs along the rows (ROW)
    banded = clean.copy()
    n = clean.shape[1] // 10
    banded[:, :n, :] = 0
    banded[:, -n:, :] = 0
    masks = series_masks(banded, axis)
    assert not any(m.background[:n].any() or m.background[-n:].any() for m in masks)
    q_clean = measure_series(clean, axis, CALIBRATION, series_masks(clean, axis))
    q_banded = measure_series(banded, axis, CALIBRATION, masks)
    assert q_banded.noise_sd == pytest.approx(q_clean.noise_sd, rel=0.1)
    assert q_banded.ghost < CALIBRATION.for_role("SAG_CE_T1").ghost_threshold
    # Air suppressed to zero everywhere: nothing to measure, said as such (not a flag).
    suppressed = np.where(np.stack([m.body for m in series_masks(clean, axis)]), clean, 0).astype(np.float32)
    q = measure_series(suppressed, axis, CALIBRATION, series_masks(suppressed, axis))
    assert q.noise_sd is None and q.ghost is None


def test_series_value_weights_slices_by_anatomy():
    """Equal anatomy: a plain percentile; a slice with little anatomy barely moves it."""
    from qc.measures import series_value

    values = [0.1, 0.2, 0.3, 0.4, 0.9]
    plain = series_value(values, [0.5] * 5)
    assert 0.3 < plain < 0.9 and plain == series_value(values)
    assert series_value(values, [0.5, 0.5, 0.5, 0.5, 0.01]) < plain
    assert series_value([None, 0.2], [0.5, 0.5]) == 0.2 and series_value([None], [0.5]) is None


def test_role_thresholds_and_detector_corroboration():
    cal = QCCalibration(0.02, 0.01, 2.0, 0.3, roles={"AX_T2": {"ghost_threshold": 0.005, "detector_threshold": 0.2}})
    assert cal.for_role("AX_T2").ghost_threshold == 0.005 and cal.for_role("AX_T2").detector_threshold == 0.2
    assert cal.for_role("SAG_T1") is cal and cal.for_role(None) is cal
    assert cal.motion_score(0.0, 0.3) == pytest.approx(0.5) and cal.motion_score(0.02, None) == pytest.approx(0.5)
    assert cal.motion_score(None, None) is None
    # With corroboration, the detector alone cannot flag where the air shows no ghosts at all ...
    strict = QCCalibration(0.02, 0.01, 2.0, 0.3, detector_corroboration=0.5)
    assert strict.motion_score(0.0, 0.99) < 0.5
    # ... it can where the ghost measure reaches half its threshold, or cannot be measured.
    assert strict.motion_score(0.011, 0.99) >= 0.5 and strict.motion_score(None, 0.99) >= 0.5


def test_ghost_measure_separates_clean_from_severe_motion(ce_t1_planes):
    clean = _series(ce_t1_planes, "none")
    moved = _series(ce_t1_planes, "severe", seed=2)
    axis = clean.protocol.phase_encode_axis
    q_clean = measure_series(clean.images, axis, CALIBRATION, series_masks(clean.images))
    q_moved = measure_series(moved.images, axis, CALIBRATION, series_masks(moved.images))
    assert q_clean.motion_score < 0.5 <= q_moved.motion_score
    assert q_moved.ghost > 3 * q_clean.ghost
    # Phase encode matters: the same images measured along the readout axis show less.
    q_wrong_axis = measure_series(moved.images, 1 - axis, CALIBRATION, series_masks(moved.images))
    assert q_wrong_axis.ghost < q_moved.ghost


def test_interpolated_series_get_a_wider_background_margin():
    """AcquisitionMatrix against Rows / Columns says how many displayed pixels one acquired
    pixel spans; the background keeps 9 acquired pixels (at least 20 displayed) clear of the
    body, where an interpolated series spreads the body's edge ringing."""
    from qc.measures import interpolation_factor

    ds = pydicom.Dataset()
    ds.Rows, ds.Columns = 512, 512
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.AcquisitionMatrix = [256, 0, 0, 192]  # 256 readout samples down the rows, 192 phase lines across
    assert interpolation_factor([ds]) == pytest.approx(512 / 192)
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.AcquisitionMatrix = [0, 256, 128, 0]
    assert interpolation_factor([ds]) == pytest.approx(4.0)
    ds.AcquisitionMatrix = [0, 512, 512, 0]
    assert interpolation_factor([ds]) == 1.0
    del ds.AcquisitionMatrix
    assert interpolation_factor([ds]) == 1.0 and interpolation_factor([]) == 1.0
    assert qm.background_margin(1.0) == 20 and qm.background_margin(1.33) == 20
    assert qm.background_margin(4.0) == 36 and qm.background_margin(float("nan")) == 20


def test_local_ghost_excess_is_not_raised_by_a_correlated_background():
    """Neighbouring lines of an interpolated series (or a real source's own background
    texture) correlate: the background's fluctuation is read from the smoothed profile, so
    it is not taken for a band of ghosts; a real band still is."""
    rng = np.random.default_rng(3)
    n = 400
    correlated = 40.0 + np.convolve(rng.normal(0, 4.0, n + 6), np.ones(7) / 7, mode="valid")  # 7-line correlation
    drive = np.full(n, 500.0)

    def excess(background):
        return qm.local_ghost_excess(qm.GhostProfile(background, drive, np.ones(n, dtype=bool), 1000.0))

    assert excess(correlated) < 0.001
    banded = correlated.copy()
    banded[150:190] += 10.0  # swallowing ghosts on a band of 40 lines: 1 % of the body signal
    assert excess(banded) > 0.005


def _enhanced(images, role="SAG_CE_T1", pe="ROW"):
    datasets = []
    for i in range(images.shape[0]):
        ds = pydicom.Dataset()
        ds.SeriesInstanceUID = "1.2.3"
        ds.SeriesNumber = 801
        ds.InPlanePhaseEncodingDirection = pe
        ds.Rows, ds.Columns = images.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.PixelData = images[i].astype(np.uint16).tobytes()
        ds.ImagePositionPatient = [float(i), 0.0, 0.0]
        ds.InstanceNumber = images.shape[0] - i  # numbered against the normal, as many scanners do
        datasets.append(ds)
    return datasets


def test_flags_and_dl_accentuation_guard(ce_t1_planes):
    clean = _series(ce_t1_planes, "none")
    model = ModelDescription("m", "0", "0" * 64)
    datasets = _enhanced(clean.images)
    # DL output that only denoises a little: no flag, no accentuation.
    source = clean.images.astype(np.uint16)
    calm = EnhancedSeries("SAG_CE_T1", datasets, source, (clean.images * 0.98).astype(np.uint16), 0.0, model)
    qc = check_series(calm, CALIBRATION)
    assert not qc.motion_flag and not qc.dl_accentuated
    assert qc.original.snr is not None and qc.original.snr > 5
    # DL output with ghost copies along the phase-encode axis (rows here): accentuated.
    ghosted = clean.images.astype(np.float64)
    for shift in (60, -60, 120, -120):
        ghosted += 0.12 * np.roll(clean.images, shift, axis=2)
    loud = EnhancedSeries("SAG_CE_T1", datasets, source, np.clip(ghosted, 0, 65535).astype(np.uint16), 0.0, model)
    qc = check_series(loud, CALIBRATION)
    assert qc.dl_accentuated and not qc.motion_flag
    assert any("read the original" in n for n in qc.notes)


def test_a_motion_flag_names_the_slices_that_raised_it(ce_t1_planes):
    moved = _series(ce_t1_planes, "severe", seed=2)
    datasets = _enhanced(moved.images)
    pixels = moved.images.astype(np.uint16)
    item = EnhancedSeries("SAG_CE_T1", datasets, pixels, pixels, 0.0, ModelDescription("m", "0", "0"))
    qc = check_series(item, CALIBRATION)
    assert qc.motion_flag
    scores = qc.original.slice_motion_scores
    assert qc.original.flagged_slices == [i for i, v in enumerate(scores) if v is not None and v >= 0.5]
    assert qc.original.flagged_slices and scores[qc.original.worst_slice] == max(v for v in scores if v is not None)
    note = next(n for n in qc.notes if n.startswith("motion artifacts"))
    assert f"of {len(pixels)} score >= 0.5" in note, note
    from qc.measures import number_ranges
    assert number_ranges([1, 2, 3, 11, 13]) == "1-3, 11, 13" and number_ranges([5]) == "5"
    assert number_ranges([13, 12, 11, 2]) == "2, 11-13"
    # the verdict names images as a viewer numbers them (InstanceNumber), not by position along the normal
    assert qc.image_numbers == [int(ds.InstanceNumber) for ds in datasets]
    # the one-line verdict the derived images carry (ImageComments) and the viewer shows
    from dataclasses import replace

    from qc.report_json import verdict_line
    line = verdict_line(qc)
    head = "QC: MOTION FLAGGED, DL ACCENTUATED." if qc.dl_accentuated else "QC: MOTION FLAGGED."
    flagged = number_ranges([qc.image_numbers[i] for i in qc.original.flagged_slices])
    assert line == f"{head} Images {flagged} of {len(pixels)}. Read the original."
    assert verdict_line(replace(qc, motion_flag=False, dl_accentuated=False)) == "QC: no motion flag."
    assert verdict_line(replace(qc, motion_flag=False, dl_accentuated=True)) == "QC: DL ACCENTUATED. Read the original."
    unjudged = replace(qc, motion_flag=False, dl_accentuated=False, original=replace(qc.original, motion_score=None))
    assert verdict_line(unjudged) == "QC: MOTION NOT MEASURABLE (no air beside the body)."


def test_a_flag_on_anatomy_cut_by_the_field_of_view_says_so():
    """The known limitation (README): anatomy that fills every phase-encode line leaves no air
    beside it; the slice is masked again at its own threshold, darker tissue is read as ghosting
    and the series is flagged. The product cannot tell that from ghosts as bright as tissue, but
    it says on which images the measure was read that way."""
    from qc.measures import series_masks

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:128, :96]
    inside = (yy >= 20) & (yy < 108)  # the anatomy spans every column (the phase-encode lines here)
    tissue = np.where(inside, 500.0 + 300 * np.sin(yy / 7.0), 0.0)
    tissue = np.where(inside & (np.abs(xx - 48) < 6 + 0.3 * (yy - 20)), 1500.0, tissue)
    volume = np.stack([tissue * (1 + 0.02 * k) for k in range(3)])

    def acquired(v):
        return np.abs(v + rng.normal(0, 10, v.shape) + 1j * rng.normal(0, 10, v.shape)).astype(np.uint16)

    pixels = acquired(volume)
    assert all(m.remasked for m in series_masks(pixels, 1))
    item = EnhancedSeries("SAG_CE_T1", _enhanced(pixels), pixels, pixels, 0.0, ModelDescription("m", "0", "0"))
    qc = check_series(item, CALIBRATION)
    assert qc.motion_flag
    note = next(n for n in qc.notes if "no phase-encode line keeps air" in n)
    assert note.startswith("images 1-3:") and "confirm on the original" in note
    # with air beside the anatomy along phase encoding, nothing is masked again and nothing is said
    framed = acquired(np.pad(volume, ((0, 0), (0, 0), (40, 40))))
    assert not any(m.remasked for m in series_masks(framed, 1))


def test_missing_phase_encode_direction_is_noted(ce_t1_planes):
    clean = _series(ce_t1_planes, "none")
    datasets = _enhanced(clean.images)
    for ds in datasets:
        del ds.InPlanePhaseEncodingDirection
    pixels = clean.images.astype(np.uint16)
    item = EnhancedSeries("SAG_CE_T1", datasets, pixels, pixels, 0.0, ModelDescription("m", "0", "0"))
    qc = check_series(item, CALIBRATION)
    assert any("InPlanePhaseEncodingDirection missing" in n for n in qc.notes)


def test_noise_free_air_in_the_dl_series_is_explained_not_reported(ce_t1_planes):
    """A DL series whose air is all zero (the guard's air cap raised to 1): no SNR/CNR for it, and a note says why."""
    clean = _series(ce_t1_planes, "none")
    datasets = _enhanced(clean.images)
    pixels = clean.images.astype(np.uint16)
    masks = series_masks(pixels.astype(np.float32))
    dl = np.where(np.stack([m.body for m in masks]), pixels, 0).astype(np.uint16)  # air set to zero
    qc = check_series(EnhancedSeries("SAG_CE_T1", datasets, pixels, dl, 0.0, ModelDescription("m", "0", "0")),
                      CALIBRATION)
    assert qc.original.noise_sd is not None and qc.dl.noise_sd is None and qc.dl.snr is None
    assert any(n.startswith("DL series: its air is noise-free") for n in qc.notes), qc.notes
    same = check_series(EnhancedSeries("SAG_CE_T1", datasets, pixels, pixels, 0.0, ModelDescription("m", "0", "0")),
                        CALIBRATION)
    assert not any(n.startswith("DL series: its air is noise-free") for n in same.notes)


QC_KEYS = {"SeriesInstanceUID", "derived_SeriesInstanceUID", "role", "snr_original", "snr_dl", "cnr_original",
           "cnr_dl", "motion_score_original", "motion_score_dl", "motion_flag", "dl_accentuated", "notes"}


def _source_uids_along_normal(study, series_uid: str) -> list[str]:
    """SOPInstanceUIDs of one source series, in the order the QC scores its slices."""
    datasets = [ds for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in study.rglob("*.dcm"))
                if ds.SeriesInstanceUID == series_uid]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return [str(ds.SOPInstanceUID) for ds in
            sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))]


def test_app_writes_qc_json_sr_and_pdf(app_run, accelerated_study):
    out, result = app_run
    assert result.returncode == 0, result.stderr[-2000:]
    entries = json.loads((out / "qc.json").read_text())
    summary = json.loads((out / "run_summary.json").read_text())
    assert len(entries) == len(summary["derived"]) == 5
    derived = {d["source_series_instance_uid"]: d["derived_series_instance_uid"] for d in summary["derived"]}
    for e in entries:
        assert QC_KEYS <= set(e)
        assert e["derived_SeriesInstanceUID"] == derived[e["SeriesInstanceUID"]]
        assert 0.0 <= e["motion_score_original"] <= 1.0 and 0.0 <= e["motion_score_dl"] <= 1.0
        assert e["snr_original"] > 1
        # the DL series keeps a measurable background noise (the guard's air cap): a DL SNR too
        assert e["snr_dl"] is not None and e["snr_dl"] > 1, (e["role"], e["notes"])
        assert isinstance(e["motion_flag"], bool) and isinstance(e["dl_accentuated"], bool)
        scores = e["slice_motion_scores_original"]
        assert e["flagged_slices_original"] == [i + 1 for i, v in enumerate(scores) if v is not None and v >= 0.5]
        assert scores[e["worst_slice_original"] - 1] == max(v for v in scores if v is not None)
        numbers = e["image_numbers_original"]  # per slice along the normal: the image number a viewer shows
        assert e["flagged_images_original"] == [numbers[k - 1] for k in e["flagged_slices_original"]]
        assert e["worst_image_original"] == numbers[e["worst_slice_original"] - 1]
    # Mild motion was simulated on CE T1 only: only CE T1 is flagged (Dixon water scored
    # through its in-phase partner).
    assert {e["role"] for e in entries if e["motion_flag"]} <= {"SAG_CE_T1"}, [(e["role"], e["notes"]) for e in entries]
    # The paper's CNR on the sagittal series not flagged for motion: C3 / C3-C4 located automatically.
    sagittal = [e for e in entries if e["role"].startswith("SAG") and not e["motion_flag"]]
    located = [e for e in sagittal if e["cnr_original"] is not None]
    assert len(located) >= len(sagittal) - 1, [(e["role"], e["notes"]) for e in sagittal]
    for e in [e for e in entries if e["motion_flag"]]:
        assert e["cnr_original"] is None and any("localisation unreliable" in n for n in e["notes"])
    for e in located:
        assert e["roi_confidence"] >= 0.2 and e["cnr_dl"] is not None and e["snr_original"] != e["snr_foreground_original"]

    sr = hd.sr.srread(out / "qc" / "sr" / "QC_SR.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert len(groups) == 2 * len(entries)  # original and DL per series
    for e in entries:
        original = next(g for name, g in groups.items() if name.startswith(f"{e['role']} original"))
        values = {m.name.meaning: m.value for m in original.get_measurements()}
        assert values["Signal to noise"] == pytest.approx(e["snr_original"])
        assert values["Motion artifact score"] == pytest.approx(e["motion_score_original"])
        if e["cnr_original"] is not None:
            assert values["Contrast to noise ratio"] == pytest.approx(e["cnr_original"])
        blur = {q.name.meaning: q.value.meaning for q in original.get_qualitative_evaluations()}["Motion blur"]
        assert blur == ("Present" if e["motion_flag"] else "Absent")
        # a flag names its slices: one score per flagged slice, each referencing that slice's image
        per_slice = [m for m in original.get_measurements() if m.name.meaning == "Slice motion artifact score"]
        if e["motion_flag"]:
            assert len(per_slice) == len(e["flagged_slices_original"]) >= 1
            sources = _source_uids_along_normal(accelerated_study, e["SeriesInstanceUID"])
            for m, k in zip(per_slice, e["flagged_slices_original"]):
                (ref,) = m.referenced_images
                assert ref.referenced_sop_instance_uid == sources[k - 1]
                assert m.value == pytest.approx(e["slice_motion_scores_original"][k - 1])
        else:
            assert not per_slice
        referenced = {s.referenced_sop_instance_uid for s in original.source_images}
        assert len(referenced) == next(d["n_instances"] for d in summary["derived"] if d["role"] == e["role"])
    # the regions behind SNR / CNR, drawn where they were measured: planar ROIs (TID 1410) on the ROI
    # slice's original and DL images, each with its values (what OHIF's SR viewport draws and labels)
    rois = {g.tracking_identifier: g for g in sr.content.get_planar_roi_measurement_groups()}
    derived_from = {ds.SOPInstanceUID: ds.SourceImageSequence[0].ReferencedSOPInstanceUID
                    for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in (out / "derived").rglob("*.dcm"))}
    for e in entries:
        names = [f"{e['role']} {label} {region}" for label in ("original", "DL")
                 for region in ("C3-C4 disc", "C3 marrow", "background air")]
        if e["cnr_original"] is None:
            assert not any(name in rois for name in names), e["role"]
            continue
        assert all(name in rois for name in names), (e["role"], sorted(rois))
        placed_on = {"original": set(), "DL": set()}
        for label in ("original", "DL"):
            values = {region: {m.name.meaning: m.value for m in rois[f"{e['role']} {label} {region}"].get_measurements()}
                      for region in ("C3-C4 disc", "C3 marrow", "background air")}
            key = "original" if label == "original" else "dl"
            assert values["C3-C4 disc"]["Signal to noise"] == pytest.approx(e[f"snr_{key}"], abs=0.011)
            assert values["C3 marrow"]["Contrast to noise ratio"] == pytest.approx(e[f"cnr_{key}"], abs=0.011)
            assert values["background air"]["Standard Deviation"] == pytest.approx(e[f"noise_sd_{key}"], abs=0.011)
            for region in ("C3-C4 disc", "C3 marrow", "background air"):
                roi = rois[f"{e['role']} {label} {region}"].roi
                assert roi.graphic_type.value == "POLYLINE"
                assert len(roi.value) >= 4 and np.array_equal(roi.value[0], roi.value[-1])  # a closed outline
                placed_on[label].add(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        # every region of a series on one image: the original's ROI slice, and the DL image derived from it
        sources = _source_uids_along_normal(accelerated_study, e["SeriesInstanceUID"])
        (original_sop,), (dl_sop,) = placed_on["original"], placed_on["DL"]
        assert original_sop in sources
        assert derived_from[dl_sop] == original_sop
    # OHIF's SR viewport opens at the first measurement group: the planar ROIs come first, CE T1's first
    (container,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    kinds = ["roi" if any(c.ValueType == "SCOORD" for c in g.ContentSequence) else "series"
             for g in container.ContentSequence]
    assert kinds == sorted(kinds) and kinds[0] == "roi", kinds
    first_ids = [c.TextValue for c in container.ContentSequence[0].ContentSequence if c.ValueType == "TEXT"]
    ce = [e for e in entries if e["role"] == "SAG_CE_T1" and e["cnr_original"] is not None]
    assert not ce or "SAG_CE_T1 original C3-C4 disc" in first_ids, first_ids
    # the SR and the PDF object are valid DICOM (dicom3tools)
    if shutil.which("dciodvfy"):
        for f in (out / "qc" / "sr" / "QC_SR.dcm", out / "qc" / "report" / "QC_REPORT.dcm"):
            result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
            assert not errors, (f.name, errors)
    pdf = pydicom.dcmread(out / "qc" / "report" / "QC_REPORT.dcm")
    assert pdf.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert bytes(pdf.EncapsulatedDocument[:5]) == b"%PDF-"
    # pdftotext: poppler-utils (scripts/apt-packages.txt)
    text = subprocess.run(["pdftotext", "-", "-"], input=bytes(pdf.EncapsulatedDocument), capture_output=True,
                          check=True).stdout.decode()
    assert any(e["motion_flag"] for e in entries)  # the study has mild motion on CE T1
    for e in entries:  # a flagged series is shown at its worst slice
        if e["motion_flag"]:
            n = next(d["n_instances"] for d in summary["derived"] if d["role"] == e["role"])
            assert f"{e['role']} original, worst motion image {e['worst_image_original']} of {n}" in text, text
    assert pdf.StudyInstanceUID == pydicom.dcmread(next((out / "derived").rglob("*.dcm"))).StudyInstanceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is installed by make setup")
def test_qc_objects_pass_dciodvfy(app_run):
    out, _ = app_run
    for f in (out / "qc" / "sr" / "QC_SR.dcm", out / "qc" / "report" / "QC_REPORT.dcm"):
        result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (f.name, errors)


@pytest.mark.parametrize("role", ["SAG_T1", "SAG_T2"])
def test_c3_and_c3_c4_disc_located_on_the_phantom(ce_t1_planes, role):
    from qc.landmarks import MIN_CONFIDENCE, locate_c3_rois

    patient, planes, rendered = ce_t1_planes
    series = simulate_series(patient, role, planes, rendered, acquisition="accelerated", seed=3)
    masks = series_masks(series.images)
    found = locate_c3_rois(series.images[0], planes[0].spacing, masks[0].body)
    assert found is not None and found.confidence >= MIN_CONFIDENCE
    marrow, disc = c3_rois(rendered[0].label, rendered[0].level)
    assert marrow[found.c3_marrow].mean() >= 0.8 and disc[found.c3_c4_disc].mean() >= 0.8
    # Rows running feet to head (orientation from the header): same ROIs, flipped.
    flipped = locate_c3_rois(series.images[0][::-1], planes[0].spacing, masks[0].body[::-1], rows_head_to_feet=False)
    assert flipped is not None and np.array_equal(flipped.c3_marrow[::-1], found.c3_marrow)


@pytest.mark.parametrize("seed, role, plane", [(7003, "SAG_T1", 6), (7001, "SAG_T2", 4)])
def test_no_wrong_c3_level_on_the_realistic_phantom(seed, role, plane):
    """Slices of the realistic phantom (rounded bodies, C2 with a tapered dens) on which the
    localiser tuned on rectangular bodies took C4 for C3 above its confidence floor
    (mid-sagittal T1 of 7003: C2 with its dens not found, C3 taken as C2; parasagittal T2
    of 7001: a dark blob above C2 taken as C2). Either no ROI or the right level."""
    from qc.landmarks import MIN_CONFIDENCE, locate_c3_rois

    patient = PhantomPatient.from_seed(seed)
    planes = [sagittal_geometry()[plane]]
    rendered = [render_plane(patient, p) for p in planes]
    series = simulate_series(patient, role, planes, rendered, acquisition="accelerated", seed=seed)
    masks = series_masks(series.images, series.protocol.phase_encode_axis)
    found = locate_c3_rois(series.images[0].astype(np.float64), planes[0].spacing, masks[0].body)
    assert found is not None and found.confidence >= MIN_CONFIDENCE  # both are found now
    marrow, disc = c3_rois(rendered[0].label, rendered[0].level)
    assert marrow[found.c3_marrow].mean() >= 0.8 and disc[found.c3_c4_disc].mean() >= 0.8


def test_no_vertebrae_no_rois():
    import skimage.data

    from qc.landmarks import locate_c3_rois

    for image in (skimage.data.camera(), skimage.data.coins(), np.zeros((256, 256))):
        found = locate_c3_rois(image.astype(np.float64), (0.5, 0.5))
        assert found is None or found.confidence == 0.0


def test_a_stopped_run_resumes_only_rows_of_the_same_measuring_code(tmp_path, capsys):
    """qc_series' checkpoint: a later run resumes the finished patients only if the code that
    measured them is the code running now (a candidate since changed or reverted is not mixed in)."""
    import time

    from models.evaluation.qc_series import _simulate, measuring_code_digest

    detector = {"name": "cervical_motion_detector", "version": "x"}
    row = {"seed": 7, "role": "SAG_T1", "acquisition": "accelerated", "severity": "none"}
    checkpoint = tmp_path / "run.partial.json"
    task = (7, "hivd", None, False)
    checkpoint.write_text(json.dumps({"detector": detector, "measuring_code": measuring_code_digest(), "series": [row]}))
    assert _simulate([task], 1, time.time(), checkpoint, detector) == [row]  # resumed: nothing left to run
    assert "resuming" in capsys.readouterr().out
    checkpoint.write_text(json.dumps({"detector": detector, "measuring_code": "other", "series": [row]}))
    assert _simulate([], 1, time.time(), checkpoint, detector) == []
    assert "not resuming" in capsys.readouterr().out


def test_the_measuring_code_digest_follows_the_calibrations_local_weight(tmp_path):
    """A slice's ghost depends on calibration.json's local_weight: rows measured with another one
    are not resumed; the thresholds alone (applied when rows are scored) do not matter."""
    from models.evaluation.qc_series import MEASURING_CODE, measuring_code_digest

    root = Path(__file__).resolve().parents[1]
    for name in MEASURING_CODE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (root / name).is_dir() else shutil.copy)(root / name, tmp_path / name)
    assert measuring_code_digest(tmp_path) == measuring_code_digest(root)
    calibration_file = tmp_path / "qc" / "calibration.json"
    data = json.loads(calibration_file.read_text())
    calibration_file.write_text(json.dumps(data | {"ghost_threshold": 2 * data["ghost_threshold"]}))
    assert measuring_code_digest(tmp_path) == measuring_code_digest(root)
    calibration_file.write_text(json.dumps(data | {"local_weight": data["local_weight"] + 1.0}))
    assert measuring_code_digest(tmp_path) != measuring_code_digest(root)


def test_whole_series_calibration_and_summary():
    """models.evaluation.qc_series: per role, thresholds just above every clean series' value
    (from the per-slice raw measures, as the product combines them); false flags and
    detection counted per role and artifact strength; the AUC of clear artifacts."""
    from models.evaluation.qc_series import calibrate, calibrate_detector, rescore, summarise
    from qc.measures import series_value

    def row(seed, role, severity, ghosts, detectors, anr):
        return {"seed": seed, "role": role, "acquisition": "accelerated", "severity": severity, "kind": "rigid",
                "anr": anr, "slices": len(ghosts), "slice_ghosts": ghosts, "slice_detector": detectors,
                "slice_body_fraction": [0.5] * len(ghosts)}

    rows = [row(7000, "SAG_T1", "none", [0.010] * 6, [0.9, 0.2, 0.2, 0.2, 0.2, 0.2], 0.0),
            row(7001, "AX_T2", "none", [0.003] * 6, [0.35] * 6, 0.0),
            row(7000, "SAG_T1", "severe", [0.08] * 6, [0.95] * 6, 3.0),
            row(7001, "AX_T2", "mild", [0.0032] * 6, [0.30] * 6, 0.5)]
    # the enhancement ran on the SAG_T1 series: clean DL output raises the ghost measure by 0.02
    rows[0]["slice_ghosts_dl"], rows[2]["slice_ghosts_dl"] = [0.030] * 6, [0.2] * 6
    previous = QCCalibration(0.018, 0.009, 2.0, 0.3)
    cal = calibrate(rows, previous, margin=0.05)
    assert cal.roles["SAG_T1"]["ghost_threshold"] == pytest.approx(0.0105, abs=1e-5)
    assert cal.roles["AX_T2"]["ghost_threshold"] == pytest.approx(0.00315, abs=1e-5)
    # the detector's threshold comes from the higher of the whole stack and its central 5 slices
    # (a site covering less sends those): [0.9, 0.2 x 4] reads higher than [0.9, 0.2 x 5]
    whole = series_value([0.9, 0.2, 0.2, 0.2, 0.2, 0.2], [0.5] * 6)
    central = series_value([0.9, 0.2, 0.2, 0.2, 0.2], [0.5] * 5)
    assert central > whole
    assert cal.roles["SAG_T1"]["detector_threshold"] == pytest.approx(1.05 * central, abs=1e-4)
    assert cal.ghost_threshold == pytest.approx(0.0105, abs=1e-5)  # pooled: the highest role
    assert cal.roles["SAG_T1"]["accentuation_margin"] == pytest.approx(1.05 * 0.02, abs=1e-5)
    assert cal.roles["AX_T2"]["accentuation_margin"] == pytest.approx(0.00315, abs=1e-5)  # its ghost threshold
    scored = rescore(rows, cal)
    assert [r.get("dl_accentuated") for r in scored] == [False, None, True, None]
    # a new detector: only its thresholds are set again, the ghost thresholds and margins stay
    shipped = QCCalibration(0.02, 0.01, 2.0, 0.5, "shipped", {"SAG_T1": {"ghost_threshold": 0.019,
                                                                       "detector_threshold": 0.5,
                                                                       "accentuation_margin": 0.03}})
    new = calibrate_detector(rows, shipped, margin=0.05)
    assert new.roles["SAG_T1"] == {"ghost_threshold": 0.019, "detector_threshold": pytest.approx(1.05 * central, abs=1e-4),
                                   "accentuation_margin": 0.03}
    assert new.roles["AX_T2"] == {"detector_threshold": pytest.approx(0.3675, abs=1e-4)}
    assert (new.ghost_threshold, new.accentuation_margin) == (0.02, 0.01)
    assert new.source.startswith("shipped; detector thresholds: whole series of patients 7000-7001")
    # a real-MR floor: a role whose phantom thresholds flag more than 5 % of the clean real series
    # is raised to 1.05 x their highest ghost measure; a role that flags none keeps its own
    real = [{"kind": "none", "slice_ghosts": [g] * 4, "slice_detector": [0.1] * 4, "slice_body_fraction": [0.5] * 4}
            for g in (0.002, 0.004, 0.006, 0.0)] + [
           {"kind": "rigid", "slice_ghosts": [0.5] * 4, "slice_detector": [0.9] * 4, "slice_body_fraction": [0.5] * 4}]
    floored = calibrate(rows, previous, margin=0.05, real_rows=real)
    assert floored.roles["AX_T2"]["ghost_threshold"] == pytest.approx(1.05 * 0.006, abs=1e-5)  # flagged 2 of 4
    assert floored.roles["AX_T2"]["accentuation_margin"] == pytest.approx(1.05 * 0.006, abs=1e-5)
    assert floored.roles["SAG_T1"] == cal.roles["SAG_T1"]  # 0.0105 flags none of them
    assert "raised to 0.0063" in floored.source
    with pytest.raises(ValueError, match="no clean real series"):
        calibrate(rows, previous, margin=0.05, real_rows=real[-1:])
    summary = summarise(scored)
    assert summary["dl_accentuated"]["clean"]["flagged"] == 0 and summary["dl_accentuated"]["severity severe"]["flagged"] == 1
    assert summary["false_flags"]["all"] == {"flagged": 0, "series": 2, "rate": 0.0}
    assert summary["detection"]["severity severe"]["flagged"] == 1
    # the mild AX_T2 series is above its own role's clean maximum, though far below SAG_T1's
    assert summary["detection"]["severity mild"]["flagged"] == 1
    assert summary["auc_clear_artifact"] == 1.0
    # the first slice of the clean SAG_T1 stack is in its edge third, and the only clean slice >= 0.5
    assert summary["clean_slices_scoring_ge_0.5"] == {"edge third": 0.25, "middle": 0.0}


def test_morphology_matches_scipy():
    """qc.morphology (numpy, for speed) gives scipy.ndimage's pixels: cross structure, border 0;
    3x3 square opening; the fill between a line's extremes gives the running maxima's."""
    from scipy import ndimage

    from qc import morphology

    rng = np.random.default_rng(3)
    for trial in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 48, 2))
        mask = ndimage.gaussian_filter(rng.random(shape), rng.random() * 2) > rng.random() * 0.6 + 0.2
        n = int(rng.integers(1, 5))
        assert np.array_equal(morphology.erosion(mask, n), ndimage.binary_erosion(mask, iterations=n))
        assert np.array_equal(morphology.dilation(mask, n), ndimage.binary_dilation(mask, iterations=n))
        assert np.array_equal(morphology.opening(mask, n), ndimage.binary_opening(mask, iterations=n))
        assert np.array_equal(morphology.closing(mask, n), ndimage.binary_closing(mask, iterations=n))
        assert np.array_equal(morphology.fill_holes(mask), ndimage.binary_fill_holes(mask))
        assert np.array_equal(morphology.square_opening(mask),
                              ndimage.binary_opening(mask, structure=np.ones((3, 3), dtype=bool)))
        for axis in (0, 1):
            accumulated = (np.maximum.accumulate(mask, axis=axis)
                           & np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis))
            assert np.array_equal(qm._fill_between_extremes(mask, axis), accumulated)


def test_independent_evaluation_measures_only_the_artifact():
    """qc_independent's moved series and its still twin share noise and scale: an unchanged
    volume reads 0 noise SDs of artifact, a moved one a clear artifact."""
    from models.evaluation.qc_independent import slices_with_noise
    from models.evaluation.qc_real import artifact_in_noise_sds

    yy, xx = np.mgrid[:64, :64]
    head = ((yy - 32) ** 2 / 400 + (xx - 32) ** 2 / 225 < 1).astype(np.float32)
    vol = np.stack([head * (1 + 0.1 * k) for k in range(5)])
    still = slices_with_noise(vol, [1, 2, 3], seed=5)
    assert artifact_in_noise_sds(slices_with_noise(vol.copy(), [1, 2, 3], seed=5, reference=vol), still) == 0.0
    moved = np.roll(vol, 3, axis=2)
    assert artifact_in_noise_sds(slices_with_noise(moved, [1, 2, 3], seed=5, reference=vol), still) > 1.0


def test_real_mr_backgrounds_cut_the_field_of_view():
    """qc_real's backgrounds: air as acquired, zero-filled readout bands, and the anatomy cut by
    the field of view along phase encoding (columns) or readout (rows)."""
    from models.evaluation.qc_real import CUT_BACKGROUNDS, with_background

    volume = np.arange(2 * 100 * 80, dtype=np.float32).reshape(2, 100, 80) + 1
    assert with_background(volume, "air") is volume
    banded = with_background(volume, "zero band")
    assert banded.shape == volume.shape and not banded[:, :8].any() and banded[:, 8:92].all()
    assert with_background(volume, "cut phase encode").shape == (2, 100, 56)
    assert with_background(volume, "cut readout").shape == (2, 40, 80)
    assert np.array_equal(with_background(volume, "cut readout"), volume[:, 30:70])
    assert set(CUT_BACKGROUNDS) == {"cut phase encode", "cut readout"}
    with pytest.raises(ValueError, match="unknown background"):
        with_background(volume, "cropped")


def test_native_ghosting_reads_a_sources_own_ghosts_along_its_phase_encode_axis():
    """qc_real --native: a source whose body is copied faintly along columns (its phase-encode
    axis) reads that ghost along columns and not along rows; without the copy, neither."""
    from models.evaluation.qc_real import native_ghosting
    from models.evaluation.real_mr import RealSeries

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    body = 1000.0 * (((yy - 48) / 30.0) ** 2 + ((xx - 48) / 16.0) ** 2 <= 1)
    # motion ghosts smeared over each phase-encode line, in proportion to the body on that line
    ghost = 0.5 * np.repeat(body.mean(axis=1, keepdims=True), 96, axis=1)

    def read(volume):
        noisy = np.abs(volume + rng.normal(0, 10, volume.shape) + 1j * rng.normal(0, 10, volume.shape))
        rows = native_ghosting([RealSeries("synthetic", noisy.astype(np.float32), 1.0)], margins=(4,))
        return {r["axis"].split()[0]: r for r in rows}

    ghosted = read(np.stack([body + ghost] * 3))
    assert ghosted["columns"]["measurable"] == 3 and ghosted["rows"]["measurable"] == 3
    assert ghosted["columns"]["median"] > 0.2  # half the line's body signal, smeared: about 0.4
    assert ghosted["rows"]["median"] < 0.3 * ghosted["columns"]["median"]
    clean = read(np.stack([body] * 3))
    assert clean["columns"]["median"] < 0.3 * ghosted["columns"]["median"]
