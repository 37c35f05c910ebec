"""The low-band diagnosis (models.evaluation.low_band): its pass-through reads what it claims."""
import numpy as np
import pytest

from models.evaluation.low_band import diagnose_case, low_band, pass_through


def _keep_below(image: np.ndarray, cycles_per_px: float) -> np.ndarray:
    """The image's spectrum below ``cycles_per_px`` (a sharp low-pass)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(image) * (np.hypot(fy, fx) < cycles_per_px)))


def _case(seed: int = 0, n: int = 96):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    truth = 200.0 + 600.0 * (((yy - n / 2) ** 2 + (xx - n / 2) ** 2) < (n / 3) ** 2)
    noisy = truth + rng.normal(0.0, 20.0, truth.shape)
    return truth, noisy, np.ones_like(truth, dtype=bool)


def test_pass_through_is_one_for_the_input_zero_for_the_truth_and_the_share_kept_between():
    truth, noisy, mask = _case()
    assert pass_through(noisy, noisy, truth, mask) == pytest.approx(1.0)
    assert abs(pass_through(truth, noisy, truth, mask)) < 1e-9
    # a denoiser that keeps 40 % of the noise in every band
    assert pass_through(truth + 0.4 * (noisy - truth), noisy, truth, mask) == pytest.approx(0.4)
    # one that removes only the noise above 0.15 cycles / px (where the 2 px Gaussian passes
    # < 17 %) reads near 1; one that keeps only what is above it, near 0
    low_kept = truth + _keep_below(noisy - truth, 0.15)
    assert pass_through(low_kept, noisy, truth, mask) > 0.9
    assert pass_through(noisy - (low_kept - truth), noisy, truth, mask) < 0.1
    with pytest.raises(ValueError):
        pass_through(noisy[:10], noisy, truth, mask)


def test_the_truths_low_band_closes_the_gap_a_kept_low_band_leaves():
    truth, noisy, _ = _case(1)
    high_removed = truth + _keep_below(noisy - truth, 0.15)   # the product's situation: low band kept
    stack = lambda a: a[None].astype(np.float32)  # noqa: E731
    r = diagnose_case(stack(truth), stack(noisy), stack(noisy), stack(high_removed), stack(high_removed))
    assert r["pass_through"] > 0.95
    assert r["low_band_rms_product"] == pytest.approx(r["low_band_rms_accelerated"], rel=0.05)
    assert r["ssim_body_oracle_low_band"] > r["ssim_body_product"] + 0.01
