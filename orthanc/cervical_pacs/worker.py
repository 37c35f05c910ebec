"""The worker: takes jobs from the queue, runs the application, uploads results atomically.

``PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.worker`` (``make orthanc`` starts it).
Settings: CPACS_* (see settings.py); credentials: CPACS_USER/CPACS_PASSWORD or the
credentials file. Restartable at any time; several workers (processes or threads,
``CPACS_CONCURRENCY``) can share one queue.

One job, one attempt:
 1. claim (``state=running``, lease extended by a heartbeat thread while we work);
 2. roll back what an interrupted earlier attempt may have left (see 6);
 3. metadata ``running`` on the source series; fetch its instances over REST into a temp dir
    (the fingerprint of what was fetched is recorded: a later STABLE_SERIES for the same
    content adds no job);
 4. run the app (``runner.py``): exit 0 -> upload; 3/4 -> ``skipped`` with the app's
    one-line reason; 2 -> ``failed``; anything else (1, 5, signal, timeout) -> retried with
    exponential backoff until CPACS_MAX_ATTEMPTS, then ``failed``;
 5. validate every ``*.dcm`` under OUT (ours, same study, never the source series' UID);
 6. record the derived SeriesInstanceUIDs in the job row (the "upload plan") *before* the
    first upload, upload every file, and only then commit: delete instances of those series
    not part of this upload (a previous larger result), delete derived series of earlier
    results that this one replaced, forward (optional), write ``done`` + derived series IDs +
    model version to the source series' metadata and clear the plan. Any failure in between
    (or a crash: the next attempt or the maintenance loop finds the plan) deletes the planned
    series entirely: no partial derived series stays in Orthanc.
Orthanc unreachable or answering 5xx is an infrastructure problem, not the job's: the job is
requeued with backoff without using up an attempt. A worker killed mid-job leaves a running
job whose owner process is gone: the next worker (or any worker after the lease expires)
requeues it. SIGTERM: the running app is stopped and its job requeued, without an attempt.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as oe

from .jobqueue import JobQueue, backoff_delay, instance_fingerprint
from .runner import AppRunner
from app.contracts import ExitCode
from series.roles import is_our_output

from .settings import FORWARD_MODALITY, Settings, load_worker_credentials

log = logging.getLogger("cervical_pacs.worker")
HTTP_TIMEOUT = 120


class Infrastructure(Exception):
    """Orthanc unreachable / 5xx: requeue without using up an attempt."""


class Retryable(Exception):
    """The attempt failed, another one may succeed."""


class Permanent(Exception):
    """No point in retrying: the job fails now."""


class Interrupted(Exception):
    """The worker is stopping or lost the job's lease."""


