"""Orthanc auto-trigger end to end: a real Orthanc (Debian package, DICOMweb + Python plugins)
with our plugin, the worker and the application, started by this module.

How the network is isolated (``cervical_pacs.sandbox.private_network``): Orthanc 1.10.1 cannot
bind to loopback only, so when the tests run as root the module moves *its own thread* into a
fresh, private network namespace
(``unshare(CLONE_NEWNET)`` through libc, then ``ip link set lo up``) for the duration of the
module-scoped fixture, and restores the original namespace afterwards (``setns`` on a file
descriptor of ``/proc/thread-self/ns/net`` kept open before leaving it). Every process
started meanwhile (Orthanc, worker, app, storescu, storescp) inherits the private namespace,
and the test's own HTTP clients, created in the same thread, talk to Orthanc inside it:
nothing outside can reach these servers and nothing else's ports can clash. Everything the
test needs is imported before the namespace is entered (it has no route to anything
anyway). This is more robust than re-executing a runner under ``unshare -n``: pytest keeps
its normal process, fixtures, output capture and exit status. Without root (or where the
kernel refuses), the same stack runs on the host's loopback: random free ports,
authentication on and ``RemoteAccessAllowed: false`` still apply.

Timing on 2 busy cores: the app needs 6-16 s per run (imports dominate), so each series
here has 2-3 slices, StableAge is 1 s, the study quiet time 1 s, and one Orthanc serves the
whole module (it is restarted only by the tests that are about restarts). The worker runs a
study at a time: a series arriving in a study already processed runs the whole study again.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

import hospital_dicom
from cervical_pacs.jobqueue import JobQueue
from cervical_pacs.launcher import start_orthanc, start_worker, wait_orthanc
from cervical_pacs.sandbox import free_port as _free_port
from cervical_pacs.sandbox import private_network
from cervical_pacs.settings import ADMIN_USER, WORKER_USER, Settings, render_orthanc_config
from conftest import ROOT, make_study, run_app
from models import WEIGHTS_DIR
from series.roles import is_our_output

WAIT_S = 240  # per job: generous for a loaded 2-core machine
FORWARD_AET = "FWDSCP"


def _model_path() -> Path:
    """The shipped weights (CPACS_TEST_MODEL_PATH: others)."""
    return Path(os.environ.get("CPACS_TEST_MODEL_PATH") or WEIGHTS_DIR)


def _app_processes(work_marker: str) -> list[int]:
    """Processes whose stdout is an ``app.stdout`` in a job folder named ``work_marker*``: the
    application run of that job, cold (``python -m app``) or forked by the warm runner."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                target = os.readlink(p / "fd" / "1")
            except OSError:
                continue
            if work_marker in target and target.endswith("app.stdout") and not _gone(int(p.name)):
                pids.append(int(p.name))
    return pids


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def _copy_as_new_study(series_dir: Path, out: Path) -> list[Path]:
    """The series under new Study/Series/SOP Instance UIDs: a study of its own."""
    out.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for f in sorted(series_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f.name)
    return _dcm(out)


WARM_RUN = re.compile(r"app run: warm runner pid (\d+), run (\d+) of at most (\d+), child pid (\d+)")


