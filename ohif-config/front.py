"""nginx web front: OHIF at the web root, Orthanc DICOMweb proxied on the same origin.

    python ohif-config/front.py fetch            # OHIF dist (npm pack @ohif/app@VERSION), slimmed
    python ohif-config/front.py render|start|stop|status

Settings (environment): FRONT_PORT (8080), FRONT_BIND (127.0.0.1), FRONT_LOCAL_DIR
(ohif-config/local: rendered nginx.conf, htpasswd, viewer-credentials.json, logs, pid),
FRONT_DIST (ohif-config/dist); Orthanc's port and credentials file as `make orthanc` resolves
them (CPACS_* environment, then orthanc/site.env; Orthanc user `admin` is used by nginx
upstream only, never sent to the browser).
The viewer login (user `radiologist`, generated password) is written to
`viewer-credentials.json` (0600) and to an htpasswd file (apr1 hashes, `openssl passwd`).
Stdlib only.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OHIF_VERSION = "3.13.2"
SLIM = ("ort", "dicom-microscopy-viewer")   # not used by this flow (155 MB)
VIEWER_USER = "radiologist"
ORTHANC_USER = "admin"


class Front:
    def __init__(self, env: dict | None = None):
        env = dict(os.environ if env is None else env)
        self.port = int(env.get("FRONT_PORT", "8080"))
        self.bind = env.get("FRONT_BIND", "127.0.0.1")
        self.local = Path(env.get("FRONT_LOCAL_DIR", HERE / "local"))
        self.dist = Path(env.get("FRONT_DIST", HERE / "dist"))
        if "CPACS_HTTP_PORT" in env and "CPACS_CREDENTIALS_FILE" in env:
            self.orthanc_port = int(env["CPACS_HTTP_PORT"])
            self.orthanc_credentials = Path(env["CPACS_CREDENTIALS_FILE"])
        else:  # the same resolution as `make orthanc` (CPACS_* environment, then orthanc/site.env)
            from cervical_pacs.settings import Settings
            settings = Settings.from_env(env=env)
            self.orthanc_port = int(settings.http_port)
            self.orthanc_credentials = Path(settings.credentials_file)
        self.conf = self.local / "nginx.conf"
        self.pid_file = self.local / "nginx.pid"

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    # -- credentials --------------------------------------------------------------------------
    def viewer_login(self) -> tuple[str, str]:
        path = self.local / "viewer-credentials.json"
        if not path.exists():
            self.local.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"user": VIEWER_USER, "password": secrets.token_urlsafe(18)}, f)
        data = json.loads(path.read_text())
        return data["user"], data["password"]

    def _orthanc_auth(self) -> str:
        users = json.loads(self.orthanc_credentials.read_text())["RegisteredUsers"]
        return base64.b64encode(f"{ORTHANC_USER}:{users[ORTHANC_USER]}".encode()).decode()

    # -- config -------------------------------------------------------------------------------
    def render(self) -> Path:
        for sub in ("logs", "tmp"):
            (self.local / sub).mkdir(parents=True, exist_ok=True)
        user, password = self.viewer_login()
        hashed = subprocess.run(["openssl", "passwd", "-apr1", "-stdin"], input=password, text=True,
                                capture_output=True, check=True).stdout.strip()
        htpasswd = self.local / "htpasswd"
        htpasswd.write_text(f"{user}:{hashed}\n")
        as_root = os.geteuid() == 0
        if as_root:  # workers run as www-data: they read htpasswd and write temp files
            import grp
            for folder in [self.local.resolve(), *self.local.resolve().parents]:
                if not folder.stat().st_mode & 0o001:
                    raise PermissionError(f"nginx workers (www-data) cannot traverse {folder}: "
                                          f"choose FRONT_LOCAL_DIR elsewhere or chmod o+x it")
            gid = grp.getgrnam("www-data").gr_gid
            os.chown(htpasswd, 0, gid)
            os.chmod(htpasswd, 0o640)
            shutil.chown(self.local / "tmp", "www-data", "www-data")
        else:
            os.chmod(htpasswd, 0o600)
        text = (HERE / "nginx.conf.template").read_text()
        values = {
            "USER_DIRECTIVE": "user www-data www-data;" if as_root else "",
            "LOCAL": str(self.local), "BIND": self.bind, "PORT": str(self.port), "DIST": str(self.dist),
            "CONFIG_DIR": str(HERE), "ORTHANC_PORT": str(self.orthanc_port), "ORTHANC_AUTH": self._orthanc_auth(),
        }
        for key, value in values.items():
            text = text.replace(f"@@{key}@@", value)
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds Orthanc's credentials
        with os.fdopen(fd, "w") as f:
            f.write(text)
        subprocess.run(["nginx", "-t", "-q", "-c", str(self.conf)], check=True)
        return self.conf

    # -- processes ----------------------------------------------------------------------------
    def popen(self, log: Path | None = None) -> subprocess.Popen:
        """nginx in the foreground (tests): the caller owns the process."""
        self.render()
        out = open(log or self.local / "logs" / "nginx.out", "ab")
        proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-g", "daemon off;"], stdout=out, stderr=out)
        self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({proc.returncode}); see {self.local / 'logs'}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("nginx did not answer")

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        if self.running_pid():
            print(f"front already running: {self.url}")
            return
        if not (self.dist / "index.html").exists():
            fetch(self.dist)
        self.render()
        subprocess.run(["nginx", "-c", str(self.conf)], check=True)
        self.wait_ready()
        user, _ = self.viewer_login()
        print(f"OHIF: {self.url}/  (login: user {user}, password in {self.local / 'viewer-credentials.json'})")

    def stop(self) -> None:
        pid = self.running_pid()
        if pid:
            os.kill(pid, signal.SIGQUIT)
            for _ in range(100):
                if self.running_pid() is None:
                    break
                time.sleep(0.1)
            print("front stopped")


def fetch(dist: Path = HERE / "dist", version: str = OHIF_VERSION) -> Path:
    """Prebuilt OHIF from `npm pack @ohif/app@VERSION` (cached in ohif-config/cache), slimmed."""
    marker = dist / ".ohif-version"
    if marker.exists() and marker.read_text().strip() == version:
        return dist
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    tgz = cache / f"ohif-app-{version}.tgz"
    if not tgz.exists():
        subprocess.run(["npm", "pack", "--loglevel=warn", f"@ohif/app@{version}", "--pack-destination", str(cache)],
                       check=True, stdout=subprocess.DEVNULL)
    tmp = dist.with_name(dist.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = "package/dist/"
    with tarfile.open(tgz) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix):]
            if not rel or rel.split("/")[0] in SLIM:
                continue
            m.name = rel
            members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    shutil.copy(HERE / "app-config.js", tmp / "app-config.js")  # nginx serves ours anyway
    (tmp / ".ohif-version").write_text(version + "\n")
    shutil.rmtree(dist, ignore_errors=True)
    tmp.rename(dist)
    return dist


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    front = Front()
    if cmd == "fetch":
        print(f"OHIF {OHIF_VERSION} in {fetch(front.dist)}")
    elif cmd == "render":
        print(front.render())
    elif cmd == "start":
        front.start()
    elif cmd == "stop":
        front.stop()
    elif cmd == "status":
        pid = front.running_pid()
        print(f"front {'running pid ' + str(pid) + ' ' + front.url if pid else 'stopped'}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
