"""DICOM as hospitals send it (issue 14): compressed transfer syntaxes, lossy-compressed
originals, MONOCHROME1, datasets without file meta, Enhanced / Legacy Converted Enhanced MR
multi-frame objects, real multi-frame files of pydicom-data, and a full output disk.

The transcodes are made with dcmtk in the test; the multi-frame objects with highdicom
(Legacy Converted) and from it with the MR functional groups a scanner writes (Enhanced).
Derived pixels are compared with the application's run on the same series sent
uncompressed and single-frame (``app_run``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

import hospital_dicom as hosp
from conftest import ROOT, run_app
from series.frames import UnsupportedInput, decoded_pixels, frame_views, source_frame_number
from series.roles import classify_series

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA = Path(pydicom.__file__).parents[1] / "data_store" / "data"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _hashes(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _summary(out: Path) -> dict:
    return json.loads((out / "run_summary.json").read_text())


def _derived_folder(out: Path, role: str, series_number: int | None = None) -> Path:
    entries = [d for d in _summary(out)["derived"] if d["role"] == role
               and (series_number is None or d["series_number"] == series_number)]
    assert len(entries) == 1, (role, series_number, _summary(out)["derived"])
    return out / "derived" / entries[0]["folder"]


def _dciodvfy_errors(folder: Path) -> list[str]:
    errors = []
    for f in sorted(folder.glob("*.dcm")):
        result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors += [f"{f.name}: {line}" for line in result.stderr.splitlines() if line.startswith("Error")]
    return errors


# --- one study as a PACS archive sends it ------------------------------------------------

@pytest.fixture(scope="module")
def hospital_study(accelerated_study, tmp_path_factory) -> Path:
    """The test study with every series in another encoding, plus lossy and MONOCHROME1 copies."""
    root = tmp_path_factory.mktemp("hospital") / "study"
    src = accelerated_study
    hosp.transcode(src / "301_sag_t1", root / "t1_jpeg_lossless_sv1", "jpeg_lossless_sv1")
    hosp.transcode(src / "401_sag_dixon_ip", root / "ip_rle", "rle")
    hosp.transcode(src / "402_sag_dixon_w", root / "w_jpeg_ls", "jpeg_ls_lossless")
    hosp.transcode(src / "801_sag_ce_t1", root / "ce_jpeg_lossless_p14", "jpeg_lossless")
    hosp.without_file_meta(src / "501_ax_t2", root / "ax_raw_no_meta")
    hosp.as_monochrome1(src / "501_ax_t2", root / "ax_monochrome1", series_number=502)
    hosp.renumber(hosp.transcode(src / "301_sag_t1", root / "t1_jpeg_12bit_lossy", "jpeg_extended_lossy"), 302)
    hosp.renumber(hosp.transcode(src / "301_sag_t1", root / "t1_jpeg_ls_near_lossless", "jpeg_ls_near_lossless"), 303)
    return root


@pytest.fixture(scope="module")
def hospital_run(hospital_study, tmp_path_factory):
    before = _hashes(hospital_study)
    out = tmp_path_factory.mktemp("hospital-out") / "out"
    # Derived images JPEG-LS lossless here (CERVICAL_DL_OUTPUT_SYNTAX): the pixel comparisons
    # below then also show that the compressed output holds exactly the uncompressed run's pixels.
    result = run_app(hospital_study, out, extra_env={"CERVICAL_DL_OUTPUT_SYNTAX": "jpeg-ls-lossless"})
    return out, result, before


def test_every_hospital_encoding_is_enhanced(hospital_run, hospital_study):
    out, result, before = hospital_run
    assert result.returncode == 0, result.stderr[-2000:]
    series = {s["series_number"]: s for s in _summary(out)["series"]}
    assert {n for n, s in series.items() if s["status"] == "selected"} == {301, 303, 401, 402, 501, 502, 801}
    assert "lossy-compressed original (ISO_14495_1" in series[303]["reason"], series[303]
    # 12-bit JPEG Extended: only the GPL-3.0 libjpeg plugin decodes it (not shipped): the true reason.
    assert series[302]["status"] == "skipped" and "12-bit" in series[302]["reason"], series[302]
    assert "lossy" not in series[301]["reason"]
    assert _hashes(hospital_study) == before  # the originals are never changed
    for entry in _summary(out)["derived"]:
        folder = out / "derived" / entry["folder"]
        for ds in hosp.read_series(folder):
            assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
            assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert not _dciodvfy_errors(folder), entry["folder"]


def test_lossless_encodings_give_the_pixels_and_uids_of_the_uncompressed_run(hospital_run, app_run):
    out, _, _ = hospital_run
    reference_out, _ = app_run
    for role in ("SAG_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "SAG_CE_T1", "AX_T2"):
        number = {"SAG_T1": 351, "AX_T2": 551}.get(role)
        derived = hosp.read_series(_derived_folder(out, role, number))
        reference = hosp.read_series(_derived_folder(reference_out, role))
        assert [d.SOPInstanceUID for d in derived] == [r.SOPInstanceUID for r in reference], role
        for d, r in zip(derived, reference):
            assert np.array_equal(d.pixel_array, r.pixel_array), role


def test_monochrome1_is_read_as_its_grey_scale_says(hospital_run, app_run):
    out, _, _ = hospital_run
    reference = hosp.pixels_by_position(_derived_folder(app_run[0], "AX_T2"))
    inverted = hosp.pixels_by_position(_derived_folder(out, "AX_T2", 552))
    assert inverted.keys() == reference.keys()
    assert all(np.array_equal(inverted[k], reference[k]) for k in reference)


def test_lossy_originals_keep_their_lossy_marking(hospital_run):
    out, _, _ = hospital_run
    for number, method in ((353, "ISO_14495_1"),):
        folder = _derived_folder(out, "SAG_T1", number)
        for ds in hosp.read_series(folder):
            assert ds.LossyImageCompression == "01"
            assert method in ds.LossyImageCompressionMethod
            assert f"lossy-compressed original ({method}" in ds.DerivationDescription
            assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert not _dciodvfy_errors(folder)


def test_truly_derived_series_are_still_refused(accelerated_study):
    ds = pydicom.dcmread(sorted((accelerated_study / "301_sag_t1").glob("*.dcm"))[0])
    ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
    ds.LossyImageCompression = "01"  # lossy, but also reformatted: not an acquired image
    decision = classify_series(ds)
    assert decision.role is None and "derived series" in decision.reason


# --- multi-frame -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def multiframe_run(accelerated_study, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiframe") / "study"
    hosp.save(hosp.enhanced_mr(accelerated_study / "301_sag_t1"), root / "t1_enhanced")
    hosp.save(hosp.enhanced_mr(accelerated_study / "801_sag_ce_t1"), root / "ce_enhanced")
    hosp.save(hosp.legacy_converted(accelerated_study / "501_ax_t2"), root / "ax_legacy")
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", root / "emri_small.dcm")  # real multi-frame, head
    before = _hashes(root)
    out = tmp_path_factory.mktemp("multiframe-out") / "out"
    return root, out, run_app(root, out), before


def test_multiframe_series_give_the_pixels_of_the_single_frame_run(multiframe_run, app_run):
    root, out, result, before = multiframe_run
    assert result.returncode == 0, result.stderr[-2000:]
    assert {d["role"] for d in _summary(out)["derived"]} == {"SAG_T1", "SAG_CE_T1", "AX_T2"}
    assert _hashes(root) == before
    for entry in _summary(out)["derived"]:  # the default: uncompressed
        assert all(d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
                   for d in hosp.read_series(out / "derived" / entry["folder"]))
    for role in ("SAG_T1", "SAG_CE_T1", "AX_T2"):
        derived = hosp.pixels_by_position(_derived_folder(out, role))
        reference = hosp.pixels_by_position(_derived_folder(app_run[0], role))
        assert derived.keys() == reference.keys(), role
        assert all(np.array_equal(derived[k], reference[k]) for k in reference), role


def test_multiframe_derived_images_reference_their_source_frames(multiframe_run):
    root, out, _, _ = multiframe_run
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in root.rglob("MF*.dcm")}
    for role, sop_class in (("SAG_T1", ENHANCED_MR), ("SAG_CE_T1", ENHANCED_MR), ("AX_T2", LEGACY_ENHANCED_MR)):
        folder = _derived_folder(out, role)
        derived = hosp.read_series(folder)
        frames = []
        for d in derived:
            assert d.SOPClassUID == MR_IMAGE
            ref = d.SourceImageSequence[0]
            assert ref.ReferencedSOPClassUID == sop_class
            source = sources[ref.ReferencedSOPInstanceUID]
            frame = int(ref.ReferencedFrameNumber)
            position = source.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
            assert [float(v) for v in d.ImagePositionPatient] == [float(v) for v in position]
            frames.append(frame)
        assert sorted(frames) == list(range(1, len(derived) + 1))
        assert len({d.SOPInstanceUID for d in derived}) == len(derived)
        assert not _dciodvfy_errors(folder), role
    sr = pydicom.dcmread(next((out / "qc" / "sr").glob("*.dcm")))
    referenced = [item for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence]
    assert any(s.ReferencedSOPSequence[0].ReferencedSOPClassUID == ENHANCED_MR for s in referenced)


def test_real_multiframe_file_without_functional_groups_gets_a_reason(multiframe_run):
    _, out, _, _ = multiframe_run
    emri = [s for s in _summary(out)["series"] if s["series_number"] == 301 and s["status"] == "skipped"]
    assert len(emri) == 1 and emri[0]["reason"]  # a head series: skipped with its reason, no crash
    with pytest.raises(UnsupportedInput, match="without functional groups"):
        frame_views(pydicom.dcmread(PYDICOM_DATA / "emri_small.dcm"))


# --- decoding, function level (real files shipped with pydicom and pydicom-data) -------

@pytest.mark.parametrize("reference, variants", [
    (PYDICOM_FILES / "MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm",
                                      "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"]),
    (PYDICOM_DATA / "emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                       "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]),
])
def test_lossless_transfer_syntaxes_decode_to_identical_pixels(reference, variants):
    expected = decoded_pixels(pydicom.dcmread(reference))
    for name in variants:
        path = reference.parent / name
        assert np.array_equal(decoded_pixels(pydicom.dcmread(path)), expected), name


def test_jpeg_lossless_process_14_real_file_decodes():
    ds = pydicom.dcmread(PYDICOM_DATA / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert decoded_pixels(ds).shape == (int(ds.Rows), int(ds.Columns))


def test_undecodable_pixel_data_has_a_true_reason():
    with pytest.raises(UnsupportedInput, match="cannot be decoded"):
        decoded_pixels(pydicom.dcmread(PYDICOM_DATA / "emri_small_jpeg_2k_lossless_too_short.dcm"))


def test_dataset_without_file_meta_is_read(tmp_path, accelerated_study):
    hosp.without_file_meta(accelerated_study / "501_ax_t2", tmp_path / "raw")
    raw = pydicom.dcmread(sorted((tmp_path / "raw").glob("*.dcm"))[0], force=True)
    original = pydicom.dcmread(sorted((accelerated_study / "501_ax_t2").glob("*.dcm"))[0])
    (view,) = frame_views(raw)
    assert np.array_equal(view.pixel_array, original.pixel_array)


def test_enhanced_mr_is_classified_from_its_functional_groups_also_as_orthanc_tags(accelerated_study):
    ds = hosp.enhanced_mr(accelerated_study / "801_sag_ce_t1")
    assert classify_series(ds).role == "SAG_CE_T1"
    assert classify_series(_as_simplified_tags(ds)).role == "SAG_CE_T1"
    views = frame_views(ds)
    assert [source_frame_number(v) for v in views] == list(range(1, int(ds.NumberOfFrames) + 1))
    assert views[0].InPlanePhaseEncodingDirection and float(views[0].RepetitionTime) > 0


def test_colour_images_are_refused_with_their_reason():
    with pytest.raises(UnsupportedInput, match="colour"):
        frame_views(pydicom.dcmread(PYDICOM_DATA / "SC_rgb.dcm"))


def _as_simplified_tags(ds: pydicom.Dataset) -> dict:
    """The shape of Orthanc's ``/instances/{id}/simplified-tags``: keyword -> string, or a
    list of such mappings for sequences."""
    out = {}
    for elem in ds:
        if not elem.keyword or elem.tag.group == 0x7FE0:
            continue
        if elem.VR == "SQ":
            out[elem.keyword] = [_as_simplified_tags(item) for item in elem.value]
        elif elem.VM > 1:
            out[elem.keyword] = "\\".join(str(v) for v in elem.value)
        else:
            out[elem.keyword] = str(elem.value)
    return out


def test_unknown_output_syntax_is_a_usage_error(tmp_path, accelerated_study):
    shutil.copytree(accelerated_study / "501_ax_t2", tmp_path / "in")
    result = run_app(tmp_path / "in", tmp_path / "out", extra_env={"CERVICAL_DL_OUTPUT_SYNTAX": "jpeg-lossy"})
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("cervical-dl-enhance: FAILED (exit 2)")]
    assert len(lines) == 1 and "unknown CERVICAL_DL_OUTPUT_SYNTAX 'jpeg-lossy'" in lines[0], result.stderr[-1500:]


# --- a full output disk ----------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI and set-up run as root)")
def test_full_disk_gives_exit_6_one_line_and_nothing_partial(tmp_path, accelerated_study):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], check=True)
    try:
        shutil.copytree(accelerated_study / "501_ax_t2", tmp_path / "in" / "ax")
        result = run_app(tmp_path / "in", disk / "out")
        assert result.returncode == 6, result.stderr[-1500:]
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("cervical-dl-enhance: FAILED")]
        assert len(lines) == 1 and "output storage full" in lines[0], result.stderr[-1500:]
        leftovers = sorted(p.name for p in (disk / "out").iterdir())
        assert set(leftovers) <= {"run_summary.json"}, leftovers
        if leftovers:
            assert _summary(disk / "out")["exit_code"] == 6
    finally:
        subprocess.run(["umount", str(disk)], check=False)
