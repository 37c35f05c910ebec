"""Classical denoisers the DL model is compared with (evaluation and benchmark only).

Both get the best chance we can give them: the noise level is an *oracle* from the
simulation, not estimated blindly. The product never uses these.

    bm3d_denoise(image, sigma)            # BM3D (``bm3d`` package, profile "np")
    nlm_denoise(image, sigma)             # scikit-image non-local means (fast mode)
    oracle_noise_sd(protocol, noise_sigma)
"""
from __future__ import annotations

import numpy as np

from simulation.acquisition import AcquisitionProtocol

__all__ = ["bm3d_denoise", "nlm_denoise", "oracle_noise_sd"]


def oracle_noise_sd(protocol: AcquisitionProtocol, noise_sigma: float, shape: tuple[int, int]) -> float:
    """Per-channel Gaussian noise SD in the image (same units as ``noise_sigma``) of an
    acquisition simulated by :func:`simulation.acquisition.simulate_acquisition`.

    Complex noise of SD ``noise_sigma / sqrt(averages_ratio)`` on the acquired fraction
    ``f`` of k-space, orthonormal inverse FFT: image variance ``sigma_k**2 * f`` per channel.
    At the SNR of tissue, magnitude noise has this SD too (Rician -> Gaussian).
    """
    fraction = float(protocol.sampling_mask(shape).mean())
    return float(noise_sigma / np.sqrt(protocol.averages_ratio) * np.sqrt(fraction))


def _check(image: np.ndarray, sigma: float) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return img


def bm3d_denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D of a 2-D magnitude image ``(H, W)`` with white-noise SD ``sigma`` (image
    units); returns float32 ``(H, W)``, negatives clipped to 0."""
    import bm3d

    img = _check(image, sigma)
    scale = max(float(np.percentile(img, 99.5)), 1e-9)  # BM3D's profiles assume ~0..1 data
    out = bm3d.bm3d(img / scale, sigma / scale, profile="np")
    return np.clip(np.asarray(out, dtype=np.float32) * scale, 0, None)


def nlm_denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image non-local means (5x5 patches, 13x13 search, ``h = 0.8 sigma``, the
    library's recommended setting with a known sigma); float32 ``(H, W)``."""
    from skimage.restoration import denoise_nl_means

    img = _check(image, sigma)
    out = denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6)
    return np.clip(np.asarray(out, dtype=np.float32), 0, None)
