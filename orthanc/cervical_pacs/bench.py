"""Benchmark of the Orthanc auto-trigger (not run in CI).

    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.bench [--quick] [--out bench.json]
    PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.bench --study [--out study.json]

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
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
            p.terminate()
            p.wait(timeout=60)

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
                                  "axial_slices": args.axial_slices, "burst": args.burst, "cpus": os.cpu_count()}}
    if args.study:
        return run_study(args, results)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cervical_pacs.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3-slice series, burst of 3: checks the script")
    parser.add_argument("--slices", type=int, default=15, help="sagittal slices per series (512x512)")
    parser.add_argument("--axial-slices", type=int, default=24)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=2.0, help="CPACS_STUDY_QUIET_SECONDS")
    parser.add_argument("--study", action="store_true", help="only the whole study (13 sagittal slices)")
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
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
