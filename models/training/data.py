"""On-the-fly training pairs (accelerated input, conventional reference ``G``).

Clean objects come ONLY from these sources (DESIGN.md section 4):
  * mricron ``ch2`` / ``ch2bet`` (1 mm T1 head), nilearn's bundled MNI152 2009a T1
    template, ITK's ``KmeansTest_T1UCharRaw`` (2-D slices along all three axes);
  * scikit-image's bundled natural images (offline ones only, never ``data.brain()``);
  * ITK's single real MR slices (``ITK_REAL_SLICES``: a real T1 mid-sagittal head with the
    texture of one acquisition, BrainWeb T1 and PD slices) and its complex BrainWeb slice
    (``ITK_COMPLEX_SLICE``: a real phase for the k-space simulation), source ``real``;
  * the synthetic cervical-spine phantom ``simulation.phantom.training_objects``
    (guarded import: skipped with a warning while it does not exist).
No other real image may be used to train, tune or select the model (dipy's ``aniso_vox``,
also training-allowed, is kept out of training: it is the held-out selection source).

Each object is placed into a display matrix, then acquired with the k-space simulator:
the input is ``simulate_acquisition(obj, accelerated, sigma, rng, phase=phase)`` and the
target ``G = band_limited_truth(obj * exp(i phase), CONVENTIONAL)`` (same phase-encode
axis). Simulation runs on the whole image; patches are cropped afterwards. Both are
divided by the same robust scale (:func:`models.normalization.robust_scale` of the whole
input image, slightly jittered in training to mimic per-series scaling).
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage

from models.normalization import noise_level, robust_scale, with_noise_level
from simulation.parallel_imaging import coil_sensitivities, simulate_sense_acquisition
from simulation.acquisition import (
    CONVENTIONAL,
    DEFAULT_ACCELERATED,
    AcquisitionProtocol,
    band_limited_truth,
    simulate_acquisition,
    smooth_background_phase,
)

__all__ = [
    "DataConfig",
    "ObjectSampler",
    "PairStream",
    "simulate_pair",
    "validation_set",
    "volume_paths",
    "natural_images",
    "real_slices",
    "phantom_available",
]

MRICRON_DIR = Path("/usr/share/mricron/templates")
ITK_KMEANS = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
#: Single MR slices from ITK's examples (training-allowed, DESIGN.md section 4): a real T1
#: mid-sagittal head with the texture of one acquisition, and BrainWeb T1 and PD slices.
#: MNI152 2009a T1, shipped inside nilearn's wheel.
MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: A folder with copies of every file source above, flat (``python -m
#: models.training.device_bundle``), for a machine without the apt packages and nilearn (the
#: GPU machine); unset: the installed paths.
TRAINING_DATA_ENV = "CERVICAL_TRAINING_DATA"
ITK_REAL_SLICES = ("BrainMidSagittalSlice.png", "BrainT1Slice.png", "BrainProtonDensitySlice.png")
#: ITK's complex BrainWeb slice (MetaImage, two float channels: real and imaginary).
ITK_COMPLEX_SLICE = "itkBrainSliceComplex.mha"
#: scikit-image images bundled with the wheel (tested to load offline). ``brain`` is NOT
#: bundled (it downloads) and must never be used.
SKIMAGE_NAMES = ("camera", "astronaut", "brick", "coins", "moon", "text", "grass", "gravel",
                 "page", "rocket", "coffee", "chelsea", "horse", "shepp_logan_phantom")


@dataclass
class DataConfig:
    patch_size: int = 128
    matrix_sizes: tuple[int, ...] = (256, 320, 384, 448, 512)
    phase_encode_factor: tuple[float, float] = (0.5, 1.0)
    averages_ratio: tuple[float, float] = (0.5, 1.0)
    partial_fourier_prob: float = 0.25
    partial_fourier: tuple[float, float] = (0.6, 0.9)
    snr: tuple[float, float] = (6.0, 80.0)          # log-uniform
    max_phase_rad: float = 1.5
    rotation_deg: float = 10.0
    rotation_prob: float = 0.5
    scale_jitter: tuple[float, float] = (0.85, 1.2)  # multiplies the robust scale
    source_weights: dict[str, float] = field(
        default_factory=lambda: {"volume": 0.5, "natural": 0.2, "phantom": 0.3})
    pool_size: int = 24
    refresh_per_batch: int = 2
    phantom_bank: int = 24
    phantom_refresh_every: int = 150  # batches between two new phantom renders
    #: share of pairs acquired with R = 2 SENSE (g-factor noise) instead of the protocol draw
    sense_prob: float = 0.0
    sense_coils: tuple[int, int] = (4, 12)
    #: share of objects multiplied by a smooth receive-coil shading (down to ``1 - shading_max``)
    shading_prob: float = 0.0
    shading_max: float = 0.5
    #: share of objects made coarser than their display matrix (``interpolated_from_coarser``:
    #: sampled ``low_resolution_factor`` times coarser, cubic-interpolated back)
    low_resolution_prob: float = 0.0
    low_resolution_factor: tuple[float, float] = (1.5, 3.0)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        d = dict(d)
        for k in ("matrix_sizes", "phase_encode_factor", "averages_ratio", "partial_fourier",
                  "snr", "scale_jitter", "sense_coils", "low_resolution_factor"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------- sources

def _bundle_dir() -> Path | None:
    value = os.environ.get(TRAINING_DATA_ENV, "").strip()
    return Path(value) if value else None


def _itk_dir() -> Path:
    return _bundle_dir() or ITK_DATA


def itk_kmeans_path() -> Path:
    """ITK's Kmeans T1 volume, from the bundle when ``CERVICAL_TRAINING_DATA`` names one."""
    bundle = _bundle_dir()
    return bundle / ITK_KMEANS.name if bundle is not None else ITK_KMEANS


