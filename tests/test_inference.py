"""The shipped model files and the inference paths: checksums, both runtimes agree, tiles."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import WEIGHTS_DIR
from models.inference import (ModelChecksumError, TorchSliceModel, enhance_volume, load_model, read_checksums,
                              tile_starts)
from simulation.dicom_study import simulate_series
from simulation.phantom import PhantomPatient, render_plane, sagittal_geometry

ROOT = Path(__file__).resolve().parents[1]
MODELS = WEIGHTS_DIR


def _float32_torch_model() -> TorchSliceModel:
    """The shipped PyTorch network in float32 (the CPU default is bfloat16 where the CPU has it)."""
    return TorchSliceModel(load_model(MODELS, torch.device("cpu"), runtime="torch").network, torch.device("cpu"),
                           cpu_dtype=torch.float32)


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
    b = enhance_volume(_float32_torch_model(), sagittal_t1)
    assert a.shape == b.shape == sagittal_t1.shape
    assert np.abs(a - b).max() < 1e-3 * float(b.max())


def test_cpu_network_runs_channels_last_with_the_contiguous_layouts_image(sagittal_t1):
    """The CPU default layout (channels-last, faster with oneDNN) changes no image beyond float
    rounding, also at an odd matrix."""
    shipped = _float32_torch_model()
    assert shipped._layout == torch.channels_last
    assert shipped.network.encoders[0].block1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    for image in (sagittal_t1, sagittal_t1[:, 5:205, 11:180]):
        a = enhance_volume(shipped, image)
        contiguous = TorchSliceModel(load_model(MODELS, torch.device("cpu"), runtime="torch").network,
                                     torch.device("cpu"), memory_format=torch.contiguous_format,
                                     cpu_dtype=torch.float32)
        b = enhance_volume(contiguous, image)
        assert a.shape == b.shape == image.shape
        assert np.abs(a - b).max() < 1e-4 * float(b.max())


def test_odd_matrix_is_padded_like_the_network(sagittal_t1):
    """ONNX Runtime pads non-multiples of 16 itself: same result as the PyTorch network."""
    crop = sagittal_t1[:, 5:205, 11:180]  # 200 x 169
    a = enhance_volume(load_model(MODELS, torch.device("cpu"), runtime="onnxruntime"), crop)
    b = enhance_volume(_float32_torch_model(), crop)
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
    the same slice run in one piece (the default up to 1024): the seams are blended."""
    from models.inference import TILE_SIZE

    big = np.kron(sagittal_t1[0], np.ones((2, 2), dtype=np.uint16))[None]
    model = load_model(MODELS, torch.device("cpu"))
    tiled = enhance_volume(model, big, tile=512)
    whole = enhance_volume(model, big)
    assert TILE_SIZE >= 1024 and np.array_equal(whole, enhance_volume(model, big, tile=1024))
    assert tiled.shape == big.shape
    body = whole > 0.1 * whole.max()
    rel = np.abs(tiled - whole)[body].mean() / whole[body].mean()
    assert rel < 0.01, rel
    # the tiled output is an enhancement, not a copy of the input
    assert np.abs(tiled - big).mean() > 0.1 * np.abs(whole - big).mean()


def test_noise_level_follows_the_noise_and_ignores_the_air():
    """The noise-aware network's input level is the tissue's noise SD (x the gain): it
    doubles with the noise and does not drop when most of the slice is masked air."""
    from models.normalization import NOISE_LEVEL_GAIN, noise_level

    rng = np.random.default_rng(3)
    body = np.zeros((128, 128), np.float32)
    body[40:90, 30:100] = 0.6
    levels = []
    for sd in (0.02, 0.04):
        img = body + rng.normal(0, sd, body.shape).astype(np.float32)
        img[body == 0] = 0.0  # zero-filled air, as in many real series
        levels.append(noise_level(np.abs(img)))
    assert levels[0] == pytest.approx(NOISE_LEVEL_GAIN * 0.02, rel=0.15)
    assert levels[1] / levels[0] == pytest.approx(2.0, rel=0.15)


def test_noise_aware_network_starts_as_the_network_it_extends():
    """A new stage with a noise-level channel starts from the earlier weights with zero
    weights for that channel: the same output whatever the level."""
    from models.network import CascadedUNet
    from models.training.train import with_input_channels

    torch.manual_seed(0)
    blind = CascadedUNet(base_channels=4, cascade_stages=1)
    with torch.no_grad():
        for p in blind.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the head starts at zero; make it do something
    aware = CascadedUNet(base_channels=4, cascade_stages=1, noise_input=True)
    aware.load_state_dict(with_input_channels(blind.state_dict(), aware))
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        ref = blind(x)
        assert float((ref - x).abs().max()) > 1e-3
        for level in (0.1, 2.0):
            out = aware(torch.cat([x, torch.full_like(x, level)], dim=1))
            assert out.shape == ref.shape
            assert torch.allclose(out, ref, atol=1e-5)


def test_noise_aware_tiles_get_the_whole_slice_level():
    """Tiles of a noise-aware network see the level of the whole slice, so tiled and whole
    runs agree (a per-tile estimate would put seams where the noise changes, as with a
    coil's g-factor)."""
    from models.inference import TorchSliceModel
    from models.network import CascadedUNet

    torch.manual_seed(1)
    net = CascadedUNet(base_channels=4, cascade_stages=1, noise_input=True)
    with torch.no_grad():
        net.encoders[0].block1.conv.weight[:, 1].fill_(0.5)  # respond to the level
        net.head.weight.normal_(0, 0.1)
    model = TorchSliceModel(net, torch.device("cpu"))
    rng = np.random.default_rng(4)
    img = np.full((1, 192, 192), 400.0, np.float32)
    img[0, :, :96] += rng.normal(0, 5, (192, 96)).astype(np.float32)  # quiet left half
    img[0, :, 96:] += rng.normal(0, 40, (192, 96)).astype(np.float32)  # noisy right half
    whole = enhance_volume(model, img, tile=192)
    tiled = enhance_volume(model, img, tile=96, overlap=32)
    assert np.abs(tiled - whole).max() < 1e-3 * float(whole.max())


