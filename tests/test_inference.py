"""The shipped model files and the inference paths: checksums, both runtimes agree, tiles."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import WEIGHTS_DIR
from models.inference import (ModelChecksumError, enhance_volume, load_model, read_checksums, tile_starts)
from simulation.dicom_study import simulate_series
from simulation.phantom import PhantomPatient, render_plane, sagittal_geometry

ROOT = Path(__file__).resolve().parents[1]
MODELS = WEIGHTS_DIR


@pytest.fixture(scope="module")
def sagittal_t1() -> np.ndarray:
    patient = PhantomPatient.from_seed(5151, protocol="hivd")
    planes = sagittal_geometry(n_slices=1)
    series = simulate_series(patient, "SAG_T1", planes, [render_plane(patient, p) for p in planes],
                             acquisition="accelerated", seed=5151)
    return series.images.astype(np.uint16)


def test_checksum_file_lists_both_shipped_files():
    listed = read_checksums(MODELS / "cervical_dl_recon.sha256")
    assert set(listed) == {"cervical_dl_recon.pt", "cervical_dl_recon.onnx"}


@pytest.mark.parametrize("runtime,name", [("torch", "cervical_dl_recon.pt"), ("onnxruntime", "cervical_dl_recon.onnx")])
def test_tampered_file_is_refused_by_its_runtime(tmp_path, runtime, name):
    shutil.copytree(MODELS, tmp_path / "m", ignore=shutil.ignore_patterns("*.py", "__pycache__", "checkpoints", "*.log", "*.png"))
    path = tmp_path / "m" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError, match="checksum mismatch"):
        load_model(tmp_path / "m", torch.device("cpu"), runtime=runtime)


def test_onnx_and_torch_runtimes_give_the_same_image(sagittal_t1):
    """The two shipped files hold the same network: outputs agree to float precision."""
    a = enhance_volume(load_model(MODELS, torch.device("cpu"), runtime="onnxruntime"), sagittal_t1)
    b = enhance_volume(load_model(MODELS, torch.device("cpu"), runtime="torch"), sagittal_t1)
    assert a.shape == b.shape == sagittal_t1.shape
    assert np.abs(a - b).max() < 1e-3 * float(b.max())


def test_odd_matrix_is_padded_like_the_network(sagittal_t1):
    """ONNX Runtime pads non-multiples of 16 itself: same result as the PyTorch network."""
    crop = sagittal_t1[:, 5:205, 11:180]  # 200 x 169
    a = enhance_volume(load_model(MODELS, torch.device("cpu"), runtime="onnxruntime"), crop)
    b = enhance_volume(load_model(MODELS, torch.device("cpu"), runtime="torch"), crop)
    assert a.shape == crop.shape
    assert np.abs(a - b).max() < 1e-3 * float(b.max())


def test_tile_starts_cover_with_overlap():
    assert tile_starts(512, 512, 64) == [0]
    starts = tile_starts(1024, 512, 64)
    assert starts[0] == 0 and starts[-1] == 512
    assert all(b - a <= 512 - 64 for a, b in zip(starts, starts[1:]))
    assert tile_starts(700, 512, 64) == [0, 188]


def test_large_matrix_tiles_match_the_whole_image(sagittal_t1):
    """A 1024x1024 slice (the 512 phantom upsampled) run in overlapping 512 tiles agrees with
    the same slice run in one piece: the seams are blended."""
    big = np.kron(sagittal_t1[0], np.ones((2, 2), dtype=np.uint16))[None]
    model = load_model(MODELS, torch.device("cpu"))
    tiled = enhance_volume(model, big)
    whole = enhance_volume(model, big, tile=1024)
    assert tiled.shape == big.shape
    body = whole > 0.1 * whole.max()
    rel = np.abs(tiled - whole)[body].mean() / whole[body].mean()
    assert rel < 0.01, rel
    # the tiled output is an enhancement, not a copy of the input
    assert np.abs(tiled - big).mean() > 0.1 * np.abs(whole - big).mean()
