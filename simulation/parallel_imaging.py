"""Parallel imaging (SENSE, acceleration R = 2) in k-space, with real g-factor noise.

Every second phase-encode line of a multi-coil acquisition is skipped (half the scan time
at the same resolution); each coil image aliases by half the field of view, and the
unaliasing (least squares over the coil sensitivities, per pair of aliased pixels) raises
the noise by ``sqrt(R) * g(x)``, where the g-factor ``g`` depends on how well the coils
tell the two pixels apart: spatially varying noise, as on a scanner.

    coils = coil_sensitivities((rows, cols), n_coils=8, rng=rng)    # (C, H, W) complex
    image = simulate_sense_acquisition(truth, CONVENTIONAL, sigma, rng, coils=coils)

Images are ``(rows, columns)``; the phase-encode axis follows
:class:`simulation.acquisition.AcquisitionProtocol` (0: down the columns, 1: along rows).
"""
from __future__ import annotations

import numpy as np

from simulation.acquisition import AcquisitionProtocol, fft2c, ifft2c

__all__ = ["coil_sensitivities", "simulate_sense_acquisition"]


def coil_sensitivities(shape: tuple[int, int], n_coils: int, rng: np.random.Generator,
                       width: float = 0.55) -> np.ndarray:
    """Smooth complex receive sensitivities ``(n_coils, rows, cols)`` of coils spaced
    around the field of view (random start angle and radius), normalised so that
    ``sum(|c|**2) == 1`` at every pixel (a coil-combined image is unshaded).

    ``width``: Gaussian fall-off of each coil, as a fraction of the field of view.
    """
    if n_coils < 2:
        raise ValueError("parallel imaging needs at least 2 coils")
    rows = np.linspace(-1.0, 1.0, shape[0])[:, None]
    cols = np.linspace(-1.0, 1.0, shape[1])[None, :]
    start = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(1.0, 1.3)
    maps = []
    for j in range(n_coils):
        angle = start + 2 * np.pi * j / n_coils
        r0, c0 = radius * np.sin(angle), radius * np.cos(angle)
        magnitude = np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * (2 * width) ** 2))
        phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-1, 1) * rows + rng.uniform(-1, 1) * cols
        maps.append(magnitude * np.exp(1j * phase))
    c = np.stack(maps)
    return c / np.sqrt(np.sum(np.abs(c) ** 2, axis=0, keepdims=True))


def simulate_sense_acquisition(truth: np.ndarray, protocol: AcquisitionProtocol, noise_sigma: float,
                               rng: np.random.Generator, *, coils: np.ndarray,
                               phase: np.ndarray | None = None) -> np.ndarray:
    """Acquire a 2-D slice with R = 2 SENSE and return the unaliased magnitude image.

    Args:
        truth: ``(rows, columns)`` clean magnitude object (float); the phase-encode length
            must be even.
        protocol: the k-space band (resolution, readout, averages) of the full protocol;
            every second of its phase-encode lines is acquired.
        noise_sigma: per-channel complex noise SD per k-space sample and coil at one
            average (as :func:`simulation.acquisition.simulate_acquisition`).
        rng: noise source.
        coils: ``(C, rows, columns)`` sensitivities from :func:`coil_sensitivities`.
        phase: optional smooth object phase (radians).

    Returns:
        float64 magnitude ``(rows, columns)``; noise is ``sqrt(2) * g(x)`` times that of
        the fully sampled protocol.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim != 2 or coils.shape[1:] != truth.shape:
        raise ValueError(f"truth {truth.shape} and coils {coils.shape} do not match")
    pe = protocol.phase_encode_axis
    n = truth.shape[pe]
    if n % 2:
        raise ValueError(f"R = 2 needs an even phase-encode length, got {n}")
    obj = truth.astype(np.complex128) * (np.exp(1j * phase) if phase is not None else 1.0)
    keep = (np.arange(n) - n // 2) % 2 == 0  # even ky: the aliases add with a + sign
    mask = protocol.sampling_mask(truth.shape) & (keep[:, None] if pe == 0 else keep[None, :])
    sigma = noise_sigma / np.sqrt(protocol.averages_ratio)
    noise = rng.normal(0.0, sigma, coils.shape) + 1j * rng.normal(0.0, sigma, coils.shape)
    aliased = ifft2c((fft2c(coils * obj) + noise) * mask)  # 0.5 * (c x)(r) + 0.5 * (c x)(r + n/2)
    # Unfold along the phase-encode axis: move it first, pair row r with row r + n/2.
    a = np.moveaxis(aliased, 1 + pe, 1) * 2.0
    s = np.moveaxis(coils, 1 + pe, 1)
    half = n // 2
    s1, s2, b = s[:, :half], s[:, half:], a[:, :half]
    # Normal equations of the 2-unknown least squares, per pixel pair (vectorised 2x2 inverse).
    h11 = np.sum(np.abs(s1) ** 2, axis=0)
    h22 = np.sum(np.abs(s2) ** 2, axis=0)
    h12 = np.sum(np.conj(s1) * s2, axis=0)
    r1 = np.sum(np.conj(s1) * b, axis=0)
    r2 = np.sum(np.conj(s2) * b, axis=0)
    det = h11 * h22 - np.abs(h12) ** 2
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    x1 = (h22 * r1 - h12 * r2) / det
    x2 = (h11 * r2 - np.conj(h12) * r1) / det
    unfolded = np.concatenate([x1, x2], axis=0)
    return np.abs(np.moveaxis(unfolded, 0, pe))
