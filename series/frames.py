"""What hospitals send, turned into the one shape the pipeline computes on.

Every source instance becomes one or more *frame views*: single-frame pydicom datasets
with the classic MR Image attributes (geometry, timing, contrast) at the top level and
MONOCHROME2 magnitude pixels. A classic MONOCHROME2 image is its own frame view (the very
same object, so nothing changes for it); an Enhanced MR or Legacy Converted Enhanced MR
object yields one view per frame, with the attributes of its shared and per-frame
functional groups; a MONOCHROME1 image yields a view with its grey scale turned round.
A frame view keeps the SOP Class and SOP Instance UIDs of the object it came from, and
:func:`source_frame_number` tells which frame (1-based) it is, so derived images and
reports can reference the source frame.

Kept free of the SDK: the header rules (:func:`classic_header`) also run in the Orthanc
trigger on Orthanc's simplified tags (nested mappings instead of datasets).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
MULTIFRAME_MR_CLASSES = {ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE}
MR_STORAGE_CLASSES = {MR_IMAGE_STORAGE, *MULTIFRAME_MR_CLASSES}

#: Functional-group macro -> {attribute in the macro: classic attribute it becomes}.
#: ``None`` as the classic name means "same keyword".
_MACROS: dict[str, dict[str, str | None]] = {
    "PlanePositionSequence": {"ImagePositionPatient": None},
    "PlaneOrientationSequence": {"ImageOrientationPatient": None},
    "PixelMeasuresSequence": {"PixelSpacing": None, "SliceThickness": None, "SpacingBetweenSlices": None},
    "PixelValueTransformationSequence": {"RescaleIntercept": None, "RescaleSlope": None, "RescaleType": None},
    "FrameVOILUTSequence": {"WindowCenter": None, "WindowWidth": None},
    "MRTimingAndRelatedParametersSequence": {"RepetitionTime": None, "FlipAngle": None, "EchoTrainLength": None},
    "MREchoSequence": {"EffectiveEchoTime": "EchoTime"},
    "MRModifierSequence": {"InversionTimes": "InversionTime"},
    "MRFOVGeometrySequence": {"InPlanePhaseEncodingDirection": None},
    "MRAveragesSequence": {"NumberOfAverages": None},
    "MRImageFrameTypeSequence": {"FrameType": "ImageType"},
    "FrameContentSequence": {"FrameAcquisitionDateTime": "AcquisitionDateTime"},
}
_UNASSIGNED = ("UnassignedSharedConvertedAttributesSequence", "UnassignedPerFrameConvertedAttributesSequence")
#: Top-level attributes of a multi-frame object that have no meaning in one frame.
_MULTIFRAME_ONLY = ("PixelData", "NumberOfFrames", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence", "DimensionOrganizationSequence",
                    "DimensionOrganizationType", "ConcatenationUID", "InConcatenationNumber",
                    "InConcatenationTotalNumber", "ConcatenationFrameOffsetNumber", "RepresentativeFrameNumber",
                    "FrameIncrementPointer", "SourceImageEvidenceSequence", "ReferencedImageEvidenceSequence")
#: SNOMED CT anatomic regions (CID 4031) -> classic BodyPartExamined.
_REGION_TO_BODY_PART = {"122494005": "CSPINE", "45048000": "NECK", "421060004": "SPINE", "69536005": "HEAD"}
_ECHO_PULSE_TO_SCANNING = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}
_FRAME_ATTRIBUTE = "source_frame_number"


class UnsupportedInput(ValueError):
    """An instance the pipeline cannot compute on; the message is the one-line reason."""


def header_value(ds: Mapping[str, Any] | Any, keyword: str, default: Any = None) -> Any:
    """``ds[keyword]`` of a pydicom dataset or a keyword mapping; ``default`` when absent or empty."""
    value = ds.get(keyword, default) if hasattr(ds, "get") else getattr(ds, keyword, default)
    return default if value in (None, "") else value


_get = header_value


def _first_item(value: Any) -> Any:
    """The first item of a sequence (pydicom Sequence or Orthanc's list of mappings)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return next(iter(value))
    except (StopIteration, TypeError):
        return None


def _items(value: Any) -> list:
    if value is None or isinstance(value, (str, bytes)):
        return []
    try:
        return list(value)
    except TypeError:
        return []


def _keywords(item: Any) -> Iterable[str]:
    """Keywords of the attributes of one dataset or mapping."""
    if isinstance(item, Dataset):
        return [elem.keyword for elem in item if elem.keyword]
    return list(item.keys()) if hasattr(item, "keys") else []


def is_multiframe(ds: Mapping[str, Any] | Any) -> bool:
    """True for Enhanced MR / Legacy Converted Enhanced MR objects."""
    return str(_get(ds, "SOPClassUID", "")) in MULTIFRAME_MR_CLASSES


def number_of_frames(ds: Mapping[str, Any] | Any) -> int:
    try:
        return int(_get(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def frame_attributes(ds: Mapping[str, Any] | Any, frame_index: int) -> dict[str, Any]:
    """Classic attributes of frame ``frame_index`` (0-based) of a multi-frame MR object.

    Read from the shared, then the per-frame functional groups (per-frame values win);
    works on pydicom datasets and on Orthanc's simplified tags. Only attributes present
    are returned; what the enhanced IODs keep at the top level is not repeated here.
    """
    groups = [_first_item(_get(ds, "SharedFunctionalGroupsSequence"))]
    per_frame = _items(_get(ds, "PerFrameFunctionalGroupsSequence"))
    if frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    out: dict[str, Any] = {}
    for group in groups:
        if group is None:
            continue
        for macro, mapping in _MACROS.items():
            item = _first_item(_get(group, macro))
            if item is None:
                continue
            for keyword, classic in mapping.items():
                value = _get(item, keyword)
                if value is not None:
                    out[classic or keyword] = value
        for unassigned in _UNASSIGNED:
            item = _first_item(_get(group, unassigned))
            if item is not None:  # kept as they were, empty type 2 values included
                out.update({k: item.get(k) if not isinstance(item, Dataset) else item[k].value for k in _keywords(item)})
        anatomy = _first_item(_get(group, "FrameAnatomySequence"))
        region = _first_item(_get(anatomy, "AnatomicRegionSequence")) if anatomy is not None else None
        if region is not None and str(_get(region, "CodeValue", "")) in _REGION_TO_BODY_PART:
            out["_body_part"] = _REGION_TO_BODY_PART[str(_get(region, "CodeValue"))]
        usage = _items(_get(group, "ContrastBolusUsageSequence"))
        if usage:
            out["_contrast_administered"] = any(str(_get(u, "ContrastBolusAgentAdministered", "")).upper() == "YES"
                                                for u in usage)
        modifier = _first_item(_get(group, "MRModifierSequence"))
        if modifier is not None and str(_get(modifier, "InversionRecovery", "")).upper() == "YES":
            out["_inversion_recovery"] = True
    return out


def _scanning_sequence(ds: Mapping[str, Any] | Any, inversion_recovery: bool) -> list[str]:
    scanning = list(_ECHO_PULSE_TO_SCANNING.get(str(_get(ds, "EchoPulseSequence", "")).upper(), ["SE"]))
    return (["IR"] if inversion_recovery else []) + scanning


def _contrast_agent(ds: Mapping[str, Any] | Any, administered: bool | None) -> str | None:
    """The agent's name when the frame was acquired after contrast, else None."""
    if administered is False:
        return None
    agent = _get(ds, "ContrastBolusAgent")
    if agent is None:
        item = _first_item(_get(ds, "ContrastBolusAgentSequence"))
        agent = _get(item, "CodeMeaning") if item is not None else None
    return str(agent) if agent is not None else None


def classic_header(ds: Mapping[str, Any] | Any, frame_index: int = 0) -> Mapping[str, Any] | Any:
    """The header the classification rules read: ``ds`` itself for a classic image, or
    a mapping of the top-level attributes plus those of frame ``frame_index`` for a
    multi-frame MR object (pydicom dataset or Orthanc simplified tags)."""
    if not is_multiframe(ds):
        return ds
    return _merged_header(ds, frame_attributes(ds, frame_index))


def _merged_header(ds: Mapping[str, Any] | Any, frame: dict[str, Any]) -> dict[str, Any]:
    """Top-level attributes of a multi-frame object plus one frame's ``frame_attributes``."""
    header = {k: _get(ds, k) for k in _keywords(ds) if k not in _MULTIFRAME_ONLY}
    frame = dict(frame)
    administered = frame.pop("_contrast_administered", None)
    inversion = frame.pop("_inversion_recovery", False)
    body_part = frame.pop("_body_part", None)
    header.update(frame)
    if body_part is not None and header.get("BodyPartExamined") is None:
        header["BodyPartExamined"] = body_part
    agent = _contrast_agent(ds, administered)
    header.pop("ContrastBolusAgent", None)
    if agent is not None:
        header["ContrastBolusAgent"] = agent
    if inversion and "InversionTime" not in header:
        header["InversionTime"] = 1.0  # inversion recovery without a stated time: still IR
    return header


def source_frame_number(view: Dataset) -> int | None:
    """The 1-based frame of the multi-frame source a frame view shows, or None (single frame)."""
    return getattr(view, _FRAME_ATTRIBUTE, None)


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without file meta the transfer syntax it was parsed with.

    Raw (non-Part 10) datasets are still written by some old archives; pydicom parses
    them but needs a transfer syntax to decode pixels. Only native encodings can be
    inferred; compressed pixel data needs the file meta.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if "PixelData" in ds and getattr(ds["PixelData"], "is_undefined_length", False):
        raise UnsupportedInput("encapsulated (compressed) pixel data without file meta: the transfer syntax is unknown")
    encoding = getattr(ds, "original_encoding", (None, None))
    implicit, little = encoding if encoding != (None, None) else (True, True)
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` or ``(rows, cols)``; a one-line reason on failure."""
    _ensure_transfer_syntax(ds)
    try:
        return ds.pixel_array  # pydicom caches the decoded array on the dataset
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for codecs
        syntax = ds.file_meta.TransferSyntaxUID
        name = getattr(syntax, "name", str(syntax))
        # pydicom lists each plugin's own reason on the lines after the first.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        hint = ""
        if syntax == "1.2.840.10008.1.2.4.51" and int(ds.get("BitsStored", 8)) > 8:
            hint = (" (12-bit JPEG Extended needs pylibjpeg-libjpeg, GPL-3.0, not shipped; send the series "
                    "uncompressed or lossless)")
        raise UnsupportedInput(f"pixel data ({name}) cannot be decoded: {detail}"[:300] + hint) from exc


def _check_photometric(ds: Dataset) -> str:
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedInput(f"colour images (SamplesPerPixel {ds.get('SamplesPerPixel')}) are not MR magnitude images")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedInput(f"unsupported photometric interpretation {photometric or 'missing'}")
    if photometric == "MONOCHROME1" and int(ds.get("PixelRepresentation", 0) or 0) != 0:
        raise UnsupportedInput("signed MONOCHROME1 pixel data is not supported")
    return photometric


def _as_monochrome2(view: Dataset, pixels: np.ndarray) -> np.ndarray:
    """MONOCHROME1 shows the lowest stored value as white: signal = maximum - stored value."""
    maximum = (1 << int(view.BitsStored)) - 1
    return (maximum - np.minimum(pixels, maximum)).astype(pixels.dtype)


def _enhanced_only(tag: Any) -> bool:
    """Attributes of the enhanced MR modules (MR pulse sequence, enhanced image) that the
    classic MR Image IOD does not have: (0008,9205-9209), (0018,9xxx), (0040,0555)."""
    return (tag.group == 0x0008 and 0x9205 <= tag.element <= 0x9209) or (tag.group == 0x0018 and tag.element >= 0x9000) \
        or tag == 0x00400555


def _native_view(ds: Dataset, pixels: np.ndarray, attributes: Mapping[str, Any], frame: int | None) -> Dataset:
    """A single-frame copy of ``ds`` with uncompressed MONOCHROME2 ``pixels``."""
    view = Dataset()
    for elem in ds:
        if elem.keyword not in _MULTIFRAME_ONLY and not (frame is not None and _enhanced_only(elem.tag)):
            view.add(copy.deepcopy(elem))
    view.file_meta = copy.deepcopy(ds.file_meta)
    view.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in attributes.items():
        setattr(view, keyword, value)
    if view.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = _as_monochrome2(view, pixels)
        view.PhotometricInterpretation = "MONOCHROME2"
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence", "PresentationLUTShape"):
            if keyword in view:
                del view[keyword]
    view.PixelData = np.ascontiguousarray(pixels).tobytes()
    view[0x7FE00010].VR = "OW" if int(view.BitsAllocated) > 8 else "OB"
    if frame is not None:
        object.__setattr__(view, _FRAME_ATTRIBUTE, frame)
    return view


def _multiframe_classic_attributes(ds: Dataset, frame_index: int) -> dict[str, Any]:
    frame = frame_attributes(ds, frame_index)
    header = _merged_header(ds, frame)
    keep = {k: header[k] for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                   "SliceThickness", "SpacingBetweenSlices", "RescaleIntercept", "RescaleSlope",
                                   "RescaleType", "WindowCenter", "WindowWidth", "RepetitionTime", "FlipAngle",
                                   "EchoTrainLength", "EchoTime", "InversionTime", "InPlanePhaseEncodingDirection",
                                   "NumberOfAverages", "ImageType", "AcquisitionDateTime", "ContrastBolusAgent",
                                   "BodyPartExamined")
            if header.get(k) is not None}
    # Everything a Legacy Converted object kept from its classic sources comes back as it was.
    for k, v in frame.items():
        if not k.startswith("_") and k not in keep:
            keep[k] = v
    if float(keep.get("RescaleSlope", 1)) == 1 and float(keep.get("RescaleIntercept", 0)) == 0:
        for k in ("RescaleSlope", "RescaleIntercept", "RescaleType"):  # identity: the classic MR IOD has none
            keep.pop(k, None)
    if "ScanningSequence" not in keep:
        keep["ScanningSequence"] = _scanning_sequence(ds, bool(header.get("InversionTime")))
        keep.setdefault("SequenceVariant", ["NONE"])
        keep.setdefault("ScanOptions", "")
        keep.setdefault("MRAcquisitionType", ds.get("MRAcquisitionType", "2D"))
    keep.setdefault("EchoTrainLength", ds.get("EchoTrainLength", ds.get("RFEchoTrainLength", 1)))
    keep.setdefault("EchoTime", 0.0)
    keep["InstanceNumber"] = frame_index + 1
    return keep


def frame_views(ds: Dataset) -> list[Dataset]:
    """The single-frame MONOCHROME2 views of one source instance (see the module text).

    Raises :class:`UnsupportedInput` with a one-line reason for what cannot be computed on.
    """
    if "PixelData" not in ds:
        raise UnsupportedInput("an instance has no pixel data")
    photometric = _check_photometric(ds)
    frames = number_of_frames(ds)
    if not is_multiframe(ds):
        if frames != 1:
            raise UnsupportedInput(f"{frames} frames in a single-frame SOP class {ds.get('SOPClassUID')}")
        if photometric == "MONOCHROME2":
            _ensure_transfer_syntax(ds)
            return [ds]
        return [_native_view(ds, decoded_pixels(ds), {}, None)]
    if not _items(ds.get("PerFrameFunctionalGroupsSequence")) and \
            _first_item(ds.get("SharedFunctionalGroupsSequence")) is None:
        raise UnsupportedInput("multi-frame MR without functional groups (no plane position or orientation per frame)")
    pixels = decoded_pixels(ds)
    pixels = pixels.reshape((frames, *pixels.shape[-2:]))
    views = []
    for i in range(frames):
        attributes = _multiframe_classic_attributes(ds, i)
        if "ImagePositionPatient" not in attributes or "ImageOrientationPatient" not in attributes:
            raise UnsupportedInput(f"frame {i + 1} has no plane position or orientation")
        views.append(_native_view(ds, pixels[i], attributes, i + 1))
    return views


def instance_label(view: Dataset) -> str:
    """``SOPInstanceUID`` or ``SOPInstanceUID#frame`` (for fingerprints and deterministic UIDs)."""
    frame = source_frame_number(view)
    return str(view.SOPInstanceUID) if frame is None else f"{view.SOPInstanceUID}#{frame}"


# --- series of the SDK's loader (DICOMSeries: anything with get_sop_instances()) ---------------
def series_frames(series) -> list:
    """The frame views (:mod:`series.frames`) of every instance of a series, in
    the loader's order; raises UnsupportedInput with the first instance's reason."""
    views = []
    for sop in series.get_sop_instances():
        views.extend(frame_views(sop.get_native_sop_instance()))
    return views


def check_series_readable(series) -> str | None:
    """Why the pixel data of a series cannot be processed, or ``None`` when it can.

    The SDK's loader keeps truncated files and files without pixel data, so every
    instance (every frame of a multi-frame object) is checked here before anything is
    computed.
    """
    try:
        views = series_frames(series)
    except UnsupportedInput as exc:
        return str(exc)
    shapes, orientations = set(), set()
    positions = []
    for ds in views:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if rows < 32 or cols < 32:
            return f"matrix {rows}x{cols} too small"
        syntax = ds.file_meta.TransferSyntaxUID
        if not syntax.is_transfer_syntax or syntax.is_compressed:
            try:
                decoded_pixels(ds)  # decoding is the check
            except UnsupportedInput as exc:
                return str(exc)
        else:
            expected = rows * cols * int(ds.BitsAllocated) // 8
            if len(ds.PixelData) < expected:
                return f"truncated pixel data ({len(ds.PixelData)} of {expected} bytes)"
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            return "missing ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
        shapes.add((rows, cols, int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0))))
        orientations.add(tuple(round(float(v), 3) for v in ds.ImageOrientationPatient))
        positions.append(tuple(round(float(v), 3) for v in ds.ImagePositionPatient))
    if len(shapes) != 1:
        return "instances differ in matrix or pixel format"
    if len(orientations) != 1:
        return "instances differ in orientation"
    if len(set(positions)) != len(positions):
        return "several instances share one position"
    return None


def sorted_instances(series) -> list:
    """The series' frame views (pydicom datasets, one per slice) sorted along the slice
    normal (first slice first)."""
    datasets = series_frames(series)
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
