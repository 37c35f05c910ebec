"""The derived MR images: one classic MR Image per source slice (frame view), same geometry,
marked DERIVED with the model that made it; and the choices around them (series number,
description, window, transfer syntax). Plain pydicom/highdicom, no SDK."""
from __future__ import annotations

import copy
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from app.contracts import MANUFACTURER, SOFTWARE_NAME, SOFTWARE_VERSION, ConfigurationError
from series.frames import MR_IMAGE_STORAGE, source_frame_number
from series.roles import lossy_compression_note

_DROP = ("LargestImagePixelValue", "SmallestImagePixelValue", "IconImageSequence", "PixelPaddingValue",
         "WindowCenterWidthExplanation", "RequestAttributesSequence", "ReferencedImageSequence")


#: ``CERVICAL_DL_OUTPUT_SYNTAX`` values -> transfer syntax of the derived images (lossless only).
OUTPUT_SYNTAXES = {"explicit-little-endian": ExplicitVRLittleEndian, "jpeg-ls-lossless": JPEGLSLossless,
                   "rle-lossless": RLELossless}


def output_syntax(name: str | None) -> str:
    """The transfer syntax UID for an ``OUTPUT_SYNTAXES`` name (None: uncompressed)."""
    key = (name or "explicit-little-endian").strip().lower()
    if key not in OUTPUT_SYNTAXES:
        raise ConfigurationError(f"unknown CERVICAL_DL_OUTPUT_SYNTAX {name!r} (one of {', '.join(OUTPUT_SYNTAXES)})")
    return OUTPUT_SYNTAXES[key]


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


#: What tells two derived series of one acquisition apart when their sources share a description.
_ROLE_HINTS = {"SAG_DIXON_IP": "in-phase", "SAG_DIXON_W": "water"}


def short_description(source: str, role: str | None = None) -> str:
    """SeriesDescription of a derived series: "DL" first (viewers truncate the end of a
    thumbnail label), then what distinguishes the source (Dixon in-phase / water), then
    the source's own description: "DL water sT2W_mDIXON_TSE"."""
    hint = _ROLE_HINTS.get(role or "")
    text = " ".join(part for part in ("DL", hint, source or "enhanced") if part)
    return text[:64]


def build_derived_dataset(source: Dataset, pixels: np.ndarray, *, series_uid: str, sop_uid: str,
                          series_number: int, window: tuple[float, float], model_name: str,
                          model_version: str, model_sha256: str, now: datetime, role: str | None = None,
                          strength: str = "") -> Dataset:
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
    ds.SeriesDescription = short_description(str(source.get("SeriesDescription", "")), role)
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = (
        f"{SOFTWARE_NAME}: deep-learning enhancement (cascaded U-Net with image-domain data consistency) "
        f"of an accelerated acquisition; model {model_name} {model_version} sha256:{model_sha256[:16]}"
        + (f"; strength {strength}, do-no-harm guard" if strength else "")
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
    equipment = processing_equipment([SOFTWARE_VERSION, f"{model_name} {model_version}"], now,
                                     "DL enhancement of an accelerated MR acquisition")
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


def series_window(pixels: np.ndarray) -> tuple[float, float]:
    """Window centre and width from the whole series (never per slice: no flicker)."""
    values = pixels[pixels > 0]
    if values.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float((lo + hi) / 2.0), float(max(hi - lo, 1.0))




def processing_equipment(software_versions: str | list[str], now: datetime,
                         description: str | None = None) -> hd.ContributingEquipment:
    """The ContributingEquipmentSequence item (purpose: Processing Equipment) naming this software."""
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=SOFTWARE_NAME, software_versions=software_versions,
        contribution_datetime=None if description is None else now.strftime("%Y%m%d%H%M%S"),
        contribution_description=description)
