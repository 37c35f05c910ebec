"""DICOM as hospitals send it, made from a simulated series with real tools: dcmtk
transcodes (JPEG lossless / lossy, JPEG-LS, RLE, big endian), highdicom's Legacy Converted
Enhanced MR, an Enhanced MR object with MR functional groups, MONOCHROME1, no file meta."""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

#: dcmtk command per transcode (input file, output file appended).
DCMTK = {
    "jpeg_lossless_sv1": ["dcmcjpeg", "+e1"],      # 1.2.840.10008.1.2.4.70, the PACS default
    "jpeg_lossless": ["dcmcjpeg", "+el"],          # 1.2.840.10008.1.2.4.57
    "jpeg_extended_lossy": ["dcmcjpeg", "+ee"],    # 12-bit lossy, marks ImageType DERIVED
    "jpeg_ls_lossless": ["dcmcjpls", "+el"],
    "jpeg_ls_near_lossless": ["dcmcjpls", "+en", "+md", "2"],
    "rle": ["dcmcrle"],
    "big_endian": ["dcmconv", "+tb"],
}


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


def transcode(src: Path, dst: Path, kind: str) -> Path:
    """Every instance of series folder ``src`` through dcmtk into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        subprocess.run([*DCMTK[kind], str(f), str(dst / f.name)], check=True, capture_output=True, timeout=60)
    return dst


def renumber(folder: Path, series_number: int, study_uid: str | None = None) -> None:
    """A new SeriesInstanceUID / number (and SOP UIDs, and the study when given) for a copied series."""
    series_uid = generate_uid()
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(f)


def as_monochrome1(src: Path, dst: Path, series_number: int) -> Path:
    """The series with its grey scale stored inverted (MONOCHROME1), new series UID."""
    dst.mkdir(parents=True)
    series_uid = generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        maximum = (1 << int(ds.BitsStored)) - 1
        ds.PixelData = (maximum - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / f.name)
    return dst


def without_file_meta(src: Path, dst: Path) -> Path:
    """Raw datasets (implicit VR little endian, no preamble, no file meta), as old archives write."""
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        pydicom.dcmwrite(dst / f.name, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return dst


def legacy_converted(src: Path) -> hd.legacy.LegacyConvertedEnhancedMRImage:
    """One Legacy Converted Enhanced MR object from a classic series (highdicom)."""
    datasets = read_series(src)
    first = datasets[0]
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=generate_uid(), series_number=int(first.SeriesNumber),
        sop_instance_uid=generate_uid(), instance_number=1)


def enhanced_mr(src: Path) -> Dataset:
    """An Enhanced MR Image object of a classic series, with MR functional groups as
    scanners write them (timing, echo, FOV geometry, averages, frame type) instead of
    Legacy Converted's unassigned-attribute sequences."""
    ds = legacy_converted(src)
    shared = ds.SharedFunctionalGroupsSequence[0]
    unassigned = shared.UnassignedSharedConvertedAttributesSequence[0]
    timing = Dataset()
    timing.RepetitionTime = float(unassigned.RepetitionTime)
    timing.FlipAngle = float(unassigned.get("FlipAngle", 90))
    timing.EchoTrainLength = int(unassigned.get("EchoTrainLength", 1))
    echo = Dataset()
    echo.EffectiveEchoTime = float(unassigned.EchoTime)
    fov = Dataset()
    fov.InPlanePhaseEncodingDirection = unassigned.InPlanePhaseEncodingDirection
    averages = Dataset()
    averages.NumberOfAverages = float(unassigned.get("NumberOfAverages", 1))
    modifier = Dataset()
    modifier.InversionRecovery = "NO"
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    shared.MREchoSequence = Sequence([echo])
    shared.MRFOVGeometrySequence = Sequence([fov])
    shared.MRAveragesSequence = Sequence([averages])
    shared.MRModifierSequence = Sequence([modifier])
    del shared.UnassignedSharedConvertedAttributesSequence
    for item in ds.PerFrameFunctionalGroupsSequence:
        for keyword in ("UnassignedPerFrameConvertedAttributesSequence", "ConversionSourceAttributesSequence"):
            if keyword in item:
                del item[keyword]
    agent = str(ds.get("ContrastBolusAgent", "") or "")
    if "ContrastBolusAgent" in ds:
        del ds.ContrastBolusAgent
    if agent:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C0083004", "UMLS", agent
        ds.ContrastBolusAgentSequence = Sequence([code])
        for item in ds.PerFrameFunctionalGroupsSequence:
            usage = Dataset()
            usage.ContrastBolusAgentNumber = 1
            usage.ContrastBolusAgentAdministered = "YES"
            item.ContrastBolusUsageSequence = Sequence([usage])
    ds.EchoPulseSequence = "SPIN"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    return ds


def save(ds: Dataset, folder: Path, name: str = "MF0001.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(folder / name, copy.deepcopy(ds), enforce_file_format=True)
    return folder / name


def pixels_by_position(folder: Path) -> dict[tuple, np.ndarray]:
    """Derived pixels keyed by rounded ImagePositionPatient (instance names differ)."""
    out = {}
    for ds in read_series(folder):
        out[tuple(round(float(v), 2) for v in ds.ImagePositionPatient)] = ds.pixel_array
    return out
