"""What crosses operator boundaries: the product's identity, port names, the data handed
from one operator to the next, the typed errors and the exit codes they map to.

Plain Python (no SDK, no torch): the Orthanc trigger, the worker and the evaluation code
import it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import generate_uid

if TYPE_CHECKING:  # type hints only
    from qc.landmarks import VertebralROIs

# --- identity ------------------------------------------------------------------------------
DISTRIBUTION = "cervical-dl-enhance"
#: Written into ContributingEquipmentSequence, DerivationDescription and the SR of every
#: object we create; series carrying it are never processed again.
SOFTWARE_NAME = "CervicalDLEnhance"
MANUFACTURER = "Cervical DL Enhance project"


def _installed_version() -> str:
    # One source: app.yaml's application.version, read into the package metadata by
    # pyproject.toml (hatchling regex source) when the project is installed.
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(f"{DISTRIBUTION} is not installed: run `make setup` (pip install -e .)") from exc


SOFTWARE_VERSION = _installed_version()


def derived_uid(*parts: str) -> str:
    """Deterministic UID from source UIDs and the model version: a rerun replaces."""
    return generate_uid(entropy_srcs=[SOFTWARE_NAME, *parts])


# --- output layout -------------------------------------------------------------------------
DERIVED_FOLDER = "derived"
QC_JSON = "qc.json"
QC_FOLDER = "qc"
SUMMARY_FILE = "run_summary.json"
#: What a run writes into the output folder besides run_summary.json (removed on failure).
RESULTS = (DERIVED_FOLDER, QC_FOLDER, QC_JSON)


# --- ports (operator input / output names) --------------------------------------------------
class Ports:
    """Port names: ``compose()`` and each operator's ``setup()`` use these constants."""

    DICOM_STUDY_LIST = "dicom_study_list"  # the SDK loader's output name
    STUDY_SELECTED_SERIES = "study_selected_series_list"
    SERIES_REPORTS = "series_reports"
    ENHANCED_SERIES = "enhanced_series"
    WRITTEN_SERIES = "written_series"
    QC_RESULTS = "qc_results"


# --- exit codes ----------------------------------------------------------------------------
class ExitCode:
    """``python -m app`` exit codes (README "Exit codes"; the worker and the k8s job read them)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2          # bad arguments, missing input or model path, unusable setting
    NO_DICOM = 3       # empty folder, only non-DICOM or unreadable files
    NOTHING_TO_DO = 4  # DICOM found, but no series to enhance
    MODEL = 5          # model files missing, corrupt (checksum) or not loadable
    STORAGE = 6        # output storage full, quota, read-only or not permitted

    NAMES = {0: "done", 1: "internal error", 2: "usage error", 3: "no DICOM", 4: "nothing to enhance",
             5: "model error", 6: "output not writable"}
    #: The input has nothing for us: the worker marks the job ``skipped``, never retries.
    SKIPPED = (NO_DICOM, NOTHING_TO_DO)


# --- typed errors --------------------------------------------------------------------------
class ConfigurationError(ValueError):
    """A setting of the application (environment or arguments) has an unusable value (exit 2)."""


class NoDicomError(RuntimeError):
    """The input folder holds no readable DICOM study (exit 3)."""


class NoEligibleSeriesError(RuntimeError):
    """The input held DICOM, but no series the product enhances (exit 4); ``reports`` says
    why for each series (they go into run_summary.json)."""

    def __init__(self, reason: str, reports: "list[SeriesReport] | tuple" = ()) -> None:
        super().__init__(reason)
        self.reports = list(reports)


class ModelError(RuntimeError):
    """The model files are missing, do not match their checksum, or cannot be loaded (exit 5)."""


# --- data between operators ----------------------------------------------------------------
@dataclass(frozen=True)
class SeriesReport:
    """One line of the run summary per series found in the input (no patient data)."""

    series_instance_uid: str
    series_number: int | None
    series_description: str
    n_instances: int
    role: str | None
    status: str  # "selected" | "skipped"
    reason: str


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: str
    sha256: str


@dataclass
class EnhancedSeries:
    """A source series (datasets sorted along the slice normal) and its enhanced pixels.

    ``source_pixels`` (decoded once, for the quality check) and ``pixels`` are
    ``(slices, rows, columns)`` in the source's stored-value dtype.
    """

    role: str
    datasets: list
    source_pixels: np.ndarray
    pixels: np.ndarray
    seconds: float
    model: ModelDescription
    device: str = "cpu"
    #: the strength applied (``high (1.00)``) and, per slice, the share of the network's
    #: change the do-no-harm guard withheld (0..1), see models/guard.py
    strength: str = ""
    held_back: list[float] = field(default_factory=list)


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
    strength: str = ""
    held_back: list[float] = field(default_factory=list)

    @property
    def held_back_percent(self) -> float | None:
        """Mean share (%) of the network's change the guard withheld over the slices."""
        return round(100.0 * float(np.mean(self.held_back)), 1) if self.held_back else None