def _processes_matching(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text in p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


class Stack:
    """Orthanc + worker + a C-STORE destination, and small REST helpers for the tests."""

    def __init__(self, tmp: Path, network: str):
        self.tmp, self.network = tmp, network
        self.logs = tmp / "logs"
        self.forward_dir = tmp / "forwarded"
        self.forward_dir.mkdir()
        self.work_dir = tmp / "work"
        self.work_dir.mkdir()
        self.forward_port = _free_port()
        env = {
            "CPACS_LOCAL_DIR": str(tmp / "local"), "CPACS_STORAGE_DIR": str(tmp / "data"),
            "CPACS_HTTP_PORT": str(_free_port()), "CPACS_DICOM_PORT": str(_free_port()), "CPACS_AET": "CERVICALTEST",
            "CPACS_STABLE_AGE": "1", "CPACS_STUDY_QUIET_SECONDS": "1", "CPACS_MODEL_PATH": str(_model_path()), "CPACS_APP_PYTHON": sys.executable,
            "CPACS_BACKOFF_SECONDS": "1", "CPACS_LEASE_SECONDS": "20", "CPACS_POLL_SECONDS": "0.3",
            "CPACS_MAX_ATTEMPTS": "2", "CPACS_APP_TIMEOUT": "300", "CPACS_WORK_DIR": str(self.work_dir),
            "CPACS_FORWARD_AET": FORWARD_AET, "CPACS_FORWARD_HOST": "127.0.0.1",
            "CPACS_FORWARD_PORT": str(self.forward_port),
        }
        self.settings = Settings.from_env(env=env, config_file=tmp / "no-site.env")
        render_orthanc_config(self.settings)
        users = json.loads(Path(self.settings.credentials_file).read_text())["RegisteredUsers"]
        self.users = users
        self.http = requests.Session()
        self.http.auth = (ADMIN_USER, users[ADMIN_USER])
        self.url = self.settings.orthanc_url
        self.queue = JobQueue(self.settings.queue_db)
        self.orthanc = self.worker = None
        self.storescp = subprocess.Popen(["storescp", "-aet", FORWARD_AET, "-od", str(self.forward_dir),
                                          str(self.forward_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- processes --------------------------------------------------------------------------------
    def start_orthanc(self) -> None:
        self.orthanc = start_orthanc(self.settings, self.logs / "orthanc.log")
        wait_orthanc(self.settings, ADMIN_USER, self.users[ADMIN_USER], timeout=60, proc=self.orthanc)

    def stop_orthanc(self, sig: int = signal.SIGTERM) -> None:
        if self.orthanc and self.orthanc.poll() is None:
            self.orthanc.send_signal(sig)
            self.orthanc.wait(timeout=60)

    def start_worker(self, **extra_env: str) -> None:
        self.worker = start_worker(self.settings, self.logs / "worker.log", extra_env)

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(sig)
            self.worker.wait(timeout=60)

    def close(self) -> None:
        self.stop_worker()
        self.stop_orthanc()
        self.storescp.terminate()
        self.storescp.wait(timeout=10)

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.logs / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    # -- REST -------------------------------------------------------------------------------------
    def get(self, path: str, **kw):
        r = self.http.get(self.url + path, timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def upload(self, files) -> list[dict]:
        answers = []
        for f in files:
            r = self.http.post(self.url + "/instances", data=Path(f).read_bytes(), timeout=60)
            r.raise_for_status()
            answers.append(r.json())
        return answers

    def storescu(self, files) -> None:
        cmd = ["storescu", "-aec", self.settings.aet, "127.0.0.1", str(self.settings.dicom_port), *map(str, files)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def series_id(self, series_uid: str) -> str:
        r = self.http.post(self.url + "/tools/lookup", data=series_uid, timeout=30)
        r.raise_for_status()
        found = [x["ID"] for x in r.json() if x["Type"] == "Series"]
        assert len(found) == 1, found
        return found[0]

    def job_info(self, series_id: str) -> dict | None:
        r = self.http.get(f"{self.url}/cervical-dl/series/{series_id}", timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def wait(self, predicate, what: str, timeout: float = WAIT_S, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}\n--- worker log\n{self.log_tail('worker.log')}"
                             f"\n--- orthanc log\n{self.log_tail('orthanc.log', 20)}")

    def wait_job(self, series_id: str, states=("done",), n_jobs: int = 1, timeout: float = WAIT_S) -> dict:
        def ready():
            info = self.job_info(series_id)
            # The queue row changes first and the series metadata a moment later (two writers, two
            # stores): wait until both tell the same state, as a reader of either would see it.
            return info if (info and len(info["history"]) >= n_jobs and info["job"]["state"] in states
                            and info["metadata"].get("CervicalDLState") == info["job"]["state"]) else None
        return self.wait(ready, f"series {series_id} -> {states}", timeout)

    def study_series(self, study_id: str) -> list[dict]:
        return self.get(f"/studies/{study_id}/series")

    def study_info(self, study_id: str) -> dict:
        return self.get(f"/cervical-dl/studies/{study_id}")


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("orthanc-studies")
    a = make_study(base / "a", seed=21, extra=("--sagittal-slices", "3", "--axial-slices", "3"))
    b = make_study(base / "b", seed=22, extra=("--sagittal-slices", "2", "--axial-slices", "2"))
    # corrupt: pixel data cut in half in every file (valid DICOM that Orthanc stores)
    (base / "corrupt").mkdir()
    for f in sorted((b / "401_sag_dixon_ip").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(base / "corrupt" / f.name)
    # not cervical: an MR knee study (own study, series and instance UIDs)
    (base / "knee").mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for f in sorted((b / "402_sag_dixon_w").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.BodyPartExamined, ds.StudyDescription = "KNEE", "MR KNEE"
        ds.SeriesDescription = ds.ProtocolName = "sag T1 TSE"
        ds.save_as(base / "knee" / f.name)
    # as PACS archives send it: JPEG lossless SV1 (dcmtk) and one Enhanced MR multi-frame object
    # (a study of their own: study b's series and UIDs stay for the tests below)
    hospital_study_uid = generate_uid()
    hospital_dicom.transcode(b / "301_sag_t1", base / "jpeg_lossless", "jpeg_lossless_sv1")
    hospital_dicom.renumber(base / "jpeg_lossless", 301, study_uid=hospital_study_uid)
    enhanced = hospital_dicom.enhanced_mr(b / "501_ax_t2")
    enhanced.StudyInstanceUID = hospital_study_uid
    hospital_dicom.save(enhanced, base / "enhanced")
    return {"a": a, "b": b, "corrupt": base / "corrupt", "knee": base / "knee",
            "jpeg_lossless": base / "jpeg_lossless", "enhanced": base / "enhanced"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, studies):
    tmp = tmp_path_factory.mktemp("orthanc-stack")
    with private_network() as network:
        s = Stack(tmp, network)
        try:
            s.start_orthanc()
            s.start_worker()
            yield s
        finally:
            s.close()
            print(f"\n[orthanc tests ran on: {network}]\n--- worker log tail\n{s.log_tail('worker.log', 25)}")


def _dcm(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _derived_of(stack: Stack, info: dict) -> list[dict]:
    return [stack.get(f"/series/{d}") for d in info["job"]["derived_series"]]


def _qc_series_in_study(stack: Stack, study_id: str) -> list[dict]:
    """The study's QC objects in Orthanc (SR and PDF report), checked against the study's metadata."""
    qc = [s for s in stack.study_series(study_id) if s["MainDicomTags"].get("Modality") in ("SR", "DOC")
          and is_our_output(stack.get(f"/instances/{s['Instances'][0]}/simplified-tags"))]
    info = stack.study_info(study_id)
    assert sorted(s["ID"] for s in qc) == sorted(info["qc_series"]), (qc, info)
    for series in qc:
        assert stack.get(f"/series/{series['ID']}/metadata?expand")["CervicalDLSourceStudy"] == study_id
    return qc


def _ours_in_study(stack: Stack, study_id: str) -> list[str]:
    """Series of the study holding objects we wrote (derived images, QC objects)."""
    return [s["ID"] for s in stack.study_series(study_id)
            if is_our_output(stack.get(f"/instances/{s['Instances'][0]}/simplified-tags"))]


def _assert_done_with_derived(stack: Stack, source_id: str, info: dict, n_instances: int) -> dict:
    """The job is done, its state is in the source's metadata, and every object it uploaded
    (the derived MR series, plus QC objects when the app writes them) is ours and sits in the
    source's study. Returns the derived MR series."""
    job, meta = info["job"], info["metadata"]
    assert job["state"] == "done", job
    assert "study run of" in job["reason"]
    assert meta["CervicalDLState"] == "done" and meta["CervicalDLJob"] == str(job["id"])
    assert "cervical_dl_recon" in meta["CervicalDLModel"] and meta["CervicalDLModel"] == job["model_version"]
    assert meta["CervicalDLDerivedSeries"].split(",") == job["derived_series"]
    source = stack.get(f"/series/{source_id}")
    uploaded = _derived_of(stack, info)
    for series in uploaded:
        assert series["ParentStudy"] == source["ParentStudy"]  # same study
        assert stack.get(f"/series/{series['ID']}/metadata?expand")["CervicalDLSource"] == source_id
        assert is_our_output(stack.get(f"/instances/{series['Instances'][0]}/simplified-tags"))
    assert [d["MainDicomTags"].get("Modality") for d in uploaded] == ["MR"]  # QC objects belong to the study
    derived = uploaded[0]
    assert derived["MainDicomTags"]["SeriesDescription"].startswith("DL ")
    assert len(derived["Instances"]) == n_instances
    tags = stack.get(f"/instances/{derived['Instances'][0]}/simplified-tags")
    assert tags["ImageType"].startswith("DERIVED")
    assert tags["ContributingEquipmentSequence"][-1]["ManufacturerModelName"] == "CervicalDLEnhance"
    return derived


# -- tests ---------------------------------------------------------------------------------------------
def test_package_layout_never_shadows_orthanc():
    assert not (ROOT / "orthanc" / "__init__.py").exists()
    assert not list((ROOT / "orthanc").glob("orthanc*.py"))


def test_job_queue_state_machine(tmp_path):
    """The queue alone (no Orthanc): idempotent enqueue, supersede, one running job per series,
    lease recovery, retry, backoff."""
    q = JobQueue(tmp_path / "q.sqlite")
    job, created = q.enqueue("s1", "fp1", n_instances=2)
    assert created and job["state"] == "queued"
    assert q.enqueue("s1", "fp1")[1] is False  # same content again: nothing new
    grown, created = q.enqueue("s1", "fp2", n_instances=3)
    assert created and q.get(job["id"])["state"] == "superseded"
    q.enqueue("s2", "fpx", state="skipped", reason="localizer")
    [claimed] = q.claim_study("host:1:1", lease_s=30)
    assert claimed["id"] == grown["id"] and claimed["attempts"] == 1 and claimed["batch"] == grown["id"]
    assert q.claim_study("host:2:2", lease_s=30) == []  # s1 running, s2 skipped: nothing else due
    assert q.enqueue("s1", "fp2")[1] is False  # a job for this content is running
    assert q.update(claimed["id"], "host:1:1", processed_fingerprint="fp3")
    assert q.enqueue("s1", "fp3")[1] is False  # ...and it processed what the series now holds
    assert not q.heartbeat(claimed["id"], "someone-else", 30)
    assert q.recover_stale(lambda owner: owner == "host:1:1") == [claimed["id"]]
    [again] = q.claim_study("host:2:2", lease_s=30)
    assert again["id"] == grown["id"] and again["attempts"] == 2
    assert q.requeue(again["id"], "host:2:2", delay_s=60, reason="Orthanc down", count_attempt=False)
    assert q.get(again["id"])["attempts"] == 1 and q.claim_study("host:2:2", 30) == []  # backing off
    with q._tx() as con:
        con.execute("UPDATE jobs SET not_before=0")
    [done] = q.claim_study("host:2:2", 30)
    assert q.finish(done["id"], "host:2:2", "failed", "boom")
    assert not q.finish(done["id"], "host:2:2", "done")  # no longer ours
    assert q.retry("s1")["state"] == "queued" and q.get(done["id"])["attempts"] == 0
    assert q.counts()["queued"] == 1 and q.counts()["skipped"] == 1
    from cervical_pacs.jobqueue import backoff_delay
    assert [backoff_delay(10, n) for n in (1, 2, 3)] == [10, 20, 40] and backoff_delay(10, 30) == 3600


def test_job_queue_claims_a_quiet_study_whole(tmp_path):
    """A study is claimed once its newest job is quiet_s old and none of its series is still
    arriving; all its queued jobs come together, with the done jobs of its other series (the
    study is run again when a series arrives late), the oldest queued job leading."""
    q = JobQueue(tmp_path / "q.sqlite")
    t1, _ = q.enqueue("t1", "a", study_id="A")
    ir, _ = q.enqueue("ir", "b", study_id="A")
    q.enqueue("loc", "c", study_id="A", state="skipped", reason="localizer")
    other, _ = q.enqueue("x", "d", study_id="B")
    with q._tx() as con:  # study B's job has been quiet for a while, study A's just arrived
        con.execute("UPDATE jobs SET created=created-60 WHERE series_id='x'")
    [b] = q.claim_study("w:1:1", lease_s=30, quiet_s=30)
    assert b["id"] == other["id"]
    assert q.claim_study("w:1:1", lease_s=30, quiet_s=30) == []  # A is not quiet yet
    with q._tx() as con:
        con.execute("UPDATE jobs SET created=created-60 WHERE study_id='A'")
    q.add_pending("water", "A")  # a series of A still arriving holds the study back ...
    assert q.claim_study("w:1:1", lease_s=30, quiet_s=30) == []
    assert [j["id"] for j in q.claim_study("w:1:1", lease_s=30, quiet_s=30, pending_wait_s=0)] == [t1["id"], ir["id"]]
    q.remove_pending("water")  # ... for pending_wait_s at most (a lost STABLE_SERIES must not stop it)
    for j in (t1, ir):
        assert q.finish(j["id"], "w:1:1", "done", "ok")
    late, _ = q.enqueue("water", "e", study_id="A")
    assert q.claim_study("w:1:1", lease_s=30, quiet_s=30) == []  # quiet time again
    with q._tx() as con:
        con.execute("UPDATE jobs SET created=created-60 WHERE id=?", (late["id"],))
    batch = q.claim_study("w:2:2", lease_s=30, quiet_s=30)
    assert [j["id"] for j in batch] == [late["id"], t1["id"], ir["id"]]  # the whole study, run again
    assert {j["state"] for j in batch} == {"running"} and {j["batch"] for j in batch} == {late["id"]}
    assert [j["attempts"] for j in batch] == [1, 1, 1]  # done jobs taken again: a new run
    assert q.forget(series_id="loc") == 1 and q.forget(study_id="A") == 0  # running jobs are left alone
    assert q.get(q.jobs_for_series("loc")[-1]["id"])["state"] == "superseded"
    assert {j["series_id"]: j["state"] for j in q.jobs_for_study("A")} == {
        "t1": "running", "ir": "running", "water": "running"}  # loc: deleted above
    assert q.claim_study("w:3:3", lease_s=30) == []  # one run per study at a time
    grown, _ = q.enqueue("t1", "a2", study_id="A")  # a series grows during the run: queued for later
    assert q.claim_study("w:3:3", lease_s=30) == []
    assert q.finish(late["id"], "w:2:2", "done") and q.finish(t1["id"], "w:2:2", "done")
    assert q.claim_study("w:3:3", lease_s=30) == []  # ir still running
    assert q.finish(ir["id"], "w:2:2", "done")
    assert [j["id"] for j in q.claim_study("w:3:3", lease_s=30)] == [grown["id"], ir["id"], late["id"]]


def test_job_queue_of_schema_1_is_upgraded(tmp_path):
    """A queue file written before study runs (no batch / study columns) opens and works."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_id TEXT NOT NULL,
        study_id TEXT NOT NULL DEFAULT '', series_uid TEXT NOT NULL DEFAULT '', series_number TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL DEFAULT '', fingerprint TEXT NOT NULL, n_instances INTEGER NOT NULL DEFAULT 0,
        processed_fingerprint TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0, lease_owner TEXT NOT NULL DEFAULT '',
        lease_until REAL NOT NULL DEFAULT 0, uploaded TEXT NOT NULL DEFAULT '[]', derived_series TEXT NOT NULL DEFAULT '[]',
        model_version TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL,
        started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, UNIQUE (series_id, fingerprint));
        CREATE TABLE pending_series (series_id TEXT PRIMARY KEY, seen REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO jobs (series_id, study_id, fingerprint, state, created, updated) VALUES ('s', 'A', 'f', 'queued', 0, 0);""")
    con.commit()
    con.close()
    q = JobQueue(path)
    q.add_pending("p", "B")
    [job] = q.claim_study("w:1:1", lease_s=30)
    assert job["series_id"] == "s" and job["batch"] == job["id"]
    with q._connect() as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"


def test_docker_mode_command(tmp_path):
    """The MAP run mode cannot run here (no Docker engine): check the command it would run."""
    from cervical_pacs.runner import AppRunner

    site = tmp_path / "site.env"
    site.write_text("CERVICAL_DL_STRENGTH=low\nCERVICAL_DL_OUTPUT_SYNTAX=rle-lossless\n")
    settings = Settings.from_env(env={"CPACS_RUN_MODE": "docker", "CPACS_MAP_IMAGE": "cervical-dl:0.1",
                                      "CPACS_DOCKER_ARGS": "--gpus all", "CPACS_MODEL_PATH": str(tmp_path / "m"),
                                      "CERVICAL_DL_STRENGTH": "medium,SAG_CE_T1=low"},
                                 config_file=site)
    argv, _, _ = AppRunner(settings).command(tmp_path / "in", tmp_path / "out", "cervical-dl-w1-j2-1")
    assert argv[:3] == ["docker", "run", "--rm"] and argv[-3:] == ["--gpus", "all", "cervical-dl:0.1"]
    assert ["--network", "none"] == argv[argv.index("--network"):argv.index("--network") + 2]
    assert f"{tmp_path / 'in'}:/var/holoscan/input:ro" in argv and f"{tmp_path / 'out'}:/var/holoscan/output" in argv
    assert f"{tmp_path / 'm'}:/opt/holoscan/models:ro" in argv
    assert "HOLOSCAN_MODEL_PATH=/opt/holoscan/models" in argv and "cervical-dl-w1-j2-1" in argv
    # the application's own settings reach the container (the environment wins over the site file)
    assert "CERVICAL_DL_STRENGTH=medium,SAG_CE_T1=low" in argv and "CERVICAL_DL_OUTPUT_SYNTAX=rle-lossless" in argv
    assert argv[argv.index("CERVICAL_DL_STRENGTH=medium,SAG_CE_T1=low") - 1] == "-e"
    python_mode = Settings.from_env(env={"CPACS_MODEL_PATH": "/x/models"}, config_file=site)
    argv, env, cwd = AppRunner(python_mode).command(tmp_path / "in", tmp_path / "out", "n")
    assert env["CERVICAL_DL_STRENGTH"] == "low"
    assert argv[1:] == ["-m", "app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "/x/models"]
    # the project is installed in the venv (pip install -e .): the runner adds no PYTHONPATH
    assert cwd == ROOT and env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")


def test_make_orthanc_launcher_starts_and_stops_what_it_started(stack, tmp_path):
    """`make orthanc` / `make stop` (the launcher CLI), on other ports inside the same namespace."""
    env = {**os.environ, "CPACS_CONFIG": str(tmp_path / "none"),
           "CPACS_LOCAL_DIR": str(tmp_path / "local"), "CPACS_STORAGE_DIR": str(tmp_path / "data"),
           "CPACS_HTTP_PORT": str(_free_port()), "CPACS_DICOM_PORT": str(_free_port())}
    cli = [sys.executable, "-m", "cervical_pacs.launcher"]
    started = subprocess.run([*cli, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        creds = tmp_path / "local" / "config" / "credentials.json"
        assert f"password in {creds}" in started.stdout
        assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
        password = json.loads(creds.read_text())["RegisteredUsers"][ADMIN_USER]
        assert password not in started.stdout
        url = f"http://127.0.0.1:{env['CPACS_HTTP_PORT']}"
        assert requests.get(url + "/cervical-dl/health", auth=(ADMIN_USER, password), timeout=10).status_code == 200
        def pids() -> dict[str, int]:
            return {n: int((tmp_path / "local" / "run" / f"{n}.pid").read_text()) for n in ("orthanc", "worker")}

        first = pids()
        # idempotent (`make demo` twice): a healthy pair is reused ...
        again = subprocess.run([*cli, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "reusing" in again.stdout and pids() == first, again.stdout
        # ... a half-running one (the worker died) is restarted whole
        os.kill(first["worker"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{first['worker']}").exists() and \
                b"Z" not in Path(f"/proc/{first['worker']}/stat").read_bytes().split()[2:3]:
            time.sleep(0.1)
        restarted = subprocess.run([*cli, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert restarted.returncode == 0 and "restarting" in restarted.stdout, restarted.stdout + restarted.stderr
        second = pids()
        assert second["worker"] != first["worker"] and second["orthanc"] != first["orthanc"]
        assert requests.get(url + "/cervical-dl/health", auth=(ADMIN_USER, password), timeout=10).status_code == 200
    finally:
        stopped = subprocess.run([*cli, "stop"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "stopped worker" in stopped.stdout and "stopped orthanc" in stopped.stdout
    for pid in [*first.values(), *second.values()]:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split()[2:3]
    assert stack.orthanc.poll() is None  # the module's Orthanc was not touched


def test_authentication_is_required_and_credentials_are_private(stack):
    good = stack.http.get(stack.url + "/system", timeout=10)
    assert good.status_code == 200
    for path in ("/system", "/cervical-dl/health", "/dicom-web/studies", "/instances"):
        assert requests.get(stack.url + path, timeout=10).status_code == 401, path
        assert requests.get(stack.url + path, auth=(ADMIN_USER, "wrong"), timeout=10).status_code == 401, path
        assert requests.get(stack.url + path, auth=("nobody", "x"), timeout=10).status_code == 401, path
    bad_upload = requests.post(stack.url + "/instances", data=b"x", auth=(WORKER_USER, "wrong"), timeout=10)
    assert bad_upload.status_code == 401
    mode = stat.S_IMODE(os.stat(stack.settings.credentials_file).st_mode)
    assert mode == 0o600
    health = stack.get("/cervical-dl/health")
    assert health["orthanc_module"] == "built-in"  # the plugin's `import orthanc` is Orthanc's
    stack.wait(lambda: stack.get("/cervical-dl/health")["status"] == "ok", "a worker heartbeat", 30)


def test_rest_upload_of_a_study_gives_derived_series_in_the_same_study(stack, studies):
    a = studies["a"]
    answers = stack.upload(_dcm(a / "001_localizer") + _dcm(a / "301_sag_t1") + _dcm(a / "501_ax_t2"))
    study_id = answers[0]["ParentStudy"]
    localizer, sag_t1, ax_t2 = (answers[i]["ParentSeries"] for i in (0, 3, 6))
    loc = stack.wait_job(localizer, states=("skipped",))
    assert loc["job"]["reason"] == "localizer" and loc["metadata"]["CervicalDLState"] == "skipped"
    n_uploaded, runs = 0, set()
    for source_id in (sag_t1, ax_t2):
        info = stack.wait_job(source_id)
        _assert_done_with_derived(stack, source_id, info, n_instances=3)
        n_uploaded += len(info["job"]["derived_series"])
        runs.add(info["job"]["batch"])
    assert len(runs) == 1  # the study was run once, both series together
    assert len(re.findall(r"job \d+ study \S+ attempt \d+: series .*: started", stack.log_tail("worker.log", 200))) == 1
    qc = _qc_series_in_study(stack, study_id)  # one SR and one PDF report for the study
    assert sorted(s["MainDicomTags"]["Modality"] for s in qc) == ["DOC", "SR"]
    study = stack.study_info(study_id)
    assert study["state"] == "done" and {j["series_id"] for j in study["series"]} == {localizer, sag_t1, ax_t2}
    assert stack.job_info(sag_t1)["study_qc_series"] == study["qc_series"]
    assert len(stack.study_series(study_id)) == 3 + n_uploaded + 2  # nothing else appeared
    numbers = [s["MainDicomTags"].get("SeriesNumber") for s in stack.study_series(study_id)]
    assert len(numbers) == len(set(numbers)), numbers  # unique series numbers in the study
    jobs = stack.get("/cervical-dl/jobs")
    assert {j["series_id"] for j in jobs} == {localizer, sag_t1, ax_t2}  # derived series never got a job
    # The same study offline: the same derived instances, pixel for pixel, with the same verdicts.
    offline_in, offline_out = stack.tmp / "offline-a" / "in", stack.tmp / "offline-a" / "out"
    offline_in.mkdir(parents=True)
    for f in _dcm(a / "001_localizer") + _dcm(a / "301_sag_t1") + _dcm(a / "501_ax_t2"):
        (offline_in / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    done = run_app(offline_in, offline_out, _model_path())
    assert done.returncode == 0, done.stderr[-2000:]
    offline = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, (offline_out / "derived").rglob("*.dcm"))}
    compared = 0
    for source_id in (sag_t1, ax_t2):
        for d in stack.job_info(source_id)["job"]["derived_series"]:
            for iid in stack.get(f"/series/{d}")["Instances"]:
                ds = pydicom.dcmread(io.BytesIO(stack.http.get(f"{stack.url}/instances/{iid}/file", timeout=30).content))
                twin = offline[str(ds.SOPInstanceUID)]
                assert (ds.pixel_array == twin.pixel_array).all() and ds.ImageComments == twin.ImageComments
                compared += 1
    assert compared == 6


def test_reupload_and_our_outputs_add_no_job_and_no_duplicate(stack, studies):
    a = studies["a"]
    study_id = stack.upload(_dcm(a / "301_sag_t1")[:1])[0]["ParentStudy"]
    before_series = {s["ID"]: len(s["Instances"]) for s in stack.study_series(study_id)}
    before_jobs = stack.queue.counts()
    derived_ids = [d for j in stack.get("/cervical-dl/jobs?state=done") for d in j["derived_series"]]
    assert len(derived_ids) >= 2 and set(derived_ids) <= set(before_series)
    # same source files again (REST and C-STORE), and our own outputs sent back in
    stack.upload(_dcm(a / "301_sag_t1") + _dcm(a / "501_ax_t2"))
    stack.storescu(_dcm(a / "301_sag_t1"))
    ours = [stack.http.get(f"{stack.url}/instances/{i}/file", timeout=30).content
            for d in derived_ids for i in stack.get(f"/series/{d}")["Instances"]]
    for data in ours:
        assert stack.http.post(stack.url + "/instances", data=data, timeout=30).status_code == 200
    time.sleep(stack.settings.stable_age + 4)  # STABLE_SERIES fired again for all of them meanwhile
    assert "content unchanged" in stack.log_tail("orthanc.log", 200)
    assert stack.queue.counts() == before_jobs
    assert {s["ID"]: len(s["Instances"]) for s in stack.study_series(study_id)} == before_series
    for d in derived_ids:
        assert stack.job_info(d) is None


def test_dimse_cstore_triggers_and_results_are_forwarded(stack, studies):
    files = _dcm(studies["a"] / "402_sag_dixon_w")
    stack.storescu(files)
    series_id = stack.series_id(str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
    info = stack.wait_job(series_id)
    derived = _assert_done_with_derived(stack, series_id, info, n_instances=3)
    assert f"forwarded to {FORWARD_AET}" in info["job"]["reason"]
    derived_uid = derived["MainDicomTags"]["SeriesInstanceUID"]
    forwarded = [pydicom.dcmread(f, stop_before_pixels=True) for f in stack.forward_dir.rglob("*") if f.is_file()]
    assert sum(str(ds.SeriesInstanceUID) == derived_uid for ds in forwarded) == 3


def test_grown_series_is_reprocessed_and_its_derived_series_replaced(stack, studies):
    files = _dcm(studies["a"] / "801_sag_ce_t1")
    answer = stack.upload(files[:2])[0]
    source_id, study_id = answer["ParentSeries"], answer["ParentStudy"]
    first = stack.wait_job(source_id)
    d1 = _assert_done_with_derived(stack, source_id, first, n_instances=2)
    qc1 = _qc_series_in_study(stack, study_id)
    stack.upload(files[2:])
    second = stack.wait_job(source_id, n_jobs=2)
    d2 = _assert_done_with_derived(stack, source_id, second, n_instances=3)
    assert d2["ID"] == d1["ID"]  # deterministic UIDs: replaced, not duplicated
    assert [j["state"] for j in second["history"]] == ["done", "done"]
    study = stack.study_series(d2["ParentStudy"])
    assert sum(s["MainDicomTags"].get("SeriesNumber") == d2["MainDicomTags"]["SeriesNumber"] for s in study) == 1
    # the study's other series were run again with it, and its one QC report replaced in place
    qc2 = _qc_series_in_study(stack, study_id)
    assert sorted(s["ID"] for s in qc2) == sorted(s["ID"] for s in qc1) and all(len(s["Instances"]) == 1 for s in qc2)
    def others_done():  # the worker finishes the run's jobs one after the other, the lead's first
        others = [j for j in stack.study_info(study_id)["series"] if j["series_id"] != source_id]
        done = [j for j in others if j["state"] == "done"]
        return done if len(done) >= 3 and not any(j["state"] in ("queued", "running") for j in others) else None

    others = stack.wait(others_done, "the study's other series to finish with the run", 60)
    assert {j["batch"] for j in others} == {second["job"]["batch"]}


def test_corrupt_and_non_cervical_series_are_skipped_with_a_reason(stack, studies):
    knee = stack.upload(_dcm(studies["knee"]))
    corrupt = stack.upload(_dcm(studies["corrupt"]))
    knee_info = stack.wait_job(knee[0]["ParentSeries"], states=("skipped",))
    assert knee_info["job"]["reason"] == "not a cervical-spine series (BodyPartExamined KNEE)"
    assert knee_info["job"]["attempts"] == 0  # the plugin's filter: the app never ran
    info = stack.wait_job(corrupt[0]["ParentSeries"], states=("skipped", "failed"))
    reason = info["job"]["reason"]
    assert "truncated pixel data" in reason and "\n" not in reason
    assert info["metadata"]["CervicalDLState"] == info["job"]["state"] and info["metadata"]["CervicalDLReason"] == reason
    assert info["job"]["derived_series"] == []
    assert _ours_in_study(stack, corrupt[0]["ParentStudy"]) == []  # no partial derived series
    assert len(stack.study_series(knee[0]["ParentStudy"])) == 1
    # deleted from Orthanc and sent again: new work, not "content unchanged"
    stack.http.delete(f"{stack.url}/studies/{knee[0]['ParentStudy']}", timeout=30).raise_for_status()
    stack.wait(lambda: stack.job_info(knee[0]["ParentSeries"])["job"]["state"] == "superseded", "deletion noted", 30)
    stack.upload(_dcm(studies["knee"]))
    again = stack.wait_job(knee[0]["ParentSeries"], states=("skipped",))
    assert again["job"]["reason"] == knee_info["job"]["reason"]
    assert (stack.logs / "orthanc.log").read_text(errors="replace").count(f"({knee[0]['ParentSeries']}, ") == 2  # evaluated again


def test_jpeg_lossless_and_enhanced_mr_stored_in_orthanc_get_their_derived_series(stack, studies):
    jpeg = stack.upload(_dcm(studies["jpeg_lossless"]))
    enhanced = stack.upload(_dcm(studies["enhanced"]))
    info = stack.wait_job(jpeg[0]["ParentSeries"])
    derived = _assert_done_with_derived(stack, jpeg[0]["ParentSeries"], info, n_instances=2)
    tags = stack.get(f"/instances/{derived['Instances'][0]}/simplified-tags")
    assert stack.get(f"/instances/{derived['Instances'][0]}/metadata?expand")["TransferSyntax"] == "1.2.840.10008.1.2.1"
    assert tags["SourceImageSequence"][0]["ReferencedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4"
    info = stack.wait_job(enhanced[0]["ParentSeries"])
    assert info["job"]["role"] == "AX_T2", info["job"]  # classified from the functional groups
    derived = _assert_done_with_derived(stack, enhanced[0]["ParentSeries"], info, n_instances=2)
    refs = [stack.get(f"/instances/{i}/simplified-tags")["SourceImageSequence"][0] for i in derived["Instances"]]
    source_uid = str(pydicom.dcmread(_dcm(studies["enhanced"])[0], stop_before_pixels=True).SOPInstanceUID)
    assert {r["ReferencedSOPInstanceUID"] for r in refs} == {source_uid}
    assert sorted(int(r["ReferencedFrameNumber"]) for r in refs) == [1, 2]


def test_worker_killed_mid_job_completes_after_restart(stack, studies):
    source_id = stack.upload(_dcm(studies["a"] / "401_sag_dixon_ip"))[0]["ParentSeries"]
    info = stack.wait_job(source_id, states=("running",))
    job_id, worker_pid = info["job"]["id"], stack.worker.pid
    marker = f"cervical-dl-w{worker_pid}-job{job_id}-"
    [app] = stack.wait(lambda: _app_processes(marker), "the app process of the job", 60)
    warm_runner = _parent_pid(app)  # the warm runner the run was forked from (the worker, when cold)
    time.sleep(1.0)
    stack.stop_worker(signal.SIGKILL)
    stack.wait(lambda: _gone(app) and _gone(warm_runner), "the app and its warm runner to die with their worker", 20)
    assert stack.job_info(source_id)["job"]["state"] == "running"  # orphaned until a worker looks
    assert list(stack.work_dir.glob(f"{marker}*"))
    stack.start_worker()
    info = stack.wait_job(source_id)
    _assert_done_with_derived(stack, source_id, info, n_instances=3)
    assert len(info["history"]) == 1 and info["job"]["attempts"] == 2
    assert not list(stack.work_dir.glob(f"{marker}*"))  # the killed attempt's temp folder is gone


def test_study_runs_are_forked_from_one_warm_runner_recycled_after_max_jobs(stack, studies):
    """Two studies, one warm runner: each run a child of the same process (imports paid once),
    results as usual; after CPACS_RUNNER_MAX_JOBS runs the process is replaced."""
    stack.stop_worker()
    log_start = len((stack.logs / "worker.log").read_text(errors="replace"))
    stack.start_worker(CPACS_RUNNER_MAX_JOBS="2")
    runs = []
    for k in range(2):
        files = _copy_as_new_study(studies["b"] / "301_sag_t1", stack.tmp / f"warm-{k}")
        source_id = stack.upload(files)[0]["ParentSeries"]
        info = stack.wait_job(source_id)
        _assert_done_with_derived(stack, source_id, info, n_instances=2)
        assert len(_qc_series_in_study(stack, info["job"]["study_id"])) == 2
        text = (stack.logs / "worker.log").read_text(errors="replace")[log_start:]
        done = [ln for ln in text.splitlines() if f"job {info['job']['id']} " in ln and ": done in " in ln]
        assert len(done) == 1, text[-3000:]
        runs.append(WARM_RUN.search(done[0]).groups())
    (pid1, n1, most, child1), (pid2, n2, _, child2) = runs
    assert pid1 == pid2 and (n1, n2) == ("1", "2") and most == "2", runs  # the same process served both
    assert child1 != child2 and pid1 not in (child1, child2)  # each run in a child of its own
    text = (stack.logs / "worker.log").read_text(errors="replace")[log_start:]
    assert f"warm runner pid {pid1} stopped (recycled after 2 runs" in text
    stack.wait(lambda: _gone(int(pid1)), "the recycled warm runner to exit", 20)
    assert re.search(r"warm runner pid (?!%s\b)\d+ starting" % pid1, (stack.logs / "worker.log").read_text()[log_start:])


def test_warm_runner_killed_mid_run_the_study_is_retried_and_nothing_partial(stack, studies):
    files = _copy_as_new_study(studies["b"] / "501_ax_t2", stack.tmp / "warm-killed")
    answer = stack.upload(files)[0]
    source_id, study_id = answer["ParentSeries"], answer["ParentStudy"]
    # The job's id as soon as it is queued, then its app process, polled fast: on idle cores this
    # 2-slice run lasts under a second (CI saw a 0.7 s run finish between two 0.5 s polls).
    job = stack.wait(lambda: (stack.job_info(source_id) or {}).get("job"), "the job of the series", interval=0.05)
    marker = f"cervical-dl-w{stack.worker.pid}-job{job['id']}-"
    [app] = stack.wait(lambda: _app_processes(marker), "the app process of the job", 60, interval=0.02)
    warm_runner = _parent_pid(app)
    assert warm_runner != stack.worker.pid  # forked by the warm runner, not started cold
    # at once: on idle cores a 2-slice run can finish within a second (CI saw attempt 1 done)
    os.kill(warm_runner, signal.SIGKILL)
    stack.wait(lambda: _gone(app), "the run to die with its warm runner", 20)
    info = stack.wait_job(source_id)
    derived = _assert_done_with_derived(stack, source_id, info, n_instances=2)
    assert info["job"]["attempts"] == 2 and len(info["history"]) == 1  # retried, same job
    assert stack.worker.poll() is None  # the worker itself was not affected
    log = stack.log_tail("worker.log", 80)
    assert f"the warm runner (pid {warm_runner}) died during the run" in log
    assert re.search(r"warm runner pid (?!%d\b)\d+ starting" % warm_runner, log)
    ours = _ours_in_study(stack, study_id)  # nothing partial: the derived series and the QC pair, whole
    qc = _qc_series_in_study(stack, study_id)
    assert sorted(ours) == sorted([derived["ID"], *(s["ID"] for s in qc)]) and len(qc) == 2


def test_failed_upload_is_rolled_back_and_retry_route_works(stack, studies):
    stack.stop_worker()  # the cold path (warm runner off) with it
    log_start = len((stack.logs / "worker.log").read_text(errors="replace"))
    stack.start_worker(CPACS_FAULT_INJECT="fail-upload-after:1", CPACS_MAX_ATTEMPTS="1", CPACS_RUNNER_WARM="false")
    answers = stack.upload(_dcm(studies["b"] / "801_sag_ce_t1"))
    source_id, study_id = answers[0]["ParentSeries"], answers[0]["ParentStudy"]
    info = stack.wait_job(source_id, states=("failed",))
    assert "injected upload failure after 1 instances" in info["job"]["reason"]
    assert info["metadata"]["CervicalDLState"] == "failed" and info["metadata"]["CervicalDLDerivedSeries"] == ""
    assert re.search(r"job \d+: rolled back the upload of \d+ derived series", stack.log_tail("worker.log", 30))
    since = (stack.logs / "worker.log").read_text(errors="replace")[log_start:]
    assert "warm runner off" in since and "warm runner pid" not in since  # ran cold: python -m app
    assert _ours_in_study(stack, study_id) == []  # nothing partial left
    stack.stop_worker()
    stack.start_worker()
    r = stack.http.post(f"{stack.url}/cervical-dl/series/{source_id}/retry", timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "queued"
    info = stack.wait_job(source_id)
    _assert_done_with_derived(stack, source_id, info, n_instances=2)
    assert len(info["history"]) == 1


def test_orthanc_restart_with_queued_and_unstable_series_loses_nothing(stack, studies):
    b = studies["b"]
    stack.stop_worker()  # nothing takes jobs: they stay queued
    queued_id = stack.upload(_dcm(b / "301_sag_t1"))[0]["ParentSeries"]
    stack.wait_job(queued_id, states=("queued",), timeout=30)
    unstable_id = stack.upload(_dcm(b / "501_ax_t2"))[0]["ParentSeries"]
    deadline = time.monotonic() + 0.8  # the plugin notes the new series asynchronously
    while unstable_id not in stack.queue.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    stack.stop_orthanc(signal.SIGKILL)  # a crash before StableAge: its STABLE_SERIES never fires
    assert unstable_id in stack.queue.pending()
    stack.start_worker()  # the worker starts while Orthanc is down, and waits for it
    time.sleep(3)
    assert stack.worker.poll() is None
    stack.start_orthanc()
    for series_id in (queued_id, unstable_id):
        info = stack.wait_job(series_id)
        _assert_done_with_derived(stack, series_id, info, n_instances=2)
        assert len(info["history"]) == 1
    assert stack.job_info(queued_id)["job"]["attempts"] == 1  # Orthanc being down used up no attempt
    assert f"({unstable_id}, 2 instances, recovered after restart)" in stack.log_tail("orthanc.log", 400)
    stack.wait(lambda: stack.queue.pending() == [], "no series left pending (derived ones included)", 20)


def test_logs_carry_no_patient_data(stack, studies):
    names = set()
    for f in [*studies["a"].rglob("*.dcm"), *studies["b"].rglob("*.dcm"), *studies["knee"].glob("*.dcm")]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        names |= {str(ds.PatientName), str(ds.PatientID), str(ds.get("AccessionNumber", "")),
                  str(ds.PatientName).replace("^", " ")}
    names.discard("")
    logs = {n: (stack.logs / n).read_text(errors="replace") for n in ("orthanc.log", "worker.log")}
    assert "job" in logs["worker.log"] and "cervical-dl:" in logs["orthanc.log"]
    for name, text in logs.items():
        leaked = sorted(n for n in names if n in text)
        assert not leaked, (name, leaked)
