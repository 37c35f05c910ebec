"""Benchmark of the Orthanc auto-trigger (not run in CI).

    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.bench [--quick] [--out bench.json]
    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.bench --study [--out study.json]
    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.bench --burst-studies 20 [--restart] [--out burst.json]

Starts its own Orthanc + worker (random ports, private network namespace when root, temp
folders), uploads simulated studies over REST and measures, per series:
  * stored->available: from the last instance stored to the derived series being in Orthanc
    (job ``done``: upload finished and committed);
  * stable->available: from STABLE_SERIES (the job's creation by the plugin) to the same;
    goal: <= 20 s for one 15-slice 512x512 sagittal series on 2 CPU cores;
for (1) one 15-slice sagittal T1 series, (2) a whole accelerated myelopathy study, (3) a burst
of N series (default 20: copies of the 15-slice series under new UIDs) -> throughput; and the
worker's resident memory sampled through the burst (goal: no growth: the worker never loads
images itself beyond one file at a time; the app runs in a child process per job).
``--quick`` uses 3-slice series and a burst of 3 (a smoke run of the script itself).
``--study`` measures only (2), a whole accelerated myelopathy study (13 sagittal slices in
4 series, 24 axial, 512 and 320 pixels), processed in one study run, after the warm runner
has imported the application (``--runner cold``: ``python -m app`` per run, as before the
warm runner); it prints the worker's and the runner's memory (the warm runner's RSS before
and after, and the app run's peak RSS) and ends with the line ``whole study: N.N s from last instance stored to all results
in Orthanc`` (goal on 2 cores: <= 25 s, of which StableAge + the study quiet time <= 5 s).
``--burst-studies N`` measures only a burst of N distinct small studies (copies of one simulated
accelerated myelopathy study, ``--slices`` sagittal and ``--axial-slices`` axial slices per series,
default 2 and 2, each copy under new Study/Series/SOP Instance UIDs), uploaded all at once;
with ``--restart``, once study runs are going, the warm runner is killed (SIGKILL to its process
group) while it serves a run, and later the worker itself is killed (SIGKILL) while a run is
going and started again as the bench started it. It waits for every study, then checks over
REST that each has exactly one derived series per enhanced source series, one QC SR and one PDF,
nothing else of ours, every job ``done`` (or ``skipped`` with a reason, the localizer) and none
failed, one successful study run per study (the worker's log), and samples the worker's and the
warm runner's RSS through the burst; it ends with the line ``burst of N studies: D done, X
duplicated, F failed, W s wall (R studies/min)``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

from .jobqueue import JobQueue
from .launcher import start_orthanc, start_worker, wait_orthanc
from .runner import rss_kib
from .sandbox import free_port, private_network
from .settings import ADMIN_USER, REPO_ROOT, Settings, render_orthanc_config


_rss_kib = rss_kib
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) of a process so far; with ``children``, those of its
    waited-for children too (the worker's cold app runs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / _TICK


def run_offline(study: Path, out: Path, model_path: Path) -> dict:
    """The same study through ``python -m app`` directly (wall and CPU), for comparison."""
    cmd = [sys.executable, "-m", "app", "-i", str(study), "-o", str(out), "-m", str(model_path)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return {"wall_s": round(time.monotonic() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "exit": os.waitstatus_to_exitcode(status)}


def make_study(out: Path, sagittal: int, axial: int, seed: int) -> Path:
    cmd = [sys.executable, "-m", "simulation.make_study", "--protocol", "myelopathy", "--acquisition", "accelerated",
           "--seed", str(seed), "--out", str(out), "--sagittal-slices", str(sagittal), "--axial-slices", str(axial)]
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, 
                   capture_output=True, timeout=1800)
    return out


def copies_with_new_uids(series_dir: Path, out: Path, n: int) -> list[list[Path]]:
    """n copies of one series, each with its own SeriesInstanceUID and SOPInstanceUIDs."""
    result = []
    sources = [pydicom.dcmread(f) for f in sorted(series_dir.glob("*.dcm"))]
    for i in range(n):
        folder = out / f"copy{i:02d}"
        folder.mkdir(parents=True)
        series_uid = generate_uid()
        for j, ds in enumerate(sources):
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f"IM{j:04d}.dcm")
        result.append(sorted(folder.glob("*.dcm")))
    return result


def studies_with_new_uids(study_dir: Path, out: Path, n: int) -> list[list[Path]]:
    """n copies of one study, each a study of its own: new StudyInstanceUID, a new
    SeriesInstanceUID per series and new SOPInstanceUIDs (AccessionNumber too)."""
    sources = {folder.name: [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
               for folder in sorted(p for p in study_dir.iterdir() if p.is_dir() and any(p.glob("*.dcm")))}
    result = []
    for i in range(n):
        study_uid = generate_uid()
        files = []
        for name, datasets in sources.items():
            folder = out / f"study{i:02d}" / name
            folder.mkdir(parents=True)
            series_uid = generate_uid()
            for j, ds in enumerate(datasets):
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.AccessionNumber = f"BURST{i:04d}"
                ds.save_as(folder / f"IM{j:04d}.dcm")
                files.append(folder / f"IM{j:04d}.dcm")
        result.append(files)
    return result


def _children(pid: int) -> list[int]:
    """Direct children of a process (scan of /proc: no CONFIG_PROC_CHILDREN needed)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int(p.joinpath("stat").read_bytes().rsplit(b")", 1)[1].split()[1]) == pid:
                    found.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _age_s(pid: int) -> float:
    """Seconds since the process started (0 when it is gone)."""
    try:
        start = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19]) / _TICK
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start


