"""Writes each enhanced series as a derived MR series, atomically, plus a run summary.

pydicom builds the derived MR images because highdicom (0.28) has no constructor for a
classic derived MR Image; highdicom supplies the coded concepts (DCM 121322, 109102).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from operators.cervical_series_selector import SeriesReport
from operators.dl_enhancement import EnhancedSeries
from operators.series_input import MR_IMAGE_STORAGE, instance_label, source_frame_number
from operators.series_roles import SOFTWARE_NAME, lossy_compression_note

SOFTWARE_VERSION = "0.2.0"
MANUFACTURER = "Cervical DL Enhance project"
DERIVED_FOLDER = "derived"
SUMMARY_FILE = "run_summary.json"
# Attributes that would be wrong once the pixels change, or that we must not copy.
_DROP = ("LargestImagePixelValue", "SmallestImagePixelValue", "IconImageSequence", "PixelPaddingValue",
         "WindowCenterWidthExplanation", "RequestAttributesSequence", "ReferencedImageSequence")


#: ``CERVICAL_DL_OUTPUT_SYNTAX`` values -> transfer syntax of the derived images (lossless only).
OUTPUT_SYNTAXES = {"explicit-little-endian": ExplicitVRLittleEndian, "jpeg-ls-lossless": JPEGLSLossless,
                   "rle-lossless": RLELossless}


class ConfigurationError(ValueError):
    """A setting of the application (environment or arguments) has an unusable value."""


def output_syntax(name: str | None) -> str:
    """The transfer syntax UID for an ``OUTPUT_SYNTAXES`` name (None: uncompressed)."""
    key = (name or "explicit-little-endian").strip().lower()
    if key not in OUTPUT_SYNTAXES:
        raise ConfigurationError(f"unknown CERVICAL_DL_OUTPUT_SYNTAX {name!r} (one of {', '.join(OUTPUT_SYNTAXES)})")
    return OUTPUT_SYNTAXES[key]


def derived_uid(*parts: str) -> str:
    """Deterministic UID from source UIDs and the model version: a rerun replaces."""
    return generate_uid(entropy_srcs=[SOFTWARE_NAME, *parts])


def new_file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta information for an object we write (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def derived_series_number(source: int | None, taken: set[int]) -> int:
    """A SeriesNumber that sorts right after the source where the site leaves gaps
    (e.g. 301 -> 351), else source + 1000."""
    source = int(source or 0)
    for candidate in (source + 50, source + 1000, source + 2000):
        if candidate not in taken and (candidate != source + 50 or source >= 100):
            return candidate
    return source + 5000


def short_description(source: str) -> str:
    text = f"{source} DL" if source else "DL enhanced"
    return text[:64]


def build_derived_dataset(source: Dataset, pixels: np.ndarray, *, series_uid: str, sop_uid: str,
                          series_number: int, window: tuple[float, float], model_name: str,
                          model_version: str, model_sha256: str, now: datetime) -> Dataset:
    """A derived classic MR Image (same geometry) from one source slice (a frame view) and
    its enhanced pixels ``(rows, columns)``.

    Always MR Image Storage, one instance per slice, also for frames of a multi-frame
    source (which SourceImageSequence then names with ReferencedFrameNumber)."""
    if pixels.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"pixels {pixels.shape} do not match the source matrix {source.Rows}x{source.Columns}")
    ds = copy.deepcopy(source)
    ds.remove_private_tags()
    for keyword in _DROP:
        if keyword in ds:
            del ds[keyword]
    ds.file_meta = new_file_meta(MR_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = short_description(str(source.get("SeriesDescription", "")))
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = (
        f"{SOFTWARE_NAME}: deep-learning enhancement (cascaded U-Net with image-domain data consistency) "
        f"of an accelerated acquisition; model {model_name} {model_version} sha256:{model_sha256[:16]}"
    )
    lossy = lossy_compression_note(source)
    if lossy is not None:  # LossyImageCompression 01 is copied: once lossy, always marked lossy
        ds.DerivationDescription = f"{ds.DerivationDescription}; source: {lossy}"[:1024]
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time_
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = source.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if source_frame_number(source) is not None:
        source_ref.ReferencedFrameNumber = source_frame_number(source)
    source_ref.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    ds.SourceImageSequence = [source_ref]
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = SOFTWARE_NAME
    equipment.SoftwareVersions = [SOFTWARE_VERSION, f"{model_name} {model_version}"]
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = "DL enhancement of an accelerated MR acquisition"
    equipment.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.ProcessingEquipment)]
    ds.ContributingEquipmentSequence = Sequence(list(source.get("ContributingEquipmentSequence", [])) + [equipment])
    # Pixel module: same dtype as the source; BitsStored widened if enhanced values need it.
    dtype = pixels.dtype
    bits_allocated = int(source.BitsAllocated)
    needed = int(pixels.max()).bit_length() + (1 if dtype.kind == "i" else 0)
    bits_stored = min(bits_allocated, max(int(source.BitsStored), needed))
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if dtype.kind == "i" else 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = round(window[0], 1)
    ds.WindowWidth = round(window[1], 1)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"  # a compressed source's element was OB
    return ds


@dataclass
class WrittenSeries:
    """What the writer wrote for one source series (for the QC report writer).

    ``sources`` are the source datasets and ``derived_headers`` the derived datasets
    without pixel data, slice for slice; ``derived_pixels`` is ``(slices, rows, cols)``.
    """

    role: str
    source_series_instance_uid: str
    derived_series_instance_uid: str
    series_number: int
    model: str
    sources: list
    derived_headers: list
    derived_pixels: np.ndarray


class NoEligibleSeriesError(RuntimeError):
    """The input held DICOM, but no series the product enhances."""


def write_summary(output_folder: Path, summary: dict) -> None:
    """Write ``run_summary.json`` atomically (readers never see a half-written file)."""
    output_folder.mkdir(parents=True, exist_ok=True)
    tmp = output_folder / (SUMMARY_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, output_folder / SUMMARY_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def series_window(pixels: np.ndarray) -> tuple[float, float]:
    """Window centre and width from the whole series (never per slice: no flicker)."""
    values = pixels[pixels > 0]
    if values.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float((lo + hi) / 2.0), float(max(hi - lo, 1.0))


class DerivedSeriesWriterOperator(Operator):
    """Writes ``OUT/derived/<number>_<role>/`` per enhanced series and ``OUT/run_summary.json``.

    All series are written into a staging folder first and moved into place only when
    every one of them is complete: a failure leaves no partial series behind.

    Named inputs:
        enhanced_series: list of EnhancedSeries.
        series_reports: list of SeriesReport (optional; for the summary).
    Named outputs:
        written_series: list of WrittenSeries (optional; for the QC report).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, transfer_syntax: str | None = None,
                 **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        self.transfer_syntax = output_syntax(transfer_syntax)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("enhanced_series")
        spec.input("series_reports").condition(ConditionType.NONE)
        spec.output("written_series").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        enhanced: list[EnhancedSeries] = op_input.receive("enhanced_series") or []
        reports: list[SeriesReport] = op_input.receive("series_reports") or []
        op_output.emit(self.write(enhanced, reports), "written_series")

    def write(self, enhanced: list[EnhancedSeries], reports: list[SeriesReport]) -> list[WrittenSeries]:
        self.output_folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now()
        taken = {r.series_number for r in reports if r.series_number is not None}
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.output_folder))
        written, series = [], []
        try:
            for item in enhanced:
                entry, record = self._write_series(item, staging, taken, now)
                written.append(entry)
                series.append(record)
            final_root = self.output_folder / DERIVED_FOLDER
            final_root.mkdir(exist_ok=True)
            for entry in written:
                target = final_root / entry["folder"]
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging / entry["folder"], target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary = {
            "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
            "model": asdict(enhanced[0].model) if enhanced else None,
            "device": enhanced[0].device if enhanced else None,
            "series": [asdict(r) for r in reports],
            "derived": written,
        }
        if not written:
            reasons = "; ".join(f"series {r.series_number}: {r.reason}" for r in reports) or "no series found"
            summary["status"] = "nothing_to_do"
            summary["reason"] = f"no cervical protocol series to enhance ({reasons})"
        else:
            summary["status"] = "done"
        write_summary(self.output_folder, summary)
        if not written:
            raise NoEligibleSeriesError(summary["reason"])
        return series

    def _write_series(self, item: EnhancedSeries, staging: Path, taken: set[int],
                      now: datetime) -> tuple[dict, WrittenSeries]:
        first = item.datasets[0]
        source_uid = str(first.SeriesInstanceUID)
        series_uid = derived_uid(source_uid, item.model.name, item.model.version)
        number = derived_series_number(first.get("SeriesNumber"), taken)
        taken.add(number)
        folder = f"{number:05d}_{item.role.lower()}"
        (staging / folder).mkdir()
        window = series_window(item.pixels)
        headers = []
        for i, (src, pix) in enumerate(zip(item.datasets, item.pixels)):
            ds = build_derived_dataset(src, pix, series_uid=series_uid,
                                       sop_uid=derived_uid(instance_label(src), item.model.name, item.model.version),
                                       series_number=number, window=window, model_name=item.model.name,
                                       model_version=item.model.version, model_sha256=item.model.sha256, now=now)
            if self.transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(self.transfer_syntax, pix, generate_instance_uid=False)
            pydicom.dcmwrite(staging / folder / f"IM{i + 1:04d}.dcm", ds, enforce_file_format=True)
            del ds.PixelData
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # headers handed on describe no pixels
            headers.append(ds)
        self._logger.info("%s: derived series %d written (%d images)", item.role, number, len(item.datasets))
        entry = {"role": item.role, "source_series_instance_uid": source_uid,
                 "derived_series_instance_uid": series_uid, "series_number": number,
                 "n_instances": len(item.datasets), "folder": folder,
                 "seconds": round(item.seconds, 2), "device": item.device}
        record = WrittenSeries(item.role, source_uid, series_uid, number, f"{item.model.name} {item.model.version}",
                               item.datasets, headers, item.pixels)
        return entry, record
