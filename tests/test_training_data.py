"""Training data of model 0.3.0 (issue 12, item 2): real slices, real phase, SENSE, shading,
the gradient loss, starting from the shipped weights, and the evaluation's baseline reuse."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from models import WEIGHTS_DIR
from models.evaluation.enhancement import copy_baselines
from models.training.data import (
    ITK_COMPLEX_SLICE,
    ITK_DATA,
    DataConfig,
    ObjectSampler,
    interpolated_from_coarser,
    read_complex_slice,
    simulate_pair,
    validation_set,
)
from models.training.train import gaussian_lowpass, gradient_l1, load_earlier_stage, lowpass_l1


def _config(**kw) -> DataConfig:
    base = dict(source_weights={"real": 1.0}, phantom_bank=0, matrix_sizes=(128, 192))
    return DataConfig(**(base | kw))


def test_complex_slice_carries_a_real_phase():
    z = read_complex_slice(ITK_DATA / ITK_COMPLEX_SLICE)
    assert z.shape == (217, 181) and np.iscomplexobj(z)
    tissue = np.abs(z) > 0.1 * np.abs(z).max()
    assert tissue.mean() > 0.3
    # a real object phase: not constant, but smooth-ish (not noise)
    assert 0.05 < float(np.std(np.angle(z[tissue]))) < 1.0


def test_real_source_gives_real_and_complex_objects():
    sampler = ObjectSampler(_config(), use_phantom=False, seed=1)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(30):
        obj, source = sampler.sample(rng)
        assert source == "real" and np.all(np.isfinite(obj)) and np.abs(obj).max() <= 1.0 + 1e-9
        kinds.add(np.iscomplexobj(obj))
    assert kinds == {True, False}


def test_sense_pairs_carry_the_r2_noise_and_no_aliasing():
    cfg = _config(sense_prob=1.0, sense_coils=(8, 8))
    obj = np.zeros((128, 128))
    obj[40:88, 40:88] = 1.0  # a half-FOV alias along either axis would land in the border bands
    pair = simulate_pair(obj, np.random.default_rng(3), cfg, snr=20.0, jitter=False, with_conventional=True)
    assert pair["sense"] and pair["protocol"].averages_ratio == 1.0
    inside = np.zeros(obj.shape, bool)
    inside[46:82, 46:82] = True
    sense_sd = float((pair["input"] - pair["target"])[inside].std())
    conventional_sd = float((pair["conventional"] - pair["target"])[inside].std())
    assert sense_sd > 1.3 * conventional_sd  # sqrt(2) * g, g >= 1
    # unfolded: no half-FOV copy of the object in the empty side bands
    outside = np.zeros(obj.shape, bool)
    outside[:, :20] = outside[:, 108:] = outside[:20] = outside[108:] = True
    assert float(pair["input"][outside].mean()) < 0.2 * float(pair["input"][inside].mean())
    odd = np.zeros((127, 127))
    odd[16:112, 16:112] = 1.0
    assert not simulate_pair(odd, np.random.default_rng(4), cfg, snr=20.0)["sense"]  # R = 2 needs an even length


def test_shading_stays_within_its_range():
    cfg = _config(shading_prob=1.0, shading_max=0.4)
    sampler = ObjectSampler(cfg, use_phantom=False, seed=2)
    field = sampler._shading((64, 80), np.random.default_rng(5))
    assert field.shape == (64, 80)
    assert field.max() <= 1.0 + 1e-12 and field.min() >= 0.6 - 1e-12 and field.min() < 0.95


def test_coarse_objects_lose_pixel_detail_but_keep_signal_and_phase():
    rng = np.random.default_rng(6)
    fine = np.clip(rng.random((96, 80)), 0, None)  # detail at the pixel scale
    coarse = interpolated_from_coarser(fine, np.random.default_rng(7), (2.0, 2.0))
    assert coarse.shape == fine.shape and coarse.min() >= 0
    assert abs(float(coarse.mean()) - float(fine.mean())) < 0.05  # the signal level stays
    # neighbour differences: far smaller once resolved 2x coarser
    assert np.abs(np.diff(coarse, axis=0)).mean() < 0.4 * np.abs(np.diff(fine, axis=0)).mean()
    z = interpolated_from_coarser(fine * np.exp(0.4j), np.random.default_rng(7), (2.0, 2.0))
    tissue = np.abs(z) > 0.1
    assert np.iscomplexobj(z) and np.allclose(np.angle(z[tissue]), 0.4, atol=1e-6)  # phase kept
    # off by default: a sampler without it draws exactly the objects it drew before
    a = ObjectSampler(_config(), use_phantom=False, seed=1).sample(np.random.default_rng(8))[0]
    b = ObjectSampler(_config(low_resolution_prob=0.0), use_phantom=False, seed=1).sample(np.random.default_rng(8))[0]
    assert np.array_equal(a, b)
    c = ObjectSampler(_config(low_resolution_prob=1.0, shading_prob=0.0), use_phantom=False, seed=1)
    d = ObjectSampler(_config(shading_prob=0.0), use_phantom=False, seed=1)
    smooth = [np.abs(np.diff(np.abs(s.sample(np.random.default_rng(9))[0]), axis=1)).mean() for s in (c, d)]
    assert smooth[0] < smooth[1]


def test_validation_set_leaves_the_training_slices_out():
    cfg = _config(source_weights={"real": 0.5, "natural": 0.5})
    assert {p["source"] for p in validation_set(7, 4, cfg, use_phantom=False)} == {"natural"}


def test_gradient_loss_penalises_smoothing():
    rng = torch.Generator().manual_seed(0)
    texture = torch.rand(1, 1, 64, 64, generator=rng)
    smooth = torch.nn.functional.avg_pool2d(texture, 5, stride=1, padding=2)
    assert float(gradient_l1(texture, texture)) == 0.0
    # the smoothed texture costs more through its gradients than through plain L1
    assert float(gradient_l1(smooth, texture)) > 2 * float(torch.nn.functional.l1_loss(smooth, texture))


def test_lowpass_loss_sees_the_low_band_noise_that_plain_l1_hardly_weighs():
    rng = torch.Generator().manual_seed(1)
    flat = torch.full((1, 1, 96, 96), 0.5)
    white = 0.05 * torch.randn(1, 1, 96, 96, generator=rng)
    # a 2 px Gaussian keeps about 1 / (2 sqrt(pi) 2) = 0.14 of white noise's SD
    kept = float(gaussian_lowpass(white, 2.0).std()) / float(white.std())
    assert 0.11 < kept < 0.17
    # a constant stays constant (normalised kernel, reflect padding: no darkened border)
    assert torch.allclose(gaussian_lowpass(flat, 2.0), flat, atol=1e-6)
    low_band = gaussian_lowpass(white, 2.0)
    high_band = white - low_band
    l1 = torch.nn.functional.l1_loss
    # plain L1 gives the low band ~15 % of white noise's cost; the term weighs it nearly fully,
    # and an error in the high band hardly
    assert float(l1(flat + low_band, flat)) < 0.2 * float(l1(flat + white, flat))
    assert float(lowpass_l1(flat + low_band, flat)) > 0.6 * float(l1(flat + low_band, flat))
    assert float(lowpass_l1(flat + high_band, flat)) < 0.1 * float(l1(flat + high_band, flat))


def test_training_starts_from_the_shipped_weights_only_when_their_checksum_holds(tmp_path):
    info = json.loads((WEIGHTS_DIR / "model_info.json").read_text())
    for name in (info["file"], "model_info.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    stage = load_earlier_stage({"init_from": str(tmp_path / info["file"])})
    assert stage["step"] == info["steps"] and set(stage["model"]) == set(
        torch.load(WEIGHTS_DIR / info["file"], weights_only=True))
    with open(tmp_path / info["file"], "ab") as f:
        f.write(b"\0")
    with pytest.raises(SystemExit, match="sha256"):
        load_earlier_stage({"init_from": str(tmp_path / info["file"])})


def test_baselines_are_copied_only_for_the_same_inputs():
    row = {"source": "s", "slice": 0, "matrix": [64, 64], "kind": "R=2 SENSE", "snr": 15.0,
           "metrics": {"accelerated": {"ssim_body": 0.61, "psnr": 25.0}, "dl_network": {"ssim_body": 0.8}}}
    stored = copy.deepcopy(row)
    stored["metrics"]["bm3d"] = {"ssim_body": 0.79}
    rows = [copy.deepcopy(row)]
    assert copy_baselines(rows, {"slices": [stored]}) == 1 and rows[0]["metrics"]["bm3d"] == {"ssim_body": 0.79}
    stored["metrics"]["accelerated"]["psnr"] = 25.5  # another noise draw: refused
    with pytest.raises(ValueError, match="not the same input"):
        copy_baselines([copy.deepcopy(row)], {"slices": [stored]})


def test_training_sources_are_read_from_the_named_bundle_only(tmp_path, monkeypatch):
    """On the GPU machine the sources come from the carried bundle
    (``CERVICAL_TRAINING_DATA``): what is in it is found, what is not is left out, and the
    installed paths are not looked at."""
    from models.training.data import MRICRON_DIR, TRAINING_DATA_ENV, real_training_slices, volume_paths

    shutil.copy2(MRICRON_DIR / "ch2bet.nii.gz", tmp_path / "ch2bet.nii.gz")
    shutil.copy2(ITK_DATA / "BrainT1Slice.png", tmp_path / "BrainT1Slice.png")
    monkeypatch.setenv(TRAINING_DATA_ENV, str(tmp_path))
    with pytest.warns(UserWarning, match="training volume missing"):
        found = volume_paths()
    assert found == [tmp_path / "ch2bet.nii.gz"]
    slices = real_training_slices()
    assert len(slices) == 1 and not np.iscomplexobj(slices[0])


def test_worker_stream_gives_fresh_pairs_with_their_noise_level():
    """``PairStream(workers=N)`` (the GPU machine's simulation): batches of the right shape,
    each patch with its whole image's level as a constant channel, every pair taken once,
    and the workers stop with ``close``."""
    from models.normalization import noise_level
    from models.training.data import PairStream

    cfg = _config(pool_size=3, refresh_per_batch=1)
    stream = PairStream(cfg, seed=11, use_phantom=False, noise_input=True, workers=1)
    try:
        for _ in range(3):
            x, y = stream.next_batch(2)
        assert x.shape == (2, 2, 128, 128) and y.shape == (2, 1, 128, 128)
        for patch in x:
            assert np.ptp(patch[1]) == 0.0 and patch[1, 0, 0] > 0  # one level per patch
        taken = stream.state()["next_task"]
        assert taken >= 3 + 3 and sum(stream.source_counts.values()) == taken
        # a pair's level is the whole simulated image's
        assert all(p["noise_level"] == pytest.approx(noise_level(p["input"])) for p in stream.pool)
    finally:
        stream.close()
    assert stream._procs is None


def test_command_line_overrides_move_every_output_with_the_model_dir(tmp_path):
    """``--model-dir`` (the device run's $OUT) takes the weights, model_info, validation and
    loss plot with it, so a candidate never overwrites the shipped model."""
    import argparse

    from models.training.train import apply_overrides, load_config

    cfg = load_config(WEIGHTS_DIR.parent / "training" / "configs" / "stage4.json")
    args = argparse.Namespace(steps=None, time_budget_s=420.0, batch_size=32, data_workers=14, threads=None,
                              checkpoint_dir=None, init_from=None, model_dir=tmp_path / "m")
    out = apply_overrides(cfg, args)
    assert (out["time_budget_s"], out["batch_size"], out["data_workers"]) == (420.0, 32, 14)
    for key in ("model_dir", "info_path", "validation_path", "loss_plot"):
        assert str(out[key]).startswith(str(tmp_path / "m")), key
    assert out["steps"] == cfg["steps"] and "weights" not in str(out["info_path"])
