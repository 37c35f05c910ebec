"""Kubernetes Job for one MAP run, built with the official ``kubernetes`` Python client.

``build_job(...)`` returns a ``kubernetes.client.V1Job`` that runs the MAP image exactly as the
Orthanc worker's docker mode does (runner.py): the MAP's own command, HOLOSCAN_INPUT_PATH /
HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH, input and models read-only, non-root, no retries
inside Kubernetes (the worker's queue owns retries and backoff), a deadline equal to the
worker's app timeout, and the Job garbage-collected after ``ttl_seconds``. Network: a pod
cannot switch its network off, so ``build_network_policy`` gives a deny-all (ingress and
egress) NetworkPolicy selecting these pods; it needs a CNI that enforces NetworkPolicy.

Volumes: the worker and the Job share one ReadWriteMany PersistentVolumeClaim (``work_claim``);
the worker writes the study's series to ``<job-dir>/in`` and reads ``<job-dir>/out``, as it does
with its local temp folder now. Models come from the image (default) or from a claim holding
one folder per model version (``models_claim`` + ``models_version``), which is how a site pins
or rolls back a model without rebuilding (docs/deploy.md).

``python -m deploy.k8s_job --image IMAGE [--variant cpu]`` prints an example Job as JSON
(``ApiClient().sanitize_for_serialization``), ready for ``kubectl apply -f -`` after review.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kubernetes import client

from app.contracts import ExitCode
from deploy.workflow import default_image
from map.layout import APP_COMMAND, STACK_LIMIT_SHELL
from map.layout import INPUT_DIR as MAP_INPUT
from map.layout import MODELS_DIR as MAP_MODELS
from map.layout import OUTPUT_DIR as MAP_OUTPUT
from models import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
APP_LABEL = "cervical-dl-enhance"
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Documented exit codes of the app (README): 0 ok; 3/4 nothing to do (worker marks the job skipped).
EXIT_CODES = ExitCode.NAMES


def _pkg_resources(variant: str) -> dict:
    from map.build_context import load_app_yaml, resources_for
    return resources_for(load_app_yaml(), variant)


def _quantity(value: Any) -> str:
    return str(value)


def job_name(job_id: int | str, attempt: int = 1) -> str:
    """Same naming as the worker's containers (cervical-dl-j<job>-<attempt>), DNS-1123, <= 63 chars."""
    name = re.sub(r"[^a-z0-9-]", "-", f"cervical-dl-j{job_id}-{attempt}".lower()).strip("-")[:63].rstrip("-")
    if not DNS1123.match(name):
        raise ValueError(f"not a valid Job name: {name!r}")
    return name


def build_job(*, image: str, job_id: int | str, attempt: int = 1, namespace: str = "cervical-dl",
              work_claim: str = "cervical-dl-work", job_dir: str | None = None,
              models_claim: str | None = None, models_version: str | None = None,
              variant: str = "gpu", timeout_s: int = 1800, ttl_seconds: int = 3600,
              run_as_user: int = 1000, run_as_group: int = 1000, model_version: str | None = None,
              node_selector: dict[str, str] | None = None, name: str | None = None,
              input_name: str = "in", output_name: str = "out",
              app_environment: dict[str, str] | None = None) -> client.V1Job:
    """One Job running the MAP on one study (the series of one study run). ``job_dir`` is the job's folder on the shared claim
    (default ``jobs/<job_id>-<attempt>``), relative to the claim's root, holding ``in/`` (written by
    the worker) and ``out/`` (the worker's per-job temp folder layout: worker.py ``tmp/in``, ``tmp/out``).
    ``name``: the Job name; the worker passes the name it gives its docker containers
    (``cervical-dl-w<pid>-j<job>-<attempt>``), default ``cervical-dl-j<job>-<attempt>``."""
    res = _pkg_resources(variant)
    if model_version is None:
        model_version = json.loads((WEIGHTS_DIR / "model_info.json").read_text())["version"]
    if name is None:
        name = job_name(job_id, attempt)
    elif not DNS1123.match(name) or len(name) > 63:
        raise ValueError(f"not a valid Job name: {name!r}")
    job_dir = (job_dir or f"jobs/{job_id}-{attempt}").strip("/")
    labels = {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/component": "map-run",
              "cervical-dl/model-version": str(model_version), "cervical-dl/job": str(job_id)}

    limits = {"cpu": _quantity(res["cpu"]), "memory": _quantity(res["memory"])}
    requests = dict(limits)
    if int(res.get("gpu", 0)) > 0:
        limits["nvidia.com/gpu"] = str(int(res["gpu"]))
        requests["nvidia.com/gpu"] = str(int(res["gpu"]))

    mounts = [
        client.V1VolumeMount(name="work", mount_path=MAP_INPUT, sub_path=f"{job_dir}/{input_name}", read_only=True),
        client.V1VolumeMount(name="work", mount_path=MAP_OUTPUT, sub_path=f"{job_dir}/{output_name}"),
        client.V1VolumeMount(name="tmp", mount_path="/tmp"),
        client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    volumes = [
        client.V1Volume(name="work", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
            claim_name=work_claim)),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit="2Gi")),
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=_quantity(res.get("sharedMemory", "1Gi")))),
    ]
    if models_claim:
        mounts.append(client.V1VolumeMount(name="models", mount_path=MAP_MODELS, read_only=True,
                                           sub_path=str(models_version or model_version)))
        volumes.append(client.V1Volume(name="models", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
            claim_name=models_claim, read_only=True)))

    env = [client.V1EnvVar(name=k, value=v) for k, v in (
        ("HOLOSCAN_INPUT_PATH", MAP_INPUT), ("HOLOSCAN_OUTPUT_PATH", MAP_OUTPUT),
        ("HOLOSCAN_MODEL_PATH", MAP_MODELS), ("MPLCONFIGDIR", "/tmp/matplotlib"), ("HOME", "/tmp"))]
    # The application's own settings (CERVICAL_DL_STRENGTH, CERVICAL_DL_OUTPUT_SYNTAX, ...)
    for k, v in sorted((app_environment or {}).items()):
        if not k.startswith("CERVICAL_DL_"):
            raise ValueError(f"app_environment: only CERVICAL_DL_* settings, not {k!r}")
        env.append(client.V1EnvVar(name=k, value=v))

    container = client.V1Container(
        name="map", image=image, image_pull_policy="IfNotPresent",
        # Kubernetes has no ulimit setting: raise the soft stack limit as the worker does, then exec the MAP command.
        command=["/bin/sh", "-c", f'{STACK_LIMIT_SHELL}; exec "$@"', "map"], args=list(APP_COMMAND),
        env=env, volume_mounts=mounts,
        resources=client.V1ResourceRequirements(limits=limits, requests=requests),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"])),
        termination_message_policy="FallbackToLogsOnError")

    pod_spec = client.V1PodSpec(
        restart_policy="Never", containers=[container], volumes=volumes,
        automount_service_account_token=False, enable_service_links=False,
        node_selector=node_selector,
        tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
        if "nvidia.com/gpu" in limits else None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=run_as_user, run_as_group=run_as_group, fs_group=run_as_group,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")))

    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=client.V1JobSpec(
            backoff_limit=0,                       # retries belong to the worker's queue (CPACS_MAX_ATTEMPTS)
            active_deadline_seconds=int(timeout_s),  # = CPACS_APP_TIMEOUT
            ttl_seconds_after_finished=int(ttl_seconds),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec)))


