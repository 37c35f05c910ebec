"""The phantom and the simulated DICOM studies (stable CLI, headers, geometry, vendors)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from conftest import make_study
from series.roles import classify_series, plane_of
from simulation.phantom import (
    DISC_NAMES, LEVELS, PhantomPatient, Tissue, axial_geometry, render_plane, sagittal_geometry,
)

EXPECTED_ROLES = {
    "hivd": {"SAG_T1", "SAG_T2", "AX_T2"},
    "myelopathy": {"SAG_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2", "SAG_CE_T1"},
}


def _series(study):
    out = {}
    for folder in sorted(p for p in study.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.dcm"))
        out[folder.name] = [pydicom.dcmread(f) for f in files]
    return out


@pytest.mark.parametrize("vendor,protocol", [("philips", "hivd"), ("siemens", "myelopathy"), ("ge", "myelopathy")])
def test_selector_finds_every_role_for_every_vendor(tmp_path, vendor, protocol):
    study = make_study(tmp_path / vendor, protocol=protocol, vendor=vendor, seed=21,
                       extra=("--sagittal-slices", "2", "--axial-slices", "2"))
    roles = {}
    for name, datasets in _series(study).items():
        roles[name] = classify_series(datasets[0]).role
        assert all(ds.Manufacturer == datasets[0].Manufacturer for ds in datasets)
    assert roles.pop("001_localizer") is None
    assert set(roles.values()) == EXPECTED_ROLES[protocol]
    for name, role in roles.items():
        assert name.endswith(role.lower())


def test_series_headers_and_geometry(accelerated_study):
    series = _series(accelerated_study)
    assert len(series) == 6
    for name, datasets in series.items():
        first = datasets[0]
        assert first.Modality == "MR" and first.PhotometricInterpretation == "MONOCHROME2"
        assert first.BitsAllocated == 16 and first.PixelRepresentation == 0
        assert first.pixel_array.dtype == np.uint16
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        if name == "001_localizer":
            continue
        iop = np.array(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        steps = np.diff(positions @ normal)
        assert np.allclose(np.abs(steps), float(first.SpacingBetweenSlices), atol=1e-3)
        assert float(first.MagneticFieldStrength) == 1.5
        assert first.InPlanePhaseEncodingDirection in ("ROW", "COL")
        if plane_of(first.ImageOrientationPatient) == "sagittal":
            assert (first.Rows, first.Columns) == (512, 512)
            assert float(first.PixelSpacing[0]) == pytest.approx(0.46875)
            assert float(first.SliceThickness) == 3.0
        contrast = "ContrastBolusAgent" in first
        assert contrast == name.endswith("ce_t1")
    summary = json.loads((accelerated_study / "study.json").read_text())
    assert all(s["scan_time_ratio"] == pytest.approx(0.5, abs=0.05) for s in summary["series"])


def test_default_study_has_clinical_slice_counts(tmp_path):
    records = json.loads((make_study(tmp_path / "s", protocol="hivd", seed=2) / "study.json").read_text())["series"]
    counts = {r["role"]: r["n_slices"] for r in records}
    assert 11 <= counts["SAG_T1"] <= 15 and 20 <= counts["AX_T2"] <= 40


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is installed by make setup")
def test_simulated_series_pass_dciodvfy(accelerated_study):
    for folder in sorted(p for p in accelerated_study.iterdir() if p.is_dir()):
        f = sorted(folder.glob("*.dcm"))[0]
        result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (folder.name, errors)


def test_conventional_and_accelerated_are_the_same_patient(tmp_path):
    args = dict(protocol="hivd", seed=33, extra=("--save-truth", "--sagittal-slices", "2", "--axial-slices", "2"))
    conv = make_study(tmp_path / "conv", acquisition="conventional", **args)
    acc = make_study(tmp_path / "acc", acquisition="accelerated", **args)
    t_conv, t_acc = np.load(conv / "truth.npz"), np.load(acc / "truth.npz")
    assert np.array_equal(t_conv["SAG_T1_label"], t_acc["SAG_T1_label"])
    assert np.allclose(t_conv["SAG_T1_reference"], t_acc["SAG_T1_reference"])
    a = pydicom.dcmread(sorted((conv / "301_sag_t1").glob("*.dcm"))[0])
    b = pydicom.dcmread(sorted((acc / "301_sag_t1").glob("*.dcm"))[0])
    assert a.PatientID == b.PatientID and a.StudyInstanceUID != b.StudyInstanceUID
    assert float(b.NumberOfAverages) < float(a.NumberOfAverages)
    assert b.AcquisitionMatrix[3] < a.AcquisitionMatrix[3]  # fewer phase-encode lines
    # Accelerated images differ from the conventional ones (noise, resolution) but not wildly.
    pa, pb = a.pixel_array.astype(float), b.pixel_array.astype(float)
    assert 0.01 < np.abs(pa - pb).mean() / pa.mean() < 0.5


def test_make_study_is_deterministic(tmp_path):
    args = dict(protocol="hivd", seed=4, extra=("--sagittal-slices", "1", "--axial-slices", "1"))
    a, b = make_study(tmp_path / "a", **args), make_study(tmp_path / "b", **args)
    fa, fb = sorted((a / "301_sag_t1").glob("*.dcm"))[0], sorted((b / "301_sag_t1").glob("*.dcm"))[0]
    da, db = pydicom.dcmread(fa), pydicom.dcmread(fb)
    assert da.SOPInstanceUID == db.SOPInstanceUID
    assert np.array_equal(da.pixel_array, db.pixel_array)


def test_phantom_anatomy_is_where_it_should_be():
    patient = PhantomPatient.from_seed(1, protocol="myelopathy")
    mid = render_plane(patient, sagittal_geometry(n_slices=1)[0])
    labels = set(np.unique(mid.label))
    for tissue in (Tissue.MARROW, Tissue.DISC_NUCLEUS, Tissue.CORD, Tissue.CSF, Tissue.FAT, Tissue.AIR,
                   Tissue.CORTICAL_BONE, Tissue.MUSCLE, Tissue.CORD_LESION):
        assert tissue in labels, tissue.name
    # C3 marrow and the C3-C4 disc are present in the midline slice (QC ROIs).
    c3 = [n for n, _, _ in LEVELS].index("C3")
    assert np.any((mid.level == 2 * c3) & (mid.label == Tissue.MARROW))
    assert np.any((mid.level == 2 * c3 + 1) & (np.isin(mid.label, [Tissue.DISC_NUCLEUS, Tissue.DEGENERATED_NUCLEUS])))
    assert DISC_NAMES[c3] == "C3-C4"
    # The axial plane through the neck shows the cord inside the canal and air outside.
    ax = render_plane(patient, axial_geometry(n_slices=1, z_centre=0.0)[0])
    assert Tissue.CORD in set(np.unique(ax.label)) and ax.label[0, 0] == Tissue.AIR
    assert np.allclose(mid.fractions.sum(axis=0), 1.0, atol=1e-5)


def test_no_pathology_patient_has_no_lesions():
    patient = PhantomPatient.from_seed(1, pathology="none")
    mid = render_plane(patient, sagittal_geometry(n_slices=1)[0])
    assert Tissue.CORD_LESION not in set(np.unique(mid.label))
    assert Tissue.ENHANCING_LESION not in set(np.unique(mid.label))


def _column_labels(patient, u, z, x=0.0):
    """Labels and levels at AP offsets ``u`` from the body centre line and heights ``z`` (mm)."""
    u, z = np.broadcast_arrays(np.asarray(u, dtype=float), np.asarray(z, dtype=float))
    return patient.labels(np.full(u.shape, x), u + patient.body_centre_y(z), z)


def test_vertebral_bodies_have_rounded_corners_and_concave_endplates():
    patient = PhantomPatient.from_seed(1, pathology="none")
    c4 = [n for n, _, _ in LEVELS].index("C4")
    _, top, bottom = LEVELS[c4]
    bone = (Tissue.CORTICAL_BONE, Tissue.MARROW)
    # The anterior-superior corner is rounded off; the anterior wall at mid-height is cortex
    # and the centre is marrow.
    lab, _ = _column_labels(patient, [-7.7, -7.7, 0.0], [top - 0.3, 0.5 * (top + bottom), 0.5 * (top + bottom)])
    assert lab[0] not in bone and lab[1] == Tissue.CORTICAL_BONE and lab[2] == Tissue.MARROW
    # Concave endplates: the body is shorter at its centre than near its anterior and
    # posterior walls, and the discs (with their own level index) fill the concavities.
    z = np.arange(bottom - 3.0, top + 3.0, 0.05)
    heights = {}
    for u in (-5.5, 0.0, 5.5):
        lab, level = _column_labels(patient, np.full(z.shape, u), z)
        heights[u] = 0.05 * np.count_nonzero(np.isin(lab, bone) & (level == 2 * c4))
    assert heights[0.0] < heights[-5.5] - 0.5 and heights[0.0] < heights[5.5] - 0.5
    lab, level = _column_labels(patient, [0.0, 0.0], [bottom + 0.6, top - 0.4])
    assert np.isin(lab, [Tissue.DISC_NUCLEUS, Tissue.DISC_ANNULUS, Tissue.DEGENERATED_NUCLEUS]).all()
    assert list(level) == [2 * c4 + 1, 2 * c4 - 1]
    # C2 carries the dens: bone 10 mm above the C2 body's top in the midline.
    lab, level = _column_labels(patient, [1.5], [LEVELS[0][1] + 10.0])
    assert lab[0] in bone and level[0] == 0


def test_tissue_textures_are_fine_deterministic_band_limited_and_absent_from_air():
    from scipy import ndimage

    from simulation.phantom import CONTRASTS, contrast_image, plane_points

    plane = sagittal_geometry(n_slices=1)[0]
    patient = PhantomPatient.from_seed(5, pathology="none")
    rendered = render_plane(patient, plane)
    again = render_plane(PhantomPatient.from_seed(5, pathology="none"), plane)
    assert np.array_equal(rendered.texture, again.texture) and np.array_equal(rendered.label, again.label)
    other = render_plane(PhantomPatient.from_seed(6, pathology="none"), plane)
    marrow = ndimage.binary_erosion(rendered.fractions[Tissue.MARROW] == 1, iterations=6)
    assert marrow.sum() > 2000
    assert not np.allclose(rendered.texture[marrow], other.texture[marrow], atol=1e-3)
    for name in ("T1", "T2", "DIXON_W"):
        img = contrast_image(patient, rendered, CONTRASTS[name], plane)  # noiseless object
        assert np.all(img[rendered.fractions[Tissue.AIR] == 1] == 0), name
        fine = img - ndimage.gaussian_filter(img, 2.0)  # texture finer than ~2 mm
        for tissue, floor in ((Tissue.MARROW, 0.02), (Tissue.FAT, 0.02), (Tissue.MUSCLE, 0.008)):
            mask = ndimage.binary_erosion(rendered.fractions[tissue] == 1, iterations=6)
            cv = fine[mask].std() / img[mask].mean()
            if name == "DIXON_W" and tissue == Tissue.FAT:
                continue  # fat is dark on water-only images
            assert floor < cv < 0.15, (name, tissue.name, cv)
    # Band limit: a texture over the whole plane keeps its power below 0.8 x Nyquist.
    points = plane_points(plane)
    for tissue in (Tissue.MARROW, Tissue.FAT, Tissue.MUSCLE):
        pure = np.zeros_like(rendered.fractions)
        pure[tissue] = 1.0
        spectrum = np.abs(np.fft.fft2(patient.tissue_texture(points, pure, plane) - 1.0)) ** 2
        f = np.abs(np.fft.fftfreq(plane.shape[0])) / 0.5
        high = (f[:, None] > 0.8) | (f[None, :] > 0.8)
        assert spectrum[high].sum() < 0.02 * spectrum.sum(), tissue.name
