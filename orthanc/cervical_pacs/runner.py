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

python mode with the warm runner (``CPACS_RUNNER_WARM``, default on): the same run, forked
from a long-lived process that imported the application once (``warm.py``, ``WarmRunner``
here); recycled after ``CPACS_RUNNER_MAX_JOBS`` runs or beyond ``CPACS_RUNNER_MAX_RSS_MIB``,
restarted when it dies; when it cannot start, the run goes cold as above.

All report through the application's documented exit codes and ``OUT/run_summary.json``.
The child gets its own process group, a 32 MiB stack limit (the SDK warns otherwise) and
a parent-death signal (``setpriv --pdeathsig KILL``) so it dies with the worker; a timeout or a stop request kills the group
(and ``docker rm -f`` the container, which a killed docker CLI would leave running).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import select
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
WARM_READY_TIMEOUT_S = 180.0   # imports on a loaded 2-core host take 6-20 s
WARM_RETRY_AFTER_S = 60.0      # after a failed start, runs go cold this long before trying again
log = logging.getLogger("cervical_pacs.runner")


@dataclass
class AppResult:
    code: int                      # the app's exit code; -N killed by signal N
    reason: str                    # one line (the app's FAILED line, or ours)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False      # stopped by us (stop request or lost lease), not the app's fault
    timed_out: bool = False
    runner: str = "cold"           # how it ran: "cold", or "warm runner pid P, run N" (logs, tests, benchmark)


def _wrap(argv: list[str]) -> list[str]:
    """Prefix util-linux helpers (no preexec_fn: the worker is multi-threaded): the child dies
    with the worker thread that started it, and gets a 32 MiB soft stack limit."""
    prefix = []
    if shutil.which("setpriv"):
        prefix += ["setpriv", "--pdeathsig", "KILL", "--"]
    if shutil.which("prlimit"):
        prefix += ["prlimit", f"--stack={STACK_LIMIT_KIB * 1024}:", "--"]
    return prefix + argv


def rss_kib(pid: int) -> int:
    """Resident memory of a process (``VmRSS``), KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kill_group(pid: int, sig: int) -> bool:
    """Signal the process group ``pid`` leads (the process alone if it has no group yet)."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False


class RunnerDied(Exception):
    """The warm runner process went away (its reply pipe closed)."""


