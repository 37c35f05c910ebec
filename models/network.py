"""Cascaded U-Net for image-domain enhancement of accelerated MR magnitude images.

Architecture (after Koo et al., AJNR 2025): a modified U-Net with 18 convolutional
blocks (encoder 5 levels x 2 = 10, decoder 4 levels x 2 = 8), 4 max-pooling layers,
4 up-sampling layers and 4 feature concatenations, with a residual output (the network
predicts a correction added to its input). It is followed by a short cascade of small
convolutional stages, each followed by an image-domain *data-consistency* step: in a
soft-edged low-frequency band of the 2-D spectrum, the stage's output is pulled towards
the input image's spectrum with a learned weight ``lambda = sigmoid(param)``. That keeps
contrast and large-scale intensities faithful to the acquired image while the network is
free to denoise and sharpen at higher spatial frequencies.

Input and output are ``(B, 1, H, W)`` float32 in normalised units (see
:mod:`models.normalization`). With ``noise_input`` the input is ``(B, 2, H, W)``: the image
and a constant map of its noise level (:func:`models.normalization.noise_level`,
FFDNet-style); the output is still ``(B, 1, H, W)``. Any ``H, W`` is accepted: the image is reflect-padded to a
multiple of 16 internally and cropped back. The module is TorchScript-scriptable.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CascadedUNet", "count_parameters", "count_flops"]


class ConvBlock(nn.Module):
    """3x3 convolution + LeakyReLU (norm-free: keeps the mapping intensity-faithful)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DoubleConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch)
        self.block2 = ConvBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x))