def volume_paths() -> list[Path]:
    """The real MR volumes allowed for training (those present on this machine, or in the
    folder named by ``CERVICAL_TRAINING_DATA``)."""
    bundle = _bundle_dir()
    if bundle is not None:
        paths = [bundle / n for n in ("ch2.nii.gz", "ch2bet.nii.gz", ITK_KMEANS.name, MNI152_FILE)]
    else:
        paths = [MRICRON_DIR / "ch2.nii.gz", MRICRON_DIR / "ch2bet.nii.gz", ITK_KMEANS]
        try:
            import nilearn

            paths.append(Path(nilearn.__file__).parent / "datasets" / "data" / MNI152_FILE)
        except ImportError:
            pass
    found = [p for p in paths if p.exists()]
    for p in paths:
        if not p.exists():
            warnings.warn(f"training volume missing, skipped: {p}", stacklevel=2)
    return found


def _load_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(str(path))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol = np.squeeze(vol)
    vol = np.clip(vol, 0, None)
    hi = float(np.percentile(vol[vol > 0], 99.9)) if np.any(vol > 0) else 1.0
    vol /= max(hi, 1e-6)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return vol, zooms  # type: ignore[return-value]


def real_slices() -> list[np.ndarray]:
    """ITK's single MR slices (``ITK_REAL_SLICES``), float64 in [0, 1]; those missing are left out."""
    from skimage.io import imread

    out = []
    for name in ITK_REAL_SLICES:
        if (_itk_dir() / name).exists():
            im = imread(_itk_dir() / name, as_gray=True).astype(np.float64)
            out.append(im / max(float(im.max()), 1e-9))
    return out


def read_complex_slice(path: Path) -> np.ndarray:
    """A 2-channel float MetaImage (``.mha``, uncompressed, little-endian) as complex128 (rows, cols)."""
    raw = path.read_bytes()
    marker = b"ElementDataFile = LOCAL\n"
    header = raw[: raw.index(marker)].decode("ascii")
    fields = dict(line.split(" = ", 1) for line in header.splitlines() if " = " in line)
    if (fields.get("ElementNumberOfChannels") != "2" or fields.get("ElementType") != "MET_FLOAT"
            or fields.get("CompressedData", "False") != "False" or fields.get("BinaryDataByteOrderMSB") != "False"):
        raise ValueError(f"{path.name}: not an uncompressed little-endian 2-channel float image")
    cols, rows = (int(v) for v in fields["DimSize"].split())
    data = np.frombuffer(raw[raw.index(marker) + len(marker):], dtype="<f4", count=rows * cols * 2)
    data = data.reshape(rows, cols, 2).astype(np.float64)
    return data[..., 0] + 1j * data[..., 1]


