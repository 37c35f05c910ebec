"""Header-only classification of MR series into cervical-spine protocol roles.

Kept free of the SDK so the Orthanc trigger can use the same rules on the main tags.
Works across vendors: orientation from ImageOrientationPatient, weighting from TR/TE
(descriptions as fallback), contrast from the Contrast/Bolus module or the description,
Dixon image kind from ImageType or the description.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.contracts import SOFTWARE_NAME
from series.frames import MR_STORAGE_CLASSES, classic_header
from series.frames import header_value as _get

ROLES = ("SAG_T1", "SAG_T2", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2", "SAG_CE_T1")

_CERVICAL_BODY_PARTS = {"CSPINE", "C-SPINE", "NECK", "SPINE", "HEADNECK", "CERVICAL", "CSPINE "}
_LOCALIZER_RE = re.compile(r"(survey|locali[sz]er|\bloc\b|scout|3[- ]?pl|tri[- ]?pilot|\bpilot\b|calibration|refscan)", re.I)
_CE_RE = re.compile(r"(\+\s*c\b|\bpost\b|_post|\bgd\b|_gd\b|gado|\bkm\b|contrast|\bce\b|\+gd|\bc\+)", re.I)
_DIXON_RE = re.compile(r"(dixon|ideal|flex)", re.I)
_IR_RE = re.compile(r"(stir|tirm|\bir\b|flair)", re.I)


@dataclass(frozen=True)
class SeriesDecision:
    """``role`` is one of :data:`ROLES`, or ``None`` with ``reason`` saying why not."""

    role: str | None
    reason: str




def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    if isinstance(value, (int, float)):  # one numeric value (DSfloat, IS, US)
        return [str(value)]
    return [str(v) for v in value]


def plane_of(orientation: Any) -> str | None:
    """``"sagittal"``, ``"coronal"``, ``"axial"`` from ImageOrientationPatient, or None."""
    try:
        iop = np.asarray([float(v) for v in _as_list(orientation)], dtype=float)
    except (TypeError, ValueError):
        return None
    if iop.shape != (6,):
        return None
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 0.5:
        return None
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def is_our_output(ds: Any) -> bool:
    """True for objects this product wrote (derived series, QC objects)."""
    for item in _get(ds, "ContributingEquipmentSequence", []) or []:
        if SOFTWARE_NAME in str(_get(item, "ManufacturerModelName", "")):
            return True
    return SOFTWARE_NAME in str(_get(ds, "DerivationDescription", "")) or SOFTWARE_NAME in str(
        _get(ds, "SeriesDescription", "")
    )


def classify_series(ds: Any) -> SeriesDecision:
    """Role of the series whose first instance's header is ``ds`` (pydicom Dataset or a
    mapping of DICOM keywords, e.g. Orthanc's simplified tags). Classic MR, Enhanced MR and
    Legacy Converted Enhanced MR (read from the first frame's functional groups)."""
    ds = classic_header(ds)
    note = lossy_compression_note(ds)
    decision = _classify_header(ds, note)
    if decision.role is not None and note is not None:
        return SeriesDecision(decision.role, f"{decision.reason}; {note}")
    return decision


def _classify_header(ds: Any, lossy_note: str | None) -> SeriesDecision:
    modality = str(_get(ds, "Modality", "")).upper()
    if modality != "MR":
        return SeriesDecision(None, f"not MR (Modality {modality or 'missing'})")
    sop_class = str(_get(ds, "SOPClassUID", ""))
    if sop_class and sop_class not in MR_STORAGE_CLASSES:
        return SeriesDecision(None, f"unsupported SOP class {sop_class}")
    if is_our_output(ds):
        return SeriesDecision(None, "our own output")
    image_type = [v.upper() for v in _as_list(_get(ds, "ImageType"))]
    if image_type and image_type[0] == "DERIVED" and lossy_note is None:
        return SeriesDecision(None, "derived series (ImageType DERIVED, not only lossy compression)")
    description = " ".join(str(_get(ds, k, "")) for k in ("SeriesDescription", "ProtocolName"))
    if "LOCALIZER" in image_type or _LOCALIZER_RE.search(description):
        return SeriesDecision(None, "localizer")
    body_part = str(_get(ds, "BodyPartExamined", "")).upper().replace(" ", "")
    study_text = (str(_get(ds, "StudyDescription", "")) + " " + description).lower()
    if body_part and body_part not in _CERVICAL_BODY_PARTS and not re.search(r"(cervical|c-?spine|neck)", study_text):
        return SeriesDecision(None, f"not a cervical-spine series (BodyPartExamined {body_part})")
    plane = plane_of(_get(ds, "ImageOrientationPatient"))
    if plane is None:
        return SeriesDecision(None, "missing or invalid ImageOrientationPatient")
    if plane == "coronal":
        return SeriesDecision(None, "coronal series are not part of the protocol")
    if _get(ds, "InversionTime") not in (None, 0, 0.0) or _IR_RE.search(description) or any("IR" == v for v in image_type):
        return SeriesDecision(None, "inversion-recovery (STIR/FLAIR) series are not enhanced")

    tr = _float(_get(ds, "RepetitionTime"))
    te = _float(_get(ds, "EchoTime"))
    weighting = None
    if tr is not None and te is not None:
        if tr < 1000 and te < 30:
            weighting = "T1"
        elif tr >= 1500 and te >= 60:
            weighting = "T2"
    if weighting is None:
        d = description.lower()
        if re.search(r"t1", d):
            weighting = "T1"
        elif re.search(r"t2", d):
            weighting = "T2"
    if weighting is None:
        return SeriesDecision(None, f"cannot tell T1 from T2 (TR {tr}, TE {te})")

    agent = str(_get(ds, "ContrastBolusAgent", "")).strip()
    contrast = bool(agent) or bool(_CE_RE.search(description))
    dixon = _DIXON_RE.search(description) is not None or any(v in image_type for v in ("DIXON", "IP", "W", "IN_PHASE", "WATER", "M_IP"))
    if plane == "axial":
        if weighting == "T2" and not contrast and not dixon:
            return SeriesDecision("AX_T2", "axial T2")
        return SeriesDecision(None, f"axial {weighting}{' post-contrast' if contrast else ''}{' Dixon' if dixon else ''} is not part of the protocol")
    if weighting == "T1":
        if dixon:
            return SeriesDecision(None, "sagittal T1 Dixon is not part of the protocol")
        return SeriesDecision("SAG_CE_T1", "sagittal T1 with contrast") if contrast else SeriesDecision("SAG_T1", "sagittal T1")
    if contrast:
        return SeriesDecision(None, "sagittal T2 after contrast is not part of the protocol")
    if dixon:
        kind = _dixon_kind(image_type, description)
        if kind is None:
            return SeriesDecision(None, "Dixon image other than in-phase or water (fat / opposed-phase)")
        return SeriesDecision(f"SAG_DIXON_{kind}", f"sagittal T2 Dixon {'in-phase' if kind == 'IP' else 'water'}")
    return SeriesDecision("SAG_T2", "sagittal T2")


def lossy_compression_note(ds: Any) -> str | None:
    """``"lossy-compressed original (method, ratio r)"`` for an acquired image whose only
    processing was lossy compression (PACS or archive: ImageType DERIVED\\PRIMARY,
    LossyImageCompression 01, no derivation other than DCM 113040 "Lossy Compression"),
    else None. Such series are enhanced, with this note in the run summary and job status:
    compression has already removed part of the noise the model expects."""
    if str(_get(ds, "LossyImageCompression", "")).strip() != "01":
        return None
    image_type = [v.upper() for v in _as_list(_get(ds, "ImageType"))]
    if len(image_type) > 1 and image_type[1] != "PRIMARY":
        return None
    for item in _get(ds, "DerivationCodeSequence", []) or []:
        if str(_get(item, "CodeValue", "")) != "113040":
            return None
    method = "/".join(_as_list(_get(ds, "LossyImageCompressionMethod"))) or "unknown method"
    ratio = "/".join(_as_list(_get(ds, "LossyImageCompressionRatio"))) or "?"
    return f"lossy-compressed original ({method}, ratio {ratio})"


def _dixon_kind(image_type: list[str], description: str) -> str | None:
    if any(v in image_type for v in ("OUT_PHASE", "OP", "F", "FAT", "M_OP", "M_F")):
        return None
    if any(v in image_type for v in ("IP", "IN_PHASE", "M_IP")):
        return "IP"
    if any(v in image_type for v in ("W", "WATER", "M_W")):
        return "W"
    d = description.lower()
    if re.search(r"(fat|_f\b|opp|out)", d):
        return None
    if re.search(r"(in[ _-]?phase|_in\b|\bin\b|\bip\b|_ip\b)", d):
        return "IP"
    if re.search(r"(water|_w\b|\bw\b)", d):
        return "W"
    return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
