"""Site settings (environment or a KEY=VALUE file), credentials, and Orthanc config rendering.

Every setting has an environment variable ``CPACS_*``; a file named by ``CPACS_CONFIG`` (or
``orthanc/site.env`` when present) supplies defaults, the process environment wins. See
``orthanc/site.env.example`` for the list. Standard library only.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import sys
import sysconfig
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

ORTHANC_DIR = Path(__file__).resolve().parents[1]  # <repo>/orthanc
REPO_ROOT = ORTHANC_DIR.parent
TEMPLATE = ORTHANC_DIR / "orthanc.json.template"
PLUGIN_SCRIPT = ORTHANC_DIR / "cervical_dl_plugin.py"
QUEUE_FILE_NAME = "cervical-dl-jobs.sqlite"
FORWARD_MODALITY = "forward"
ADMIN_USER = "admin"
WORKER_USER = "cervical-worker"


def _bool(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    # Orthanc
    http_port: int = 8042
    dicom_port: int = 4242
    aet: str = "CERVICALDL"
    name: str = "CervicalDLEnhance"
    storage_dir: Path = ORTHANC_DIR / "local" / "data"
    stable_age: int = 2                            # short: a series that grows later re-runs its study
    remote_access: bool = False
    orthanc_bin: str = "Orthanc"
    plugins_dir: Path = Path("/usr/share/orthanc/plugins")
    local_dir: Path = ORTHANC_DIR / "local"        # rendered config, logs, pid files
    credentials_file: Path | None = None           # default: <local_dir>/config/credentials.json
    orthanc_url: str = ""                          # default: http://127.0.0.1:<http_port>
    queue_db: Path | None = None                   # default: <storage_dir>/cervical-dl-jobs.sqlite
    # Worker
    model_path: Path = REPO_ROOT / "models" / "weights"
    run_mode: str = "python"                       # python | docker
    app_python: str = sys.executable               # interpreter for `python -m app`
    map_image: str = ""                            # docker mode: the MAP image
    docker_bin: str = "docker"
    docker_args: str = ""                          # extra `docker run` arguments, e.g. --gpus all
    runner_warm: bool = True                       # python mode: runs forked from a warm runner (runner.py, warm.py)
    runner_max_jobs: int = 50                      # warm runner recycled after this many runs
    runner_max_rss_mib: int = 2048                 # ... or when its resident memory grows beyond this
    concurrency: int = 1
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    app_timeout: float = 1800.0
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    study_quiet_seconds: float = 2.0               # a study starts when no series became stable for this long
    work_dir: Path | None = None                   # temp folders for jobs (default: system temp)
    # Forwarding of results (optional)
    forward_aet: str = ""
    forward_host: str = ""
    forward_port: int = 104
    # Plugin
    plugin_pythonpath: list[str] = field(default_factory=list)
    # The application's own settings (CERVICAL_DL_*, e.g. CERVICAL_DL_STRENGTH), from the site file
    # or the environment, passed to every run (python and docker modes alike)
    app_environment: dict[str, str] = field(default_factory=dict)

    ENV = {  # attribute -> environment variable
        "http_port": "CPACS_HTTP_PORT", "dicom_port": "CPACS_DICOM_PORT", "aet": "CPACS_AET",
        "name": "CPACS_NAME", "storage_dir": "CPACS_STORAGE_DIR", "stable_age": "CPACS_STABLE_AGE",
        "remote_access": "CPACS_REMOTE_ACCESS", "orthanc_bin": "CPACS_ORTHANC_BIN",
        "plugins_dir": "CPACS_PLUGINS_DIR", "local_dir": "CPACS_LOCAL_DIR",
        "credentials_file": "CPACS_CREDENTIALS_FILE", "orthanc_url": "CPACS_ORTHANC_URL",
        "queue_db": "CPACS_QUEUE_DB", "model_path": "CPACS_MODEL_PATH", "run_mode": "CPACS_RUN_MODE",
        "app_python": "CPACS_APP_PYTHON", "map_image": "CPACS_MAP_IMAGE", "docker_bin": "CPACS_DOCKER_BIN",
        "docker_args": "CPACS_DOCKER_ARGS", "runner_warm": "CPACS_RUNNER_WARM",
        "runner_max_jobs": "CPACS_RUNNER_MAX_JOBS", "runner_max_rss_mib": "CPACS_RUNNER_MAX_RSS_MIB",
        "concurrency": "CPACS_CONCURRENCY",
        "max_attempts": "CPACS_MAX_ATTEMPTS", "backoff_seconds": "CPACS_BACKOFF_SECONDS",
        "app_timeout": "CPACS_APP_TIMEOUT", "lease_seconds": "CPACS_LEASE_SECONDS",
        "poll_seconds": "CPACS_POLL_SECONDS", "study_quiet_seconds": "CPACS_STUDY_QUIET_SECONDS", "work_dir": "CPACS_WORK_DIR", "forward_aet": "CPACS_FORWARD_AET",
        "forward_host": "CPACS_FORWARD_HOST", "forward_port": "CPACS_FORWARD_PORT",
        "plugin_pythonpath": "CPACS_PLUGIN_PYTHONPATH",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        path = config_file or env.get("CPACS_CONFIG") or (ORTHANC_DIR / "site.env")
        values = dict(read_env_file(path)) if Path(path).is_file() else {}
        values.update({k: v for k, v in env.items() if k.startswith(("CPACS_", "CERVICAL_DL_"))})
        s = cls()
        s.app_environment = {k: v for k, v in values.items() if k.startswith("CERVICAL_DL_")}
        types = {f.name: f.type for f in fields(cls)}
        for attr, var in cls.ENV.items():
            if var not in values or values[var] == "":
                continue
            raw, kind = values[var], str(types[attr])
            if attr == "plugin_pythonpath":
                value = [p for p in raw.split(os.pathsep) if p]
            elif kind == "int":
                value = int(raw)
            elif kind == "float":
                value = float(raw)
            elif kind == "bool":
                value = _bool(raw)
            elif "Path" in kind:
                value = Path(raw) if Path(raw).is_absolute() else REPO_ROOT / raw
            else:
                value = raw
            setattr(s, attr, value)
        s.storage_dir = Path(s.storage_dir).resolve()
        s.local_dir = Path(s.local_dir).resolve()
        if s.credentials_file is None:
            s.credentials_file = s.local_dir / "config" / "credentials.json"
        if s.queue_db is None:
            s.queue_db = s.storage_dir / QUEUE_FILE_NAME
        if not s.orthanc_url:
            s.orthanc_url = f"http://127.0.0.1:{s.http_port}"
        if not s.plugin_pythonpath:
            s.plugin_pythonpath = [str(REPO_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        if s.run_mode not in ("python", "docker"):
            raise ValueError(f"CPACS_RUN_MODE must be python or docker, not {s.run_mode!r}")
        if s.runner_max_jobs < 1 or s.runner_max_rss_mib < 1:
            raise ValueError("CPACS_RUNNER_MAX_JOBS and CPACS_RUNNER_MAX_RSS_MIB must be at least 1")
        if len(s.aet) > 16:
            raise ValueError("CPACS_AET: at most 16 characters")
        return s

    @property
    def config_dir(self) -> Path:
        return self.local_dir / "config"

    def worker_env(self) -> dict[str, str]:
        """The settings as CPACS_* variables (to start the worker with exactly these)."""
        out = {}
        for attr, var in self.ENV.items():
            value = getattr(self, attr)
            if value is None:
                continue
            out[var] = os.pathsep.join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)
        return out


def read_env_file(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        pairs.append((key.strip(), value.strip().strip('"').strip("'")))
    return pairs


# -- credentials ---------------------------------------------------------------------------------
def ensure_credentials(path: Path) -> dict[str, str]:
    """Load ``{"RegisteredUsers": {user: password}}`` or generate it (mode 0600)."""
    path = Path(path)
    if path.is_file():
        users = json.loads(path.read_text())["RegisteredUsers"]
        if ADMIN_USER in users and WORKER_USER in users:
            return users
    users = {ADMIN_USER: secrets.token_urlsafe(18), WORKER_USER: secrets.token_urlsafe(18)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"RegisteredUsers": users}, f, indent=2)
    os.replace(tmp, path)
    return users


def load_worker_credentials(settings: Settings) -> tuple[str, str]:
    """(user, password) for the worker: CPACS_USER/CPACS_PASSWORD, else the credentials file."""
    if os.environ.get("CPACS_USER") and os.environ.get("CPACS_PASSWORD"):
        return os.environ["CPACS_USER"], os.environ["CPACS_PASSWORD"]
    users = json.loads(Path(settings.credentials_file).read_text())["RegisteredUsers"]
    user = WORKER_USER if WORKER_USER in users else next(iter(users))
    return user, users[user]


# -- Orthanc configuration -------------------------------------------------------------------------
def render_orthanc_config(settings: Settings, config_dir: Path | None = None) -> Path:
    """Write ``orthanc.json`` (from the template) and ``credentials.json`` into ``config_dir``;
    return the folder, which is what Orthanc is started with (it reads every .json in it)."""
    config_dir = Path(config_dir or settings.config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    users = ensure_credentials(Path(settings.credentials_file))
    creds_in_dir = config_dir / "credentials.json"
    if Path(settings.credentials_file).resolve() != creds_in_dir.resolve():
        fd = os.open(creds_in_dir, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"RegisteredUsers": users}, f, indent=2)
    modalities = {}
    if settings.forward_aet:
        modalities[FORWARD_MODALITY] = [settings.forward_aet, settings.forward_host or "127.0.0.1", settings.forward_port]
    values = {
        "NAME": settings.name, "STORAGE_DIR": str(settings.storage_dir), "HTTP_PORT": settings.http_port,
        "DICOM_PORT": settings.dicom_port, "AET": settings.aet, "REMOTE_ACCESS": settings.remote_access,
        "STABLE_AGE": settings.stable_age,
        "PLUGINS": [str(settings.plugins_dir / "libOrthancDicomWeb.so"), str(settings.plugins_dir / "libOrthancPython.so")],
        "PLUGIN_SCRIPT": str(PLUGIN_SCRIPT), "DICOM_MODALITIES": modalities, "QUEUE_DB": str(settings.queue_db),
    }
    text = string.Template(TEMPLATE.read_text()).substitute({k: json.dumps(v) for k, v in values.items()})
    (config_dir / "orthanc.json").write_text(text)
    Path(settings.storage_dir).mkdir(parents=True, exist_ok=True)
    return config_dir