def real_training_slices() -> list[np.ndarray]:
    """Source ``real``: ITK's real slices (float64) and its complex slice (complex128, real phase),
    magnitude scaled to a maximum of 1; those missing are left out."""
    out: list[np.ndarray] = list(real_slices())
    if (_itk_dir() / ITK_COMPLEX_SLICE).exists():
        z = read_complex_slice(_itk_dir() / ITK_COMPLEX_SLICE)
        out.append(z / max(float(np.abs(z).max()), 1e-9))
    return out


def natural_images() -> list[np.ndarray]:
    """Gray float32 [0, 1] images bundled with scikit-image (offline only)."""
    import skimage.data as skd
    from skimage.color import rgb2gray

    out = []
    for name in SKIMAGE_NAMES:
        try:
            im = np.asarray(getattr(skd, name)())
        except Exception as exc:  # pragma: no cover - depends on the install
            warnings.warn(f"skimage.data.{name} unavailable, skipped ({exc})", stacklevel=2)
            continue
        if im.ndim == 3:
            im = rgb2gray(im[..., :3])
        im = im.astype(np.float32)
        if im.max() > 1.5:
            im /= 255.0
        if name == "horse":  # binary silhouette: soften, make it an object on background
            im = ndimage.gaussian_filter(1.0 - im, 1.0)
        out.append(np.clip(im, 0, 1))
    return out


def _phantom_fn() -> Callable[[np.random.Generator, int], list[np.ndarray]] | None:
    try:
        from simulation.phantom import training_objects  # type: ignore[attr-defined]
    except (ImportError, AttributeError) as exc:
        warnings.warn(f"phantom source skipped: simulation.phantom.training_objects "
                      f"unavailable ({exc.__class__.__name__}: {exc})", stacklevel=2)
        return None
    return training_objects


def phantom_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _phantom_fn() is not None


# --------------------------------------------------------------------------- objects

