"""Simulated cervical-spine MR studies written as realistic DICOM series.

One call of :func:`write_study` renders a phantom patient, acquires every series of a
protocol (conventional or accelerated), and writes MR Image Storage files with
vendor-like headers (Philips, Siemens or GE naming), uint16 MONOCHROME2, consistent
geometry. pydicom builds the files: highdicom has no constructor for a classic MR image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from simulation import acquisition as acq
from simulation.phantom import (
    CONTRASTS,
    Contrast,
    PhantomPatient,
    PlaneGeometry,
    axial_geometry,
    contrast_image,
    render_plane,
    sagittal_geometry,
    swallowing_fill,
    swallowing_weight,
)

Vendor = Literal["philips", "siemens", "ge"]

# Roles per protocol (Koo et al. 2025): HIVD and myelopathy.
PROTOCOL_ROLES: dict[str, list[str]] = {
    "hivd": ["SAG_T1", "SAG_T2", "AX_T2"],
    "myelopathy": ["SAG_T1", "SAG_DIXON_IP", "SAG_DIXON_W", "AX_T2", "SAG_CE_T1"],
}
ROLE_CONTRAST = {
    "SAG_T1": "T1", "SAG_T2": "T2", "SAG_DIXON_IP": "DIXON_IP", "SAG_DIXON_W": "DIXON_W",
    "AX_T2": "AX_T2", "SAG_CE_T1": "CE_T1",
}
ROLE_SERIES_NUMBER = {
    "SAG_T1": 301, "SAG_T2": 401, "SAG_DIXON_IP": 401, "SAG_DIXON_W": 402, "AX_T2": 501,
    "SAG_CE_T1": 801,
}
# Phase encoding: anterior-posterior on both planes (ROW on sagittal, COL on axial).
ROLE_PHASE_ENCODE = {r: ("COL" if r == "AX_T2" else "ROW") for r in ROLE_CONTRAST}
# Conventional SNR targets: object median foreground over noise SD per k-space sample.
ROLE_SNR = {"SAG_T1": 14.0, "SAG_T2": 12.0, "SAG_DIXON_IP": 12.0, "SAG_DIXON_W": 12.0,
            "AX_T2": 10.0, "SAG_CE_T1": 14.0}

_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "philips": {
        "LOCALIZER": "Survey", "SAG_T1": "sT1W_TSE", "SAG_T2": "sT2W_TSE",
        "SAG_DIXON_IP": "sT2W_mDIXON_TSE", "SAG_DIXON_W": "sT2W_mDIXON_TSE",
        "AX_T2": "aT2W_TSE", "SAG_CE_T1": "sT1W_TSE_GD",
    },
    "siemens": {
        "LOCALIZER": "localizer", "SAG_T1": "t1_tse_sag", "SAG_T2": "t2_tse_sag",
        "SAG_DIXON_IP": "t2_tse_dixon_sag_in", "SAG_DIXON_W": "t2_tse_dixon_sag_W",
        "AX_T2": "t2_tse_tra", "SAG_CE_T1": "t1_tse_sag_post",
    },
    "ge": {
        "LOCALIZER": "3-Plane Loc", "SAG_T1": "Sag T1 FSE", "SAG_T2": "Sag T2 FSE",
        "SAG_DIXON_IP": "InPhase: Sag T2 FSE IDEAL", "SAG_DIXON_W": "WATER: Sag T2 FSE IDEAL",
        "AX_T2": "Ax T2 FSE", "SAG_CE_T1": "Sag T1 FSE +C",
    },
}
_EQUIPMENT = {
    "philips": ("Philips Medical Systems", "Ingenia", "5.7.1"),
    "siemens": ("SIEMENS", "MAGNETOM Aera", "syngo MR E11"),
    "ge": ("GE MEDICAL SYSTEMS", "SIGNA Explorer", "27\\LX\\MR Software release:DV27.0"),
}


def _image_type(vendor: str, role: str) -> list[str]:
    if vendor == "philips":
        flavour = {"SAG_DIXON_IP": ["M_IP", "M", "IP"], "SAG_DIXON_W": ["W", "W"]}.get(role, ["M_SE", "M", "SE"])
        return ["ORIGINAL", "PRIMARY", *flavour]
    if vendor == "siemens":
        extra = {"SAG_DIXON_IP": ["DIXON", "IN_PHASE"], "SAG_DIXON_W": ["DIXON", "WATER"]}.get(role, [])
        return ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D", *extra]
    return ["ORIGINAL", "PRIMARY", "OTHER"]


def _sequence_name(vendor: str, role: str, etl: int) -> str:
    if vendor == "siemens":
        return f"*tse2d1_{etl}"
    if vendor == "ge":
        return "fse-xl"
    return "TSE" if "DIXON" not in role else "mDIXON_TSE"


@dataclass(frozen=True)
class SeriesRecord:
    """What was written for one series (for summaries, tests and evaluation)."""

    role: str
    series_description: str
    series_instance_uid: str
    series_number: int
    n_slices: int
    rows: int
    columns: int
    phase_encode_direction: str
    motion: str
    scan_time_ratio: float
    noise_sigma_stored: float


def _uid(*parts: object) -> str:
    """Deterministic UID (pydicom root, hash of the parts): the same study gives the same UIDs."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _base_dataset(vendor: str, patient: PhantomPatient, study_uid: str, study_dt: datetime,
                  accession: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"Phantom^Cervical{patient.seed:05d}"
    ds.PatientID = f"PHANTOM{patient.seed:05d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "056Y"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_dt.strftime("%Y%m%d")
    ds.StudyTime = study_dt.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR CERVICAL SPINE"
    ds.BodyPartExamined = "CSPINE"
    manufacturer, model, software = _EQUIPMENT[vendor]
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.SoftwareVersions = software
    ds.InstitutionName = "Simulation Hospital"
    ds.StationName = "MRSIM1"
    ds.DeviceSerialNumber = "SIM0001"
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.897
    ds.ImagedNucleus = "1H"
    return ds