class UpLevel(nn.Module):
    """Bilinear x2 up-sampling, concatenation with the skip, two conv blocks."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convs = DoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=[skip.shape[2], skip.shape[3]], mode="bilinear",
                          align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


def _fft_frequencies(n: int, onesided: bool, device: torch.device) -> torch.Tensor:
    """``torch.fft.fftfreq(n)`` (or ``rfftfreq`` when ``onesided``) in cycles/sample,
    written with ``arange`` so that the model also exports to ONNX (which has no fftfreq)."""
    i = torch.arange(n // 2 + 1 if onesided else n, device=device, dtype=torch.float32)
    if not onesided:
        i = torch.where(i < (n + 1) // 2, i, i - n)
    return i / n


class DataConsistency(nn.Module):
    """Image-domain soft data consistency in a low-frequency band.

    ``out = IFFT( X + lambda * w(k) * (Y - X) )`` with ``X`` the spectrum of the stage
    output, ``Y`` that of the network input and ``w`` a separable window equal to 1 in the
    central ``band`` fraction of each axis, with a raised-cosine edge of width ``edge``
    (fractions of the full frequency range). ``lambda = sigmoid(param)`` is learned.
    Uses the real FFT (the window is symmetric, so the result is real).
    """

    def __init__(self, band: float = 0.25, edge: float = 0.1, init_lambda: float = 0.5) -> None:
        super().__init__()
        self.band = float(band)
        self.edge = float(edge)
        init_lambda = min(max(init_lambda, 1e-3), 1 - 1e-3)
        self.param = nn.Parameter(torch.tensor(math.log(init_lambda / (1 - init_lambda))))

    def _window_1d(self, freqs: torch.Tensor) -> torch.Tensor:
        # freqs in cycles/sample, |f| <= 0.5; full range is 1.0, so the band half-width
        # is band / 2.
        a = self.band / 2.0
        f = freqs.abs()
        if self.edge <= 0.0:
            return (f <= a).to(freqs.dtype)
        t = ((f - a) / self.edge).clamp(0.0, 1.0)
        return 0.5 * (1.0 + torch.cos(math.pi * t))

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        w = x.shape[-1]
        xf = x.float()
        rf = ref.float()
        fy = _fft_frequencies(h, onesided=False, device=x.device)
        fx = _fft_frequencies(w, onesided=True, device=x.device)
        win = self._window_1d(fy)[:, None] * self._window_1d(fx)[None, :]
        lam = torch.sigmoid(self.param)
        kx = torch.fft.rfft2(xf, norm="ortho")
        ky = torch.fft.rfft2(rf, norm="ortho")
        k = kx + (lam * win) * (ky - kx)
        return torch.fft.irfft2(k, s=[h, w], norm="ortho")


class CascadeStage(nn.Module):
    """A small residual conv stage (conv -> act -> conv) followed by data consistency."""

    def __init__(self, channels: int, band: float, edge: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, channels, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.conv2 = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.dc = DataConsistency(band=band, edge=edge)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        y = x + self.conv2(self.act(self.conv1(torch.cat([x, ref], dim=1))))
        return self.dc(y.float(), ref)


class CascadedUNet(nn.Module):
    """Modified U-Net (18 conv blocks, 4 pools, 4 ups, 4 concatenations) + DC cascade.

    Args:
        base_channels: channels at the first level (doubled at each of the 4 pools).
        cascade_stages: number of (small conv stage + data consistency) steps.
        cascade_channels: hidden channels of each cascade stage.
        dc_band: central fraction of each frequency axis where data consistency acts.
        dc_edge: width of the raised-cosine edge of the band (fraction of the axis).
        noise_input: a second input channel carries the slice's noise level.
        noise_gain: the network multiplies that channel by this inside (not part of the
            input's contract): under Adam, whose steps do not scale with the gradient, it
            makes the level's path learn ``noise_gain`` times faster from zero weights.
    """

    def __init__(self, base_channels: int = 16, cascade_stages: int = 3,
                 cascade_channels: int = 8, dc_band: float = 0.25, dc_edge: float = 0.1,
                 noise_input: bool = False, noise_gain: float = 1.0) -> None:
        super().__init__()
        c = int(base_channels)
        chans = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.base_channels = c
        self.n_cascade = int(cascade_stages)
        self.multiple = 16
        self.noise_input = bool(noise_input)
        self.in_channels = 2 if self.noise_input else 1
        self.noise_gain = float(noise_gain)
        self.encoders = nn.ModuleList()
        in_ch = self.in_channels
        for ch in chans:
            self.encoders.append(DoubleConv(in_ch, ch))
            in_ch = ch
        self.decoders = nn.ModuleList()
        for level in range(3, -1, -1):
            self.decoders.append(UpLevel(in_ch, chans[level], chans[level]))
            in_ch = chans[level]
        self.head = nn.Conv2d(in_ch, 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.cascade = nn.ModuleList(
            [CascadeStage(cascade_channels, dc_band, dc_edge) for _ in range(self.n_cascade)]
        )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        w = x.shape[-1]
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        if ph == 0 and pw == 0:
            return x
        if ph < h and pw < w:
            return F.pad(x, [0, pw, 0, ph], mode="reflect")
        return F.pad(x, [0, pw, 0, ph], mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        w = x.shape[-1]
        padded = self._pad(x.float())
        inp = padded[:, :1]  # the image; a second channel is its noise level
        feats = padded
        if self.noise_input and self.noise_gain != 1.0:
            feats = torch.cat([inp, padded[:, 1:] * self.noise_gain], dim=1)
        skips: List[torch.Tensor] = []
        n_enc = len(self.encoders)
        i = 0
        for enc in self.encoders:
            feats = enc(feats)
            if i < n_enc - 1:
                skips.append(feats)
                feats = F.max_pool2d(feats, kernel_size=2)
            i += 1
        j = 0
        for dec in self.decoders:
            feats = dec(feats, skips[len(skips) - 1 - j])
            j += 1
        y = inp + self.head(feats).float()
        for stage in self.cascade:
            y = stage(y, inp)
        return y[:, :, :h, :w]


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, size: int = 512, width: int | None = None) -> int:
    """FLOPs (2 x multiply-accumulates) of the convolutions for one ``size x width`` slice.

    Counted with forward hooks on every ``nn.Conv2d`` of an eager (non-scripted) model;
    FFTs, pooling, interpolation and activations are negligible and not counted.
    """
    width = size if width is None else width
    total = [0]

    def hook(mod: nn.Module, inputs, output) -> None:  # noqa: ANN001
        assert isinstance(mod, nn.Conv2d)
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs = output.numel() * (mod.in_channels // mod.groups) * k
        total[0] += 2 * macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, int(getattr(model, "in_channels", 1)), size, width))
    finally:
        for hnd in handles:
            hnd.remove()
    return int(total[0])