def test_cpu_precision_follows_the_setting_and_the_cpu(monkeypatch):
    """``auto`` never picks bfloat16 on a CPU that would emulate it; names are checked."""
    from models import inference

    monkeypatch.delenv(inference.CPU_PRECISION_ENV, raising=False)
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: False)
    assert inference.cpu_precision() == torch.float32
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: True)
    assert inference.cpu_precision() == getattr(torch, inference.CPU_PRECISION_AUTO_NATIVE)
    monkeypatch.setenv(inference.CPU_PRECISION_ENV, " BFloat16 ")
    assert inference.cpu_precision() == torch.bfloat16
    assert inference.cpu_precision("float32") == torch.float32
    with pytest.raises(ValueError, match="unknown value 'fp8'"):
        inference.cpu_precision("fp8")


def test_bfloat16_on_the_cpu_runs_the_convolutions_in_bfloat16_and_keeps_the_image(sagittal_t1):
    """Autocast covers the convolutions; the residual, data consistency and output stay float32,
    so the image moves by rounding only (a bfloat16 residual addition would move it by ~0.4 %)."""
    network = load_model(MODELS, torch.device("cpu"), runtime="torch").network
    reference = TorchSliceModel(network, torch.device("cpu"), cpu_dtype=torch.float32)
    fast = TorchSliceModel(network, torch.device("cpu"), cpu_dtype=torch.bfloat16)
    assert (reference.precision, fast.precision) == ("float32", "bfloat16")
    seen = []
    hook = network.encoders[0].block1.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        b = enhance_volume(fast, sagittal_t1)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    a = enhance_volume(reference, sagittal_t1)
    assert b.dtype == np.float32 and b.shape == a.shape
    scale = float(sagittal_t1.max())
    diff = b - a
    assert np.abs(diff).mean() < 5e-4 * scale
    assert np.abs(diff).max() < 1e-2 * scale
    assert abs(float(diff.mean())) < 1e-4 * float(a[a > 0.2 * a.max()].mean())


def test_the_cpu_default_is_bfloat16_exactly_where_the_cpu_computes_it_natively(monkeypatch):
    from models.inference import CPU_PRECISION_ENV, cpu_has_native_bfloat16

    monkeypatch.delenv(CPU_PRECISION_ENV, raising=False)
    model = load_model(MODELS, torch.device("cpu"), runtime="torch")
    assert model.precision == ("bfloat16" if cpu_has_native_bfloat16() else "float32")
    monkeypatch.setenv(CPU_PRECISION_ENV, "float32")
    assert load_model(MODELS, torch.device("cpu"), runtime="torch").precision == "float32"


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("files,cap", [
    ({"cpu.max": "50000 100000\n"}, 1),                      # cgroup v2: half a CPU -> 1 thread
    ({"cpu.max": "max 100000\n"}, None),                     # v2 without a limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1: 1 CPU
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),   # v1 without
    ({}, None),                                              # no cgroup files: the affinity alone
])
def test_available_cpus_follow_a_containers_cpu_limit(tmp_path, files, cap):
    import os

    from models.inference import available_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    # no /proc/self/cgroup to read: the hierarchies' roots, as inside a container
    assert available_cpus(tmp_path, tmp_path / "no-proc-cgroup") == (min(affinity, cap) if cap else affinity)


@pytest.mark.parametrize("proc_line,files", [
    # v1 (a Kubernetes pod): the pod's own quota, under a looser parent
    ("4:cpu,cpuacct:/kubepods/pod1/c1", {"cpu,cpuacct/kubepods/cpu.cfs_quota_us": "400000",
                                         "cpu,cpuacct/kubepods/cpu.cfs_period_us": "100000",
                                         "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us": "100000",
                                         "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_period_us": "100000"}),
    # v2 (a systemd service with CPUQuota=50 %, under a slice without a limit)
    ("0::/system.slice/cervical.service", {"system.slice/cpu.max": "max 100000",
                                           "system.slice/cervical.service/cpu.max": "50000 100000"}),
    # v2: the parent slice is the tighter one
    ("0::/limited.slice/cervical.service", {"limited.slice/cpu.max": "100000 100000",
                                            "limited.slice/cervical.service/cpu.max": "400000 100000"}),
])
def test_available_cpus_read_the_processs_own_cgroup_and_its_parents(tmp_path, proc_line, files):
    from models.inference import available_cpus

    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"12:memory:/elsewhere\n{proc_line}\n")
    assert available_cpus(root, proc) == 1
    proc.write_text("12:memory:/elsewhere\n")  # no cpu controller listed: no limit found
    assert available_cpus(root, proc) >= 1 and available_cpus(root, proc) == available_cpus(tmp_path / "x", proc)


def test_cpu_threads_come_from_the_setting_or_the_limit(tmp_path, monkeypatch, restore_torch_threads):
    from models.inference import THREADS_ENV, configure_cpu_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a container limited to one CPU
    torch.set_num_threads(2)
    no_proc = tmp_path / "no-proc-cgroup"
    assert configure_cpu_threads(tmp_path, no_proc) == 1 == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "3")  # an explicit setting wins (the operator's choice)
    assert configure_cpu_threads(tmp_path, no_proc) == 3 == torch.get_num_threads()
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=THREADS_ENV):
            configure_cpu_threads(tmp_path, no_proc)