def _write_series(out_dir: Path, base: Dataset, *, vendor: str, role: str, description: str,
                  series_uid: str, frame_uid: str, series_number: int, planes: list[PlaneGeometry],
                  images: list[np.ndarray], series_dt: datetime, contrast_key: str | None,
                  protocol: acq.AcquisitionProtocol, nex: float, image_type: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stack = np.stack(images)
    lo, hi = np.percentile(stack[stack > 0], [1, 99.5]) if np.any(stack > 0) else (0.0, 1.0)
    for i, (plane, img) in enumerate(zip(planes, images)):
        ds = Dataset()
        ds.update(base)
        sop_uid = _uid(series_uid, i)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1543.1"  # our simulator
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.SeriesDate = series_dt.strftime("%Y%m%d")
        ds.SeriesTime = series_dt.strftime("%H%M%S")
        ds.AcquisitionDate = ds.SeriesDate
        ds.AcquisitionTime = ds.SeriesTime
        ds.ContentDate = ds.SeriesDate
        ds.ContentTime = ds.SeriesTime
        ds.InstanceCreationDate = ds.SeriesDate
        ds.InstanceCreationTime = ds.SeriesTime
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = image_type
        ds.ImagePositionPatient = [round(float(v), 4) for v in plane.origin]
        ds.ImageOrientationPatient = [float(v) for v in (*plane.row_dir, *plane.col_dir)]
        ds.PixelSpacing = [round(plane.spacing[0], 6), round(plane.spacing[1], 6)]
        ds.SliceThickness = plane.thickness
        if len(planes) > 1:
            ds.SpacingBetweenSlices = round(float(np.linalg.norm(planes[1].origin - planes[0].origin)), 4)
        ds.SliceLocation = round(float(np.dot(plane.origin, plane.normal)), 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = img.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = round(float((lo + hi) / 2), 1)
        ds.WindowWidth = round(float(max(hi - lo, 1.0)), 1)
        contrast = CONTRASTS[contrast_key] if contrast_key else None
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = ["SK", "OSP"]
        ds.ScanOptions = "PFP" if protocol.partial_fourier_fraction < 1.0 else ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = _sequence_name(vendor, role, contrast.echo_train_length if contrast else 1)
        ds.AngioFlag = "N"
        ds.RepetitionTime = contrast.repetition_time_ms if contrast else 7.0
        ds.EchoTime = contrast.echo_time_ms if contrast else 3.0
        ds.EchoTrainLength = contrast.echo_train_length if contrast else 1
        ds.EchoNumbers = 1
        ds.NumberOfAverages = nex
        ds.FlipAngle = 90.0
        ds.PixelBandwidth = 190.0
        rows, cols = img.shape
        pe_dir = "ROW" if protocol.phase_encode_axis == 1 else "COL"
        ds.InPlanePhaseEncodingDirection = pe_dir
        n_pe = int(acq.acquired_phase_encode_mask(img.shape[protocol.phase_encode_axis], protocol).sum())
        n_ro = int(round(img.shape[1 - protocol.phase_encode_axis] * protocol.readout_fraction))
        ds.AcquisitionMatrix = [n_ro, 0, 0, n_pe] if pe_dir == "ROW" else [0, n_ro, n_pe, 0]
        ds.PercentSampling = 100.0
        ds.PercentPhaseFieldOfView = 100.0
        ds.NumberOfPhaseEncodingSteps = n_pe
        ds.ReceiveCoilName = {"philips": "dS HeadNeckSpine", "siemens": "HE1-4;NE1,2;SP1", "ge": "HNS Neck"}[vendor]
        ds.TransmitCoilName = "B"
        if contrast is not None and contrast.contrast_enhanced:
            ds.ContrastBolusAgent = "Gadobutrol (Gadovist 1.0 mmol/mL)"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 7.5
            ds.ContrastBolusIngredient = "GADOLINIUM"
            ds.ContrastBolusIngredientConcentration = 604.72
            ds.ContrastBolusStartTime = (series_dt - timedelta(minutes=2)).strftime("%H%M%S")
        ds.PixelData = np.ascontiguousarray(img.astype(np.uint16)).tobytes()
        pydicom.dcmwrite(out_dir / f"IM{i + 1:04d}.dcm", ds, enforce_file_format=True)


def _localizer(patient: PhantomPatient) -> tuple[list[PlaneGeometry], list[np.ndarray]]:
    """A three-plane survey: one sagittal, one coronal, one axial 256x256 image."""
    sag = sagittal_geometry(n_slices=1, matrix=256, fov_mm=250.0, thickness=8.0)[0]
    ax = axial_geometry(n_slices=1, matrix=256, fov_mm=250.0, thickness=8.0)[0]
    sp = 250.0 / 256
    cor = PlaneGeometry(np.array([-125.0 + sp / 2, 20.0, 125.0 - sp / 2]), np.array([1.0, 0, 0]),
                        np.array([0, 0, -1.0]), (256, 256), (sp, sp), 8.0)
    planes = [sag, cor, ax]
    images = []
    for p in planes:
        img = contrast_image(patient, render_plane(patient, p, through=1), CONTRASTS["T1"], p)
        images.append(np.clip(img / max(float(img.max()), 1e-6) * 1000.0, 0, 4095))
    return planes, images


def write_study(out: Path, *, protocol: str, acquisition: str, seed: int, vendor: Vendor = "philips",
                motion: str = "none", motion_series: str = "ce", save_truth: bool = False,
                sagittal_slices: int = 13, axial_slices: int = 24,
                through_plane: bool = False) -> list[SeriesRecord]:
    """Render, acquire and write one study; returns a record per series written.

    Args:
        out: folder; each series goes into its own sub-folder.
        protocol: ``"hivd"`` or ``"myelopathy"``.
        acquisition: ``"conventional"`` or ``"accelerated"`` (:data:`acq.DEFAULT_ACCELERATED`,
            half the scan time).
        seed: the phantom patient (anatomy) and the noise; the same seed gives the same
            patient for both acquisitions.
        motion: ``"none"``, ``"mild"`` or ``"severe"``: rigid motion and swallowing.
        motion_series: ``"ce"`` (only the contrast-enhanced T1, where the study saw it) or
            ``"all"``.
        save_truth: also write ``truth.npz`` (reference images in stored units, labels).
        through_plane: rigid motion in 3-D, slices moving along their normal too.
    """
    if protocol not in PROTOCOL_ROLES:
        raise ValueError(f"unknown protocol {protocol!r}")
    if acquisition not in ("conventional", "accelerated"):
        raise ValueError(f"unknown acquisition {acquisition!r}")
    if vendor not in _DESCRIPTIONS:
        raise ValueError(f"unknown vendor {vendor!r}")
    if motion not in acq.SEVERITY_AMPLITUDE_MM:
        raise ValueError(f"unknown motion {motion!r}")
    out = Path(out)
    patient = PhantomPatient.from_seed(seed, protocol=protocol)
    study_uid = _uid("study", seed, protocol, acquisition, vendor)
    frame_uid = _uid("frame", seed, protocol, acquisition, vendor)
    study_dt = datetime(2026, 3, 2, 8, 0, 0) + timedelta(days=seed % 300, minutes=7 * (seed % 50))
    base = _base_dataset(vendor, patient, study_uid, study_dt, accession=f"A{seed:07d}")
    records: list[SeriesRecord] = []
    truth: dict[str, np.ndarray] = {}

    loc_planes, loc_images = _localizer(patient)
    loc_uid = _uid("series", study_uid, "LOCALIZER")
    _write_series(out / "001_localizer", base, vendor=vendor, role="LOCALIZER",
                  description=_DESCRIPTIONS[vendor]["LOCALIZER"], series_uid=loc_uid, frame_uid=frame_uid,
                  series_number=101, planes=loc_planes, images=loc_images, series_dt=study_dt,
                  contrast_key=None, protocol=acq.CONVENTIONAL, nex=1.0,
                  image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"] if vendor != "philips" else ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"])

    geometries = {"sagittal": sagittal_geometry(n_slices=sagittal_slices),
                  "axial": axial_geometry(n_slices=axial_slices)}
    rendered_cache: dict[str, list] = {}
    offset_renders: dict = {}  # through-plane motion: displaced planes, shared by the roles
    for k, role in enumerate(PROTOCOL_ROLES[protocol]):
        plane_kind = "axial" if role.startswith("AX") else "sagittal"
        planes = geometries[plane_kind]
        if plane_kind not in rendered_cache:
            rendered_cache[plane_kind] = [render_plane(patient, p) for p in planes]
        rendered = rendered_cache[plane_kind]
        series_motion = motion if (motion_series == "all" or role == "SAG_CE_T1") else "none"
        acquired_series = simulate_series(patient, role, planes, rendered, acquisition=acquisition, seed=seed,
                                          motion=series_motion, through_plane=through_plane,
                                          offset_renders=offset_renders)
        images, refs, proto = acquired_series.images, acquired_series.references, acquired_series.protocol
        contrast_key = ROLE_CONTRAST[role]
        conv = acq.CONVENTIONAL.with_phase_encode_axis(proto.phase_encode_axis)
        series_uid = _uid("series", study_uid, role)
        series_dt = study_dt + timedelta(minutes=3 + 4 * k)
        description = _DESCRIPTIONS[vendor][role]
        nex = 3.0 if acquisition == "conventional" else 2.0
        _write_series(out / f"{ROLE_SERIES_NUMBER[role]:03d}_{role.lower()}", base, vendor=vendor, role=role,
                      description=description, series_uid=series_uid, frame_uid=frame_uid,
                      series_number=ROLE_SERIES_NUMBER[role], planes=planes, images=images,
                      series_dt=series_dt, contrast_key=contrast_key, protocol=proto, nex=nex,
                      image_type=_image_type(vendor, role))
        records.append(SeriesRecord(role, description, series_uid, ROLE_SERIES_NUMBER[role], len(planes),
                                    planes[0].shape[0], planes[0].shape[1], ROLE_PHASE_ENCODE[role],
                                    series_motion, round(proto.scan_time_ratio(conv), 4),
                                    round(acquired_series.noise_sigma, 3)))
        if save_truth:
            truth[f"{role}_reference"] = refs
            truth[f"{role}_label"] = np.stack([r.label for r in rendered])
            truth[f"{role}_level"] = np.stack([r.level for r in rendered])
    if save_truth:
        np.savez_compressed(out / "truth.npz", **truth)
    (out / "study.json").write_text(json.dumps(
        {"protocol": protocol, "acquisition": acquisition, "seed": seed, "vendor": vendor, "motion": motion,
         "through_plane_motion": through_plane,
         "study_instance_uid": study_uid, "series": [asdict(r) for r in records]}, indent=2))
    return records


@dataclass
class SimulatedSeries:
    """One acquired series in stored units: ``images`` ``(slices, rows, cols)`` rounded
    and clipped to 12 bits, ``references`` the noiseless conventional images (float32),
    ``noise_sigma`` the k-space noise SD in stored units. ``motion_free`` (only when asked
    for): the same acquisition, same noise, with the patient still in the position of the
    k-space centre; ``images - motion_free`` is the motion artifact."""

    images: np.ndarray
    references: np.ndarray
    protocol: acq.AcquisitionProtocol
    noise_sigma: float
    motion_free: np.ndarray | None = None


def simulate_series(patient: PhantomPatient, role: str, planes: list[PlaneGeometry], rendered: list,
                    *, acquisition: str, seed: int, motion: str = "none", motion_kind: str = "both",
                    protocol: acq.AcquisitionProtocol | None = None,
                    with_motion_free: bool = False, through_plane: bool = False,
                    offset_renders: dict | None = None) -> SimulatedSeries:
    """Acquire one series of a role over rendered planes (conventional or accelerated).

    Noise is seeded by ``(seed, role, slice, acquisition)``; Dixon in-phase and water
    images share noise and motion, as they come from one acquisition. ``protocol``
    overrides the accelerated protocol (its phase-encode axis is set from the role).
    ``through_plane``: rigid motion in 3-D, the slices moving along their normal too (each
    displaced slice rendered again from the patient); off, the draws are those of before.
    ``offset_renders``: a cache for those renders, shared across the roles of one patient.
    """
    pe_axis = 1 if ROLE_PHASE_ENCODE[role] == "ROW" else 0
    conv = acq.CONVENTIONAL.with_phase_encode_axis(pe_axis)
    if acquisition == "conventional":
        proto = conv
    else:
        proto = (protocol or acq.DEFAULT_ACCELERATED).with_phase_encode_axis(pe_axis)
    contrast = CONTRASTS[ROLE_CONTRAST[role]]
    acq_key = "DIXON" if "DIXON" in role else role
    objects = [contrast_image(patient, r, contrast, p) for r, p in zip(rendered, planes)]
    fg = np.concatenate([o[o > 0.05 * o.max()] for o in objects])
    sigma = float(np.median(fg)) / ROLE_SNR[role]
    trajectory = None
    if motion != "none":
        # One motion time course per series: 2-D multi-slice TSE acquires every slice's
        # k-space shot by shot in the same TRs, so all slices see the same movements.
        trajectory = acq.random_motion_trajectory(
            np.random.default_rng([seed, hash_role(acq_key), 99]), motion, planes[0].spacing[0],
            kind=motion_kind, swallow_weight=np.zeros(planes[0].shape), through_plane=through_plane)
    refs, acquired, still = [], [], []
    for i, (obj, plane, rend) in enumerate(zip(objects, planes, rendered)):
        rng_key = [seed, hash_role(acq_key), i, 0 if acquisition == "conventional" else 1]
        rng = np.random.default_rng(rng_key)
        phase = acq.smooth_background_phase(obj.shape, np.random.default_rng([seed, i, 7]))
        slice_motion = None
        if trajectory is not None:
            swallowing = motion_kind != "rigid"
            slice_motion = replace(
                trajectory,
                swallow_weight=swallowing_weight(patient, plane) if swallowing else None,
                swallow_fill=swallowing_fill(patient, rend, contrast, plane) if swallowing else None)
        at_offset = _object_at_offset(patient, plane, contrast, offset_renders) if through_plane else None
        refs.append(acq.band_limited_truth(obj * np.exp(1j * phase), conv))
        acquired.append(acq.simulate_acquisition(obj, proto, sigma, rng, phase=phase, motion=slice_motion,
                                                 object_at_offset=at_offset))
        if with_motion_free:
            frozen = None if slice_motion is None else slice_motion.frozen_at_centre(
                obj.shape[pe_axis], acq.acquired_phase_encode_mask(obj.shape[pe_axis], proto))
            still.append(acq.simulate_acquisition(obj, proto, sigma, np.random.default_rng(rng_key), phase=phase,
                                                  motion=frozen, object_at_offset=at_offset))
    # One scale per contrast from the noiseless reference, shared by both acquisitions.
    scale = 2800.0 / max(float(np.percentile(np.stack(refs), 99.9)), 1e-9)
    images = np.clip(np.round(np.stack(acquired) * scale), 0, 4095)
    motion_free = np.clip(np.round(np.stack(still) * scale), 0, 4095) if with_motion_free else None
    return SimulatedSeries(images, (np.stack(refs) * scale).astype(np.float32), proto, sigma * scale, motion_free)


#: Through-plane offsets are rendered on this grid (mm) and interpolated linearly between:
#: a drift visits a new offset every shot, and a render costs about 0.4 s per 512x512 plane.
THROUGH_PLANE_GRID_MM = 1.0


def _object_at_offset(patient: PhantomPatient, plane: PlaneGeometry, contrast: Contrast,
                      renders: dict | None = None):
    """The slice's clean object with the plane moved so many mm along its normal, rendered
    from the patient on a grid of offsets (:data:`THROUGH_PLANE_GRID_MM`) and interpolated
    linearly between them. ``renders``: a cache shared by the roles of one patient; it keeps
    every contrast's object of a displaced plane (about 1 MB each), not the rendering (25 MB)."""
    renders = {} if renders is None else renders

    def object_at_step(step: int) -> np.ndarray:
        key = (tuple(np.round(np.asarray(plane.origin, dtype=np.float64), 4)),
               tuple(np.round(plane.normal, 6)), plane.shape, step)
        if key not in renders:
            moved = replace(plane, origin=np.asarray(plane.origin, dtype=np.float64)
                            + step * THROUGH_PLANE_GRID_MM * plane.normal)
            rendered = render_plane(patient, moved)
            renders[key] = {name: contrast_image(patient, rendered, c, moved).astype(np.float32)
                            for name, c in CONTRASTS.items()}
        return renders[key][contrast.name]

    def at(mm: float) -> np.ndarray:
        lo = int(np.floor(mm / THROUGH_PLANE_GRID_MM))
        w = mm / THROUGH_PLANE_GRID_MM - lo
        out = (1.0 - w) * object_at_step(lo)
        return out + w * object_at_step(lo + 1) if w > 1e-6 else out

    return at


def hash_role(role: str) -> int:
    """Stable small integer for a role name (Python's hash() is salted per process)."""
    return int.from_bytes(role.encode()[:8].ljust(8, b"\0"), "little") % (2**31)