class WarmRunner:
    """The worker's side of one warm runner process (``warm.py``): start it, hand it a run,
    watch the run (timeout, stop request: the run's process group is killed, as a cold run's
    is), recycle the process after ``CPACS_RUNNER_MAX_JOBS`` runs or beyond
    ``CPACS_RUNNER_MAX_RSS_MIB``, restart it when it died. One per job thread: a run never
    waits for another thread's run, and ``setpriv --pdeathsig`` ties it to that thread."""

    def __init__(self, settings: Settings, env: dict[str, str]):
        self.s = settings
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.ready: dict | None = None
        self.runs = 0
        self.disabled = ""            # why it will not be used again by this worker (fork not safe)
        self._cold_until = 0.0
        self._requests = self._replies = -1
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start the process; its imports go on in the background (``usable`` waits for them)."""
        if self.disabled or time.monotonic() < self._cold_until:
            return
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            log.warning("warm runner pid %d exited (code %s): starting a new one", self.proc.pid, self.proc.returncode)
            self._close_pipes()
        req_r, req_w = os.pipe()   # non-inheritable: no other child holds our ends (EOF must reach it)
        rep_r, rep_w = os.pipe()
        argv = [self.s.app_python, "-m", "cervical_pacs.warm", "--requests", str(req_r), "--replies", str(rep_w)]
        try:
            self.proc = subprocess.Popen(_wrap(argv), cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         pass_fds=(req_r, rep_w), start_new_session=True)
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests, self._replies, self._buffer = req_w, rep_r, b""
        self.ready, self.runs = None, 0
        log.info("warm runner pid %d starting (imports the application once)", self.proc.pid)

    def usable(self) -> bool:
        """Started and done importing (waits for it); False: this run goes cold."""
        if self.disabled or time.monotonic() < self._cold_until:
            return False
        self.start()
        return self.check_ready(WARM_READY_TIMEOUT_S)

    def check_ready(self, timeout: float) -> bool:
        """Whether its imports are done, waiting at most ``timeout`` for its ``ready``; a
        runner that fails to get ready (or is not safe to fork) is stopped."""
        if self.ready is not None or self.proc is None:
            return self.ready is not None
        try:
            ready = self._read(timeout)
        except RunnerDied:
            ready = {"event": "died"}
        if ready is None and timeout < WARM_READY_TIMEOUT_S:
            return False  # still importing
        if ready is None or ready.get("event") != "ready":
            try:
                why = f"exited with code {self.proc.wait(timeout=5)} during its imports"
            except subprocess.TimeoutExpired:
                why = f"not ready within {timeout:g} s"
            log.warning("warm runner pid %d %s (its error is in this log): runs go cold for %.0f s", self.pid, why,
                        WARM_RETRY_AFTER_S)
            self.stop("not ready")
            self._cold_until = time.monotonic() + WARM_RETRY_AFTER_S
            return False
        if ready.get("threads") != 1:
            self.disabled = f"{ready.get('threads')} threads after its imports and a fork: forking it is not safe"
            log.warning("warm runner pid %d has %s; this worker runs cold", self.pid, self.disabled)
            self.stop("fork not safe")
            return False
        self.ready = ready
        log.info("warm runner pid %d ready: imports %.1f s, RSS %.0f MiB", self.pid, ready["preload_s"],
                 rss_kib(self.pid) / 1024)
        return True

    def run(self, in_dir: Path, out_dir: Path, log_dir: Path, should_stop: Callable[[], bool],
            timeout: float) -> tuple[int, bool, bool, str, str]:
        """One run in a forked child. Returns (exit code, interrupted, timed out, reason when
        the runner itself failed, description for the log)."""
        self.runs += 1
        run = f"warm runner pid {self.pid}, run {self.runs} of at most {self.s.runner_max_jobs}"
        request = {"in": str(in_dir), "out": str(out_dir), "models": str(self.s.model_path), "log_dir": str(log_dir),
                   "cwd": str(REPO_ROOT), "env": self.env}
        start = time.monotonic()
        child, code, interrupted, timed_out, failure = 0, -signal.SIGKILL, False, False, ""
        try:
            os.write(self._requests, (json.dumps(request) + "\n").encode())
            started = self._read(60)
            if started is None or started.get("event") != "started":
                raise RunnerDied("no answer to the run request")
            child = int(started["pid"])
            log.info("%s: app child pid %d", run, child)
            run += f", child pid {child}"
            while True:
                message = self._read(1.0)
                if message and message.get("event") == "imported" and message.get("new_modules"):
                    run += f", {message['new_modules']} modules imported by the run"
                if message and message.get("event") == "exited":
                    code = int(message["code"])
                    run += (f", child CPU {message.get('cpu_s', 0):.1f} s, "
                            f"peak RSS {message.get('max_rss_kib', 0) / 1024:.0f} MiB")
                    break
                if message is not None:
                    continue
                if should_stop():
                    interrupted = True
                elif time.monotonic() - start > timeout:
                    timed_out = True
                if interrupted or timed_out:
                    code = self._kill_child(child)
                    break
        except (RunnerDied, OSError) as exc:  # OSError: EPIPE writing to a runner that is gone
            if child:
                _kill_group(child, signal.SIGKILL)  # its parent-death signal does it too; be sure
            failure = f"the warm runner (pid {self.pid}) died during the run ({type(exc).__name__})"
            log.warning("%s: %s", run, failure)
            self.stop("died")
            return code, interrupted, timed_out, failure, run
        rss = rss_kib(self.pid)
        if self.runs >= self.s.runner_max_jobs:
            self.stop(f"recycled after {self.runs} runs")
        elif rss > self.s.runner_max_rss_mib * 1024:
            self.stop(f"recycled: RSS {rss / 1024:.0f} MiB > CPACS_RUNNER_MAX_RSS_MIB {self.s.runner_max_rss_mib}")
        return code, interrupted, timed_out, failure, run

    def _kill_child(self, child: int) -> int:
        """SIGTERM the run's process group, then SIGKILL; its exit code (-9 if the runner is stuck)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _kill_group(child, sig):
                break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                message = self._read(max(0.1, deadline - time.monotonic()))
                if message and message.get("event") == "exited":
                    return int(message["code"])
        self.stop("a killed run did not report its end")
        return -signal.SIGKILL

    def _read(self, timeout: float) -> dict | None:
        """The next reply (None: none within ``timeout``); ``RunnerDied`` at end of file."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._replies < 0:
                raise RunnerDied("not started")
            readable, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                return None
            chunk = os.read(self._replies, 65536)
            if not chunk:
                raise RunnerDied("reply pipe closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _close_pipes(self) -> None:
        for fd in (self._requests, self._replies):
            if fd >= 0:
                os.close(fd)
        self._requests = self._replies = -1

    def stop(self, why: str) -> None:
        """End the process: closing its request pipe ends it; SIGKILL if it does not go."""
        if self.proc is None:
            return
        pid, runs = self.proc.pid, self.runs
        self._close_pipes()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        log.info("warm runner pid %d stopped (%s; %d runs)", pid, why, runs)
        self.proc, self.ready = None, None


class AppRunner:
    """Runs the application for the worker's job threads; one per thread (it holds that
    thread's warm runner)."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.warm: WarmRunner | None = None
        if settings.run_mode == "python" and settings.runner_warm:
            self.warm = WarmRunner(settings, self.command(Path("in"), Path("out"), "")[1])

    def prepare(self) -> None:
        """Between runs: have a warm runner starting (its imports overlap the wait for work),
        and note (log) when it is ready."""
        if self.warm is not None:
            self.warm.start()
            self.warm.check_ready(0)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.stop("worker stopping")

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
        if self.warm is not None and self.warm.usable():
            start = time.monotonic()
            code, interrupted, timed_out, failure, runner = self.warm.run(in_dir, out_dir, log_dir, should_stop,
                                                                          self.s.app_timeout)
            return self._result(code, time.monotonic() - start, out_dir, log_dir, interrupted, timed_out, runner,
                                failure)
        argv, env, cwd = self.command(in_dir, out_dir, name)
        start = time.monotonic()
        children_cpu = _children_cpu_s()
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
        runner = "cold"
        if self.s.run_mode == "python" and self.s.concurrency == 1:  # other threads' children would count too
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
            runner += f", CPU {_children_cpu_s() - children_cpu:.1f} s, peak RSS {peak:.0f} MiB (largest run so far)"
        return self._result(proc.returncode, seconds, out_dir, log_dir, interrupted, timed_out, runner)

    def _result(self, code: int, seconds: float, out_dir: Path, log_dir: Path, interrupted: bool, timed_out: bool,
                runner: str, failure: str = "") -> AppResult:
        summary = {}
        try:
            summary = json.loads((out_dir / "run_summary.json").read_text())
        except (OSError, ValueError):
            pass
        if interrupted:
            return AppResult(code, "interrupted (worker stopping or job lost)", summary, seconds, interrupted=True,
                             runner=runner)
        if timed_out:
            return AppResult(code, f"application timed out after {self.s.app_timeout:g} s", summary, seconds,
                             timed_out=True, runner=runner)
        reason = failure or self._reason(log_dir / "app.stderr", code, summary)
        return AppResult(code, reason, summary, seconds, runner=runner)

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
