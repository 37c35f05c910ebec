"""The worker: takes jobs from the queue, runs the application, uploads results atomically.

``PYTHONPATH=.:orthanc .venv/bin/python -m cervical_pacs.worker`` (``make orthanc`` starts it).
Settings: CPACS_* (see settings.py); credentials: CPACS_USER/CPACS_PASSWORD or the
credentials file. Restartable at any time; several workers (processes or threads,
``CPACS_CONCURRENCY``) can share one queue.

One study run, one attempt (a study is the unit a radiologist reads, and the application
needs all its series at once: the Dixon water image is judged with its in-phase partner, and
the study gets one QC report):
 1. claim the jobs of one quiet study (``JobQueue.claim_study``: its queued jobs, once the
    newest is ``CPACS_STUDY_QUIET_SECONDS`` old and no series of it is still arriving, plus
    the latest done job of each of its other series, so the whole study is run again);
    ``state=running``, leases extended by a heartbeat thread while we work;
 2. roll back what an interrupted earlier attempt may have left (see 6);
 3. metadata ``running`` on the source series; fetch their instances over REST into one temp
    dir (the fingerprint of what was fetched is recorded per series: a later STABLE_SERIES for
    the same content adds no job; a series deleted meanwhile fails alone);
 4. run the app once (``runner.py``: in python mode a child forked from this job thread's warm
    runner, which imported the application once, or ``python -m app`` with
    ``CPACS_RUNNER_WARM=false``; in docker mode one ``docker run``): exit 0 -> upload; 3/4 -> ``skipped`` with the app's
    one-line reason per series; 2 -> ``failed``; anything else (1, 5, signal, timeout) ->
    retried with exponential backoff until CPACS_MAX_ATTEMPTS, then ``failed``;
 5. validate every ``*.dcm`` under OUT (ours, same study, never a source series' UID);
 6. record the derived SeriesInstanceUIDs in the lead job's row (the "upload plan") *before*
    the first upload, upload every file, and only then commit: delete instances of those series
    not part of this upload (a previous larger result), delete derived series of earlier
    results that this one replaced (per source series, and the study's earlier QC series),
    forward (optional), write per source series ``done`` (or ``skipped`` with the app's reason
    when it derived nothing from it) + derived series IDs + model version to its metadata, the
    study's QC series IDs to the study's metadata, and clear the plan. Any failure in between
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
        self._local = threading.local()  # each job thread's AppRunner (and its warm runner)
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

    def _set_metadata(self, resource_id: str, level: str = "series", **values: str) -> None:
        values.setdefault("CervicalDLUpdated", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for name, value in values.items():
            try:
                self._call("put", f"{level}/{resource_id}/metadata/{name}", data=str(value).encode())
            except oe.ResourceNotFound:
                return  # the series (study) was deleted: nothing to annotate

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        warm = f", warm runner {'on' if self.s.runner_warm else 'off'}" if self.s.run_mode == "python" else ""
        log.info("worker %s started: queue %s, Orthanc %s, concurrency %d, mode %s%s", self.owner,
                 self.s.queue_db, self.s.orthanc_url, self.s.concurrency, self.s.run_mode, warm)
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

    def _runner(self) -> AppRunner:
        """This job thread's runner (its warm runner is tied to this thread: setpriv --pdeathsig)."""
        if getattr(self._local, "runner", None) is None:
            self._local.runner = AppRunner(self.s)
        return self._local.runner

    def _loop(self) -> None:
        runner = self._runner()
        try:
            self._claim_and_process(runner)
        finally:
            runner.close()

    def _claim_and_process(self, runner: AppRunner) -> None:
        while not self.stop.is_set():
            runner.prepare()  # a warm runner imports while we wait for a study
            try:
                batch = self.queue.claim_study(self.owner, self.s.lease_seconds, self.s.study_quiet_seconds)
            except Exception:  # noqa: BLE001 - e.g. database locked for too long
                log.exception("claiming a job failed")
                batch = []
            if not batch:
                self.stop.wait(self.s.poll_seconds)
                continue
            with self._running_lock:
                self._running += 1
            try:
                self.process(batch)
            finally:
                with self._running_lock:
                    self._running -= 1

    # -- one study run -----------------------------------------------------------------------------
    def process(self, batch: list[dict]) -> None:
        """Run the application once on the series of ``batch`` (one study, lead first)."""
        lead = batch[0]
        jid = lead["id"]
        label = (f"job {jid} study {lead['study_id'] or '?'} attempt {lead['attempts']}: series "
                 + ", ".join(f"{j['series_number'] or '?'} ({j['series_id']})" for j in batch))
        lost = threading.Event()
        done_beating = threading.Event()

        def beat():
            while not done_beating.wait(max(1.0, self.s.lease_seconds / 4)):
                try:
                    for job in batch:
                        if not self.queue.heartbeat(job["id"], self.owner, self.s.lease_seconds):
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
            for job in batch:
                if job["uploaded"]:
                    self._rollback(job)
                    self.queue.update(job["id"], self.owner, uploaded=[])
                    job["uploaded"] = []
                self._set_metadata(job["series_id"], CervicalDLState="running",
                                   CervicalDLReason=f"attempt {job['attempts']}, study run of {len(batch)} series",
                                   CervicalDLJob=str(job["id"]))
            with tempfile.TemporaryDirectory(prefix=f"cervical-dl-w{os.getpid()}-job{jid}-", dir=self.s.work_dir) as tmp:
                tmp = Path(tmp)
                in_dir, out_dir = tmp / "in", tmp / "out"
                in_dir.mkdir()
                batch[:] = self._fetch(batch, in_dir, should_stop, label)
                if not batch:
                    return
                fetched = time.monotonic()
                result = self._runner().run(in_dir, out_dir, tmp, f"cervical-dl-w{os.getpid()}-j{jid}-{lead['attempts']}",
                                         should_stop)
                if result.interrupted:
                    raise Interrupted(result.reason)
                model = result.summary.get("model", {})
                model_version = f"{model.get('name', '?')} {model.get('version', '?')}" if model else ""
                if result.code in ExitCode.SKIPPED:
                    reasons = self._series_reasons(result.summary)
                    for job in batch:
                        self._drop_previous_results(job["series_id"])
                        self._final(job, "skipped", reasons.get(job["series_uid"], result.reason),
                                    model_version=model_version)
                    log.info("%s: skipped (exit %d): %s", label, result.code, result.reason)
                    return
                if result.code == ExitCode.USAGE:
                    raise Permanent(f"application usage error: {result.reason}")
                if result.code != ExitCode.OK:
                    raise Retryable(f"application failed (exit {result.code}): {result.reason}")
                upload_start = time.monotonic()
                uploaded, series_uids = self._upload(batch, out_dir, should_stop)
            commit_start = time.monotonic()
            derived, qc_series = self._commit(batch, uploaded, series_uids, result.summary, model_version)
            n = sum(len(v) for v in uploaded.values())
            end = time.monotonic()
            log.info("%s: done in %.1f s (fetch %.1f s, app %.1f s in one run, upload %.1f s, commit %.1f s): "
                     "%d derived series, %d QC series, %d instances; app run: %s", label, end - start,
                     fetched - start, result.seconds, commit_start - upload_start, end - commit_start, derived,
                     qc_series, n, result.runner)
        except Interrupted as exc:
            for job in batch:
                self._abort(job, label, f"requeued: {exc}", delay=0, count_attempt=False, lost=lost.is_set())
        except Infrastructure as exc:
            delay = backoff_delay(self.s.backoff_seconds, max(1, lead["attempts"]), cap=60)
            for job in batch:
                self._abort(job, label, f"waiting for Orthanc: {exc}", delay=delay, count_attempt=False)
        except Permanent as exc:
            for job in batch:
                self._abort(job, label, str(exc), final=True)
        except Exception as exc:  # noqa: BLE001 - Retryable, or a bug: retry with backoff
            reason = str(exc) if isinstance(exc, Retryable) else f"worker error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, Retryable):
                log.exception("%s: unexpected error", label)
            for job in batch:
                if job["attempts"] >= self.s.max_attempts:
                    self._abort(job, label, f"{reason} (after {job['attempts']} attempts)", final=True)
                else:
                    self._abort(job, label, reason, delay=backoff_delay(self.s.backoff_seconds, job["attempts"]))
        finally:
            done_beating.set()

    @staticmethod
    def _series_reasons(summary: dict) -> dict[str, str]:
        """SeriesInstanceUID -> the application's one-line reason for a series it did not derive."""
        return {s.get("series_instance_uid", ""): s.get("reason") or "not selected"
                for s in summary.get("series", []) if s.get("status") != "selected"}

    def _fetch(self, batch: list[dict], in_dir: Path, should_stop, label: str) -> list[dict]:
        """Download every series of the batch into ``in_dir``; a series deleted meanwhile fails
        alone (its job), the others go on. Returns the jobs whose series were fetched."""
        fetched = []
        for k, job in enumerate(batch):
            try:
                series = self._call("get_json", f"series/{job['series_id']}")
            except oe.ResourceNotFound:
                self._abort(job, label, "the source series is no longer in Orthanc", final=True)
                continue
            instances = series["Instances"]
            self.queue.update(job["id"], self.owner, processed_fingerprint=instance_fingerprint(instances),
                              n_instances=len(instances))
            first = None
            for i, iid in enumerate(instances):
                if should_stop():
                    raise Interrupted("stop requested during the download")
                try:
                    data = self._call("get_binary", f"instances/{iid}/file")
                except oe.ResourceNotFound:
                    raise Retryable("an instance disappeared during the download") from None
                path = in_dir / f"S{k:03d}_IM{i:05d}.dcm"
                path.write_bytes(data)
                first = first or path
            head = pydicom.dcmread(first, stop_before_pixels=True) if first else None
            job["series_uid"] = str(getattr(head, "SeriesInstanceUID", "")) or job["series_uid"]
            job["study_uid"] = str(getattr(head, "StudyInstanceUID", ""))
            job["study_id"] = series["ParentStudy"]
            fetched.append(job)
        return fetched

    def _upload(self, batch: list[dict], out_dir: Path, should_stop) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Validate every output, record the plan in the lead job, upload. Returns Orthanc series
        ID -> instance IDs, and Orthanc series ID -> SeriesInstanceUID."""
        files = sorted(p for p in out_dir.rglob("*.dcm")
                       if not any(part.startswith(".") for part in p.relative_to(out_dir).parts))
        if not files:
            raise Permanent("the application reported success but wrote no DICOM file")
        study_uids = {j["study_uid"] for j in batch}
        source_uids, source_ids = {j["series_uid"] for j in batch}, {j["series_id"] for j in batch}
        uid_of: dict[Path, str] = {}
        for f in files:  # validate everything before the first upload
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if len(study_uids) != 1 or str(ds.StudyInstanceUID) not in study_uids:
                raise Permanent("an output is not in the source study: nothing uploaded")
            if str(ds.SeriesInstanceUID) in source_uids or not is_our_output(ds):
                raise Permanent("an output would overwrite a source or is not ours: nothing uploaded")
            uid_of[f] = str(ds.SeriesInstanceUID)
        plan = set(uid_of.values())
        lead = batch[0]
        self.queue.update(lead["id"], self.owner, uploaded=sorted(plan))
        lead["uploaded"] = sorted(plan)
        fail_after = int(self.fault.split(":")[1]) if self.fault.startswith("fail-upload-after:") else -1
        uploaded: dict[str, list[str]] = {}
        series_uids: dict[str, str] = {}
        for n, f in enumerate(files):
            if should_stop():
                raise Interrupted("stop requested during the upload")
            if n == fail_after:
                raise Retryable(f"injected upload failure after {n} instances (CPACS_FAULT_INJECT)")
            answer = self._call("post", "instances", data=f.read_bytes()).json()
            if answer.get("ParentStudy") != lead["study_id"] or answer.get("ParentSeries") in source_ids:
                raise Permanent("an uploaded object landed outside the source study")
            uploaded.setdefault(answer["ParentSeries"], []).append(answer["ID"])
            series_uids.setdefault(answer["ParentSeries"], uid_of[f])
        return uploaded, series_uids

    def _commit(self, batch: list[dict], uploaded: dict[str, list[str]], series_uids: dict[str, str], summary: dict,
                model_version: str) -> tuple[int, int]:
        """Attribute the uploaded series (derived images to their source, QC objects to the
        study), delete what they replaced, forward, and finish every job of the batch."""
        study_id = batch[0]["study_id"]
        by_uid = {uid: sid for sid, uid in series_uids.items()}
        derived_of = {j["series_id"]: [by_uid[d["derived_series_instance_uid"]] for d in summary.get("derived", [])
                                       if d.get("source_series_instance_uid") == j["series_uid"]
                                       and d.get("derived_series_instance_uid") in by_uid] for j in batch}
        images = {sid for ids in derived_of.values() for sid in ids}
        qc_series = sorted(set(uploaded) - images)  # the study's QC SR and PDF report
        for series_id, instance_ids in uploaded.items():  # a previous, larger result: drop extra instances
            stale = set(self._call("get_json", f"series/{series_id}")["Instances"]) - set(instance_ids)
            for iid in stale:
                self._delete(f"instances/{iid}")
        for source_id, ids in derived_of.items():
            for series_id in ids:
                self._set_metadata(series_id, CervicalDLSource=source_id)
        for series_id in qc_series:
            self._set_metadata(series_id, CervicalDLSourceStudy=study_id)
        for job in batch:  # results replaced (another model version, or a series that is no longer derived)
            for old in set(self._metadata_list(f"series/{job['series_id']}", "CervicalDLDerivedSeries")) - images:
                self._delete_if_ours(old, job["series_id"])
        for old in set(self._metadata_list(f"studies/{study_id}", "CervicalDLQCSeries")) - set(qc_series):
            self._delete_qc_series_of(old, study_id)
        self._set_metadata(study_id, level="studies", CervicalDLQCSeries=",".join(qc_series),
                           CervicalDLJob=str(batch[0]["id"]))
        forwarded = ""
        if self.s.forward_aet:
            try:
                self._call("post", f"modalities/{FORWARD_MODALITY}/store",
                           json={"Resources": sorted(uploaded), "Synchronous": True})
                forwarded = f"; forwarded to {self.s.forward_aet}"
            except (Infrastructure, Permanent) as exc:
                forwarded = f"; forwarding to {self.s.forward_aet} failed: {exc}"
        reasons = self._series_reasons(summary)
        run = f"study run of {len(batch)} series" + (", QC report for the study" if qc_series else "")
        for job in batch:
            ids = derived_of[job["series_id"]]
            if ids:
                n = sum(len(uploaded[i]) for i in ids)
                self._final(job, "done", f"{n} instances in {len(ids)} derived series ({run}){forwarded}",
                            model_version=model_version, derived_series=ids)
            else:  # the application looked at it in the study and derived nothing from it
                self._drop_previous_results(job["series_id"])
                self._final(job, "skipped", reasons.get(job["series_uid"], "the application derived no series from it"),
                            model_version=model_version)
        return len(images), len(qc_series)

    def _metadata_list(self, resource: str, name: str) -> list[str]:
        try:
            return [p for p in self._call("get", f"{resource}/metadata/{name}").text.split(",") if p]
        except oe.ResourceNotFound:
            return []

    def _delete_qc_series_of(self, series_id: str, study_id: str) -> None:
        """Delete a QC series the study's metadata named, only if it says it belongs to it."""
        try:
            if self._call("get", f"series/{series_id}/metadata/CervicalDLSourceStudy").text == study_id:
                self._delete(f"series/{series_id}")
        except oe.ResourceNotFound:
            pass

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
        for old in self._metadata_list(f"series/{source_id}", "CervicalDLDerivedSeries"):
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
