"""Orthanc Python plugin of Cervical DL Enhance: the thin trigger and the job REST routes.

Loaded inside Orthanc through ``orthanc/cervical_dl_plugin.py`` (the ``"PythonScript"`` of the
rendered configuration), never imported by us. Its import path is the project's environment:
the launcher starts Orthanc with ``PYTHONPATH`` = ``CPACS_PLUGIN_PYTHONPATH`` (default: the
repository and this venv's site-packages). ``import orthanc`` below is Orthanc's built-in
module: built-in modules are found before anything on ``sys.path``, and this file checks it
at load time anyway.

On ``STABLE_SERIES`` (which fires again when a series grows): read the series' instance list
and the tags of one instance from Orthanc (local calls, no pixel decoding), drop our own
outputs silently, classify with the application's own header rules
(``series/roles.py``), and record a job in the SQLite queue -- ``queued`` for a
candidate, ``skipped`` with the reason otherwise -- keyed by (series, fingerprint of its
instance IDs) so repeated events add nothing. Then write the state into the series'
metadata and return: the work is done by the worker process.

A series whose instances arrived but whose STABLE_SERIES was lost because Orthanc stopped
first is remembered in the queue's ``pending_series`` table (one write per series and
burst) and evaluated once Orthanc is back (``ORTHANC_STARTED`` + StableAge).

REST routes (behind Orthanc's authentication):
  GET  /cervical-dl/health               queue counts, worker heartbeats
  GET  /cervical-dl/jobs[?state=&limit=] the latest jobs
  GET  /cervical-dl/series/{id}          latest job + history + metadata of a source series
                                         (+ the Orthanc IDs of its study's QC series)
  GET  /cervical-dl/studies/{id}         the study's state, the latest job of each series, QC series
  POST /cervical-dl/series/{id}/retry    requeue (or evaluate a series that has no job yet)
Logs carry Orthanc IDs, series numbers and reasons only: never names or patient IDs.
"""
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import orthanc  # Orthanc's built-in module

if hasattr(orthanc, "__path__") or not hasattr(orthanc, "RegisterOnChangeCallback"):
    raise ImportError("`import orthanc` did not give Orthanc's built-in plugin module")

_CONFIG = json.loads(orthanc.GetConfiguration())
_OURS = _CONFIG.get("CervicalDL", {})

from cervical_pacs.jobqueue import JobQueue, instance_fingerprint  # noqa: E402
from series.roles import classify_series, is_our_output  # noqa: E402

PREFIX = "/cervical-dl"
STABLE_AGE = float(_CONFIG.get("StableAge", 60))
QUEUE = JobQueue(_OURS.get("QueueDatabase") or Path(_CONFIG.get("StorageDirectory", "OrthancStorage")) / "cervical-dl-jobs.sqlite")
_marked_pending: set[str] = set()
# Series left pending by the previous run (read before Orthanc accepts anything new).
_PENDING_AT_START = QUEUE.pending()
_lock = threading.Lock()


def _log(message: str) -> None:
    orthanc.LogWarning(f"cervical-dl: {message}")


def _get(uri: str):
    return json.loads(orthanc.RestApiGet(uri))