class ObjectSampler:
    """Draws clean 2-D objects (float64, >= 0, roughly 0..1) at a display matrix."""

    def __init__(self, cfg: DataConfig, use_phantom: bool = True, seed: int = 0) -> None:
        self.cfg = cfg
        self.volumes = [_load_volume(p) for p in volume_paths()]
        self.naturals = natural_images()
        self.reals = real_training_slices() if cfg.source_weights.get("real", 0) > 0 else []
        self.phantom = _phantom_fn() if use_phantom else None
        self._phantom_rng = np.random.default_rng([seed, 7919])
        self.phantom_bank: list[np.ndarray] = []
        if self.phantom is not None:
            # Rendering a phantom object takes seconds: draw a bank once, reuse it with
            # augmentation, and refresh it slowly (see refresh_phantom).
            for _ in range(cfg.phantom_bank):
                if not self.refresh_phantom():
                    break
        weights = dict(cfg.source_weights)
        if not self.volumes:
            weights.pop("volume", None)
        if not self.naturals:
            weights.pop("natural", None)
        if not self.reals:
            weights.pop("real", None)
        if not self.phantom_bank:
            weights.pop("phantom", None)
        if not weights:
            raise RuntimeError("no training source available")
        self.sources = list(weights)
        w = np.array([weights[s] for s in self.sources], dtype=np.float64)
        self.source_p = w / w.sum()

    def refresh_phantom(self) -> bool:
        """Render one new phantom object into the bank (replacing the oldest when full)."""
        if self.phantom is None:
            return False
        try:
            obj = np.asarray(self.phantom(self._phantom_rng, 1)[0], dtype=np.float64)
        except Exception as exc:  # the phantom is someone else's code: never crash training
            warnings.warn(f"phantom source failed, skipped ({exc.__class__.__name__}: {exc})",
                          stacklevel=2)
            self.phantom = None
            return False
        self.phantom_bank.append(obj)
        if len(self.phantom_bank) > self.cfg.phantom_bank:
            self.phantom_bank.pop(0)
        return True

    # -- per-source raw 2-D images
    def _volume_slice(self, rng: np.random.Generator) -> np.ndarray:
        vol, zooms = self.volumes[int(rng.integers(len(self.volumes)))]
        axis = int(rng.integers(3))
        prof = vol.max(axis=tuple(a for a in range(3) if a != axis))
        nz = np.nonzero(prof > 0.05)[0]
        lo, hi = (nz[0], nz[-1]) if nz.size else (0, vol.shape[axis] - 1)
        span = hi - lo
        idx = int(rng.integers(lo + int(0.1 * span), max(lo + int(0.9 * span), lo + int(0.1 * span) + 1)))
        sl = np.take(vol, idx, axis=axis).astype(np.float64)
        inplane = [z for a, z in enumerate(zooms) if a != axis]
        if abs(inplane[0] - inplane[1]) > 1e-3:  # anisotropic voxels: to square pixels
            m = min(inplane)
            sl = ndimage.zoom(sl, (inplane[0] / m, inplane[1] / m), order=1)
        sl = np.rot90(sl, int(rng.integers(4)))
        # contrast variety: gamma, and sometimes an inverted (T2-like) contrast in the head
        sl = np.clip(sl, 0, None) ** rng.uniform(0.6, 1.6)
        if rng.random() < 0.25:
            mask = ndimage.binary_fill_holes(sl > 0.08)
            mask = ndimage.gaussian_filter(mask.astype(np.float64), 1.0)
            sl = mask * np.clip(1.05 - sl, 0, None) ** rng.uniform(0.8, 1.5)
        return sl

    def _natural(self, rng: np.random.Generator) -> np.ndarray:
        im = self.naturals[int(rng.integers(len(self.naturals)))].astype(np.float64)
        h, w = im.shape
        fh, fw = rng.uniform(0.5, 1.0, size=2)
        ch, cw = max(32, int(h * fh)), max(32, int(w * fw))
        r0 = int(rng.integers(0, h - ch + 1))
        c0 = int(rng.integers(0, w - cw + 1))
        im = im[r0 : r0 + ch, c0 : c0 + cw]
        im = im ** rng.uniform(0.7, 1.5)
        if rng.random() < 0.3:
            im = 1.0 - im
        if rng.random() < 0.5:  # MR-like: an object on a dark background
            rr = np.linspace(-1, 1, ch)[:, None] / rng.uniform(0.7, 1.0)
            cc = np.linspace(-1, 1, cw)[None, :] / rng.uniform(0.7, 1.0)
            ell = (rr**2 + cc**2 <= 1.0).astype(np.float64)
            im = im * ndimage.gaussian_filter(ell, 1.5)
        return im

    def _real(self, rng: np.random.Generator) -> np.ndarray:
        """A crop of one real slice, gamma on the magnitude (the phase of the complex one kept)."""
        im = self.reals[int(rng.integers(len(self.reals)))]
        h, w = im.shape
        fh, fw = rng.uniform(0.6, 1.0, size=2)
        ch, cw = max(48, int(h * fh)), max(48, int(w * fw))
        r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = np.rot90(im[r0 : r0 + ch, c0 : c0 + cw], int(rng.integers(4)))
        if rng.random() < 0.5:
            im = im[:, ::-1]
        mag = np.abs(im)
        return im * (np.clip(mag, 1e-9, None) ** (rng.uniform(0.7, 1.4) - 1.0))

    def _shading(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Smooth receive-coil shading in (1 - shading_max, 1]: a Gaussian fall-off from a
        random coil position outside or at the edge of the field of view."""
        rows = np.linspace(-1.0, 1.0, shape[0])[:, None]
        cols = np.linspace(-1.0, 1.0, shape[1])[None, :]
        angle = rng.uniform(0, 2 * np.pi)
        r0, c0 = 1.2 * np.sin(angle), 1.2 * np.cos(angle)
        width = rng.uniform(0.6, 1.5)
        field = np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * width**2))
        field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
        return 1.0 - rng.uniform(0.1, self.cfg.shading_max) * (1.0 - field)

    def _phantom(self, rng: np.random.Generator) -> np.ndarray:
        obj = self.phantom_bank[int(rng.integers(len(self.phantom_bank)))]
        obj = np.rot90(obj, int(rng.integers(4)))
        if rng.random() < 0.5:
            obj = obj[:, ::-1]
        return np.clip(obj, 0, None) ** rng.uniform(0.8, 1.25)

    # -- placement into a display matrix
    def _matrix(self, rng: np.random.Generator) -> tuple[int, int]:
        sizes = self.cfg.matrix_sizes
        rows = int(sizes[int(rng.integers(len(sizes)))])
        cols = rows if rng.random() < 0.7 else int(sizes[int(rng.integers(len(sizes)))])
        return rows, cols

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """One clean object at a display matrix and its source name. float64 (rows, cols),
        or complex128 for an object with a real phase (source ``real``)."""
        obj, source = self._sample_unshaded(rng)
        if self.cfg.low_resolution_prob > 0 and rng.random() < self.cfg.low_resolution_prob:
            obj = interpolated_from_coarser(obj, rng, self.cfg.low_resolution_factor)
        if self.cfg.shading_prob > 0 and rng.random() < self.cfg.shading_prob:
            obj = obj * self._shading(obj.shape, rng)
        return obj, source

    def _sample_unshaded(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        source = self.sources[int(rng.choice(len(self.sources), p=self.source_p))]
        if source == "phantom":
            obj = self._phantom(rng)
            # keep the phantom's own matrix (it is drawn at clinical geometry); mild zoom
            if rng.random() < 0.5:
                shape = obj.shape
                obj = ndimage.zoom(obj, rng.uniform(0.8, 1.25), order=1)
                obj = _place(obj, shape, rng)
            if rng.random() < self.cfg.rotation_prob:
                obj = ndimage.rotate(obj, rng.uniform(-1, 1) * self.cfg.rotation_deg,
                                     reshape=False, order=1)
            return _finish(obj, rng), source
        raw = {"volume": self._volume_slice, "natural": self._natural, "real": self._real}[source](rng)
        rows, cols = self._matrix(rng)
        fill = rng.uniform(0.6, 1.15)  # > 1: object larger than the field of view (cropped)
        zoom = fill * min(rows / raw.shape[0], cols / raw.shape[1])
        # real slices are upsampled cubically, as a scanner's interpolation (and the real-MR
        # evaluation's resampling) would; the others keep the linear zoom they were trained with
        obj = ndimage.zoom(raw, zoom, order=3 if source == "real" else 1)
        if rng.random() < self.cfg.rotation_prob:
            obj = ndimage.rotate(obj, rng.uniform(-1, 1) * self.cfg.rotation_deg,
                                 reshape=True, order=1)
        return _finish(_place(obj, (rows, cols), rng), rng), source


def interpolated_from_coarser(obj: np.ndarray, rng: np.random.Generator,
                              factor: tuple[float, float] = (1.5, 3.0)) -> np.ndarray:
    """``obj`` (rows, cols; float or complex) as anatomy resolved ``factor`` (drawn uniformly)
    times coarser than its display matrix: area-averaged down, cubic-interpolated back.

    Why: real series often carry less detail than their pixels (thick or coarse acquisitions
    shown at a finer matrix, every real source the product is judged on); in training the
    real and template slices are zoomed to the matrix and keep detail at the pixel scale at
    small matrices, where the network learned to keep pixel-scale "detail" and removed little
    noise (R = 2 SENSE at 128 px: body error 29 -> 24 against 14 for the conventional).
    The object is the truth here, so no noise is added.
    """
    f = float(rng.uniform(*factor))
    if np.iscomplexobj(obj):  # real phase kept: real and imaginary parts alike
        return _coarser(obj.real, f) + 1j * _coarser(obj.imag, f)
    return np.clip(_coarser(obj, f), 0, None)  # cubic overshoot below zero


def _coarser(image: np.ndarray, factor: float) -> np.ndarray:
    small = ndimage.zoom(ndimage.uniform_filter(image, size=max(1, int(round(factor)))), 1.0 / factor, order=1,
                         grid_mode=True, mode="grid-constant")
    return cubic_to_shape(small, image.shape)


def cubic_to_shape(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``small`` (rows, cols) cubic-interpolated to ``shape``, as a scanner interpolates a coarse
    acquisition to its display matrix (zoom's output is exactly ``shape``: it rounds
    ``small.shape * zoom``, which is ``shape`` itself)."""
    return ndimage.zoom(small, (shape[0] / small.shape[0], shape[1] / small.shape[1]), order=3,
                        grid_mode=True, mode="nearest")


def _place(obj: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Put ``obj`` into a zero matrix of ``shape`` at a random offset (cropping if larger)."""
    out = np.zeros(shape, dtype=np.complex128 if np.iscomplexobj(obj) else np.float64)
    h, w = obj.shape
    H, W = shape
    if h > H:
        r = int(rng.integers(0, h - H + 1)); obj = obj[r : r + H]; h = H
    if w > W:
        c = int(rng.integers(0, w - W + 1)); obj = obj[:, c : c + W]; w = W
    r0 = int(rng.integers(0, H - h + 1))
    c0 = int(rng.integers(0, W - w + 1))
    out[r0 : r0 + h, c0 : c0 + w] = obj
    return out


def _finish(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Non-negative magnitude (complex objects keep their phase) scaled to a random peak."""
    obj = np.nan_to_num(obj)
    obj = obj * (np.abs(obj) > 1e-6) if np.iscomplexobj(obj) else np.clip(obj, 0, None)
    hi = float(np.abs(obj).max())
    return obj / hi * rng.uniform(0.5, 1.0) if hi > 0 else obj


# --------------------------------------------------------------------------- simulation

def foreground_reference(obj: np.ndarray) -> float:
    """90th percentile of the object's foreground (pixels above 10 % of its maximum)."""
    fg = obj[obj > 0.1 * obj.max()] if obj.max() > 0 else obj.reshape(-1)
    return float(np.percentile(fg, 90)) if fg.size else 1.0


def simulate_pair(obj: np.ndarray, rng: np.random.Generator, cfg: DataConfig,
                  protocol: AcquisitionProtocol | None = None, snr: float | None = None,
                  jitter: bool = True, with_conventional: bool = False) -> dict:
    """Acquire ``obj`` with a random (or given) accelerated protocol; normalised pair.

    ``obj``: float (rows, cols) magnitude, or complex128 with its own phase (a smooth
    random phase is added to it). Without a given protocol, a share ``cfg.sense_prob`` of
    the pairs are R = 2 SENSE acquisitions (g-factor noise; ``protocol`` is then the full
    protocol whose every second line was acquired, ``sense`` True).

    Returns a dict with ``input``, ``target`` (and optionally ``conventional``) float32
    full images in normalised units, plus ``scale``, ``protocol``, ``sigma``, ``snr``, ``sense``
    and ``noise_level`` (:func:`models.normalization.noise_level` of the input).
    """
    axis = int(rng.integers(2))
    own_phase = np.angle(obj) if np.iscomplexobj(obj) else 0.0
    obj = np.abs(obj) if np.iscomplexobj(obj) else obj
    sense = (protocol is None and cfg.sense_prob > 0 and obj.shape[axis] % 2 == 0
             and rng.random() < cfg.sense_prob)
    if sense:
        protocol = CONVENTIONAL
    elif protocol is None:
        pf = 1.0
        if rng.random() < cfg.partial_fourier_prob:
            pf = rng.uniform(*cfg.partial_fourier)
        protocol = CONVENTIONAL.accelerated(
            phase_encode_factor=rng.uniform(*cfg.phase_encode_factor),
            averages_ratio=rng.uniform(*cfg.averages_ratio),
            partial_fourier_fraction=pf,
        )
    protocol = protocol.with_phase_encode_axis(axis)
    if snr is None:
        snr = float(np.exp(rng.uniform(np.log(cfg.snr[0]), np.log(cfg.snr[1]))))
    sigma = foreground_reference(obj) / snr
    phase = own_phase + smooth_background_phase(obj.shape, rng, max_radians=rng.uniform(0, cfg.max_phase_rad))
    conv_protocol = CONVENTIONAL.with_phase_encode_axis(axis)
    target = band_limited_truth(obj * np.exp(1j * phase), conv_protocol)
    if sense:
        coils = coil_sensitivities(obj.shape, int(rng.integers(cfg.sense_coils[0], cfg.sense_coils[1] + 1)),
                                   rng, width=rng.uniform(0.4, 0.7))
        inp = simulate_sense_acquisition(obj, protocol, sigma, rng, coils=coils, phase=phase)
    else:
        inp = simulate_acquisition(obj, protocol, sigma, rng, phase=phase)
    scale = robust_scale(inp)
    if jitter:
        scale *= rng.uniform(*cfg.scale_jitter)
    out = {
        "input": (inp / scale).astype(np.float32),
        "target": (target / scale).astype(np.float32),
        "scale": scale, "protocol": protocol, "sigma": sigma, "snr": snr, "sense": sense,
    }
    # what a noise-aware network is given: estimated on the whole image, as at inference
    out["noise_level"] = noise_level(out["input"])
    if with_conventional:
        conv = simulate_acquisition(obj, conv_protocol, sigma, rng, phase=phase)
        out["conventional"] = (conv / scale).astype(np.float32)
    return out


def _augment_patch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _crop(pair: dict, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x, y = pair["input"], pair["target"]
    H, W = x.shape
    if H < size or W < size:
        ph, pw = max(0, size - H), max(0, size - W)
        x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
        y = np.pad(y, ((0, ph), (0, pw)), mode="reflect")
        H, W = x.shape
    best = None
    for _ in range(6):  # prefer patches with some object in them
        r = int(rng.integers(0, H - size + 1))
        c = int(rng.integers(0, W - size + 1))
        ty = y[r : r + size, c : c + size]
        best = (r, c)
        if float(ty.mean()) > 0.05 or rng.random() < 0.1:
            break
    r, c = best  # type: ignore[misc]
    return x[r : r + size, c : c + size], y[r : r + size, c : c + size]


_WORKER: dict = {}


def _init_pair_worker(cfg: dict, use_phantom: bool, seed: int, indices) -> None:  # noqa: ANN001
    """A simulation worker: its own object sampler (loading the sources takes seconds), its
    phantom bank drawn from its own index, one numerical thread."""
    index = int(indices.get())
    data_cfg = DataConfig.from_dict(cfg)
    _WORKER.update(cfg=data_cfg, seed=seed, tasks=0,
                   sampler=ObjectSampler(data_cfg, use_phantom=use_phantom, seed=seed + 1 + index))


def _pair_task(task: int) -> dict:
    """Pair number ``task`` of a worker stream: its own generator from (seed, task)."""
    cfg: DataConfig = _WORKER["cfg"]
    _WORKER["tasks"] += 1
    # the serial stream renders a phantom every phantom_refresh_every batches; per pair alike
    every = cfg.phantom_refresh_every * max(1, cfg.refresh_per_batch)
    if cfg.phantom_refresh_every > 0 and _WORKER["tasks"] % every == 0:
        _WORKER["sampler"].refresh_phantom()
    rng = np.random.default_rng([_WORKER["seed"], 104729, task])
    obj, source = _WORKER["sampler"].sample(rng)
    pair = simulate_pair(obj, rng, cfg)
    pair["source"] = source
    return pair


class PairStream:
    """Infinite, seeded stream of training batches ``(inputs, targets)`` as float32
    arrays ``(B, 1, P, P)`` (inputs ``(B, 2, P, P)`` with ``noise_input``: each patch and its
    whole image's noise level).

    Keeps a pool of simulated full-image pairs and refreshes ``refresh_per_batch`` of them
    for each batch (simulation is the CPU bottleneck); patches are cropped from random
    pool entries with random flips and 90-degree rotations (applied to input and target
    alike, after the simulation).

    ``workers`` > 0 simulates in that many processes (for the GPU machine's 16 cores, where
    one process cannot keep the GPU busy): pair ``i`` is drawn from its own generator
    ``(seed, i)``, and each batch takes every pair that is ready (at least
    ``refresh_per_batch``), so a faster machine sees more fresh pairs. Phantom banks are
    per worker; which worker renders which pair depends on timing, so worker runs are not
    bit-reproducible (the serial stream, ``workers=0``, is).
    """

    def __init__(self, cfg: DataConfig, seed: int, use_phantom: bool = True, noise_input: bool = False,
                 workers: int = 0) -> None:
        self.cfg = cfg
        self.noise_input = bool(noise_input)
        self.rng = np.random.default_rng(seed)
        self.workers = max(0, int(workers))
        # With workers this process draws no objects: its sampler only names the sources (one
        # phantom render shows the phantom source works; the workers render their own banks).
        self.sampler = ObjectSampler(replace(cfg, phantom_bank=min(cfg.phantom_bank, 1)) if self.workers else cfg,
                                     use_phantom=use_phantom, seed=seed)
        self.pool: list[dict] = []
        self.source_counts: dict[str, int] = {}
        self.n_batches = 0
        self._procs = None
        self._pending: deque = deque()
        self._next_task = 0
        if self.workers:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # never fork a process that holds CUDA
            indices = ctx.Queue()
            for i in range(self.workers):
                indices.put(i)
            self._procs = ctx.Pool(self.workers, initializer=_init_pair_worker,
                                   initargs=(dict(cfg.__dict__), use_phantom, int(seed), indices))
            self._fill_pending()

    def _fill_pending(self) -> None:
        while len(self._pending) < 2 * self.workers:
            self._pending.append(self._procs.apply_async(_pair_task, (self._next_task,)))
            self._next_task += 1

    def _new_pair(self) -> dict:
        obj, source = self.sampler.sample(self.rng)
        self.source_counts[source] = self.source_counts.get(source, 0) + 1
        return simulate_pair(obj, self.rng, self.cfg)

    def _new_pairs(self, n: int) -> list[dict]:
        if self._procs is None:
            return [self._new_pair() for _ in range(n)]
        out: list[dict] = []
        while len(out) < n or (self._pending and self._pending[0].ready()):
            pair = self._pending.popleft().get()
            self._fill_pending()
            self.source_counts[pair["source"]] = self.source_counts.get(pair["source"], 0) + 1
            out.append(pair)
        return out

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        self.n_batches += 1
        if (self._procs is None and self.cfg.phantom_refresh_every > 0
                and self.n_batches % self.cfg.phantom_refresh_every == 0):
            self.sampler.refresh_phantom()
        if len(self.pool) < self.cfg.pool_size:
            self.pool.extend(self._new_pairs(self.cfg.pool_size - len(self.pool)))
        if self._procs is None:  # the serial stream's draws, in their order since stage 1
            for _ in range(self.cfg.refresh_per_batch):
                self.pool[int(self.rng.integers(len(self.pool)))] = self._new_pair()
        else:
            for pair in self._new_pairs(self.cfg.refresh_per_batch):
                self.pool[int(self.rng.integers(len(self.pool)))] = pair
        xs, ys, levels = [], [], []
        for _ in range(batch_size):
            pair = self.pool[int(self.rng.integers(len(self.pool)))]
            x, y = _crop(pair, self.cfg.patch_size, self.rng)
            x, y = _augment_patch(x, y, self.rng)
            xs.append(x)
            ys.append(y)
            levels.append(pair["noise_level"])
        inputs = with_noise_level(np.stack(xs), np.array(levels)) if self.noise_input else np.stack(xs)[:, None]
        return inputs, np.stack(ys)[:, None]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # pragma: no cover
        while True:
            yield self.next_batch(1)

    def close(self) -> None:
        """Stop the simulation workers (if any)."""
        if self._procs is not None:
            self._procs.terminate()
            self._procs.join()
            self._procs = None
            self._pending.clear()

    def state(self) -> dict:
        # the first pair not yet taken: a resumed worker stream asks for it again
        return {"rng": self.rng.bit_generator.state, "next_task": self._next_task - len(self._pending)}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.pool = []  # refilled from the restored generator
        if self._procs is not None:
            self._pending.clear()
            self._next_task = int(state.get("next_task", 0))
            self._fill_pending()


def validation_set(seed: int, n: int, cfg: DataConfig, use_phantom: bool = True,
                   snr: tuple[float, float] = (10.0, 40.0)) -> list[dict]:
    """Held-out full images: the study's default acceleration (half the scan time,
    :data:`DEFAULT_ACCELERATED`), random phase-encode axis, SNR log-uniform in ``snr``;
    includes the conventional acquisition (same noise level) for comparison.
    Use seeds disjoint from training seeds."""
    rng = np.random.default_rng(seed)
    # The real slices are few and all in training: crops of them would not be held out, and
    # the set stays comparable with earlier models' validation.
    weights = {k: v for k, v in cfg.source_weights.items() if k != "real"}
    cfg = DataConfig.from_dict({**cfg.__dict__, "phantom_bank": max(1, n // 3), "source_weights": weights,
                                "shading_prob": 0.0})
    sampler = ObjectSampler(cfg, use_phantom=use_phantom, seed=seed)
    out = []
    for _ in range(n):
        obj, source = sampler.sample(rng)
        s = float(np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]))))
        pair = simulate_pair(obj, rng, cfg, protocol=DEFAULT_ACCELERATED, snr=s, jitter=False,
                             with_conventional=True)
        pair["source"] = source
        out.append(pair)
    return out