def _proc_start_ticks(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_is_dead(owner: str) -> bool:
    """A lease owner ``host:pid:start`` on this host whose process is gone (or was replaced)."""
    try:
        host, pid, start = owner.rsplit(":", 2)
    except ValueError:
        return True
    if host != socket.gethostname():
        return False  # another machine: only the lease expiry tells
    return _proc_start_ticks(int(pid)) != start


class Worker:
    def __init__(self, settings: Settings, user: str, password: str):
        self.s = settings
        self.api = OrthancApiClient(settings.orthanc_url, user=user, pwd=password, pool_maxsize=max(4, 2 * settings.concurrency))
        self.queue = JobQueue(settings.queue_db)
        self.runner = AppRunner(settings)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_proc_start_ticks(os.getpid())}"
        self.stop = threading.Event()
        self._running = 0
        self._running_lock = threading.Lock()
        self.fault = os.environ.get("CPACS_FAULT_INJECT", "")  # test hook: "fail-upload-after:N"

    # -- Orthanc helpers (translate the client's exceptions into ours) -------------------------------
    def _call(self, method: str, endpoint: str, **kwargs):
        try:
            return getattr(self.api, method)(endpoint, timeout=HTTP_TIMEOUT, **kwargs)
        except oe.ResourceNotFound:
            raise
        except (oe.ConnectionError, oe.TimeoutError) as exc:
            raise Infrastructure(f"Orthanc unreachable ({type(exc).__name__})") from exc
        except oe.HttpError as exc:
            if exc.http_status_code and exc.http_status_code >= 500:
                raise Infrastructure(f"Orthanc answered HTTP {exc.http_status_code}") from exc
            raise Permanent(f"Orthanc refused {method.upper()} {endpoint.split('/')[0]}: HTTP {exc.http_status_code}") from exc

    def _set_metadata(self, series_id: str, **values: str) -> None:
        values.setdefault("CervicalDLUpdated", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for name, value in values.items():
            try:
                self._call("put", f"series/{series_id}/metadata/{name}", data=str(value).encode())
            except oe.ResourceNotFound:
                return  # the series was deleted: nothing to annotate

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        log.info("worker %s started: queue %s, Orthanc %s, concurrency %d, mode %s", self.owner,
                 self.s.queue_db, self.s.orthanc_url, self.s.concurrency, self.s.run_mode)
        self._clean_work_dirs()
        self._maintenance()
        threads = [threading.Thread(target=self._loop, name=f"job-{i}", daemon=True) for i in range(self.s.concurrency)]
        for t in threads:
            t.start()
        while not self.stop.wait(2.0):
            self._maintenance()
        for t in threads:
            t.join(timeout=60)
        self.queue.worker_gone(self.owner)
        log.info("worker %s stopped", self.owner)
        return 0

    def _clean_work_dirs(self) -> None:
        """Temp folders (patient images!) left by a worker process that was killed."""
        root = Path(self.s.work_dir or tempfile.gettempdir())
        for d in root.glob("cervical-dl-w*-job*"):
            try:
                pid = int(d.name.split("-")[2][1:])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed the work folder of a worker that is gone: %s", d.name)
        if self.s.run_mode == "docker":  # containers of a killed worker (a killed docker CLI leaves them)
            try:
                names = subprocess.run([self.s.docker_bin, "ps", "-a", "--filter", "name=cervical-dl-w", "--format",
                                        "{{.Names}}"], capture_output=True, text=True, timeout=60).stdout.split()
            except (OSError, subprocess.SubprocessError):
                names = []
            for name in names:
                pid = name.split("-")[2][1:] if name.count("-") >= 3 else ""
                if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                    subprocess.run([self.s.docker_bin, "rm", "-f", name], capture_output=True, timeout=60, check=False)

    def _maintenance(self) -> None:
        try:
            with self._running_lock:
                running = self._running
            self.queue.worker_heartbeat(self.owner, running)
            for job_id in self.queue.recover_stale(owner_is_dead):
                log.warning("job %d: its worker is gone, requeued", job_id)
            for job in self.queue.with_uncommitted_uploads():
                if job["state"] != "queued":  # queued ones are rolled back by whoever claims them
                    self._rollback(job)
                    self.queue.clear_uploaded(job["id"])
        except Infrastructure:
            pass
        except Exception:  # noqa: BLE001
            log.exception("maintenance failed")

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                job = self.queue.claim(self.owner, self.s.lease_seconds)
            except Exception:  # noqa: BLE001 - e.g. database locked for too long
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self.stop.wait(self.s.poll_seconds)
                continue
            with self._running_lock:
                self._running += 1
            try:
                self.process(job)
            finally:
                with self._running_lock:
                    self._running -= 1

    # -- one job -----------------------------------------------------------------------------------
    def process(self, job: dict) -> None:
        jid, sid = job["id"], job["series_id"]
        label = f"job {jid} series {job['series_number'] or '?'} ({sid}) attempt {job['attempts']}"
        lost = threading.Event()
        done_beating = threading.Event()

        def beat():
            while not done_beating.wait(max(1.0, self.s.lease_seconds / 4)):
                try:
                    if not self.queue.heartbeat(jid, self.owner, self.s.lease_seconds):
                        lost.set()
                        return
                except Exception:  # noqa: BLE001
                    log.exception("heartbeat failed")

        beater = threading.Thread(target=beat, name=f"lease-{jid}", daemon=True)
        beater.start()
        should_stop = lambda: self.stop.is_set() or lost.is_set()  # noqa: E731
        start = time.monotonic()
        log.info("%s: started", label)
        try:
            if job["uploaded"]:
                self._rollback(job)
                self.queue.update(jid, self.owner, uploaded=[])
            self._set_metadata(sid, CervicalDLState="running", CervicalDLReason=f"attempt {job['attempts']}",
                               CervicalDLJob=str(jid))
            with tempfile.TemporaryDirectory(prefix=f"cervical-dl-w{os.getpid()}-job{jid}-", dir=self.s.work_dir) as tmp:
                tmp = Path(tmp)
                in_dir, out_dir = tmp / "in", tmp / "out"
                in_dir.mkdir()
                source = self._fetch(job, in_dir, should_stop)
                result = self.runner.run(in_dir, out_dir, tmp, f"cervical-dl-w{os.getpid()}-j{jid}-{job['attempts']}",
                                         should_stop)
                if result.interrupted:
                    raise Interrupted(result.reason)
                model = result.summary.get("model", {})
                model_version = f"{model.get('name', '?')} {model.get('version', '?')}" if model else ""
                if result.code in ExitCode.SKIPPED:
                    self._drop_previous_results(sid)
                    self._final(job, "skipped", result.reason, model_version=model_version)
                    log.info("%s: skipped (exit %d): %s", label, result.code, result.reason)
                    return
                if result.code == ExitCode.USAGE:
                    raise Permanent(f"application usage error: {result.reason}")
                if result.code != ExitCode.OK:
                    raise Retryable(f"application failed (exit {result.code}): {result.reason}")
                derived = self._upload(job, out_dir, source, should_stop)
            self._commit(job, source, derived, model_version)
            n = sum(len(v) for v in derived.values())
            log.info("%s: done in %.1f s (app %.1f s): %d derived series, %d instances", label,
                     time.monotonic() - start, result.seconds, len(derived), n)
        except Interrupted as exc:
            self._abort(job, label, f"requeued: {exc}", delay=0, count_attempt=False, lost=lost.is_set())
        except Infrastructure as exc:
            delay = backoff_delay(self.s.backoff_seconds, max(1, job["attempts"]), cap=60)
            self._abort(job, label, f"waiting for Orthanc: {exc}", delay=delay, count_attempt=False)
        except Permanent as exc:
            self._abort(job, label, str(exc), final=True)
        except Exception as exc:  # noqa: BLE001 - Retryable, or a bug: retry with backoff
            reason = str(exc) if isinstance(exc, Retryable) else f"worker error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, Retryable):
                log.exception("%s: unexpected error", label)
            if job["attempts"] >= self.s.max_attempts:
                self._abort(job, label, f"{reason} (after {job['attempts']} attempts)", final=True)
            else:
                self._abort(job, label, reason, delay=backoff_delay(self.s.backoff_seconds, job["attempts"]))
        finally:
            done_beating.set()

    def _fetch(self, job: dict, in_dir: Path, should_stop) -> dict:
        try:
            series = self._call("get_json", f"series/{job['series_id']}")
        except oe.ResourceNotFound:
            raise Permanent("the source series is no longer in Orthanc") from None
        instances = series["Instances"]
        fp = instance_fingerprint(instances)
        self.queue.update(job["id"], self.owner, processed_fingerprint=fp, n_instances=len(instances))
        first = None
        for i, iid in enumerate(instances):
            if should_stop():
                raise Interrupted("stop requested during the download")
            try:
                data = self._call("get_binary", f"instances/{iid}/file")
            except oe.ResourceNotFound:
                raise Retryable("an instance disappeared during the download") from None
            (in_dir / f"IM{i:05d}.dcm").write_bytes(data)
            if first is None:
                first = in_dir / f"IM{i:05d}.dcm"
        head = pydicom.dcmread(first, stop_before_pixels=True) if first else None
        return {"series_id": job["series_id"], "study_id": series["ParentStudy"],
                "series_uid": str(getattr(head, "SeriesInstanceUID", "")),
                "study_uid": str(getattr(head, "StudyInstanceUID", ""))}

    def _upload(self, job: dict, out_dir: Path, source: dict, should_stop) -> dict[str, list[str]]:
        files = sorted(p for p in out_dir.rglob("*.dcm")
                       if not any(part.startswith(".") for part in p.relative_to(out_dir).parts))
        if not files:
            raise Permanent("the application reported success but wrote no DICOM file")
        plan = set()
        for f in files:  # validate everything before the first upload
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if str(ds.StudyInstanceUID) != source["study_uid"]:
                raise Permanent("an output is not in the source study: nothing uploaded")
            if str(ds.SeriesInstanceUID) == source["series_uid"] or not is_our_output(ds):
                raise Permanent("an output would overwrite the source or is not ours: nothing uploaded")
            plan.add(str(ds.SeriesInstanceUID))
        self.queue.update(job["id"], self.owner, uploaded=sorted(plan))
        job["uploaded"] = sorted(plan)
        fail_after = int(self.fault.split(":")[1]) if self.fault.startswith("fail-upload-after:") else -1
        derived: dict[str, list[str]] = {}
        for n, f in enumerate(files):
            if should_stop():
                raise Interrupted("stop requested during the upload")
            if n == fail_after:
                raise Retryable(f"injected upload failure after {n} instances (CPACS_FAULT_INJECT)")
            answer = self._call("post", "instances", data=f.read_bytes()).json()
            if answer.get("ParentStudy") != source["study_id"] or answer.get("ParentSeries") == source["series_id"]:
                raise Permanent("an uploaded object landed outside the source study")
            derived.setdefault(answer["ParentSeries"], []).append(answer["ID"])
        return derived

    def _commit(self, job: dict, source: dict, derived: dict[str, list[str]], model_version: str) -> None:
        sid = job["series_id"]
        for series_id, instance_ids in derived.items():  # a previous, larger result: drop extra instances
            stale = set(self._call("get_json", f"series/{series_id}")["Instances"]) - set(instance_ids)
            for iid in stale:
                self._delete(f"instances/{iid}")
            self._set_metadata(series_id, CervicalDLSource=sid)
        try:
            previous = self._call("get", f"series/{sid}/metadata/CervicalDLDerivedSeries").text.split(",")
        except oe.ResourceNotFound:
            previous = []
        for old in {p for p in previous if p} - set(derived):  # replaced (e.g. another model version)
            self._delete_if_ours(old, sid)
        reason = f"{sum(len(v) for v in derived.values())} instances in {len(derived)} derived series"
        if self.s.forward_aet:
            try:
                self._call("post", f"modalities/{FORWARD_MODALITY}/store",
                           json={"Resources": sorted(derived), "Synchronous": True})
                reason += f"; forwarded to {self.s.forward_aet}"
            except (Infrastructure, Permanent) as exc:
                reason += f"; forwarding to {self.s.forward_aet} failed: {exc}"
        self._final(job, "done", reason, model_version=model_version, derived_series=sorted(derived))

    def _final(self, job: dict, state: str, reason: str, **fields) -> None:
        sid = job["series_id"]
        derived = fields.get("derived_series", [])
        newer = [j for j in self.queue.jobs_for_series(sid) if j["id"] > job["id"] and j["state"] == "queued"]
        meta_state = "queued" if newer else state
        meta_reason = "series changed: reprocessing" if newer else reason
        self._set_metadata(sid, CervicalDLState=meta_state, CervicalDLReason=meta_reason[:500],
                           CervicalDLDerivedSeries=",".join(derived), CervicalDLModel=fields.get("model_version", ""),
                           CervicalDLJob=str(job["id"]))
        if not self.queue.finish(job["id"], self.owner, state, reason[:500], uploaded=[], **fields):
            log.warning("job %d: finished but no longer ours", job["id"])

    def _abort(self, job: dict, label: str, reason: str, *, delay: float = 0, count_attempt: bool = True,
               final: bool = False, lost: bool = False) -> None:
        if lost:
            log.warning("%s: lease lost, abandoned", label)
            return
        rolled_back = True
        if job["uploaded"]:
            try:
                self._rollback(job)
            except Exception:  # noqa: BLE001 - Orthanc down: the plan stays, the next attempt removes it
                rolled_back = False
        reason = reason.splitlines()[0][:500] if reason else "failed"
        if final:
            try:
                self._drop_previous_results(job["series_id"])
                self._set_metadata(job["series_id"], CervicalDLState="failed", CervicalDLReason=reason,
                                   CervicalDLDerivedSeries="", CervicalDLJob=str(job["id"]))
            except Exception:  # noqa: BLE001
                pass
            self.queue.finish(job["id"], self.owner, "failed", reason, **({"uploaded": []} if rolled_back else {}))
            log.warning("%s: failed: %s", label, reason)
            return
        if rolled_back:
            self.queue.update(job["id"], self.owner, uploaded=[])
        try:
            self._set_metadata(job["series_id"], CervicalDLState="queued", CervicalDLReason=f"retry: {reason}"[:500])
        except Exception:  # noqa: BLE001
            pass
        self.queue.requeue(job["id"], self.owner, delay, reason, count_attempt=count_attempt)
        log.warning("%s: %s (next try in %.0f s)", label, reason, delay)

    def _drop_previous_results(self, source_id: str) -> None:
        """A newer content of the series could not be processed: the results of the older
        content no longer match the source, so they go (the metadata then says none)."""
        try:
            previous = self._call("get", f"series/{source_id}/metadata/CervicalDLDerivedSeries").text.split(",")
        except oe.ResourceNotFound:
            return
        for old in (p for p in previous if p):
            self._delete_if_ours(old, source_id)

    def _rollback(self, job: dict) -> None:
        """Delete every derived series of the job's upload plan (looked up by UID)."""
        for uid in job["uploaded"]:
            found = self._call("post", "tools/lookup", data=uid.encode()).json()
            for res in found:
                if res.get("Type") == "Series" and res["ID"] != job["series_id"]:
                    self._delete_if_ours(res["ID"], job["series_id"], check_uid=uid)
        log.info("job %d: rolled back the upload of %d derived series", job["id"], len(job["uploaded"]))

    def _delete_if_ours(self, series_id: str, source_id: str, check_uid: str | None = None) -> None:
        try:
            info = self._call("get_json", f"series/{series_id}")
        except oe.ResourceNotFound:
            return
        if check_uid is None:  # a series named by metadata: only if it says it is derived from this source
            try:
                if self._call("get", f"series/{series_id}/metadata/CervicalDLSource").text != source_id:
                    return
            except oe.ResourceNotFound:
                return
        if info.get("ID") != source_id:
            self._delete(f"series/{series_id}")

    def _delete(self, endpoint: str) -> None:
        try:
            self._call("delete", endpoint)
        except oe.ResourceNotFound:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cervical_pacs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="KEY=VALUE settings file (default: CPACS_CONFIG or orthanc/site.env)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    settings = Settings.from_env(config_file=args.config)
    user, password = load_worker_credentials(settings)
    worker = Worker(settings, user, password)

    def _stop(signum, frame):  # noqa: ARG001
        log.info("signal %d: stopping (running jobs are requeued)", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
