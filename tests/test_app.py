"""The MONAI Deploy application end to end: derived series, DICOM validity, bad input."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import run_app
from models import WEIGHTS_DIR

MYELOPATHY_ROLES = {"SAG_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2", "SAG_CE_T1"}


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


def _source_index(study: Path) -> dict[str, tuple[pydicom.Dataset, str]]:
    index = {}
    for folder in study.iterdir():
        if folder.is_dir():
            for f in folder.glob("*.dcm"):
                ds = pydicom.dcmread(f)
                index[ds.SOPInstanceUID] = (ds, folder.name)
    return index


def test_app_writes_one_derived_series_per_role(app_run, accelerated_study):
    out, result = app_run
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "done"
    assert {d["role"] for d in summary["derived"]} == MYELOPATHY_ROLES
    skipped = [s for s in summary["series"] if s["status"] == "skipped"]
    assert [s["reason"] for s in skipped] == ["localizer"]
    folders = sorted((out / "derived").iterdir())
    assert len(folders) == 5
    assert not list(out.glob(".staging-*"))
    assert "series found: 6" in result.stdout


def test_derived_series_follow_the_dicom_conventions(app_run, accelerated_study):
    out, _ = app_run
    sources = _source_index(accelerated_study)
    summary = json.loads((out / "run_summary.json").read_text())
    model = summary["model"]
    qc_by_derived = {e["derived_SeriesInstanceUID"]: e for e in json.loads((out / "qc.json").read_text())}
    for entry in summary["derived"]:
        derived = _read_series(out / "derived" / entry["folder"])
        qc = qc_by_derived[entry["derived_series_instance_uid"]]
        worst = [i + 1 for i, d in enumerate(derived) if d.ImageComments.endswith("Worst slice.")]
        assert worst == ([qc["worst_slice_original"]] if qc["motion_flag"] else []), (entry["role"], worst)
        source_folder = {sources[d.SourceImageSequence[0].ReferencedSOPInstanceUID][1] for d in derived}
        assert len(source_folder) == 1
        source_uids = {uid for uid, (_, folder) in sources.items() if folder in source_folder}
        assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in derived} == source_uids
        assert len({d.SeriesInstanceUID for d in derived}) == 1
        assert derived[0].SeriesInstanceUID == entry["derived_series_instance_uid"]
        for d in derived:
            src = sources[d.SourceImageSequence[0].ReferencedSOPInstanceUID][0]
            assert d.SeriesInstanceUID != src.SeriesInstanceUID and d.SOPInstanceUID != src.SOPInstanceUID
            assert d.StudyInstanceUID == src.StudyInstanceUID
            assert d.FrameOfReferenceUID == src.FrameOfReferenceUID
            for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                assert [float(v) for v in d[kw].value] == [float(v) for v in src[kw].value], kw
            assert float(d.SliceThickness) == float(src.SliceThickness)
            assert (d.Rows, d.Columns) == (src.Rows, src.Columns)
            assert list(d.ImageType[:2]) == ["DERIVED", "SECONDARY"]
            assert model["name"] in d.DerivationDescription and model["version"] in d.DerivationDescription
            assert "strength high (1.00), do-no-harm guard" in d.DerivationDescription  # the default
            # the QC verdict the viewer shows, and on a flagged series' worst slice where it opens
            assert d.ImageComments in (entry["qc_verdict"], f"{entry['qc_verdict']} Worst slice."), d.ImageComments
            purpose = d.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
            assert d.ContributingEquipmentSequence[-1].ManufacturerModelName == "CervicalDLEnhance"
            assert "DL" in d.SeriesDescription
            assert d.pixel_array.dtype == src.pixel_array.dtype
            assert not any(elem.tag.is_private for elem in d)
        assert int(derived[0].SeriesNumber) != int(src.SeriesNumber)
        # One window for the whole series (no flicker when scrolling).
        assert len({(float(d.WindowCenter), float(d.WindowWidth)) for d in derived}) == 1


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is installed by make setup")
def test_derived_images_pass_dciodvfy(app_run):
    out, _ = app_run
    files = sorted((out / "derived").rglob("*.dcm"))
    assert files
    for f in files:
        result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (f.name, errors)


def test_dl_output_is_closer_to_the_truth_than_the_accelerated_input(app_run, accelerated_study):
    out, _ = app_run
    truth = np.load(accelerated_study / "truth.npz")
    summary = json.loads((out / "run_summary.json").read_text())
    sources = _source_index(accelerated_study)
    gains = {}
    for entry in summary["derived"]:
        if entry["role"] == "SAG_CE_T1":
            continue  # motion-corrupted on purpose (mild motion): measured by the QC, not here
        derived = _read_series(out / "derived" / entry["folder"])
        reference = truth[f"{entry['role']}_reference"]
        # truth.npz stacks slices in the written order (instance number).
        order = [int(sources[d.SourceImageSequence[0].ReferencedSOPInstanceUID][0].InstanceNumber) - 1 for d in derived]
        psnr_in, psnr_dl, ssim_in, ssim_dl = [], [], [], []
        for d, k in zip(derived, order):
            src = sources[d.SourceImageSequence[0].ReferencedSOPInstanceUID][0].pixel_array.astype(np.float64)
            dl = d.pixel_array.astype(np.float64)
            ref = reference[k].astype(np.float64)
            rng = float(ref.max())
            psnr_in.append(peak_signal_noise_ratio(ref, src, data_range=rng))
            psnr_dl.append(peak_signal_noise_ratio(ref, dl, data_range=rng))
            ssim_in.append(structural_similarity(ref, src, data_range=rng))
            ssim_dl.append(structural_similarity(ref, dl, data_range=rng))
        gains[entry["role"]] = (np.mean(psnr_dl) - np.mean(psnr_in), np.mean(ssim_dl) - np.mean(ssim_in))
    print({role: (round(p, 2), round(s, 3)) for role, (p, s) in gains.items()})
    # Every series improves; on average by more than 1.5 dB (full images, stored units).
    for role, (dpsnr, dssim) in gains.items():
        assert dpsnr > 0.5, (role, gains)
        assert dssim > 0.05, (role, gains)
    assert np.mean([g[0] for g in gains.values()]) > 1.5, gains


def test_rerun_gives_identical_uids_and_leaves_the_input_untouched(app_run, accelerated_study, tmp_path):
    out, _ = app_run
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in accelerated_study.rglob("*.dcm")}
    result = run_app(accelerated_study, tmp_path / "again", env_paths=True)
    assert result.returncode == 0, result.stderr[-2000:]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in accelerated_study.rglob("*.dcm")}
    assert before == after

    def uids(root):
        return sorted((d.SeriesInstanceUID, d.SOPInstanceUID) for d in map(pydicom.dcmread, root.rglob("*.dcm")))

    assert uids(out / "derived") == uids(tmp_path / "again" / "derived")
    first = sorted((out / "derived").rglob("*.dcm"))[0]
    again = tmp_path / "again" / "derived" / first.relative_to(out / "derived")
    assert np.array_equal(pydicom.dcmread(first).pixel_array, pydicom.dcmread(again).pixel_array)


# --- bad input --------------------------------------------------------------------------

def _assert_failed(result, out: Path, code: int, words: str):
    assert result.returncode == code, (result.returncode, result.stderr[-1500:])
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("cervical-dl-enhance: FAILED")]
    assert len(line) == 1 and words in line[0], result.stderr[-1500:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["exit_code"] == code and words in summary["reason"]
    assert not (out / "derived").exists() or not any((out / "derived").iterdir())
    assert not list(out.glob(".staging-*"))


def test_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    _assert_failed(run_app(tmp_path / "in", tmp_path / "out"), tmp_path / "out", 3, "no DICOM")


def test_only_non_dicom_files(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image\n")
    _assert_failed(run_app(tmp_path / "in", tmp_path / "out"), tmp_path / "out", 3, "no DICOM")


def test_non_mr_series(tmp_path, accelerated_study):
    (tmp_path / "in").mkdir()
    for f in sorted((accelerated_study / "301_sag_t1").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.save_as(tmp_path / "in" / f.name)
    _assert_failed(run_app(tmp_path / "in", tmp_path / "out"), tmp_path / "out", 4, "not MR (Modality CT)")


def test_truncated_file(tmp_path, accelerated_study):
    (tmp_path / "in").mkdir()
    src = sorted((accelerated_study / "301_sag_t1").glob("*.dcm"))[0]
    data = src.read_bytes()
    (tmp_path / "in" / "cut.dcm").write_bytes(data[: len(data) // 2])
    _assert_failed(run_app(tmp_path / "in", tmp_path / "out"), tmp_path / "out", 4, "truncated pixel data")


def test_truncated_slice_skips_its_series_only(tmp_path, accelerated_study):
    shutil.copytree(accelerated_study / "301_sag_t1", tmp_path / "in" / "t1")
    shutil.copytree(accelerated_study / "501_ax_t2", tmp_path / "in" / "t2")
    shutil.copy(accelerated_study / "study.json", tmp_path / "in" / "t1")  # stray non-DICOM file
    victim = sorted((tmp_path / "in" / "t1").glob("*.dcm"))[2]
    victim.write_bytes(victim.read_bytes()[:-1000])
    result = run_app(tmp_path / "in", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-1500:]
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert [d["role"] for d in summary["derived"]] == ["AX_T2"]
    assert any(s["status"] == "skipped" and "truncated" in s["reason"] for s in summary["series"])


def test_strength_per_role_reaches_headers_summary_and_qc(tmp_path, accelerated_study):
    for name in ("501_ax_t2", "301_sag_t1"):
        shutil.copytree(accelerated_study / name, tmp_path / "in" / name)
    out = tmp_path / "out"
    result = run_app(tmp_path / "in", out, extra_env={"CERVICAL_DL_STRENGTH": "high, SAG_T1=low",
                                                      "CERVICAL_DL_CPU_PRECISION": "float32"})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["device"] == "cpu (torch, float32)"  # the engine and its arithmetic, as set
    expected = {"AX_T2": "high (1.00)", "SAG_T1": "low (0.60)"}
    assert {e["role"]: e["strength"] for e in summary["derived"]} == expected
    for entry in summary["derived"]:
        assert 0.0 <= entry["guard_held_back_percent"] <= 100.0
        for d in _read_series(out / "derived" / entry["folder"]):
            assert f"strength {expected[entry['role']]}, do-no-harm guard" in d.DerivationDescription
    qc = {e["role"]: e for e in json.loads((out / "qc.json").read_text())}
    for entry in summary["derived"]:
        assert qc[entry["role"]]["dl_strength"] == expected[entry["role"]]
        per_slice = qc[entry["role"]]["dl_held_back_slices_percent"]
        assert len(per_slice) == entry["n_instances"] and all(0 <= h <= 100 for h in per_slice)


@pytest.mark.parametrize("setting,value", [("CERVICAL_DL_STRENGTH", "extreme"), ("CERVICAL_DL_STRENGTH", "1.5"),
                                           ("CERVICAL_DL_STRENGTH", "medium,SAG_T9=low"),
                                           ("CERVICAL_DL_CPU_PRECISION", "fp16"), ("CERVICAL_DL_THREADS", "0")])
def test_unusable_setting_is_a_usage_error(tmp_path, accelerated_study, setting, value):
    shutil.copytree(accelerated_study / "501_ax_t2", tmp_path / "in")
    result = run_app(tmp_path / "in", tmp_path / "out", extra_env={setting: value})
    _assert_failed(result, tmp_path / "out", 2, setting)


def test_corrupt_model_is_refused(tmp_path, accelerated_study):
    models = tmp_path / "models"
    shutil.copytree(WEIGHTS_DIR, models)
    weights = models / "cervical_dl_recon.pt"  # the file the default runtime loads
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    shutil.copytree(accelerated_study / "501_ax_t2", tmp_path / "in")
    _assert_failed(run_app(tmp_path / "in", tmp_path / "out", model_dir=models), tmp_path / "out", 5, "checksum")
