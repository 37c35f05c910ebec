"""Do no harm: keep only the part of the DL change that looks like noise (issue 12).

What the network takes away from a slice -- the method noise ``input - output`` -- should
be noise: no local mean (else tissue signal shifts), and locally no more energy than the
slice's noise (else it removed structure or texture). Per slice:

1. **Signal level.** The method noise's local mean (Gaussian, ``mean_sigma`` px) is given
   back: the output keeps the input's local signal level, the DL only removes detail.
   In tissue the input's magnitude-noise floor is taken off that level
   (``rician_floor``: the true signal whose Rician magnitude has the local mean ``m``,
   ``rician_signal``; ``sigma`` is the robust SD of the method noise where the signal is
   clear of the floor, times ``floor_factor`` as a real network leaves part of the noise
   in its output, and follows a smooth map of the method noise over the tissue, as
   parallel imaging's g-factor raises it locally, ``noise_map_width``). Not in the air: where the input's local mean (Gaussian, ``air_sigma`` px) is at the level of magnitude noise alone
   (below ``air_low`` x ``sigma``, fully above ``air_high`` x; a Rayleigh background has
   its mean at 1.25 ``sigma``), that mean is the noise floor, which the network rightly
   removes, not signal.
2. **Structure.** The remaining method noise's local variance (Gaussian, ``window_sigma``
   px) is compared with the slice's noise variance ``sigma**2``. Where it exceeds
   ``low`` x ``sigma**2`` (2x) the change is withheld progressively, fully above ``high`` x (4x).
   ``sigma`` is the smaller of two estimates: the median local variance of the method
   noise over the tissue (what the network removes almost everywhere is noise) and a
   robust estimate from the input alone (median absolute neighbour differences along the
   less band-limited axis), so a noise-free or non-MR image (nothing to remove) keeps its
   detail.
3. **Strength.** The kept change is scaled by the strength (low / medium / high, default
   high since model 0.3.0), like a vendor's DL reconstruction levels. In the air it is
   capped at medium's share (``air_strength``): the output's background keeps some noise, so
   the quality check can still measure the DL series' SNR / CNR.

    result = guard_series(source, enhanced, strength=STRENGTHS[DEFAULT_STRENGTH])
    result.images           # float32 (S, H, W), input units
    result.held_back        # (S,) share of the DL change withheld on each slice (0..1)

The parameters were set on the training-allowed calibration slices only
(``python -m models.evaluation.enhancement --real --sources calibration``), never on the
evaluation-only sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage, special

__all__ = ["STRENGTHS", "DEFAULT_STRENGTH", "GuardParameters", "GuardResult", "guard_slice", "guard_series", "input_noise_sd", "tissue_mask",
           "rician_signal",
           "strength_value", "strength_label", "StrengthSetting"]

#: Share of the (guarded) DL change applied at each strength level.
STRENGTHS: dict[str, float] = {"low": 0.6, "medium": 0.85, "high": 1.0}
#: The level used unless configured: chosen with the model on the selection source (model
#: 0.3.0, 2026-12-06, by the rule in docs/model_choice_rule_0.3.0.json: high gave the most
#: slices at or above the conventional, overall and for R = 2 SENSE; medium for model 0.2.0).
DEFAULT_STRENGTH = "high"


def strength_value(level: str | float) -> float:
    """The fraction for a named level (``low``, ``medium``, ``high``) or a number in [0, 1]."""
    if isinstance(level, str) and level.strip().lower() in STRENGTHS:
        return STRENGTHS[level.strip().lower()]
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)} or a number in [0, 1], got {level!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {value}")
    return value


def strength_label(level: str | float) -> str:
    """How a strength is written in DerivationDescription and the run summary:
    ``medium (0.85)`` for a named level, ``0.70`` for a number."""
    value = strength_value(level)
    name = level.strip().lower() if isinstance(level, str) and level.strip().lower() in STRENGTHS else None
    return f"{name} ({value:.2f})" if name else f"{value:.2f}"


@dataclass(frozen=True)
class StrengthSetting:
    """The configured strength: one default and optional per-role overrides (levels or numbers)."""

    default: str = DEFAULT_STRENGTH
    per_role: tuple[tuple[str, str], ...] = ()

    def level_for(self, role: str) -> str:
        return dict(self.per_role).get(role, self.default)

    @classmethod
    def parse(cls, text: str | None, roles: tuple[str, ...]) -> "StrengthSetting":
        """``"medium"``, ``"0.7"``, or ``"medium,SAG_CE_T1=low,AX_T2=0.9"`` (a default and/or
        ``ROLE=level`` items; roles from ``roles``). Raises ``ValueError`` with the reason."""
        default, per_role = DEFAULT_STRENGTH, {}
        for item in (t.strip() for t in (text or "").split(",")):
            if not item:
                continue
            if "=" in item:
                role, level = (x.strip() for x in item.split("=", 1))
                if role.upper() not in roles:
                    raise ValueError(f"unknown role {role!r} in strength setting (roles: {', '.join(roles)})")
                strength_value(level)
                per_role[role.upper()] = level.lower()
            else:
                strength_value(item)
                default = item.lower()
        return cls(default, tuple(sorted(per_role.items())))


@dataclass(frozen=True)
class GuardParameters:
    """Guard settings: Gaussian widths in pixels, thresholds as ratios to the noise
    variance; ``air_strength`` caps the strength in the air; ``input_factor`` scales the
    input-only noise estimate (it reads band-limited noise low); ``restore_mean`` gives the
    method noise's local mean back, except in the air: where the input's local mean
    (Gaussian, ``air_sigma`` px) is below ``air_low`` x the noise SD (a ramp up to
    ``air_high`` x), the noise floor is not given back; with
    ``rician_floor``, in tissue the level given back is the input's local mean less its
    magnitude-noise floor (the true signal of a Rician mean ``m`` instead of ``m``)."""

    mean_sigma: float = 2.0
    window_sigma: float = 2.5
    low: float = 2.0
    high: float = 4.0
    input_factor: float = 2.0
    restore_mean: bool = True
    air_low: float = 1.6
    air_high: float = 2.4
    air_sigma: float = 3.0
    rician_floor: bool = True
    signal_noise: bool = True
    #: The most of the change applied in the air (the ramp above): at least 1 - this share
    #: of the input's magnitude noise stays there, so the output's background noise can be
    #: measured (the quality check's SNR / CNR, as the study measured them) and the
    #: background does not look blanked. Only strengths above it are affected, and only with
    #: ``restore_mean`` (which defines the air).
    air_strength: float = STRENGTHS["medium"]
    #: Noise that varies over the slice (parallel imaging's g-factor) raises the magnitude
    #: floor where it is high: with a width > 0 (a fraction of the slice's longer side) the
    #: Rician floor uses a smooth map of the method noise's variance over the tissue, scaled
    #: to the slice's value at its tissue median and clipped to [1, ``noise_map_max``] x it
    #: (0 = one value per slice).
    noise_map_width: float = 0.1
    noise_map_max: float = 2.0
    #: The Rician floor's noise variance: "median" (the structure test's estimate, the median
    #: local variance of the method noise) or "mad" (the robust SD of the method noise with its
    #: ``floor_mean_sigma`` px local mean removed, over tissue clear of the floor: each
    #: pixel's whole noise variance, which sets its floor), times ``floor_factor`` squared.
    floor_noise: str = "mad"
    floor_mean_sigma: float = 8.0
    floor_factor: float = 1.1
    #: Where the noise map is scaled to 1: "tissue" (the tissue mask, which at low SNR takes
    #: in air whose magnitude noise has 0.43x the variance) or "signal" (tissue clear of the
    #: floor, where the noise variance is read).
    noise_map_reference: str = "signal"
    #: The Rician floor from the exact mean of a Rician magnitude (its inverse, by table)
    #: instead of the high-SNR form ``sqrt(m**2 - sd**2)``, which leaves part of the floor
    #: below about 3 noise SDs.
    rician_exact: bool = True
    # (floor estimate, map reference and exact Rician mean chosen on the selection source,
    # 2026-12-07, by the rule in docs/guard_choice_rule_floor_noise_2.json: worst slice bias
    # 1.16 -> 0.85 %, body SSIM 0.9516 -> 0.9538, SENSE >= conventional 70.6 -> 73.8 %)
    # (noise map chosen on the selection source, dipy aniso_vox, 2026-12-07, by the rule in
    # docs/guard_choice_rule_rician_map.json: worst slice bias +1.18 -> +1.16 %, body SSIM
    # 0.9514 -> 0.9516, SENSE >= conventional 70.0 -> 70.6 %; widths 0.1 / 0.2 x max 2 / 3 tried)
    # (air and Rician floor chosen on the selection source, dipy aniso_vox, 2026-12-05: medium's
    # worst slice bias +2.60 -> +1.76 %, SSIM 0.917 -> 0.923; docs/model_selection_real_0.2.0.json.
    # mean_sigma 8 -> 2 px on the same source at 128-512 px, 2026-12-06: the network darkens
    # small bright structures and an 8 px level gave back only part of it at 128/192 px;
    # 4, 2.5, 2, 1.5, 1 px tried, 2 the best, docs/model_selection_real_0.2.0.json.
    # low / high 1.5 / 3 -> 2 / 4 with model 0.3.0, 2026-12-06, on the same source by the rule in
    # docs/model_choice_rule_0.3.0.json: 0.3.0 removes less texture than 0.2.0, so less of its
    # change needs withholding; docs/model_selection_real_0.3.0.json)

    def __post_init__(self) -> None:
        if self.floor_noise not in ("median", "mad"):
            raise ValueError(f"floor_noise must be 'median' or 'mad', got {self.floor_noise!r}")
        if self.noise_map_reference not in ("tissue", "signal"):
            raise ValueError(f"noise_map_reference must be 'tissue' or 'signal', got {self.noise_map_reference!r}")


@dataclass
class GuardResult:
    """Guarded series ``(S, H, W)`` float32 and, per slice, the share of the DL change
    withheld by the guard (before the strength is applied) and the noise SD used."""

    images: np.ndarray
    held_back: np.ndarray
    noise_sd: np.ndarray


def input_noise_sd(image: np.ndarray, tissue: np.ndarray | None = None) -> float:
    """Robust noise SD of a magnitude image from neighbour differences (``(H, W)``).

    The median absolute difference of horizontal and of vertical neighbours (over
    ``tissue`` if given) is turned into an SD assuming white Gaussian noise; the larger of
    the two axes is used, since one axis (phase encode) is band-limited and its
    neighbours correlate. Texture and edges are sparse enough for the median to ignore.
    """
    # Every second row and column: the median needs no more samples, and it is 4x cheaper.
    x = np.asarray(image, dtype=np.float32)
    estimates = []
    for axis in (0, 1):
        d = np.abs(np.diff(x, axis=axis))[::2, ::2]
        if tissue is not None:
            m = tissue[1:, :] & tissue[:-1, :] if axis == 0 else tissue[:, 1:] & tissue[:, :-1]
            d = d[m[::2, ::2]]
        if d.size:
            estimates.append(float(np.median(d)) / (0.6745 * np.sqrt(2.0)))
    return max(estimates) if estimates else 0.0


#: E[M] / sd of a Rician magnitude against its true signal A / sd (0..40):
#: sqrt(pi / 2) * L_1/2(-A**2 / 2 sd**2), with the scaled Bessel functions for stability.
_RICIAN_SNR = np.concatenate([np.linspace(0.0, 6.0, 601), np.linspace(6.05, 40.0, 680)])
_RICIAN_MEAN = np.sqrt(np.pi / 2) * ((1 + _RICIAN_SNR**2 / 2) * special.i0e(_RICIAN_SNR**2 / 4)
                                     + _RICIAN_SNR**2 / 2 * special.i1e(_RICIAN_SNR**2 / 4))


def rician_signal(mean: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    """True signal ``A`` whose Rician magnitude (complex noise SD ``sd`` per component) has
    the mean ``mean`` (same units, any shape): 0 below the pure-noise mean 1.25 ``sd``,
    the high-SNR form ``sqrt(mean**2 - sd**2)`` above 40 ``sd``."""
    sd = np.maximum(np.asarray(sd, dtype=np.float32), 1e-12)
    ratio = np.atleast_1d(np.asarray(mean, dtype=np.float32) / sd)
    # Above 10 sd the high-SNR form is within 0.0003 sd of the exact inverse: the table is
    # looked up only below (dark tissue is a small part of a slice; 8x faster at 512 px).
    a = np.sqrt(np.maximum(ratio * ratio - 1.0, 0.0))
    low = ratio < 10.0
    a[low] = np.interp(ratio[low], _RICIAN_MEAN, _RICIAN_SNR, left=0.0)
    return (a.reshape(np.broadcast_shapes(np.shape(mean), sd.shape)) * sd).astype(np.float32)


@lru_cache(maxsize=16)
def _linear_taps(n_small: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from ``n_small`` block centres to ``n_small * factor`` pixel
    centres (edges held): left index, right index, right weight."""
    pos = np.clip((np.arange(n_small * factor) + 0.5) / factor - 0.5, 0.0, n_small - 1.0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_small - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def _upsample_linear(small: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of a block-mean field by ``factor``, one axis at a time (gathers,
    no BLAS threads to compete with the network's; ~5x faster than ``ndimage.zoom``)."""
    lo, hi, w = _linear_taps(small.shape[0], factor)
    rows = small[lo] * (1.0 - w)[:, None] + small[hi] * w[:, None]
    lo, hi, w = _linear_taps(small.shape[1], factor)
    return (rows[:, lo] * (1.0 - w) + rows[:, hi] * w).astype(np.float32)


def _local_mean(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian local mean (``sigma`` px); for wide kernels computed at half resolution and
    repeated back (the field is smooth at that scale: the guarded image changes by less
    than one stored unit, 4x faster); from 16 px on 8 x 8 block means, interpolated back."""
    if sigma < 4 or min(image.shape) < 32:
        return ndimage.gaussian_filter(image, sigma, truncate=3.0)
    h, w = image.shape
    if sigma >= 16 and min(image.shape) >= 128:
        # Very wide kernels (the noise map, 10 % of the slice): 8 x 8 block means, the
        # kernel there (at least 2 px), linear interpolation back (16x fewer taps and pixels).
        f = 8
    else:
        f = 2
    small = ndimage.gaussian_filter(image[: h - h % f, : w - w % f].reshape(h // f, f, w // f, f).mean(axis=(1, 3)),
                                    sigma / f, truncate=3.0)
    if f == 8:
        out = _upsample_linear(small, f)
    else:
        out = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # the field is smooth over 2 px
    if out.shape != image.shape:
        out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1])), mode="edge")
    return out


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Pixels above 10 % of the slice's 99th percentile (all pixels when fewer than 100)."""
    peak = float(np.percentile(image, 99))
    m = image > 0.1 * peak
    return m if m.sum() >= 100 else np.ones_like(m)


def _noise_map(local_var: np.ndarray, tissue: np.ndarray, noise_var: float, params: GuardParameters,
               signal: np.ndarray | None = None) -> np.ndarray:
    """Relative noise variance over the slice (>= 1): the method noise's local variance
    (each pixel capped at ``high`` x the noise variance, so structure the network removed
    cannot raise it far) averaged over the tissue in a Gaussian ``noise_map_width`` x the
    longer side wide, divided by its median over the tissue (or over ``signal``, the
    pixels the noise variance was read on, when given with at least 400 pixels), clipped to
    [1, ``noise_map_max``]."""
    width = params.noise_map_width * max(local_var.shape)
    weight = tissue.astype(np.float32)
    capped = np.minimum(local_var, params.high * noise_var) * weight
    smooth = _local_mean(capped, width) / np.maximum(_local_mean(weight, width), 1e-3)
    where = signal if signal is not None and signal.sum() >= 400 else tissue
    reference = float(np.median(smooth[where])) if where.any() else 0.0
    if reference <= 0:
        return np.ones_like(local_var)
    return np.clip(smooth / reference, 1.0, params.noise_map_max)


def guard_slice(source: np.ndarray, enhanced: np.ndarray, strength: float = 1.0,
                params: GuardParameters = GuardParameters()) -> tuple[np.ndarray, float, float]:
    """Guard one slice ``(H, W)``; returns (image float32, share withheld, noise SD)."""
    x = np.asarray(source, dtype=np.float32)
    y = np.asarray(enhanced, dtype=np.float32)
    r = x - y
    r_mean = _local_mean(r, params.mean_sigma) if params.restore_mean else np.zeros_like(r)
    r_detail = r - r_mean
    local_var = np.maximum(ndimage.gaussian_filter(r_detail**2, params.window_sigma, truncate=3.0)
                           - ndimage.gaussian_filter(r_detail, params.window_sigma, truncate=3.0) ** 2, 0.0)
    tissue = tissue_mask(x)
    var_method = float(np.median(local_var[tissue][::4]))
    var_input = (params.input_factor * input_noise_sd(x, tissue)) ** 2
    noise_var = min(var_method, var_input)
    if noise_var <= 1e-12:
        return x.astype(np.float32), 1.0, 0.0
    level = _local_mean(x, params.mean_sigma) if params.signal_noise or params.rician_floor else None

    def signal_mask(var: float) -> np.ndarray:
        """Tissue whose input's local mean is clear of the magnitude-noise floor."""
        return (level > params.air_high * float(np.sqrt(var))) & tissue

    def where_signal(signal: np.ndarray) -> float | None:
        """Median local variance of the method noise over ``signal`` (None if too few pixels)."""
        return float(np.median(local_var[signal][::4])) if signal.sum() >= 400 else None

    if params.signal_noise:
        # Magnitude noise in the air has 0.43x the variance it has where there is signal;
        # when the air is part of the "tissue" (low SNR) it pulled the estimate down and
        # the guard withheld noise removal. Read it where the signal is clear of the floor.
        var_signal = where_signal(signal_mask(noise_var))
        if var_signal is not None:
            noise_var = min(var_signal, var_input)
    if params.restore_mean:
        # In the air the input's local mean is the magnitude noise floor: the network's
        # removal of it is kept (the detail test below still applies).
        sd = float(np.sqrt(noise_var))
        air = np.clip((params.air_high * sd - ndimage.gaussian_filter(x, params.air_sigma, truncate=3.0)) / ((params.air_high - params.air_low) * sd),
                      0.0, 1.0)
        r_detail = r_detail + air * r_mean
        if params.rician_floor:
            # A magnitude image's local mean m lies above the true signal A by the noise
            # floor (Rician: m**2 ~ A**2 + sd**2 at high SNR, ``rician_signal`` exactly).
            # Giving back m would restore that bias in dark tissue, which the network
            # rightly removed. The noise variance is the complex data's, read where there
            # is signal.
            signal = signal_mask(noise_var)
            if params.floor_noise == "mad" and signal.sum() >= 400:
                d = (r - _local_mean(r, params.floor_mean_sigma))[signal]
                floor_var = (1.4826 * float(np.median(np.abs(d - np.median(d))))) ** 2
            else:
                floor_var = where_signal(signal) or noise_var
            floor_var = min(floor_var * params.floor_factor**2, var_input)
            if params.noise_map_width > 0:
                floor_var = floor_var * _noise_map(local_var, tissue, noise_var, params,
                                                   signal if params.noise_map_reference == "signal" else None)
            if params.rician_exact:
                # Only where the floor is given back (outside the air); 3x cheaper at 512 px.
                floor = np.zeros_like(level)
                given = air < 1.0
                sd_floor = np.sqrt(floor_var)
                floor[given] = level[given] - rician_signal(level[given], sd_floor[given] if np.ndim(sd_floor) else sd_floor)
            else:
                floor = level - np.sqrt(np.maximum(level * level - floor_var, 0.0))
            r_detail = r_detail + (1.0 - air) * floor
    ratio = local_var / noise_var
    keep = np.clip((params.high - ratio) / (params.high - params.low), 0.0, 1.0)
    change = np.abs(r_detail)
    total = float(change[tissue].sum())
    held = 1.0 - float((keep * change)[tissue].sum()) / total if total > 0 else 0.0
    if params.restore_mean and strength > params.air_strength:
        strength = strength - (strength - params.air_strength) * air  # (H, W) map
    out = x - strength * keep * r_detail
    return np.clip(out, 0.0, None).astype(np.float32), held, float(np.sqrt(noise_var))


def guard_series(source: np.ndarray, enhanced: np.ndarray, strength: float = 1.0,
                 params: GuardParameters = GuardParameters()) -> GuardResult:
    """Guard every slice of a series ``(S, H, W)`` (``source`` and ``enhanced`` alike)."""
    src = np.asarray(source)
    enh = np.asarray(enhanced)
    if src.shape != enh.shape or src.ndim != 3:
        raise ValueError(f"source {src.shape} and enhanced {enh.shape} must be the same (S, H, W)")
    strength = strength_value(strength)
    images = np.empty(src.shape, dtype=np.float32)
    held = np.zeros(src.shape[0])
    sd = np.zeros(src.shape[0])
    for i in range(src.shape[0]):
        images[i], held[i], sd[i] = guard_slice(src[i], enh[i], strength, params)
    return GuardResult(images, held, sd)
