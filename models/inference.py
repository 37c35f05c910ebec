"""Run the shipped model on a whole series.

    model = load_model(WEIGHTS_DIR)                 # checksums verified; CUDA when present
    enhanced = enhance_volume(model, volume)           # the network alone: float32 (S, H, W), input units
    result = enhance_series(model, volume)             # the product: network, do-no-harm guard, strength

The shipped model is one set of weights in two files: ``cervical_dl_recon.pt`` (a
weights-only ``state_dict`` for :class:`models.network.CascadedUNet`, loaded with
``torch.load(weights_only=True)``: no code is unpickled) and ``cervical_dl_recon.onnx``
(the same network exported to ONNX; protobuf, no code). Both are verified against
``cervical_dl_recon.sha256`` before loading. PyTorch runs the network by default, on CUDA
with bf16/fp16 autocast when present, else on the CPU (in bfloat16 where the CPU computes it
natively, :func:`cpu_precision`; ``CERVICAL_DL_CPU_PRECISION``): on idle cores it is as fast as
ONNX Runtime at 512x512 and 5x faster at 320x320, where ONNX Runtime's DFT is not a
fast FFT (``python -m models.evaluation.benchmark --paths``; README). The ONNX file is shipped for
portability; ``CERVICAL_DL_RUNTIME=onnxruntime`` runs it on the CPU.

Intensities stay in the source's stored-value units: one robust scale per *series*
(:func:`models.normalization.robust_scale` of the whole input series, the rule used in
training), never per slice; the output is multiplied back and only negative values are
clipped (to 0). The caller casts / clips to the source dtype and recomputes windowing.
Slices larger than ``tile`` (1024) along either axis are processed in overlapping tiles
blended with linear ramps, so memory stays flat for larger matrices.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models import WEIGHTS_DIR
from models.guard import DEFAULT_STRENGTH
from models.network import CascadedUNet
from models.normalization import noise_level, robust_scale, with_noise_level

if TYPE_CHECKING:
    from models.guard import GuardResult

__all__ = [
    "MODEL_DIR",
    "WEIGHTS_FILE",
    "ONNX_FILE",
    "SHA256_FILE",
    "INFO_FILE",
    "ModelChecksumError",
    "SliceModel",
    "TorchSliceModel",
    "OnnxSliceModel",
    "read_checksums",
    "file_sha256",
    "load_model",
    "select_device",
    "enhance_volume",
    "enhance_series",
    "tile_starts",
    "TILE_SIZE",
    "TILE_OVERLAP",
    "CPU_PRECISION_ENV",
    "cpu_has_native_bfloat16",
    "cpu_precision",
    "THREADS_ENV",
    "available_cpus",
    "configure_cpu_threads",
]

MODEL_DIR = WEIGHTS_DIR
WEIGHTS_FILE = "cervical_dl_recon.pt"
ONNX_FILE = "cervical_dl_recon.onnx"
SHA256_FILE = "cervical_dl_recon.sha256"
INFO_FILE = "model_info.json"
#: Largest slice side run in one piece; larger slices are tiled (flat memory). 1024 since
#: 2026-12-07 (512 before): a whole 1024 slice peaks near 500 MiB, and 512 tiles cost 2.1-2.2x
#: the network's time at 640-1024 px (docs/inference_choice_rule_tiles.json).
TILE_SIZE = 1024
#: Overlap between neighbouring tiles (pixels), blended with linear ramps.
TILE_OVERLAP = 64
#: The network's arithmetic on the CPU: ``auto`` (bfloat16 where the CPU has it natively,
#: else float32), ``float32`` or ``bfloat16``.
CPU_PRECISION_ENV = "CERVICAL_DL_CPU_PRECISION"
#: What ``auto`` picks on a CPU with native bfloat16 arithmetic.
CPU_PRECISION_AUTO_NATIVE = "bfloat16"


class ModelChecksumError(RuntimeError):
    """A model file's sha256 differs from the expected one (corrupt or substituted)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checksums(path: Path = MODEL_DIR / SHA256_FILE) -> dict[str, str]:
    """``{file name: hex digest}`` from a ``sha256sum``-style file (``<hex>  <name>`` lines)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*")] = parts[0].lower()
    if not out:
        raise ValueError(f"no sha256 entries in {path}")
    return out


def _verified(path: Path, checksums: dict[str, str]) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    expected = checksums.get(path.name)
    if expected is None:
        raise ModelChecksumError(f"no checksum listed for {path.name}; refusing to load it")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelChecksumError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}; "
            "refusing to load (corrupt or substituted model file)")
    return path


def select_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


#: Threads for PyTorch on the CPU (a positive integer); unset: :func:`available_cpus`.
THREADS_ENV = "CERVICAL_DL_THREADS"


def _cpu_limit_in(directory: Path) -> float | None:
    """A cgroup directory's own CPU limit in CPUs: v2 ``cpu.max``, else v1 CFS quota; None if none."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cgroup_cpu_limit(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU limit on this process's cgroup and its ancestors, in CPUs, or None.
    ``proc_cgroup`` (``/proc/self/cgroup``) names the cgroup: ``0::/path`` (v2) or
    ``N:cpu,cpuacct:/path`` (v1); in a container with its own cgroup namespace the path is ``/``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    chains: list[list[Path]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, relative = parts[1], parts[2].strip().lstrip("/")
        if controllers == "":
            base = cgroup_root
        elif "cpu" in controllers.split(","):
            base = next((cgroup_root / n for n in (controllers, "cpu", "cpu,cpuacct") if (cgroup_root / n).is_dir()),
                        cgroup_root / "cpu")
        else:
            continue
        own = base / relative if relative else base
        chains.append([own, *[a for a in own.parents if a == base or base in a.parents]])
    if not chains:  # no /proc/self/cgroup: the root of either hierarchy
        chains = [[cgroup_root], [cgroup_root / "cpu"]]
    limits = [lim for chain in chains for d in chain if (lim := _cpu_limit_in(d)) is not None]
    return min(limits) if limits else None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU limit (rounded up; a
    container's ``limits.cpu`` or ``docker run --cpus``, a systemd ``CPUQuota``). PyTorch
    counts the host's cores, so in a container limited to 2 of 64 CPUs it would start 64
    threads that the quota throttles."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(Path(cgroup_root), Path(proc_cgroup))
    return max(1, min(n, int(np.ceil(limit)))) if limit else max(1, n)


def configure_cpu_threads(cgroup_root: Path = Path("/sys/fs/cgroup"),
                          proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Set PyTorch's CPU threads once for the process and return them: ``CERVICAL_DL_THREADS``
    when set, else PyTorch's own count (which follows ``OMP_NUM_THREADS``) capped at
    :func:`available_cpus`. Raises ``ValueError`` for an unusable ``CERVICAL_DL_THREADS``."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            threads = int(text)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, not {text!r}")
    else:
        threads = min(torch.get_num_threads(), available_cpus(cgroup_root, proc_cgroup))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def cpu_has_native_bfloat16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16); elsewhere
    oneDNN would emulate it, slower than float32."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older or unusual build: do not guess
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def cpu_precision(requested: str | None = None) -> torch.dtype:
    """The network's dtype on the CPU for ``requested`` (else ``CERVICAL_DL_CPU_PRECISION``,
    else ``auto``). Raises ``ValueError`` for an unknown name."""
    name = (requested or os.environ.get(CPU_PRECISION_ENV) or "auto").strip().lower()
    if name not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"unknown value {name!r} (auto, float32 or bfloat16)")
    if name == "auto":
        name = CPU_PRECISION_AUTO_NATIVE if cpu_has_native_bfloat16() else "float32"
    return torch.bfloat16 if name == "bfloat16" else torch.float32