class Bench:
    def __init__(self, tmp: Path, args):
        env = {"CPACS_LOCAL_DIR": str(tmp / "local"), "CPACS_STORAGE_DIR": str(tmp / "data"),
               "CPACS_HTTP_PORT": str(free_port()), "CPACS_DICOM_PORT": str(free_port()),
               "CPACS_STABLE_AGE": str(args.stable_age), "CPACS_MODEL_PATH": str(args.model_path),
               "CPACS_CONCURRENCY": str(args.concurrency), "CPACS_POLL_SECONDS": "0.2",
               "CPACS_STUDY_QUIET_SECONDS": str(args.quiet), "CPACS_RUNNER_WARM": str(args.runner == "warm"),
               "CPACS_WORK_DIR": str(tmp)}
        self.settings = Settings.from_env(env=env, config_file=tmp / "no-site.env")
        render_orthanc_config(self.settings)
        users = json.loads(Path(self.settings.credentials_file).read_text())["RegisteredUsers"]
        self.auth = (ADMIN_USER, users[ADMIN_USER])
        self.http = requests.Session()
        self.http.auth = self.auth
        self.url = self.settings.orthanc_url
        self.queue = JobQueue(self.settings.queue_db)
        self.orthanc = start_orthanc(self.settings, tmp / "orthanc.log")
        wait_orthanc(self.settings, *self.auth, proc=self.orthanc)
        self.worker = start_worker(self.settings, tmp / "worker.log")

    def close(self):
        for p in (self.worker, self.orthanc):
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=60)

    def restart_worker(self, log_file: Path) -> tuple[int, int]:
        """SIGKILL the worker (its warm runner and the run die with it: parent-death signals)
        and start it again as the bench started it. Returns (old pid, new pid)."""
        old = self.worker.pid
        self.worker.kill()
        self.worker.wait(timeout=60)
        self.worker = start_worker(self.settings, log_file)
        return old, self.worker.pid

    def warm_runner_now(self) -> int:
        """The worker's current warm runner process (0: none)."""
        for pid in _children(self.worker.pid):
            if "cervical_pacs.warm" in _cmdline(pid):
                return pid
        return 0

    def warm_runner_pid(self, log_file: Path, timeout: float) -> int:
        """The worker's warm runner once it has imported the application (0: none)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.settings.runner_warm:
            found = re.findall(r"warm runner pid (\d+) ready", log_file.read_text(errors="replace"))
            if found:
                return int(found[-1])
            time.sleep(0.2)
        return 0

    def upload(self, files: list[Path]) -> tuple[set[str], float]:
        series = set()
        for f in files:
            r = self.http.post(self.url + "/instances", data=f.read_bytes(), timeout=120)
            r.raise_for_status()
            series.add(r.json()["ParentSeries"])
        return series, time.time()

    def wait_done(self, series_ids: set[str], timeout: float) -> dict[str, dict]:
        deadline, done = time.monotonic() + timeout, {}
        while time.monotonic() < deadline and len(done) < len(series_ids):
            for sid in series_ids - set(done):
                jobs = self.queue.jobs_for_series(sid)
                if jobs and jobs[-1]["state"] in ("done", "failed", "skipped"):
                    done[sid] = jobs[-1]
            time.sleep(0.2)
        return done


def _timings(jobs: dict[str, dict], stored_at: float) -> dict:
    done = [j for j in jobs.values() if j["state"] == "done"]
    if not done:
        return {"n_done": 0, "states": sorted({j["state"] for j in jobs.values()})}
    return {"n_done": len(done), "n_other": len(jobs) - len(done),
            "stored_to_available_s": round(max(j["finished"] for j in done) - stored_at, 2),
            "stable_to_available_s": [round(j["finished"] - j["created"], 2) for j in done],
            "processing_s": [round(j["finished"] - j["started"], 2) for j in done]}


def run(args) -> dict:
    results: dict = {"settings": {"stable_age_s": args.stable_age, "study_quiet_s": args.quiet,
                                  "concurrency": args.concurrency, "slices": args.slices,
                                  "axial_slices": args.axial_slices, "burst": args.burst, "cpus": os.cpu_count(),
                                  "burst_studies": args.burst_studies, "restart": args.restart,
                                  "load_avg_at_start": os.getloadavg()}}
    if args.study:
        return run_study(args, results)
    if args.burst_studies:
        return run_burst_studies(args, results)
    with tempfile.TemporaryDirectory(prefix="cervical-dl-bench-") as tmp:
        tmp = Path(tmp)
        print("simulating studies ...", file=sys.stderr)
        one = make_study(tmp / "one", args.slices, 2, seed=101)
        whole = make_study(tmp / "whole", args.slices, args.axial_slices, seed=102)
        burst = copies_with_new_uids(one / "301_sag_t1", tmp / "burst", args.burst)
        with private_network() as network:
            results["network"] = network
            bench = Bench(tmp / "stack", args)
            try:
                print("one sagittal series ...", file=sys.stderr)
                ids, t = bench.upload(sorted((one / "301_sag_t1").glob("*.dcm")))
                results["one_sagittal_series"] = _timings(bench.wait_done(ids, args.timeout), t)

                print("whole myelopathy study ...", file=sys.stderr)
                ids, t = bench.upload(sorted(whole.rglob("*.dcm")))
                jobs = bench.wait_done(ids, args.timeout)
                results["whole_study"] = _timings(jobs, t) | {"series": len(ids)}

                print(f"burst of {args.burst} series ...", file=sys.stderr)
                samples: list[tuple[float, int]] = []
                stop = threading.Event()

                def sample():
                    while not stop.wait(0.5):
                        samples.append((time.time(), _rss_kib(bench.worker.pid)))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                t0 = time.time()
                ids = set()
                for files in burst:
                    ids |= bench.upload(files)[0]
                t_stored = time.time()
                jobs = bench.wait_done(ids, args.timeout * args.burst)
                stop.set()
                sampler.join()
                done = [j for j in jobs.values() if j["state"] == "done"]
                span = (max(j["finished"] for j in done) - t0) if done else float("nan")
                rss = [kib for _, kib in samples if kib]
                results["burst"] = _timings(jobs, t_stored) | {
                    "series": len(ids), "wall_s": round(span, 1),
                    "throughput_series_per_min": round(60 * len(done) / span, 2) if done else 0,
                    "worker_rss_mib": {"first": round(rss[0] / 1024, 1), "last": round(rss[-1] / 1024, 1),
                                       "max": round(max(rss) / 1024, 1)} if rss else {}}
                if done:
                    per = results["burst"]["stable_to_available_s"]
                    results["burst"]["stable_to_available_median_s"] = round(statistics.median(per), 2)
            finally:
                bench.close()
    one_s = results.get("one_sagittal_series", {}).get("stable_to_available_s", [None])[0]
    results["goal_one_series_le_20s_after_stable"] = bool(one_s is not None and one_s <= 20)
    return results


def run_study(args, results: dict) -> dict:
    """Only the whole study: one study run, from the last instance stored to all results."""
    with tempfile.TemporaryDirectory(prefix="cervical-dl-bench-") as tmp:
        tmp = Path(tmp)
        print("simulating the study ...", file=sys.stderr)
        whole = make_study(tmp / "whole", args.slices, args.axial_slices, seed=102)
        with private_network() as network:
            results["network"] = network
            bench = Bench(tmp / "stack", args)
            try:
                deadline = time.monotonic() + 60  # the worker's first heartbeat: imports done, idle
                while not bench.queue.workers() and time.monotonic() < deadline:
                    time.sleep(0.2)
                # the warm runner imports the application once, before the study arrives (steady state)
                runner_pid = bench.warm_runner_pid(tmp / "stack" / "worker.log", 180)
                rss_before, runner_before = _rss_kib(bench.worker.pid), _rss_kib(runner_pid) if runner_pid else 0
                # CPU used meanwhile by the stack's own processes (is the app contending with them?)
                cpu_before = {"orthanc": _cpu_s(bench.orthanc.pid), "worker": _cpu_s(bench.worker.pid),
                              "bench": _cpu_s(os.getpid())}
                ids, t = bench.upload(sorted(whole.rglob("*.dcm")))
                jobs = bench.wait_done(ids, args.timeout)
                results["stack_cpu_s_during_run"] = {
                    "orthanc": round(_cpu_s(bench.orthanc.pid) - cpu_before["orthanc"], 1),
                    "worker_without_app": round(_cpu_s(bench.worker.pid) - cpu_before["worker"], 1),
                    "bench_client": round(_cpu_s(os.getpid()) - cpu_before["bench"], 1)}
                runs = {j["batch"] for j in jobs.values() if j["state"] == "done"}
                results["whole_study"] = _timings(jobs, t) | {"series": len(ids), "study_runs": len(runs)}
                results["worker_rss_mib"] = {"before": round(rss_before / 1024, 1),
                                             "after": round(_rss_kib(bench.worker.pid) / 1024, 1)}
                results["runner"] = {"mode": args.runner, "warm_runner_pid": runner_pid}
                if runner_pid:
                    results["runner"]["warm_runner_rss_mib"] = {"before": round(runner_before / 1024, 1),
                                                                "after": round(_rss_kib(runner_pid) / 1024, 1)}
            finally:
                bench.close()
                log_file = tmp / "stack" / "worker.log"
                done_lines = [ln for ln in log_file.read_text().splitlines() if ": done in " in ln] if log_file.exists() else []
                if done_lines:  # the worker's own breakdown of the study run (no patient data in it)
                    results["worker_breakdown"] = done_lines[-1].split(": done in ", 1)[1]
                    run = re.search(r"app run: (.*)$", done_lines[-1])
                    peak = re.search(r"peak RSS (\d+) MiB", done_lines[-1])
                    results.setdefault("runner", {})["app_run"] = run.group(1) if run else ""
                    results["runner"]["app_peak_rss_mib"] = int(peak.group(1)) if peak else None
        if args.compare_offline:
            print("the same study offline (python -m app) ...", file=sys.stderr)
            results["offline_app"] = run_offline(whole, tmp / "offline-out", args.model_path)
    return results


def _rss_summary(kib: list[int]) -> dict:
    kib = [k for k in kib if k]
    return {"first": round(kib[0] / 1024, 1), "last": round(kib[-1] / 1024, 1), "max": round(max(kib) / 1024, 1),
            "samples": len(kib)} if kib else {}


def _check_study(bench: Bench, study_id: str, n_series: int) -> dict:
    """One study's results, read back over REST: per enhanced source series exactly one derived
    series (ours, pointing back at it, listed in its metadata), one QC SR and one PDF, nothing
    else of ours; and the study's jobs (latest per series, one job row per series)."""
    from series.roles import is_our_output  # light: numpy and pydicom only

    get = lambda path: bench.http.get(bench.url + path, timeout=60).json()  # noqa: E731
    info = get(f"/cervical-dl/studies/{study_id}")
    jobs = info.get("series", [])
    series = get(f"/studies/{study_id}/series")
    sources, derived, sr, pdf, other = {}, {}, [], [], []
    for s in series:
        tags = get(f"/instances/{s['Instances'][0]}/simplified-tags")
        meta = get(f"/series/{s['ID']}/metadata?expand")
        if not is_our_output(tags):
            sources[s["ID"]] = (s, meta)
        elif s["MainDicomTags"].get("Modality") == "SR":
            sr.append(s["ID"])
        elif s["MainDicomTags"].get("Modality") == "DOC":
            pdf.append(s["ID"])
        elif meta.get("CervicalDLSource"):
            derived.setdefault(meta["CervicalDLSource"], []).append(s)
        else:
            other.append(s["ID"])
    problems = []
    job_rows = {sid: len(bench.queue.jobs_for_series(sid)) for sid in sources}
    states = {j["series_id"]: j["state"] for j in jobs}
    for sid, (s, meta) in sources.items():
        state = states.get(sid)
        listed = [d for d in meta.get("CervicalDLDerivedSeries", "").split(",") if d]
        got = derived.get(sid, [])
        if job_rows[sid] != 1:
            problems.append(f"series {sid}: {job_rows[sid]} job rows")
        if state == "done":
            if len(got) != 1 or [d["ID"] for d in got] != listed:
                problems.append(f"series {sid}: {len(got)} derived series, metadata lists {len(listed)}")
            elif len(got[0]["Instances"]) != len(s["Instances"]):
                problems.append(f"series {sid}: derived {len(got[0]['Instances'])} of {len(s['Instances'])} instances")
        elif state == "skipped":
            if got:
                problems.append(f"series {sid}: skipped but {len(got)} derived series")
        else:
            problems.append(f"series {sid}: job {state}")
        if meta.get("CervicalDLState") != state:
            problems.append(f"series {sid}: metadata state {meta.get('CervicalDLState')} != job {state}")
    orphans = [d["ID"] for sid, ds in derived.items() if sid not in sources for d in ds]
    if orphans or other:
        problems.append(f"{len(orphans) + len(other)} series of ours without a source")
    if len(sources) != n_series:
        problems.append(f"{len(sources)} source series, expected {n_series}")
    if len(sr) != 1 or len(pdf) != 1 or sorted(sr + pdf) != sorted(info.get("qc_series", [])):
        problems.append(f"{len(sr)} SR, {len(pdf)} PDF (study metadata lists {len(info.get('qc_series', []))})")
    descriptions = [d["MainDicomTags"].get("SeriesDescription", "") for ds in derived.values() for d in ds]
    return {"study_id": study_id, "state": info.get("state"), "source_series": len(sources),
            "jobs": {st: sum(1 for j in jobs if j["state"] == st) for st in sorted(states.values())},
            "derived_series": sum(len(ds) for ds in derived.values()),
            "duplicate_derived": sum(len(ds) - 1 for ds in derived.values() if len(ds) > 1)
            + len(descriptions) - len(set(descriptions)),
            "sr": len(sr), "pdf": len(pdf), "attempts_max": max((j["attempts"] for j in jobs), default=0),
            "problems": problems}


