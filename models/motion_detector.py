"""A small CNN that scores motion artifacts on one MR slice (probability 0-1).

    detector = load_motion_detector(WEIGHTS_DIR)      # checksum verified; CUDA when present
    p = detector.score_slices(volume, phase_encode_axis)  # (slices,) float, 0-1

Why a network: the classical ghost measure (``qc.metrics``) sees ghosts only in
the air beside the body; where the body fills the field of view along the phase-encode
direction (sagittal necks, axial slices) ghosts fall inside the body and the measure
misses strong artifacts. The network sees the whole slice.

Input (:func:`prepare_slice`): the slice turned so that phase encoding runs along the
columns (array axis 1), averaged down to ``INPUT_SIZE`` x ``INPUT_SIZE`` (area
interpolation, which also halves the noise of a 512 matrix while ghosts, being coherent,
stay), divided by its 99.5th percentile and clipped to [0, 1.5]; two channels, the image
and its square root (faint ghosts in the air stand out in the second). Output: one logit
per slice. Weights ship as a weights-only ``state_dict`` (``motion_detector.pt``,
``torch.load(weights_only=True)``), verified against ``motion_detector.sha256``.
Training: ``python -m models.training.train_motion_detector`` (MODEL_CARD.md, "Motion detector").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.inference import MODEL_DIR, ModelChecksumError, file_sha256, read_checksums, select_device

__all__ = [
    "INPUT_SIZE",
    "MOTION_WEIGHTS_FILE",
    "MOTION_SHA256_FILE",
    "MOTION_INFO_FILE",
    "MotionNet",
    "MotionDetector",
    "prepare_slice",
    "prepare_volume",
    "load_motion_detector",
]

INPUT_SIZE = 256
MOTION_WEIGHTS_FILE = "motion_detector.pt"
MOTION_SHA256_FILE = "motion_detector.sha256"
MOTION_INFO_FILE = "motion_detector.json"


def prepare_volume(volume: np.ndarray, phase_encode_axis: int) -> np.ndarray:
    """Network input of a series: ``(slices, 2, INPUT_SIZE, INPUT_SIZE)`` float32.

    ``volume``: ``(slices, rows, columns)`` stored values; ``phase_encode_axis``: 1 when
    phase encoding runs along the rows' direction (DICOM ``ROW``), 0 for ``COL``.
    Zero-filled edge bands are cropped, then the image is averaged down with one factor for
    both axes (its aspect ratio kept: ghost spacing and anatomy are not stretched) so that
    its longer side is ``INPUT_SIZE``, and centred on a zero square.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, columns), got shape {vol.shape}")
    if phase_encode_axis not in (0, 1):
        raise ValueError("phase_encode_axis must be 0 or 1")
    vol = _without_zero_borders(vol)
    if phase_encode_axis == 0:
        vol = vol.transpose(0, 2, 1)
    rows, cols = vol.shape[1:]
    scale = INPUT_SIZE / max(rows, cols)
    size = (max(1, min(INPUT_SIZE, round(rows * scale))), max(1, min(INPUT_SIZE, round(cols * scale))))
    x = torch.from_numpy(np.ascontiguousarray(vol))[:, None]
    x = F.interpolate(x, size=size, mode="area")
    flat = x.reshape(x.shape[0], -1)
    hi = torch.quantile(flat[:, :: max(1, flat.shape[1] // 16384)], 0.995, dim=1).clamp_min(1e-6)
    x = (x / hi[:, None, None, None]).clamp(0.0, 1.5)
    r0, c0 = (INPUT_SIZE - size[0]) // 2, (INPUT_SIZE - size[1]) // 2
    x = F.pad(x, (c0, INPUT_SIZE - size[1] - c0, r0, INPUT_SIZE - size[0] - r0))
    return torch.cat([x, x.sqrt()], dim=1).numpy()


def _without_zero_borders(vol: np.ndarray) -> np.ndarray:
    """The series cropped to its rows and columns that hold any signal: zero-filled bands at
    the field-of-view edge (cropped oversampling, filtered edges) are not part of the
    acquired image. Unchanged when no edge row or column is zero on every slice."""
    rows = np.flatnonzero(vol.any(axis=(0, 2)))
    cols = np.flatnonzero(vol.any(axis=(0, 1)))
    if rows.size < 8 or cols.size < 8:
        return vol
    return vol[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def prepare_slice(image: np.ndarray, phase_encode_axis: int) -> np.ndarray:
    """Network input of one ``(rows, columns)`` slice: ``(2, INPUT_SIZE, INPUT_SIZE)``."""
    return prepare_volume(np.asarray(image)[None], phase_encode_axis)[0]


def _block(c_in: int, c_out: int, stride: int, kernel: tuple[int, int] = (3, 3)) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel[0] // 2, kernel[1] // 2),
                                   bias=False),
                         nn.GroupNorm(8, c_out), nn.ReLU(inplace=True))


class MotionNet(nn.Module):
    """Strided convolutions (256 -> 16 pixels; the first two 3x7, wide along phase
    encoding, where ghosts repeat), average and max pooling, two linear layers; input
    ``(N, 2, 256, 256)``, output ``(N,)`` logits. 99 k parameters."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 32, 48, 64, 64)) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        layers, c_in = [], 2
        for i, w in enumerate(widths):
            layers.append(_block(c_in, w, 2 if i < 4 else 1, (3, 7) if i < 2 else (3, 3)))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c_in, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)[:, 0]


class MotionDetector:
    """The loaded network with its version; :meth:`score_slices` runs it on a series."""

    def __init__(self, network: MotionNet, device: torch.device, version: str) -> None:
        self.network = network.eval().to(device)
        self.device = device
        self.version = version

    @torch.inference_mode()
    def score_slices(self, volume: np.ndarray, phase_encode_axis: int, batch_size: int = 8) -> np.ndarray:
        """Motion-artifact probability per slice, ``(slices,)`` float64 in [0, 1]."""
        x = prepare_volume(volume, phase_encode_axis)
        out = []
        for i in range(0, x.shape[0], batch_size):
            logits = self.network(torch.from_numpy(x[i : i + batch_size]).to(self.device))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def load_motion_detector(model_dir: Path = MODEL_DIR, device: torch.device | None = None) -> MotionDetector:
    """Load the shipped detector after checking its sha256 (``ModelChecksumError`` if it
    differs, ``FileNotFoundError`` if a file is missing)."""
    model_dir = Path(model_dir)
    weights = model_dir / MOTION_WEIGHTS_FILE
    expected = read_checksums(model_dir / MOTION_SHA256_FILE).get(MOTION_WEIGHTS_FILE)
    if not weights.exists():
        raise FileNotFoundError(f"motion detector weights missing: {weights}")
    if expected is None or file_sha256(weights) != expected:
        raise ModelChecksumError(f"{MOTION_WEIGHTS_FILE} does not match {MOTION_SHA256_FILE}")
    info = json.loads((model_dir / MOTION_INFO_FILE).read_text())
    network = MotionNet(tuple(info["widths"]))
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return MotionDetector(network, device or select_device(), str(info["version"]))