class SliceModel:
    """Callable ``(B, 1, H, W)`` float32 normalised slices -> same shape, on ``device``.
    ``runtime`` names the engine ("torch" or "onnxruntime")."""

    device: torch.device = torch.device("cpu")
    runtime: str = ""
    #: the network's arithmetic ("float32", or the autocast dtype: "bfloat16", "float16")
    precision: str = "float32"
    #: the network takes a second channel with the slice's noise level
    noise_input: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchSliceModel(SliceModel):
    """The PyTorch network; bf16 (else fp16) autocast on CUDA. On the CPU the network and
    its input are in channels-last layout: oneDNN's convolutions run 1.28-1.34x faster that
    way at 128-512 px on 2 cores (2026-12-07), with outputs equal to 1e-6 of the series scale.
    ``cpu_dtype`` (CPU only; default :func:`cpu_precision`): ``torch.bfloat16`` runs the
    convolutions under autocast as on CUDA; the residual addition, the data-consistency
    steps and the output stay float32 (:class:`models.network.CascadedUNet`)."""

    runtime = "torch"

    def __init__(self, network: torch.nn.Module, device: torch.device,
                 memory_format: torch.memory_format | None = None,
                 cpu_dtype: torch.dtype | None = None) -> None:
        self.device = device
        if memory_format is None:  # CUDA keeps the default layout: not measured there yet
            memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self._layout = memory_format
        self.network = network.to(device).to(memory_format=self._layout).eval()
        self.noise_input = bool(getattr(network, "noise_input", False))
        self._amp_dtype = None
        if device.type == "cuda":
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = cpu_precision() if cpu_dtype is None else cpu_dtype
            if dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"cpu_dtype must be float32 or bfloat16, not {dtype}")
            self._amp_dtype = None if dtype == torch.float32 else dtype
        self.precision = str(self._amp_dtype or torch.float32).replace("torch.", "")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            t = t.contiguous(memory_format=self._layout)
            if self._amp_dtype is not None:
                with torch.autocast(device_type=self.device.type, dtype=self._amp_dtype):
                    y = self.network(t)
            else:
                y = self.network(t)
            return y.float().cpu().numpy()