def build_network_policy(namespace: str = "cervical-dl") -> client.V1NetworkPolicy:
    """Deny all ingress and egress for MAP pods (the equivalent of ``docker run --network none``)."""
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(name=f"{APP_LABEL}-no-network", namespace=namespace),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app.kubernetes.io/name": APP_LABEL,
                                                              "app.kubernetes.io/component": "map-run"}),
            policy_types=["Ingress", "Egress"], ingress=[], egress=[]))


def to_dict(obj) -> dict:
    return client.ApiClient().sanitize_for_serialization(obj)


def exit_code_of(pods: list) -> int | None:
    """The MAP container's exit code from the Job's pod list (``CoreV1Api.list_namespaced_pod``)."""
    for pod in pods:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            term = status.state.terminated if status.state else None
            if status.name == "map" and term is not None:
                return int(term.exit_code)
    return None


def run_job(batch, core, job: client.V1Job, *, poll_s: float = 2.0, timeout_s: float | None = None,
            should_stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep) -> int:
    """Submit ``job`` and wait: returns the MAP's exit code (the app's documented codes), or
    -1 when the Job failed without one (deadline, eviction, image pull), deleting the Job then.
    ``batch`` / ``core``: ``client.BatchV1Api()`` / ``client.CoreV1Api()`` (fakes in the tests)."""
    ns, name = job.metadata.namespace, job.metadata.name
    batch.create_namespaced_job(namespace=ns, body=job)
    start = time.monotonic()
    while True:
        status = batch.read_namespaced_job_status(name=name, namespace=ns).status
        if (status.succeeded or 0) > 0 or (status.failed or 0) > 0:
            pods = core.list_namespaced_pod(namespace=ns, label_selector=f"job-name={name}").items
            code = exit_code_of(pods)
            return code if code is not None else -1
        if should_stop() or (timeout_s is not None and time.monotonic() - start > timeout_s):
            batch.delete_namespaced_job(name=name, namespace=ns, propagation_policy="Foreground")
            return -1
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print an example MAP Job (and the deny-all NetworkPolicy) as JSON.")
    ap.add_argument("--image", default=default_image("gpu", "registry.example.org/"))
    ap.add_argument("--variant", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--job-id", default="example")
    ap.add_argument("--namespace", default="cervical-dl")
    ap.add_argument("--models-claim", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="CERVICAL_DL_X=VALUE",
                    help="an application setting for the Job's environment, e.g. CERVICAL_DL_STRENGTH=low (repeatable)")
    args = ap.parse_args(argv)
    job = build_job(image=args.image, job_id=args.job_id, variant=args.variant, namespace=args.namespace,
                    models_claim=args.models_claim,
                    app_environment=dict(item.split("=", 1) for item in args.set))
    print(json.dumps({"apiVersion": "v1", "kind": "List",
                      "items": [to_dict(build_network_policy(args.namespace)), to_dict(job)]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