#: A series (or slice) is flagged for motion at this motion score (both thresholds map to it).
MOTION_FLAG_SCORE = 0.5


@dataclass(frozen=True)
class ImageQuality:
    """Measures of one series (original or DL). ``None`` = not measurable."""

    snr_foreground: float | None
    snr: float | None  # paper's SNR: C3-C4 disc / SD(background), else foreground
    cnr: float | None  # |disc - C3 marrow| / SD(background), sagittal series with located ROIs
    noise_sd: float | None
    ghost: float | None  # raw ghost measure of the series (75th percentile of slices)
    ghost_score: float | None  # the ghost measure alone as a 0-1 score (0.5 = its threshold)
    detector: float | None  # motion detector's probability for the series (75th percentile)
    motion_score: float | None  # 0-1, 0.5 = flag threshold
    slice_motion_scores: list[float | None]  # per slice, in the series' order along the slice normal
    # per slice, the raw measures behind those scores (for evaluation and calibration): the ghost
    # measure, the detector's probability, and the share of the image the body covers (0-1)
    slice_ghosts: list[float | None] = field(default_factory=list)
    slice_detector: list[float | None] = field(default_factory=list)
    slice_body_fraction: list[float] = field(default_factory=list)

    @property
    def flagged_slices(self) -> list[int]:
        """0-based indices of the slices whose own motion score reaches the flag threshold."""
        return [i for i, v in enumerate(self.slice_motion_scores) if v is not None and v >= MOTION_FLAG_SCORE]

    @property
    def worst_slice(self) -> int | None:
        """0-based index of the slice with the highest motion score (None: none measurable)."""
        scored = [(v, i) for i, v in enumerate(self.slice_motion_scores) if v is not None]
        return max(scored)[1] if scored else None


@dataclass
class SeriesQC:
    role: str
    source_series_instance_uid: str
    series_number: int | None
    phase_encode_direction: str
    original: ImageQuality
    dl: ImageQuality
    motion_flag: bool
    dl_accentuated: bool
    notes: list[str] = field(default_factory=list)
    roi_confidence: float | None = None  # C3 / C3-C4 localisation confidence (0-1), None when not located
    rois: tuple[int, "VertebralROIs"] | None = None  # (slice index, masks) behind snr/cnr, for the report
    # per slice (the series' order along the slice normal): the number a viewer shows for its image,
    # InstanceNumber (a multi-frame source's frame number), or the 1-based position when it has none
    image_numbers: list[int] = field(default_factory=list)
    # boolean (rows, columns) mask of the background air on the ROI slice (its noise SD is the SNR's
    # denominator, measured in the same region on every slice); None when no ROIs were located
    roi_background: "np.ndarray | None" = None

    def image_number(self, index: int) -> int:
        """What a reader calls slice ``index`` (0-based, order along the normal)."""
        return self.image_numbers[index] if index < len(self.image_numbers) else index + 1