class OnnxSliceModel(SliceModel):
    """The ONNX export on ONNX Runtime's CPU provider. The export holds the network's
    padding for sizes that are multiples of 16 only, so inputs are padded here with
    the network's own rule (reflect; replicate when the image is too small)."""

    runtime = "onnxruntime"
    multiple = 16

    def __init__(self, path: Path, threads: int | None = None, noise_input: bool = False) -> None:
        import onnxruntime as ort

        self.noise_input = bool(noise_input)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "edge"
            x = np.pad(x, [(0, 0), (0, 0), (0, ph), (0, pw)], mode=mode)
        y = self.session.run(None, {"x": x})[0]
        return y[..., :h, :w]


def load_model(model_dir: Path = MODEL_DIR, device: torch.device | None = None,
               runtime: str | None = None, cpu_dtype: torch.dtype | None = None) -> SliceModel:
    """Verify and load the shipped model from ``model_dir``.

    ``runtime``: "torch", "onnxruntime" or "auto" (default, or ``CERVICAL_DL_RUNTIME``;
    "auto" is PyTorch, the fastest path measured on the CPU and the one for CUDA).
    ``cpu_dtype``: the PyTorch network's arithmetic on the CPU (default :func:`cpu_precision`).
    Raises ``FileNotFoundError`` when a file is missing, :class:`ModelChecksumError` when
    a checksum differs, ``ValueError`` for an unusable description.
    """
    model_dir = Path(model_dir)
    device = select_device() if device is None else device
    runtime = (runtime or os.environ.get("CERVICAL_DL_RUNTIME") or "auto").lower()
    if runtime not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"unknown runtime {runtime!r} (auto, torch or onnxruntime)")
    checksums = read_checksums(model_dir / SHA256_FILE)
    if runtime == "auto":
        runtime = "torch"
    info = json.loads((model_dir / INFO_FILE).read_text())
    arch = {k: v for k, v in info["architecture"].items() if k != "class"}
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("the onnxruntime runtime runs on the CPU only")
        return OnnxSliceModel(_verified(model_dir / ONNX_FILE, checksums), noise_input=bool(arch.get("noise_input")))
    state = torch.load(_verified(model_dir / WEIGHTS_FILE, checksums), map_location="cpu", weights_only=True)
    network = CascadedUNet(**arch)
    network.load_state_dict(state)
    return TorchSliceModel(network, device, cpu_dtype=cpu_dtype)


