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
    read_complex_slice,
    simulate_pair,
    validation_set,
)
from models.training.train import gradient_l1, load_earlier_stage


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
