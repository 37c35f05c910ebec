"""Shared fixtures: simulated studies (made once per session through the stable CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)  # the project is installed (pip install -e .): no PYTHONPATH


def make_study(out: Path, *, protocol="myelopathy", acquisition="accelerated", seed=11, vendor="philips",
               motion="none", extra: tuple[str, ...] = ()) -> Path:
    cmd = [sys.executable, "-m", "simulation.make_study", "--protocol", protocol, "--acquisition", acquisition,
           "--seed", str(seed), "--out", str(out), "--vendor", vendor, "--motion", motion, *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    return out


def run_app(input_dir: Path, output_dir: Path, model_dir: Path = WEIGHTS_DIR, env_paths: bool = False,
            cwd: Path = ROOT, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m app`` with -i/-o/-m, or with only the HOLOSCAN_* variables set."""
    if env_paths:
        env = {**ENV, **(extra_env or {}), "HOLOSCAN_INPUT_PATH": str(input_dir), "HOLOSCAN_OUTPUT_PATH": str(output_dir),
               "HOLOSCAN_MODEL_PATH": str(model_dir)}
        cmd = [sys.executable, "-m", "app"]
    else:
        env = {**ENV, **(extra_env or {})}
        cmd = [sys.executable, "-m", "app", "-i", str(input_dir), "-o", str(output_dir), "-m", str(model_dir)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def accelerated_study(tmp_path_factory) -> Path:
    """A small myelopathy study (5 sagittal, 6 axial slices at clinical matrices) with
    mild motion on CE T1 and the noiseless references saved."""
    return make_study(tmp_path_factory.mktemp("acc") / "study", motion="mild",
                      extra=("--save-truth", "--sagittal-slices", "5", "--axial-slices", "6"))


@pytest.fixture(scope="session")
def app_run(accelerated_study, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("app") / "out"
    result = run_app(accelerated_study, out)
    return out, result