def run_burst_studies(args, results: dict) -> dict:
    """A burst of N distinct studies; with ``--restart`` the warm runner, then the worker, killed mid-run."""
    n = args.burst_studies
    with tempfile.TemporaryDirectory(prefix="cervical-dl-bench-") as tmp:
        tmp = Path(tmp)
        print(f"simulating one study, {n} copies ...", file=sys.stderr)
        template = make_study(tmp / "template", args.slices, args.axial_slices, seed=103)
        studies = studies_with_new_uids(template, tmp / "burst", n)
        n_series = len({f.parent.name for f in studies[0]})
        log_file = tmp / "stack" / "worker.log"
        with private_network() as network:
            results["network"] = network
            bench = Bench(tmp / "stack", args)
            events: list[dict] = []
            try:
                deadline = time.monotonic() + 60  # the worker's first heartbeat
                while not bench.queue.workers() and time.monotonic() < deadline:
                    time.sleep(0.2)
                bench.warm_runner_pid(log_file, 180)  # steady state: the runner has imported
                samples: list[dict] = []
                stop = threading.Event()

                def sample():
                    while not stop.wait(0.5):
                        worker = bench.worker.pid
                        runner = bench.warm_runner_now()
                        samples.append({"t": time.time(), "worker_pid": worker, "worker_kib": _rss_kib(worker),
                                        "runner_pid": runner, "runner_kib": _rss_kib(runner) if runner else 0})

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                t0 = time.time()
                print(f"uploading {n} studies x {n_series} series ...", file=sys.stderr)
                study_ids = []
                for files in studies:
                    answers = [bench.http.post(bench.url + "/instances", data=f.read_bytes(), timeout=120) for f in files]
                    for r in answers:
                        r.raise_for_status()
                    study_ids.append(answers[0].json()["ParentStudy"])
                t_stored = time.time()
                print(f"uploaded in {t_stored - t0:.1f} s; waiting ...", file=sys.stderr)

                def finished(study_id: str) -> bool:
                    jobs = bench.queue.jobs_for_study(study_id)
                    latest = {j["series_id"]: j for j in jobs}
                    return len(latest) == n_series and all(
                        j["state"] in ("done", "failed", "skipped", "superseded") for j in latest.values())

                def mid_run(min_s: float) -> tuple[int, int, int] | None:
                    """(warm runner, its app child, a running job) when a run has gone on >= min_s."""
                    runner = bench.warm_runner_now()
                    kids = [c for c in _children(runner) if _age_s(c) >= min_s] if runner else []
                    running = bench.queue.list_jobs("running", 50)
                    if kids and running:
                        return runner, kids[0], running[0]["id"]
                    return None

                def uploading() -> tuple[int, int, int] | None:
                    """(0, 0, job) while a study run uploads or commits: its upload plan is recorded."""
                    with sqlite3.connect(bench.settings.queue_db, timeout=30) as con:
                        row = con.execute("SELECT id FROM jobs WHERE state='running' AND uploaded != '[]'").fetchone()
                    return (bench.warm_runner_now(), 0, row[0]) if row else None

                deadline = time.monotonic() + args.timeout * n
                pending = set(study_ids)
                runner_killed = worker_restarted = not args.restart
                checked = 0.0
                while pending and time.monotonic() < deadline:
                    if time.monotonic() - checked >= 0.2:
                        pending = {s for s in pending if not finished(s)}
                        n_done, checked = n - len(pending), time.monotonic()
                    if not runner_killed and (found := mid_run(args.kill_after)):
                        runner, child, job = found
                        os.killpg(runner, 9)  # its own session: the group it leads
                        runner_killed = True
                        events.append({"what": "warm runner killed (SIGKILL to its process group) during a run",
                                       "t_s": round(time.time() - t0, 1), "runner_pid": runner, "app_child_pid": child,
                                       "job": job, "studies_finished_before": n_done})
                        print(f"killed the warm runner pid {runner} (app child {child}, job {job})", file=sys.stderr)
                    elif runner_killed and not worker_restarted and n_done >= n // 2 and (
                            found := mid_run(args.kill_after) if args.worker_kill_at == "app" else uploading()):
                        runner, child, job = found
                        old, new = bench.restart_worker(log_file)
                        worker_restarted = True
                        events.append({"what": f"worker killed (SIGKILL) during a study run's "
                                               f"{'app run' if args.worker_kill_at == 'app' else 'upload/commit'}"
                                               " and started again",
                                       "t_s": round(time.time() - t0, 1), "worker_pid": old, "new_worker_pid": new,
                                       "runner_pid": runner, "app_child_pid": child, "job": job,
                                       "studies_finished_before": n_done})
                        print(f"killed the worker pid {old} (runner {runner}, app child {child}, job {job}); "
                              f"started pid {new}", file=sys.stderr)
                    armed = runner_killed and not worker_restarted and n_done >= n // 2
                    time.sleep(0.01 if armed and args.worker_kill_at == "upload" else 0.2)
                t_end = time.time()
                stop.set()
                sampler.join()
                if events and any("runner_pid" in e for e in events):  # the killed processes really went away
                    time.sleep(1)
                    for e in events:
                        e["killed_gone"] = all(not Path(f"/proc/{e[k]}").exists() or _cmdline(e[k]) == ""
                                               for k in ("runner_pid", "app_child_pid") if e.get(k))
                print("checking the results over REST ...", file=sys.stderr)
                checks = [_check_study(bench, s, n_series) for s in study_ids]
                log_text = log_file.read_text(errors="replace")
                done_runs = {s: len(re.findall(rf"study {re.escape(s)} attempt \d+: .*: done in ", log_text))
                             for s in study_ids}
                jobs = [j for s in study_ids for j in bench.queue.jobs_for_study(s)]
                finish = max((j["finished"] for j in jobs if j["state"] == "done"), default=t_end)
                by_worker: dict[int, list[int]] = {}
                for x in samples:
                    by_worker.setdefault(x["worker_pid"], []).append(x["worker_kib"])
                results["burst_studies"] = {
                    "studies": n, "series_per_study": n_series, "restart": args.restart,
                    "upload_s": round(t_stored - t0, 1),
                    "wall_s": round(finish - t0, 1),
                    "studies_per_min": round(60 * n / (finish - t0), 2),
                    "studies_all_done": sum(1 for c in checks if not c["problems"] and c["state"] == "done"),
                    "studies_with_problems": sum(1 for c in checks if c["problems"]),
                    "not_finished": len(pending),
                    "duplicated_series": sum(c["duplicate_derived"] for c in checks),
                    "studies_with_other_than_one_successful_run": sum(1 for v in done_runs.values() if v != 1),
                    "jobs": {st: sum(1 for j in jobs if j["state"] == st) for st in sorted({j["state"] for j in jobs})},
                    "jobs_attempts_gt_1": sum(1 for j in jobs if j["attempts"] > 1),
                    "derived_series": sum(c["derived_series"] for c in checks),
                    "sr": sum(c["sr"] for c in checks), "pdf": sum(c["pdf"] for c in checks),
                    "events": events,
                    "worker_rss_mib": _rss_summary([x["worker_kib"] for x in samples]),
                    "worker_rss_mib_by_process": {str(pid): _rss_summary(kib) for pid, kib in by_worker.items()},
                    "warm_runner_rss_mib": _rss_summary([x["runner_kib"] for x in samples]),
                    "warm_runner_pids": sorted({x["runner_pid"] for x in samples if x["runner_pid"]}),
                    "per_study": checks,
                    "successful_runs_per_study": list(done_runs.values()),
                }
                runs = re.findall(r": done in ([\d.]+) s \(fetch ([\d.]+) s, app ([\d.]+) s", log_text)
                if runs:
                    results["burst_studies"]["study_run_s"] = {
                        "median": round(statistics.median(float(r[0]) for r in runs), 1),
                        "min": min(float(r[0]) for r in runs), "max": max(float(r[0]) for r in runs)}
                warnings = [re.sub(r": series .*?: ", ": ", ln) for ln in log_text.splitlines()
                            if " WARNING " in ln or "ERROR" in ln or "rolled back" in ln or "work folder of a worker" in ln]
                # (one line per job of a study run: once)
                results["burst_studies"]["worker_log_recovery"] = list(dict.fromkeys(
                    re.sub(r"^\S+ \S+ ", "", ln) for ln in warnings))[:40]
            finally:
                bench.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cervical_pacs.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3-slice series, burst of 3: checks the script")
    parser.add_argument("--slices", type=int, default=15, help="sagittal slices per series (512x512)")
    parser.add_argument("--axial-slices", type=int, default=24)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--stable-age", type=int, default=Settings.stable_age,
                        help="CPACS_STABLE_AGE (default: the product's)")
    parser.add_argument("--quiet", type=float, default=Settings.study_quiet_seconds,
                        help="CPACS_STUDY_QUIET_SECONDS (default: the product's)")
    parser.add_argument("--study", action="store_true", help="only the whole study (13 sagittal slices)")
    parser.add_argument("--burst-studies", type=int, default=0, metavar="N",
                        help="only a burst of N distinct small studies (2 sagittal, 2 axial slices unless given)")
    parser.add_argument("--restart", action="store_true",
                        help="--burst-studies: kill the warm runner during a run, later the worker (restarted)")
    parser.add_argument("--worker-kill-at", choices=("app", "upload"), default="app",
                        help="--restart: kill the worker while a run's app runs, or while it uploads/commits")
    parser.add_argument("--kill-after", type=float, default=2.0,
                        help="--restart: seconds an app run has gone on before it is killed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--compare-offline", action="store_true",
                        help="--study: then run the same study through python -m app directly (wall, CPU)")
    parser.add_argument("--runner", choices=("warm", "cold"), default="warm",
                        help="python mode: runs forked from the warm runner (default) or python -m app each (cold)")
    parser.add_argument("--model-path", type=Path, default=Path(os.environ.get("CPACS_MODEL_PATH", REPO_ROOT / "models" / "weights")))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per series")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.axial_slices, args.burst = 3, 3, 3
    elif args.study and args.slices == parser.get_default("slices"):
        args.slices = 13  # the product's sagittal stacks
    elif args.burst_studies:  # small studies: the burst is about the queue, not the app
        if args.slices == parser.get_default("slices"):
            args.slices = 2
        if args.axial_slices == parser.get_default("axial_slices"):
            args.axial_slices = 2
    results = run(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.study:
        whole, rss = results["whole_study"], results["worker_rss_mib"]
        print(f"worker memory: {rss['before']} MiB before, {rss['after']} MiB after")
        runner = results.get("runner", {})
        peak = f"; the app run's peak {runner['app_peak_rss_mib']} MiB" if runner.get("app_peak_rss_mib") else ""
        if runner.get("warm_runner_rss_mib"):
            warm = runner["warm_runner_rss_mib"]
            print(f"runner memory: warm runner {warm['before']} MiB before, {warm['after']} MiB after{peak}")
        else:
            print(f"runner memory: {runner.get('mode', '?')} runs (python -m app per study){peak}")
        if results.get("worker_breakdown"):
            print(f"worker: done in {results['worker_breakdown']}")
        if results.get("offline_app"):
            off = results["offline_app"]
            print(f"offline python -m app on the same study: {off['wall_s']} s wall, {off['cpu_s']} s CPU")
        if "stored_to_available_s" in whole:
            print(f"whole study: {whole['stored_to_available_s']:.1f} s from last instance stored to all results in Orthanc")
        else:
            print(f"whole study: no result ({whole.get('states')})")
    if args.burst_studies:
        b = results["burst_studies"]
        for e in b["events"]:
            print(f"at {e['t_s']} s: {e['what']} (job {e['job']}, {e['studies_finished_before']} studies finished before)")
        w, r = b["worker_rss_mib"], b["warm_runner_rss_mib"]
        if w:
            print(f"worker RSS: first {w['first']}, last {w['last']}, max {w['max']} MiB "
                  f"({len(b['worker_rss_mib_by_process'])} worker process(es))")
        if r:
            print(f"warm runner RSS: first {r['first']}, last {r['last']}, max {r['max']} MiB "
                  f"({len(b['warm_runner_pids'])} runner process(es))")
        print(f"jobs: {b['jobs']}; studies with problems: {b['studies_with_problems']}, not finished: "
              f"{b['not_finished']}, with other than one successful run: {b['studies_with_other_than_one_successful_run']}")
        print(f"burst of {b['studies']} studies: {b['studies_all_done']} done, {b['duplicated_series']} duplicated, "
              f"{b['jobs'].get('failed', 0)} failed, {b['wall_s']} s wall ({b['studies_per_min']} studies/min)")
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
