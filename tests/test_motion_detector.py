"""The shipped motion detector: safe loading, input preparation, and that it sees motion."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from models.inference import MODEL_DIR, ModelChecksumError
from models.motion_detector import (
    INPUT_SIZE,
    MOTION_INFO_FILE,
    MOTION_SHA256_FILE,
    MOTION_WEIGHTS_FILE,
    load_motion_detector,
    prepare_volume,
)
from simulation.dicom_study import simulate_series
from simulation.phantom import PhantomPatient, axial_geometry, render_plane, sagittal_geometry


@pytest.fixture(scope="module")
def detector():
    return load_motion_detector(MODEL_DIR)


def test_prepare_volume_turns_phase_encoding_to_columns_and_normalises():
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 1000, size=(2, 320, 256)).astype(np.float32)
    x = prepare_volume(vol, 1)
    assert x.shape == (2, 2, INPUT_SIZE, INPUT_SIZE) and x.dtype == np.float32
    assert 0.0 <= x.min() and x[:, 0].max() <= 1.5
    assert np.allclose(x[:, 1], np.sqrt(x[:, 0]), atol=1e-6)
    # The same images with phase encoding along the other axis give the same input.
    np.testing.assert_allclose(prepare_volume(vol.transpose(0, 2, 1), 0), x, atol=1e-6)
    with pytest.raises(ValueError):
        prepare_volume(vol[0], 1)
    with pytest.raises(ValueError):
        prepare_volume(vol, 2)


def test_prepare_volume_keeps_the_aspect_ratio_and_drops_zero_filled_bands():
    """A non-square image is not stretched (ghost spacing and anatomy keep their shape): it
    fills INPUT_SIZE along its longer side, centred on zeros; zero-filled edge bands are
    cropped first, so the same image with and without them gives the same input."""
    rng = np.random.default_rng(1)
    vol = rng.uniform(100, 1000, size=(1, 256, 128)).astype(np.float32)
    x = prepare_volume(vol, 1)[0, 0]
    filled = np.flatnonzero(x.any(axis=0))
    assert x.any(axis=1).all() and filled.size == INPUT_SIZE // 2
    assert filled[0] == INPUT_SIZE // 4  # centred
    banded = np.zeros((1, 300, 128), dtype=np.float32)
    banded[:, 22:278] = vol
    np.testing.assert_allclose(prepare_volume(banded, 1), prepare_volume(vol, 1), atol=1e-6)


def test_corrupt_or_missing_detector_is_refused(tmp_path):
    for name in (MOTION_WEIGHTS_FILE, MOTION_SHA256_FILE, MOTION_INFO_FILE):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    assert load_motion_detector(tmp_path).version
    data = bytearray((tmp_path / MOTION_WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / MOTION_WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError):
        load_motion_detector(tmp_path)
    (tmp_path / MOTION_WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError):
        load_motion_detector(tmp_path)


@pytest.mark.parametrize("role", ["SAG_CE_T1", "AX_T2"])
def test_detector_scores_severe_motion_above_clean(detector, role):
    """Unseen phantom patient (seed outside the training, calibration and evaluation
    ranges): every severe-motion series scores above every clean one."""
    patient = PhantomPatient.from_seed(8600, protocol="myelopathy")
    planes = axial_geometry(n_slices=2) if role == "AX_T2" else sagittal_geometry(n_slices=2)
    rendered = [render_plane(patient, p) for p in planes]
    clean, moved = [], []
    for seed in (1, 2):
        for motion, out in (("none", clean), ("severe", moved)):
            series = simulate_series(patient, role, planes, rendered, acquisition="accelerated", seed=seed,
                                     motion=motion, motion_kind="both")
            p = detector.score_slices(series.images, series.protocol.phase_encode_axis)
            assert p.shape == (2,) and np.all((0 <= p) & (p <= 1))
            out.append(float(np.max(p)))
    assert max(clean) < min(moved), (clean, moved)
