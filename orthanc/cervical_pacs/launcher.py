"""``make orthanc`` / ``make stop``: Orthanc + worker on this machine, for development and demos.

    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.launcher start|stop|status|render

``start`` renders the configuration (orthanc/local/config/), generates credentials on first
use (orthanc/local/config/credentials.json, mode 0600, git-ignored), starts Orthanc and the
worker as background processes (pid files and logs in orthanc/local/run and orthanc/local/logs),
waits until Orthanc answers and prints where everything is. ``stop`` stops exactly the
processes it started (pid file + command line check), worker first.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from .settings import ADMIN_USER, REPO_ROOT, Settings, ensure_credentials, render_orthanc_config


def http_get(url: str, user: str | None = None, password: str | None = None, timeout: float = 5.0):
    """(status, body) of a GET; status 0 when nothing answers. Standard library only."""
    req = urllib.request.Request(url)
    if user is not None:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_orthanc(settings: Settings, user: str, password: str, timeout: float = 60.0,
                 proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {proc.returncode} during start-up (see its log)")
        if http_get(f"{settings.orthanc_url}/system", user, password, timeout=2)[0] == 200:
            return
        time.sleep(0.2)
    raise TimeoutError(f"Orthanc did not answer on {settings.orthanc_url} within {timeout:g} s")


def start_orthanc(settings: Settings, log_path: Path, config_dir: Path | None = None) -> subprocess.Popen:
    config_dir = render_orthanc_config(settings, config_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # The plugin's import path: the project's environment (orthanc/cervical_pacs/plugin.py).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(settings.plugin_pythonpath)}
        return subprocess.Popen([settings.orthanc_bin, str(config_dir)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def worker_command(settings: Settings, extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, **settings.worker_env(), **(extra_env or {})}
    return [sys.executable, "-m", "cervical_pacs.worker"], env


def start_worker(settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    argv, env = worker_command(settings, extra_env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


# -- pid files ------------------------------------------------------------------------------------
def _pidfile(settings: Settings, name: str) -> Path:
    return settings.local_dir / "run" / f"{name}.pid"


def _alive(settings: Settings, name: str, marker: str) -> int | None:
    """The pid in the pid file if that process is alive and still the one we started."""
    path = _pidfile(settings, name)
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


_MARKERS = {"worker": "cervical_pacs.worker", "orthanc": "Orthanc"}


def _healthy(settings: Settings, password: str | None) -> bool:
    status, body = http_get(f"{settings.orthanc_url}/cervical-dl/health", ADMIN_USER, password)
    return status == 200 and json.loads(body).get("status") == "ok"


def cmd_start(settings: Settings) -> int:
    """Start Orthanc and the worker; idempotent: a healthy pair that this launcher started is
    reused, a half-running one (one of the two gone, or no heartbeat) is restarted."""
    users = ensure_credentials(Path(settings.credentials_file))
    logs = settings.local_dir / "logs"
    running = {name: _alive(settings, name, _MARKERS[name]) for name in ("orthanc", "worker")}
    if all(running.values()) and _healthy(settings, users[ADMIN_USER]):
        print(f"already running (orthanc pid {running['orthanc']}, worker pid {running['worker']}): reusing them")
        _print_access(settings, logs)
        return 0
    if any(running.values()):
        state = ", ".join(f"{n} {'running' if pid else 'not running'}" for n, pid in running.items())
        print(f"restarting ({state}, not a healthy pair)")
        cmd_stop(settings)
    model = Path(settings.model_path) / "cervical_dl_recon.pt"
    if settings.run_mode == "python" and not model.is_file():
        print(f"warning: {model} is missing: jobs will fail until it exists (or set CPACS_MODEL_PATH)")
    orthanc = start_orthanc(settings, logs / "orthanc.log")
    _pidfile(settings, "orthanc").parent.mkdir(parents=True, exist_ok=True)
    _pidfile(settings, "orthanc").write_text(str(orthanc.pid))
    try:
        wait_orthanc(settings, ADMIN_USER, users[ADMIN_USER], proc=orthanc)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}; log: {logs / 'orthanc.log'}")
        cmd_stop(settings)
        return 1
    worker = start_worker(settings, logs / "worker.log")
    _pidfile(settings, "worker").write_text(str(worker.pid))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.poll() is None:  # until its first heartbeat
        if _healthy(settings, users[ADMIN_USER]):
            break
        time.sleep(0.5)
    if worker.poll() is not None:
        print(f"error: the worker exited with code {worker.returncode}; log: {logs / 'worker.log'}")
        cmd_stop(settings)
        return 1
    _print_access(settings, logs)
    return 0


def _print_access(settings: Settings, logs: Path) -> None:
    print(f"Orthanc   {settings.orthanc_url}/ui/app/ (HTTP, loopback clients only unless CPACS_REMOTE_ACCESS=true)")
    print(f"          {settings.orthanc_url}/app/explorer.html ; DICOMweb {settings.orthanc_url}/dicom-web/")
    print(f"DICOM     AE title {settings.aet}, port {settings.dicom_port} (C-STORE here triggers the worker too)")
    print(f"jobs      {settings.orthanc_url}/cervical-dl/health  and  /cervical-dl/jobs")
    print(f"login     user '{ADMIN_USER}', password in {settings.credentials_file} (generated, mode 0600, git-ignored)")
    print(f"data      {settings.storage_dir} (job queue {Path(settings.queue_db).name})")
    print(f"logs      {logs / 'orthanc.log'}, {logs / 'worker.log'}")
    print("stop      make stop")


def _terminate(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def cmd_stop(settings: Settings) -> int:
    stopped = False
    for name in ("worker", "orthanc"):  # worker first: it requeues what it was doing
        pid = _alive(settings, name, _MARKERS[name])
        if pid:
            _terminate(pid)
            print(f"stopped {name} (pid {pid})")
            stopped = True
        _pidfile(settings, name).unlink(missing_ok=True)
    if not stopped:
        print("nothing to stop")
    return 0


def cmd_status(settings: Settings) -> int:
    for name in ("orthanc", "worker"):
        pid = _alive(settings, name, _MARKERS[name])
        print(f"{name:8s} {'running (pid %d)' % pid if pid else 'not running'}")
    if Path(settings.credentials_file).is_file():
        users = json.loads(Path(settings.credentials_file).read_text())["RegisteredUsers"]
        status, body = http_get(f"{settings.orthanc_url}/cervical-dl/health", ADMIN_USER, users.get(ADMIN_USER))
        print(f"health   HTTP {status} {body.decode(errors='replace').strip() if status == 200 else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cervical_pacs.launcher")
    parser.add_argument("command", choices=("start", "stop", "status", "render"))
    parser.add_argument("--config", help="KEY=VALUE settings file (default: CPACS_CONFIG or orthanc/site.env)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(config_file=args.config)
    if args.command == "render":
        print(render_orthanc_config(settings))
        return 0
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
