"""Run the application on one fetched series: ``python -m app`` (default) or the MAP container.

python mode::

    <CPACS_APP_PYTHON> -m app -i IN -o OUT -m <CPACS_MODEL_PATH>      (cwd = repo root; the project is installed)

docker mode (the MAP built from app.yaml; written and documented, not testable on machines
without a Docker engine)::

    docker run --rm --name cervical-dl-job<ID>-<attempt> --network none --user UID:GID \\
        -e HOLOSCAN_INPUT_PATH=/var/holoscan/input -e HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \\
        -e HOLOSCAN_MODEL_PATH=/opt/holoscan/models \\
        -v IN:/var/holoscan/input:ro -v OUT:/var/holoscan/output -v MODELS:/opt/holoscan/models:ro \\
        <CPACS_DOCKER_ARGS, e.g. --gpus all> <CPACS_MAP_IMAGE>

Both report through the application's documented exit codes and ``OUT/run_summary.json``.
The child gets its own process group, a 32 MiB stack limit (the SDK warns otherwise) and
a parent-death signal (``setpriv --pdeathsig KILL``) so it dies with the worker; a timeout or a stop request kills the group
(and ``docker rm -f`` the container, which a killed docker CLI would leave running).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from map.layout import INPUT_DIR as MAP_INPUT
from map.layout import MODELS_DIR as MAP_MODELS
from map.layout import OUTPUT_DIR as MAP_OUTPUT
from map.layout import STACK_LIMIT_KIB

from .settings import REPO_ROOT, Settings

FAILED_PREFIX = "cervical-dl-enhance: FAILED"


@dataclass
class AppResult:
    code: int                      # the app's exit code; -N killed by signal N
    reason: str                    # one line (the app's FAILED line, or ours)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False      # stopped by us (stop request or lost lease), not the app's fault
    timed_out: bool = False


def _wrap(argv: list[str]) -> list[str]:
    """Prefix util-linux helpers (no preexec_fn: the worker is multi-threaded): the child dies
    with the worker thread that started it, and gets a 32 MiB soft stack limit."""
    prefix = []
    if shutil.which("setpriv"):
        prefix += ["setpriv", "--pdeathsig", "KILL", "--"]
    if shutil.which("prlimit"):
        prefix += ["prlimit", f"--stack={STACK_LIMIT_KIB * 1024}:", "--"]
    return prefix + argv


class AppRunner:
    def __init__(self, settings: Settings):
        self.s = settings

    def command(self, in_dir: Path, out_dir: Path, name: str) -> tuple[list[str], dict[str, str], Path]:
        env = dict(os.environ) | self.s.app_environment
        if self.s.run_mode == "docker":
            if not self.s.map_image:
                raise ValueError("CPACS_RUN_MODE=docker needs CPACS_MAP_IMAGE")
            argv = [self.s.docker_bin, "run", "--rm", "--name", name, "--network", "none",
                    "--user", f"{os.getuid()}:{os.getgid()}",
                    "-e", f"HOLOSCAN_INPUT_PATH={MAP_INPUT}", "-e", f"HOLOSCAN_OUTPUT_PATH={MAP_OUTPUT}",
                    "-e", f"HOLOSCAN_MODEL_PATH={MAP_MODELS}",
                    *(a for k, v in sorted(self.s.app_environment.items()) for a in ("-e", f"{k}={v}")),
                    "-v", f"{in_dir}:{MAP_INPUT}:ro", "-v", f"{out_dir}:{MAP_OUTPUT}",
                    "-v", f"{Path(self.s.model_path).resolve()}:{MAP_MODELS}:ro",
                    *shlex.split(self.s.docker_args), self.s.map_image]
            return argv, env, Path.cwd()
        argv = [self.s.app_python, "-m", "app", "-i", str(in_dir), "-o", str(out_dir), "-m", str(self.s.model_path)]
        return argv, env, REPO_ROOT

    def run(self, in_dir: Path, out_dir: Path, log_dir: Path, name: str,
            should_stop: Callable[[], bool] = lambda: False) -> AppResult:
        argv, env, cwd = self.command(in_dir, out_dir, name)
        start = time.monotonic()
        with open(log_dir / "app.stdout", "wb") as out, open(log_dir / "app.stderr", "wb") as err:
            proc = subprocess.Popen(_wrap(argv), cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            interrupted = timed_out = False
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if should_stop():
                    interrupted = True
                elif time.monotonic() - start > self.s.app_timeout:
                    timed_out = True
                if interrupted or timed_out:
                    self._kill(proc, name)
                    break
        seconds = time.monotonic() - start
        summary = {}
        try:
            summary = json.loads((out_dir / "run_summary.json").read_text())
        except (OSError, ValueError):
            pass
        code = proc.returncode
        if interrupted:
            return AppResult(code, "interrupted (worker stopping or job lost)", summary, seconds, interrupted=True)
        if timed_out:
            return AppResult(code, f"application timed out after {self.s.app_timeout:g} s", summary, seconds,
                             timed_out=True)
        reason = self._reason(log_dir / "app.stderr", code, summary)
        return AppResult(code, reason, summary, seconds)

    def _kill(self, proc: subprocess.Popen, name: str) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.s.run_mode == "docker":
            subprocess.run([self.s.docker_bin, "rm", "-f", name], capture_output=True, timeout=60, check=False)

    @staticmethod
    def _reason(stderr: Path, code: int, summary: dict) -> str:
        if code == 0:
            return "done"
        try:
            lines = [ln for ln in stderr.read_text(errors="replace").splitlines() if ln.startswith(FAILED_PREFIX)]
        except OSError:
            lines = []
        if lines:
            return lines[-1].split(":", 2)[-1].strip()[:300]
        if summary.get("reason"):
            return str(summary["reason"]).splitlines()[0][:300]
        if code < 0:
            return f"application killed by signal {-code}"
        return f"application exited with code {code}"