def set_state_metadata(series_id: str, job: dict) -> None:
    values = {"CervicalDLState": job["state"], "CervicalDLReason": job["reason"][:500],
              "CervicalDLJob": str(job["id"]),
              "CervicalDLUpdated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for name, value in values.items():
        orthanc.RestApiPut(f"/series/{series_id}/metadata/{name}", value)


def evaluate_series(series_id: str, why: str = "stable") -> dict | None:
    """Filter + enqueue one series; returns its job (None for our outputs / deleted series)."""
    with _lock:
        _marked_pending.discard(series_id)
    try:
        series = _get(f"/series/{series_id}")
    except Exception:  # deleted meanwhile
        QUEUE.remove_pending(series_id)
        return None
    instances = series.get("Instances") or []
    if not instances:
        QUEUE.remove_pending(series_id)
        return None
    tags = _get(f"/instances/{instances[0]}/simplified-tags")
    main = series.get("MainDicomTags", {})
    number = str(main.get("SeriesNumber", ""))
    if is_our_output(tags) or {"CervicalDLSource", "CervicalDLSourceStudy"} & set(_get(f"/series/{series_id}/metadata")):
        QUEUE.remove_pending(series_id)
        return None  # our own derived series / QC objects never trigger
    decision = classify_series(tags)
    state, reason = ("queued", decision.reason) if decision.role else ("skipped", decision.reason)
    job, created = QUEUE.enqueue(series_id, instance_fingerprint(instances), state=state, reason=reason,
                                 n_instances=len(instances), study_id=series.get("ParentStudy", ""),
                                 series_uid=str(main.get("SeriesInstanceUID", "")), series_number=number,
                                 role=decision.role or "")
    QUEUE.remove_pending(series_id)
    if created:
        set_state_metadata(series_id, job)
        _log(f"series {number} ({series_id}, {len(instances)} instances, {why}): job {job['id']} {job['state']}: {reason}")
    else:
        _log(f"series {number} ({series_id}): content unchanged, job {job['id']} already {job['state']}")
    return job


def _mark_pending(instance_id: str) -> None:
    try:
        series_id = _get(f"/instances/{instance_id}")["ParentSeries"]
    except Exception:
        return
    with _lock:
        if series_id in _marked_pending:
            return
        _marked_pending.add(series_id)
    try:  # once per series and burst: the worker holds a study back while one of its series arrives
        if is_our_output(_get(f"/instances/{instance_id}/simplified-tags")):
            return  # our uploads (a rolled-back one never becomes stable) must not hold their study back
        study_id = _get(f"/series/{series_id}")["ParentStudy"]
    except Exception:
        study_id = ""
    QUEUE.add_pending(series_id, study_id)


def _recover_pending() -> None:
    """After a restart: series whose STABLE_SERIES never came (Orthanc stopped first)."""
    time.sleep(STABLE_AGE + 1)
    for series_id in _PENDING_AT_START:
        try:
            evaluate_series(series_id, why="recovered after restart")
        except Exception as exc:  # noqa: BLE001
            orthanc.LogError(f"cervical-dl: recovering series {series_id} failed: {type(exc).__name__}")


def on_change(change_type, level, resource_id):
    try:
        if change_type == orthanc.ChangeType.NEW_INSTANCE:
            _mark_pending(resource_id)
        elif change_type == orthanc.ChangeType.STABLE_SERIES:
            evaluate_series(resource_id)
        elif change_type == orthanc.ChangeType.DELETED and level in (orthanc.ResourceType.SERIES,
                                                                       orthanc.ResourceType.STUDY):
            # Its jobs describe nothing any more: a copy sent again is new work, and a series
            # deleted before it became stable is no longer waited for.
            key = "series_id" if level == orthanc.ResourceType.SERIES else "study_id"
            if QUEUE.forget(**{key: resource_id}):
                _log(f"{key.split('_')[0]} {resource_id} deleted: its jobs are closed")
            with _lock:
                _marked_pending.discard(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            threading.Thread(target=_recover_pending, name="cervical-dl-recover", daemon=True).start()
    except Exception as exc:  # noqa: BLE001 - never let an exception escape into Orthanc
        orthanc.LogError(f"cervical-dl: handling change for {resource_id} failed: {type(exc).__name__}: {exc}")


# -- REST routes -------------------------------------------------------------------------------
_PUBLIC_FIELDS = ("id", "series_id", "study_id", "series_number", "role", "state", "reason", "attempts",
                  "n_instances", "derived_series", "model_version", "created", "updated", "started", "finished",
                  "not_before", "batch")


def _public(job: dict | None) -> dict | None:
    return None if job is None else {k: job[k] for k in _PUBLIC_FIELDS}


def _answer(output, payload, status: int = 200) -> None:
    body = json.dumps(payload, indent=1)
    if status == 200:
        output.AnswerBuffer(body, "application/json")
    else:
        output.SendHttpStatus(status, body, len(body.encode()))  # orthanc-python 4.0: (int, str, size)


def rest_health(output, uri, **request):
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    now = time.time()
    workers = [{"owner": w["owner"], "heartbeat_age_s": round(now - w["heartbeat"], 1), "running": w["running"]}
               for w in QUEUE.workers()]
    alive = any(w["heartbeat_age_s"] < 30 for w in workers)
    _answer(output, {"status": "ok" if alive else "no-worker", "queue": QUEUE.counts(), "workers": workers,
                     "pending_series": len(QUEUE.pending()), "stable_age": STABLE_AGE,
                     "orthanc_module": "built-in" if not hasattr(orthanc, "__file__") else orthanc.__file__})


def rest_jobs(output, uri, **request):
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    args = request.get("get", {}) or {}
    try:
        limit = max(1, min(1000, int(args.get("limit", 100))))
    except ValueError:
        return _answer(output, {"error": "limit must be an integer"}, 400)
    _answer(output, [_public(j) for j in QUEUE.list_jobs(args.get("state") or None, limit)])


def rest_series(output, uri, **request):
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    series_id = request["groups"][0]
    jobs = QUEUE.jobs_for_series(series_id)
    if not jobs:
        return _answer(output, {"error": "no job for this series"}, 404)
    try:
        metadata = {k: orthanc.RestApiGet(f"/series/{series_id}/metadata/{k}").decode()
                    for k in _get(f"/series/{series_id}/metadata") if k.startswith("CervicalDL")}
    except Exception:  # noqa: BLE001 - series deleted: the queue still answers
        metadata = {}
    _answer(output, {"series_id": series_id, "job": _public(jobs[-1]), "history": [_public(j) for j in jobs],
                     "metadata": metadata, "study_qc_series": _study_qc_series(jobs[-1]["study_id"])})


def _study_qc_series(study_id: str) -> list[str]:
    """Orthanc IDs of the study's QC SR and PDF report (the worker writes them on the study)."""
    try:
        return [s for s in orthanc.RestApiGet(f"/studies/{study_id}/metadata/CervicalDLQCSeries").decode().split(",") if s]
    except Exception:  # noqa: BLE001 - none yet, or the study was deleted
        return []


def rest_study(output, uri, **request):
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    study_id = request["groups"][0]
    jobs = QUEUE.jobs_for_study(study_id)
    if not jobs:
        return _answer(output, {"error": "no job for this study"}, 404)
    states = {j["state"] for j in jobs}
    state = next((s for s in ("running", "queued", "failed") if s in states), "done" if "done" in states else "skipped")
    _answer(output, {"study_id": study_id, "state": state, "series": [_public(j) for j in jobs],
                     "qc_series": _study_qc_series(study_id)})


def rest_retry(output, uri, **request):
    if request["method"] != "POST":
        return output.SendMethodNotAllowed("POST")
    series_id = request["groups"][0]
    try:
        _get(f"/series/{series_id}")
    except Exception:  # noqa: BLE001
        return _answer(output, {"error": "unknown series"}, 404)
    job = QUEUE.retry(series_id)
    if job is None:
        job = evaluate_series(series_id, why="manual retry")
        if job is None:
            return _answer(output, {"error": "this series is one of our outputs"}, 400)
    elif job["state"] == "queued":
        set_state_metadata(series_id, job)
        _log(f"series {job['series_number']} ({series_id}): job {job['id']} requeued by request")
    _answer(output, _public(job))


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback(f"{PREFIX}/health", rest_health)
orthanc.RegisterRestCallback(f"{PREFIX}/jobs", rest_jobs)
orthanc.RegisterRestCallback(f"{PREFIX}/series/([^/]+)", rest_series)
orthanc.RegisterRestCallback(f"{PREFIX}/series/([^/]+)/retry", rest_retry)
orthanc.RegisterRestCallback(f"{PREFIX}/studies/([^/]+)", rest_study)
_log(f"plugin loaded (queue {QUEUE.path.name}, StableAge {STABLE_AGE:g} s)")
