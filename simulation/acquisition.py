"""Physical MR acquisition simulation in k-space.

Images are 2-D arrays ``(rows, columns)`` (or stacks ``(..., rows, columns)``) in arbitrary
signal units. The phase-encode axis is given as an array axis: ``0`` means phase encoding
runs down the columns (DICOM ``InPlanePhaseEncodingDirection`` = ``COL``), ``1`` along the
rows (``ROW``). Readout is the other axis.

The k-space transform is the centred, orthonormal 2-D DFT, so complex white noise of
standard deviation ``sigma`` per channel in k-space is complex white noise of the same
standard deviation in the image; its magnitude is Rician (Rayleigh where there is no
signal).

Scan time is proportional to (acquired phase-encode lines) x (averages); see
:attr:`AcquisitionProtocol.scan_time_ratio`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "AcquisitionProtocol",
    "CONVENTIONAL",
    "DEFAULT_ACCELERATED",
    "MotionTrajectory",
    "fft2c",
    "ifft2c",
    "acquired_phase_encode_mask",
    "random_motion_trajectory",
    "simulate_acquisition",
    "smooth_background_phase",
    "band_limited_truth",
    "rayleigh_mean",
    "rayleigh_sd",
]


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D DFT over the last two axes."""
    return np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c`."""
    return np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )


def rayleigh_mean(sigma: float) -> float:
    """Mean of the magnitude of complex noise with per-channel SD ``sigma`` (no signal)."""
    return float(sigma * np.sqrt(np.pi / 2.0))


def rayleigh_sd(sigma: float) -> float:
    """SD of the magnitude of complex noise with per-channel SD ``sigma`` (no signal)."""
    return float(sigma * np.sqrt(2.0 - np.pi / 2.0))


@dataclass(frozen=True)
class AcquisitionProtocol:
    """How k-space is sampled, relative to the conventional (full-time) protocol.

    Attributes:
        phase_encode_fraction: fraction of the full phase-encode matrix acquired, as a
            centred band (0 < f <= 1). Lower means lower resolution along phase encode.
        averages_ratio: number of signal averages relative to the conventional protocol
            (0 < r <= 1 for acceleration). Noise SD scales with ``1 / sqrt(r)``.
        partial_fourier_fraction: fraction of the acquired band actually sampled
            (0.5 < p <= 1); the missing lines are on the high-``ky`` side and are
            zero-filled (conservative reconstruction, no homodyne).
        phase_encode_axis: 0 (``COL``) or 1 (``ROW``), see module docstring.
        readout_fraction: fraction of the display matrix acquired along readout (centred
            band); scanners interpolate (zero-fill) to the display matrix.
    """

    phase_encode_fraction: float = 1.0
    averages_ratio: float = 1.0
    partial_fourier_fraction: float = 1.0
    phase_encode_axis: int = 1
    readout_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.readout_fraction <= 1.0:
            raise ValueError("readout_fraction must be in (0, 1]")
        if not 0.0 < self.phase_encode_fraction <= 1.0:
            raise ValueError("phase_encode_fraction must be in (0, 1]")
        if not 0.0 < self.averages_ratio <= 4.0:
            raise ValueError("averages_ratio must be in (0, 4]")
        if not 0.5 < self.partial_fourier_fraction <= 1.0:
            raise ValueError("partial_fourier_fraction must be in (0.5, 1]")
        if self.phase_encode_axis not in (0, 1):
            raise ValueError("phase_encode_axis must be 0 or 1")

    @property
    def relative_scan_time(self) -> float:
        """Scan time relative to a full-matrix, one-average acquisition (lines x averages)."""
        return self.phase_encode_fraction * self.partial_fourier_fraction * self.averages_ratio

    def scan_time_ratio(self, reference: "AcquisitionProtocol") -> float:
        """This protocol's scan time divided by ``reference``'s (same TR and echo train)."""
        return self.relative_scan_time / reference.relative_scan_time

    def accelerated(self, phase_encode_factor: float, averages_ratio: float,
                    partial_fourier_fraction: float = 1.0) -> "AcquisitionProtocol":
        """A shortened version of this protocol: ``phase_encode_factor`` of its lines,
        ``averages_ratio`` of its averages, optional partial Fourier."""
        return replace(
            self,
            phase_encode_fraction=self.phase_encode_fraction * phase_encode_factor,
            averages_ratio=self.averages_ratio * averages_ratio,
            partial_fourier_fraction=partial_fourier_fraction,
        )

    def with_phase_encode_axis(self, axis: int) -> "AcquisitionProtocol":
        return replace(self, phase_encode_axis=axis)

    def sampling_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``shape`` mask of the k-space samples acquired (centred layout)."""
        pe_axis = self.phase_encode_axis
        ro_axis = 1 - pe_axis
        pe = acquired_phase_encode_mask(shape[pe_axis], self)
        n_ro = shape[ro_axis]
        ro_band = max(2, int(round(n_ro * self.readout_fraction)))
        ro = np.zeros(n_ro, dtype=bool)
        lo = n_ro // 2 - ro_band // 2
        ro[lo : lo + ro_band] = True
        return (pe[:, None] & ro[None, :]) if pe_axis == 0 else (ro[:, None] & pe[None, :])


#: Conventional (full-time) clinical protocol: acquired matrix smaller than the display
#: matrix (about 0.6 x 0.7 mm acquired, shown at about 0.47 mm), as scanners do.
CONVENTIONAL = AcquisitionProtocol(phase_encode_fraction=0.66, readout_fraction=0.8)
#: About half the scan time, as in the study (47-48 % shorter): 75 % of the conventional
#: phase-encode lines, two averages instead of three.
DEFAULT_ACCELERATED = CONVENTIONAL.accelerated(phase_encode_factor=0.75, averages_ratio=2.0 / 3.0)


def acquired_phase_encode_mask(n_lines: int, protocol: AcquisitionProtocol) -> np.ndarray:
    """Boolean mask ``(n_lines,)`` of the phase-encode lines the protocol acquires.

    The centre of k-space is index ``n_lines // 2`` (as laid out by :func:`fft2c`).
    """
    centre = n_lines // 2
    band = max(2, int(round(n_lines * protocol.phase_encode_fraction)))
    lo = centre - band // 2
    hi = lo + band  # exclusive
    if protocol.partial_fourier_fraction < 1.0:
        hi = lo + max(band // 2 + 1, int(round(band * protocol.partial_fourier_fraction)))
    mask = np.zeros(n_lines, dtype=bool)
    mask[max(lo, 0) : min(hi, n_lines)] = True
    return mask


@dataclass(frozen=True)
class MotionTrajectory:
    """Object position for each shot (echo train) of a segmented acquisition.

    Attributes:
        translations_px: ``(n_shots, 2)`` rigid shift (rows, columns) in pixels.
        rotations_deg: ``(n_shots,)`` in-plane rotation in degrees about the image centre.
        swallow_px: ``(n_shots, 2)`` displacement (rows, columns) in pixels of the local
            swallowing deformation, weighted by ``swallow_weight``.
        swallow_weight: ``(rows, columns)`` in [0, 1], where the local motion acts
            (pharynx and larynx), or ``None`` for none.
        ordering: how phase-encode lines are assigned to shots: ``"interleaved"`` (line
            ``i`` in shot ``i % n_shots``, typical of TSE) or ``"sequential"`` (blocks).
        swallow_fill: ``(rows, columns)`` signal that appears while the pharynx closes
            around the bolus (tissue where the airway was), scaled per shot by the
            swallow's progress (``|swallow_px|`` relative to its maximum); or ``None``.
        through_plane_mm: ``(n_shots,)`` displacement along the slice normal in mm, or
            ``None`` for in-plane motion only. A slice that moves through its own plane
            acquires other anatomy in some shots: the acquisition then needs the object at
            those offsets (``simulate_acquisition(object_at_offset=...)``).
    """

    translations_px: np.ndarray
    rotations_deg: np.ndarray
    swallow_px: np.ndarray
    swallow_weight: np.ndarray | None = None
    ordering: Literal["interleaved", "sequential"] = "interleaved"
    swallow_fill: np.ndarray | None = None
    through_plane_mm: np.ndarray | None = None

    def state_key(self, shot: int) -> tuple:
        """What makes two shots see the same object (their motion state)."""
        dz = 0.0 if self.through_plane_mm is None else round(float(self.through_plane_mm[shot]), 4)
        return (tuple(np.round(self.translations_px[shot], 4)), round(float(self.rotations_deg[shot]), 4),
                tuple(np.round(self.swallow_px[shot], 4)), dz)

    def has_through_plane(self) -> bool:
        return self.through_plane_mm is not None and bool(np.any(self.through_plane_mm))

    def swallow_closure(self) -> np.ndarray:
        """Per shot, how far the pharynx is closed (0-1)."""
        amp = np.linalg.norm(self.swallow_px, axis=1)
        return amp / amp.max() if amp.max() > 0 else amp

    def frozen_at_centre(self, n_lines: int, acquired: np.ndarray | None = None) -> "MotionTrajectory":
        """The patient held still, for every shot, in the state that acquired most of the
        central 10 % of k-space (``n_lines`` phase-encode lines, ``acquired`` as in
        :meth:`shot_of_line`): the image free of motion artifacts in the position the
        corrupted image shows. For evaluating detectors: the difference between the two
        acquisitions (same noise) is the artifact."""
        shot = self.shot_of_line(n_lines, acquired)
        half = max(2, int(round(0.05 * n_lines)))
        centre = shot[max(0, n_lines // 2 - half) : n_lines // 2 + half + 1]
        keys = [self.state_key(int(k)) for k in centre]
        c = int(centre[max(range(len(keys)), key=lambda i: (keys.count(keys[i]), -i))])
        n = self.n_shots
        fill = None if self.swallow_fill is None else self.swallow_fill * float(self.swallow_closure()[c])
        through = None if self.through_plane_mm is None else np.repeat(self.through_plane_mm[c : c + 1], n)
        return replace(self, translations_px=np.repeat(self.translations_px[c : c + 1], n, axis=0),
                       rotations_deg=np.repeat(self.rotations_deg[c : c + 1], n),
                       swallow_px=np.repeat(self.swallow_px[c : c + 1], n, axis=0), swallow_fill=fill,
                       through_plane_mm=through)

    @property
    def n_shots(self) -> int:
        return int(self.translations_px.shape[0])

    def is_static(self) -> bool:
        return (
            not np.any(self.translations_px)
            and not np.any(self.rotations_deg)
            and (self.swallow_weight is None or not np.any(self.swallow_px))
            and not self.has_through_plane()
        )

    def shot_of_line(self, n_lines: int, acquired: np.ndarray | None = None) -> np.ndarray:
        """Shot index ``(n_lines,)`` of each phase-encode line.

        ``acquired``: boolean ``(n_lines,)`` of the lines the protocol samples; the shots
        (the scan's time) are spread over those lines only, as on a scanner: lines that
        are never acquired take no time (they get shot 0 and are zero-filled anyway).
        ``None``: every line is acquired.
        """
        if acquired is None:
            acquired = np.ones(n_lines, dtype=bool)
        acquired = np.asarray(acquired, dtype=bool)
        if acquired.shape != (n_lines,) or not acquired.any():
            raise ValueError("acquired must be a boolean mask of n_lines with at least one line")
        rank = np.cumsum(acquired) - 1
        n_acquired = int(acquired.sum())
        if self.ordering == "interleaved":
            shot = rank % self.n_shots
        else:
            shot = np.minimum(rank * self.n_shots // n_acquired, self.n_shots - 1)
        return np.where(acquired, shot, 0)


SEVERITY_AMPLITUDE_MM = {"none": 0.0, "mild": 1.5, "severe": 5.0}
#: Swallowing: (min mm, max mm, (min, max) episodes) of laryngeal elevation per severity.
SWALLOW_MM = {"mild": (6.0, 14.0, (1, 1)), "severe": (12.0, 25.0, (2, 3))}


def random_motion_trajectory(
    rng: np.random.Generator,
    severity: Literal["none", "mild", "severe"],
    pixel_spacing_mm: float,
    *,
    kind: Literal["rigid", "swallow", "both"] = "both",
    swallow_weight: np.ndarray | None = None,
    swallow_fill: np.ndarray | None = None,
    n_shots: int | None = None,
    through_plane: bool = False,
) -> MotionTrajectory:
    """Draw a plausible motion pattern.

    Rigid motion: one to three events (step shifts or slow drift) at random times,
    amplitude around ``SEVERITY_AMPLITUDE_MM[severity]`` (random direction, +/-40 %); with
    ``through_plane`` the direction is drawn in 3-D and its component along the slice normal
    becomes ``through_plane_mm`` (head motion is three-dimensional; without it, the same
    draws as before).
    Swallowing: one (mild) or two to three (severe) episodes of a few consecutive shots in
    which the pharynx and larynx (``swallow_weight``) move up by 6-14 (mild) or 12-25 mm
    (severe). The direction "up" assumes rows run head to feet (sagittal); pass a weight of
    zeros where there is no larynx in the plane.
    """
    if n_shots is None:
        n_shots = int(rng.integers(12, 49))
    t = np.zeros((n_shots, 2))
    r = np.zeros(n_shots)
    s = np.zeros((n_shots, 2))
    dz = np.zeros(n_shots)
    amp_px = SEVERITY_AMPLITUDE_MM[severity] / pixel_spacing_mm
    if amp_px > 0 and kind in ("rigid", "both"):
        for _ in range(int(rng.integers(1, 4))):
            start = int(rng.integers(1, n_shots))
            a = amp_px * rng.uniform(0.6, 1.4)
            direction = rng.normal(size=3 if through_plane else 2)
            direction /= np.linalg.norm(direction) + 1e-12
            through_mm = a * float(direction[2]) * pixel_spacing_mm if through_plane else 0.0
            direction = direction[:2]
            if rng.random() < 0.5:  # step: patient shifts and stays
                t[start:] += a * direction
                dz[start:] += through_mm
                r[start:] += rng.normal(0, 0.4) * a / max(amp_px, 1e-6)
            else:  # drift: a slow ramp to the new position
                ramp = np.clip((np.arange(n_shots) - start) / max(1, n_shots - start), 0, 1)
                t += ramp[:, None] * a * direction
                dz += ramp * through_mm
    if severity != "none" and kind in ("swallow", "both") and swallow_weight is not None:
        # A swallow lifts the larynx and hyoid by 1-3 cm for about a second: one to three
        # consecutive shots (more when TR is short). Severity sets how often and how far.
        lo_mm, hi_mm, episodes = SWALLOW_MM[severity]
        for _ in range(int(rng.integers(episodes[0], episodes[1] + 1))):
            length = int(rng.integers(1, max(2, n_shots // 8) + 1))
            start = int(rng.integers(0, n_shots - length + 1))
            a = rng.uniform(lo_mm, hi_mm) / pixel_spacing_mm
            direction = np.array([-1.0, rng.normal(0, 0.3)])  # mostly up (towards row 0 = head)
            direction /= np.linalg.norm(direction)
            profile = np.sin(np.linspace(0, np.pi, length + 2)[1:-1])
            s[start : start + length] += profile[:, None] * a * direction
    ordering = "interleaved" if rng.random() < 0.7 else "sequential"
    swallowing = kind != "rigid"
    return MotionTrajectory(t, r, s, swallow_weight if swallowing else None, ordering,
                            swallow_fill if swallowing else None, dz if through_plane else None)


def _moved(image: np.ndarray, shift: np.ndarray, rot_deg: float, swallow: np.ndarray,
           swallow_weight: np.ndarray | None, fill: np.ndarray | None = None) -> np.ndarray:
    """The object at one motion state (complex in, complex out), 2-D."""
    out = image
    if fill is not None:
        out = out + fill
    if swallow_weight is not None and np.any(swallow):
        rows, cols = np.indices(image.shape, dtype=np.float64)
        coords = [rows - swallow[0] * swallow_weight, cols - swallow[1] * swallow_weight]
        out = ndimage.map_coordinates(out.real, coords, order=1, mode="constant") + 1j * (
            ndimage.map_coordinates(out.imag, coords, order=1, mode="constant")
        )
    if rot_deg:
        out = ndimage.rotate(out.real, rot_deg, reshape=False, order=1) + 1j * ndimage.rotate(
            out.imag, rot_deg, reshape=False, order=1
        )
    if np.any(shift):
        # Sub-pixel translation as a linear phase ramp in k-space (exact, no interpolation).
        ky = np.fft.fftshift(np.fft.fftfreq(image.shape[0]))[:, None]
        kx = np.fft.fftshift(np.fft.fftfreq(image.shape[1]))[None, :]
        ramp = np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1]))
        return ifft2c(fft2c(out) * ramp)
    return out


def _motion_corrupted_kspace(image: np.ndarray, motion: MotionTrajectory, pe_axis: int,
                             acquired: np.ndarray | None = None,
                             object_at_offset: Callable[[float], np.ndarray] | None = None) -> np.ndarray:
    """k-space of a 2-D complex image assembled shot by shot from moved copies
    (``acquired``: the sampled phase-encode lines, see :meth:`MotionTrajectory.shot_of_line`;
    ``object_at_offset``: the complex object displaced by so many mm along the slice normal,
    for shots that moved through the plane)."""
    n_lines = image.shape[pe_axis]
    shot = motion.shot_of_line(n_lines, acquired)
    kspace = np.empty(image.shape, dtype=np.complex128)
    states: dict[tuple, list[int]] = {}
    for s in range(motion.n_shots):
        states.setdefault(motion.state_key(s), []).append(s)
    closure = motion.swallow_closure()
    for key, shots in states.items():
        s0 = shots[0]
        fill = None
        if motion.swallow_fill is not None and closure[s0] > 0:
            fill = closure[s0] * motion.swallow_fill
        base = image
        if key[3] != 0.0:
            if object_at_offset is None:
                raise ValueError("through-plane motion needs the object at its offsets (object_at_offset)")
            base = np.asarray(object_at_offset(key[3]), dtype=np.complex128)
            if base.shape != image.shape:
                raise ValueError(f"object_at_offset gave {base.shape}, expected {image.shape}")
        moved = _moved(base, motion.translations_px[s0], float(motion.rotations_deg[s0]),
                       motion.swallow_px[s0], motion.swallow_weight, fill)
        k = fft2c(moved)
        lines = np.isin(shot, shots)
        if pe_axis == 0:
            kspace[lines, :] = k[lines, :]
        else:
            kspace[:, lines] = k[:, lines]
    return kspace


def smooth_background_phase(shape: tuple[int, int], rng: np.random.Generator,
                            max_radians: float = 1.0) -> np.ndarray:
    """A smooth, low-order phase map (radians) as coils and B0 give real images."""
    rows = np.linspace(-1, 1, shape[0])[:, None]
    cols = np.linspace(-1, 1, shape[1])[None, :]
    c = rng.uniform(-1, 1, size=5) * max_radians
    return c[0] + c[1] * rows + c[2] * cols + c[3] * rows * cols + c[4] * (rows**2 - cols**2)


def simulate_acquisition(
    truth: np.ndarray,
    protocol: AcquisitionProtocol,
    noise_sigma: float,
    rng: np.random.Generator,
    *,
    motion: MotionTrajectory | None = None,
    phase: np.ndarray | None = None,
    return_kspace: bool = False,
    object_at_offset: Callable[[float], np.ndarray] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Acquire a 2-D slice and return its magnitude image at the display matrix.

    Args:
        truth: ``(rows, columns)`` clean magnitude image (the object), float.
        protocol: k-space sampling and averages.
        noise_sigma: per-channel complex noise SD per k-space sample at one average, in
            the units of ``truth``; the protocol's averages ratio scales it.
        rng: source of randomness (noise).
        motion: optional per-shot motion; ``None`` or static means no motion.
        phase: optional smooth phase (radians) of the object, ``(rows, columns)``.
        return_kspace: also return the sampled, noiseless k-space (zeros outside the
            acquired lines) for inspection and tests.
        object_at_offset: for motion with ``through_plane_mm``: the clean magnitude object
            ``(rows, columns)`` with the slice displaced by the given mm along its normal
            (``phase`` is applied to it as to ``truth``).

    Returns:
        magnitude ``(rows, columns)`` float64 (Rician where signal is present), and
        optionally the noiseless sampled k-space.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim != 2:
        raise ValueError(f"truth must be 2-D, got shape {truth.shape}")
    if noise_sigma < 0:
        raise ValueError("noise_sigma must be >= 0")
    obj = truth.astype(np.complex128)
    if phase is not None:
        obj = obj * np.exp(1j * phase)
    pe_axis = protocol.phase_encode_axis
    if motion is not None and not motion.is_static():
        at_offset = None
        if object_at_offset is not None:
            def at_offset(mm: float) -> np.ndarray:
                moved_obj = np.asarray(object_at_offset(mm), dtype=np.float64).astype(np.complex128)
                return moved_obj * np.exp(1j * phase) if phase is not None else moved_obj
        kspace = _motion_corrupted_kspace(obj, motion, pe_axis,
                                          acquired_phase_encode_mask(truth.shape[pe_axis], protocol), at_offset)
    else:
        kspace = fft2c(obj)
    sample_mask = protocol.sampling_mask(truth.shape)
    kspace = kspace * sample_mask
    sigma = noise_sigma / np.sqrt(protocol.averages_ratio)
    noise = rng.normal(0.0, sigma, size=truth.shape) + 1j * rng.normal(0.0, sigma, size=truth.shape)
    # Noise only on acquired samples: zero-filled lines carry neither signal nor noise.
    magnitude = np.abs(ifft2c(kspace + noise * sample_mask))
    if return_kspace:
        return magnitude, kspace
    return magnitude


def band_limited_truth(obj: np.ndarray, protocol: AcquisitionProtocol = CONVENTIONAL) -> np.ndarray:
    """Noiseless, motionless magnitude image a protocol would give: the reference ``G``.

    ``obj`` is the object (real or complex, ``(rows, columns)``) at the display matrix.
    """
    return np.abs(ifft2c(fft2c(np.asarray(obj, dtype=np.complex128)) * protocol.sampling_mask(obj.shape)))