def enhance_volume(model: SliceModel, volume: np.ndarray, batch_size: int = 4,
                   tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP) -> np.ndarray:
    """Enhance a series ``(S, H, W)`` (any integer or float dtype) with a loaded model;
    returns float32 ``(S, H, W)`` in the input's units, negatives clipped to 0.

    On the CPU slices run one at a time (as fast per slice as batches for these cache-bound
    convolutions, and the result cannot depend on ``batch_size``); on CUDA in batches.
    Slices with a side above ``tile`` pixels run as overlapping tiles (``overlap`` px).
    """
    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (S, H, W), got shape {vol.shape}")
    if not (np.issubdtype(vol.dtype, np.integer) or np.issubdtype(vol.dtype, np.floating)):
        raise TypeError(f"unsupported dtype {vol.dtype}")
    n = vol.shape[0]
    out = np.empty(vol.shape, dtype=np.float32)
    if n == 0:
        return out
    scale = np.float32(robust_scale(vol))  # one scale for the whole series (never per slice)
    batch_size = max(1, int(batch_size)) if model.device.type == "cuda" else 1

    def runner(levels: np.ndarray | None):
        # A noise-aware network gets each whole slice's level, also on its tiles.
        if levels is None:
            return lambda part: model(part[:, None])[:, 0]
        return lambda part: model(with_noise_level(part, levels))[:, 0]

    tiled = max(vol.shape[1:]) > tile
    for i in range(0, n, batch_size):
        chunk = np.asarray(vol[i : i + batch_size], dtype=np.float32)
        chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0) / scale
        run = runner(np.array([noise_level(s) for s in chunk]) if model.noise_input else None)
        y = _run_tiled(run, chunk, tile, overlap) if tiled else run(chunk)
        out[i : i + y.shape[0]] = np.clip(y, 0.0, None) * scale
    return out


def enhance_series(model: SliceModel, volume: np.ndarray, strength: str | float = DEFAULT_STRENGTH,
                   batch_size: int = 4) -> "GuardResult":
    """The product's enhancement of a series ``(S, H, W)``: the network
    (:func:`enhance_volume`), then the do-no-harm guard and the strength level
    (:mod:`models.guard`). Returns the guard's result (float32 images in input units,
    per-slice share held back, noise SD)."""
    from models.guard import guard_series

    vol = np.asarray(volume)
    if vol.ndim == 2:
        vol = vol[None]
    return guard_series(vol, enhance_volume(model, vol, batch_size=batch_size), strength)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least
    ``overlap`` pixels shared by neighbours (one tile when ``length <= tile``)."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap}")
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    return [int(round(s)) for s in np.linspace(0, length - tile, n)]


def _ramp(size: int, start: int, length: int, overlap: int) -> np.ndarray:
    """1-D blending weight of a tile: ramps up/down over ``overlap`` pixels, except at
    the image border."""
    w = np.ones(size, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if start > 0:
            w[:overlap] = ramp
        if start + size < length:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def _run_tiled(run, chunk: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """Apply ``run`` ((B, h, w) -> (B, h, w)) on overlapping tiles of ``chunk`` (B, H, W)."""
    _, rows, cols = chunk.shape
    acc = np.zeros(chunk.shape, dtype=np.float32)
    weight = np.zeros(chunk.shape[1:], dtype=np.float32)
    th, tw = min(tile, rows), min(tile, cols)
    for r0 in tile_starts(rows, tile, overlap):
        wr = _ramp(th, r0, rows, overlap)
        for c0 in tile_starts(cols, tile, overlap):
            w = wr[:, None] * _ramp(tw, c0, cols, overlap)[None, :]
            acc[:, r0 : r0 + th, c0 : c0 + tw] += run(chunk[:, r0 : r0 + th, c0 : c0 + tw]) * w
            weight[r0 : r0 + th, c0 : c0 + tw] += w
    return acc / weight
